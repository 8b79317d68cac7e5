//! Checks of single values, and of the replication and policy sections,
//! each error naming its key.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use super::{
    ConfigError, RawAuth, RawLimits, RawPolicy, RawQuotas, RawReplication, RawTls, invalid,
};
use crate::entry::Namespace;
use crate::policy::{NamespaceRules, Policy};
use crate::replica::MAX_RELAY_DELAY;
use crate::replication::settings::ReplicationSettings;
use crate::store::ranges::FingerprintKey;
use crate::sync::SyncSettings;

/// `v` if within `min..=max`, else an error naming `key` and the range.
pub(super) fn in_range(
    key: &str,
    v: u64,
    min: u64,
    max: u64,
    unit: &str,
) -> Result<usize, ConfigError> {
    match (min..=max).contains(&v) {
        true => Ok(v as usize),
        false => Err(invalid(key, format!("{v} is outside {min}..={max}{unit}"))),
    }
}

pub(super) fn count(key: &str, v: u64, min: u64, max: u64) -> Result<usize, ConfigError> {
    in_range(key, v, min, max, "")
}

/// A size given in MiB, checked against its range, in bytes.
pub(super) fn mib(key: &str, v: u64, min: u64, max: u64) -> Result<usize, ConfigError> {
    in_range(key, v, min, max, " MiB").map(|v| v << 20)
}

pub(super) fn validate_replication(
    raw: &RawReplication,
    listen: SocketAddr,
) -> Result<ReplicationSettings, ConfigError> {
    let advertise = match raw.advertise.as_str() {
        "" => None,
        a => Some(peer_address("replication.advertise", a)?),
    };
    let mut peers = Vec::new();
    for (i, p) in raw.peers.iter().enumerate() {
        let key = format!("replication.peers[{i}]");
        let p = peer_address(&key, p)?;
        if peers.contains(&p) {
            return Err(invalid(key, format!("{p} is listed twice")));
        }
        if advertise.is_none() && p.parse::<SocketAddr>().ok() == Some(listen) {
            return Err(invalid(
                key,
                format!(
                    "{p} is this replica's own server.listen address; set \
                     replication.advertise to list every replica in one peer list"
                ),
            ));
        }
        peers.push(p);
    }
    let mut hubs = Vec::new();
    for (i, h) in raw.hubs.iter().enumerate() {
        hubs.push(peer_address(&format!("replication.hubs[{i}]"), h)?);
    }
    let is_hub = advertise.as_ref().is_some_and(|a| hubs.contains(a));
    if !hubs.is_empty() && advertise.is_none() {
        return Err(invalid(
            "replication.advertise",
            "hub-and-spoke needs this replica's own address to know whether it is a hub",
        ));
    }
    let spoke_of = (!hubs.is_empty() && !is_hub).then_some(hubs);
    let discovery = match raw.discovery.as_str() {
        "" => None,
        d => Some(peer_address("replication.discovery", d)?),
    };
    let mut namespaces = Vec::new();
    for (i, n) in raw.namespaces.iter().enumerate() {
        let key = format!("replication.namespaces[{i}]");
        namespaces.push(Namespace::from_path(n).map_err(|e| invalid(&key, e.to_string()))?);
    }
    let ms = |key: &str, v: u64, min: u64| {
        if v >= min {
            Ok(Duration::from_millis(v))
        } else {
            Err(invalid(
                key,
                format!("{v} is below the minimum of {min} ms"),
            ))
        }
    };
    let backoff_initial = ms("replication.backoff_initial_ms", raw.backoff_initial_ms, 1)?;
    let backoff_max = ms("replication.backoff_max_ms", raw.backoff_max_ms, 1)?;
    if backoff_max < backoff_initial {
        return Err(invalid(
            "replication.backoff_max_ms",
            "must not be below replication.backoff_initial_ms",
        ));
    }
    let relay_delay = Duration::from_millis(raw.relay_delay_ms);
    if relay_delay > MAX_RELAY_DELAY {
        return Err(invalid(
            "replication.relay_delay_ms",
            format!(
                "{} is above the maximum of {} ms",
                raw.relay_delay_ms,
                MAX_RELAY_DELAY.as_millis()
            ),
        ));
    }
    let max_inflight_bytes = mib("replication.max_inflight_mb", raw.max_inflight_mb, 1, 4095)?;
    let max_peer_inflight_bytes = mib(
        "replication.max_peer_inflight_mb",
        raw.max_peer_inflight_mb,
        1,
        4095,
    )?;
    if max_peer_inflight_bytes > max_inflight_bytes {
        return Err(invalid(
            "replication.max_peer_inflight_mb",
            "must not exceed replication.max_inflight_mb",
        ));
    }
    let fingerprint_key = fingerprint_key(raw)?;
    let mut settings = ReplicationSettings {
        advertise,
        peers: Vec::new(),
        spoke_of: spoke_of.clone(),
        discovery,
        discovery_interval: ms(
            "replication.discovery_interval_ms",
            raw.discovery_interval_ms,
            100,
        )?,
        keepalive_interval: ms(
            "replication.keepalive_interval_ms",
            raw.keepalive_interval_ms,
            100,
        )?,
        pull: SyncSettings {
            namespaces,
            connect_timeout: ms("replication.connect_timeout_ms", raw.connect_timeout_ms, 10)?,
            session_idle_timeout: ms(
                "replication.session_idle_timeout_ms",
                raw.session_idle_timeout_ms,
                300,
            )?,
            backoff_initial,
            backoff_max,
            // A spoke hears other spokes' entries only as its hubs relay them.
            relay_delay: match spoke_of.is_some() {
                true => Duration::ZERO,
                false => relay_delay,
            },
            // Replicas pull; a write concern is what clients' pushes ask.
            write_concern: Default::default(),
            reconcile_interval: match (raw.reconcile_interval_ms, &fingerprint_key) {
                (0, _) | (_, None) => None,
                (v, Some(_)) => Some(ms("replication.reconcile_interval_ms", v, 1_000)?),
            },
        },
        max_inflight_bytes,
        max_peer_inflight_bytes,
        cursor_retention: ms(
            "replication.cursor_retention_ms",
            raw.cursor_retention_ms,
            1_000,
        )?,
        config_poll: match raw.config_poll_ms {
            0 => None,
            v => Some(ms("replication.config_poll_ms", v, 100)?),
        },
        fingerprint_key,
    };
    settings.peers = settings.select(peers);
    Ok(settings)
}

/// The fingerprint key, from the config or its file.
fn fingerprint_key(raw: &RawReplication) -> Result<Option<FingerprintKey>, ConfigError> {
    match (
        raw.fingerprint_key.as_str(),
        raw.fingerprint_key_file.as_str(),
    ) {
        ("", "") => Ok(None),
        (key, "") => FingerprintKey::parse(key)
            .map(Some)
            .map_err(|e| invalid("replication.fingerprint_key", e)),
        ("", path) => {
            let key = "replication.fingerprint_key_file";
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid(key, format!("cannot read {path}: {e}")))?;
            FingerprintKey::parse(&text)
                .map(Some)
                .map_err(|e| invalid(key, format!("{path}: {e}")))
        }
        _ => Err(invalid(
            "replication.fingerprint_key_file",
            "set either replication.fingerprint_key or replication.fingerprint_key_file, \
             not both",
        )),
    }
}

/// Normalises `host:port` (an `http://` prefix is allowed) and checks its shape.
fn peer_address(key: &str, value: &str) -> Result<String, ConfigError> {
    let v = value
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let ok = v
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    match ok {
        true => Ok(v.to_owned()),
        false => Err(invalid(key, format!("{value:?} is not host:port"))),
    }
}

impl RawPolicy {
    pub(super) fn validate(&self, max_entry_bytes: usize) -> Result<Policy, ConfigError> {
        let mut namespaces = HashMap::new();
        for (i, raw) in self.namespaces.iter().enumerate() {
            let key = format!("policy.namespaces[{i}]");
            let ns = Namespace::new(&raw.tenant, &raw.db)
                .map_err(|e| invalid(key.clone(), e.to_string()))?;
            let mut trusted_authors = HashSet::new();
            for hex_key in &raw.trusted_authors {
                let bytes: [u8; 32] = hex::decode(hex_key)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        invalid(
                            format!("{key}.trusted_authors"),
                            format!("{hex_key:?} is not a 64-digit hex ed25519 public key"),
                        )
                    })?;
                trusted_authors.insert(bytes);
            }
            let rules = NamespaceRules {
                trusted_authors,
                require_signature: raw.require_signature,
            };
            if namespaces.insert(ns.clone(), rules).is_some() {
                return Err(invalid(key, format!("namespace {ns} is listed twice")));
            }
        }
        Ok(Policy {
            allow_unlisted: self.allow_unlisted,
            require_signatures: self.require_signatures,
            namespaces,
            max_entry_bytes,
        })
    }
}

impl RawTls {
    pub(super) fn validate(&self) -> Result<Option<crate::tls::MeshTls>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let file = |key: &str, value: &str| match value {
            "" => Err(invalid(key, "must be set when tls.enabled is true")),
            v => Ok(std::path::PathBuf::from(v)),
        };
        let tls = crate::tls::MeshTls {
            files: crate::tls::TlsFiles {
                cert: file("tls.cert_file", &self.cert_file)?,
                key: file("tls.key_file", &self.key_file)?,
                ca: file("tls.ca_file", &self.ca_file)?,
            },
            peer_names: self.peer_names.clone(),
            operator_names: self.operator_names.clone(),
        };
        tls.check().map_err(|(key, why)| invalid(key, why))?;
        Ok(Some(tls))
    }
}

/// Hex ed25519 public keys, or `*` for any key.
fn keys(key: &str, values: &[String]) -> Result<crate::access::Keys, ConfigError> {
    let mut keys = crate::access::Keys::default();
    for v in values {
        if v == "*" {
            keys.any = true;
            continue;
        }
        let bytes: [u8; 32] = hex::decode(v)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                invalid(
                    key,
                    format!("{v:?} is not a 64-digit hex ed25519 public key or \"*\""),
                )
            })?;
        keys.keys.insert(bytes);
    }
    Ok(keys)
}

impl RawAuth {
    pub(super) fn validate(&self) -> Result<crate::access::AuthSettings, ConfigError> {
        use crate::access::{AccessPolicy, AuthSettings, Rights};
        let clients_required = match self.clients.as_str() {
            "required" => true,
            "off" => false,
            other => {
                return Err(invalid(
                    "auth.clients",
                    format!("{other:?} is not one of \"required\", \"off\""),
                ));
            }
        };
        let mut namespaces = HashMap::new();
        for (i, raw) in self.namespaces.iter().enumerate() {
            let key = format!("auth.namespaces[{i}]");
            let ns = Namespace::new(&raw.tenant, &raw.db)
                .map_err(|e| invalid(key.clone(), e.to_string()))?;
            let rights = Rights {
                readers: keys(&format!("{key}.readers"), &raw.readers)?,
                writers: keys(&format!("{key}.writers"), &raw.writers)?,
            };
            if namespaces.insert(ns.clone(), rights).is_some() {
                return Err(invalid(key, format!("namespace {ns} is listed twice")));
            }
        }
        Ok(AuthSettings {
            access: AccessPolicy {
                clients_required,
                operators: keys("auth.operators", &self.operators)?,
                default: Rights {
                    readers: keys("auth.readers", &self.readers)?,
                    writers: keys("auth.writers", &self.writers)?,
                },
                namespaces,
                // Set from `[quotas]` beside.
                quotas: Default::default(),
            },
            max_clock_skew: Duration::from_millis(in_range(
                "auth.max_clock_skew_ms",
                self.max_clock_skew_ms,
                1_000,
                3_600_000,
                " ms",
            )? as u64),
            max_recent_requests: count(
                "auth.max_recent_requests",
                self.max_recent_requests,
                1_000,
                50_000_000,
            )?,
        })
    }
}

impl RawLimits {
    /// The limits per client (see [`crate::fair`]).
    pub(super) fn clients(
        &self,
        max_entry_bytes: usize,
    ) -> Result<crate::fair::FairLimits, ConfigError> {
        let limits = crate::fair::FairLimits {
            requests_per_second: count(
                "limits.client_requests_per_second",
                self.client_requests_per_second,
                1,
                10_000_000,
            )? as f64,
            burst: count(
                "limits.client_request_burst",
                self.client_request_burst,
                1,
                100_000_000,
            )? as f64,
            max_calls: count(
                "limits.max_calls_per_client",
                self.max_calls_per_client,
                1,
                1_000_000,
            )?,
            send_bytes: mib(
                "limits.max_send_data_per_client_mb",
                self.max_send_data_per_client_mb,
                1,
                4095,
            )?,
            max_tracked: count(
                "limits.max_tracked_clients",
                self.max_tracked_clients,
                1,
                10_000_000,
            )?,
            write_turns: match count(
                "limits.client_write_turns",
                self.client_write_turns,
                0,
                1024,
            )? {
                0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
                n => n,
            },
        };
        if limits.send_bytes < max_entry_bytes {
            return Err(invalid(
                "limits.max_send_data_per_client_mb",
                format!(
                    "{} MiB is too small: it must be at least limits.max_entry_bytes",
                    limits.send_bytes >> 20
                ),
            ));
        }
        Ok(limits)
    }
}

impl RawQuotas {
    pub(super) fn validate(&self) -> Result<crate::quota::Quotas, ConfigError> {
        use crate::quota::Quota;
        let quota = |entries: u64, mb: u64| Quota {
            max_entries: (entries > 0).then_some(entries),
            max_bytes: (mb > 0).then(|| mb.saturating_mul(1 << 20)),
        };
        let mut tenants = HashMap::new();
        for (i, raw) in self.tenants.iter().enumerate() {
            let key = format!("quotas.tenants[{i}]");
            // A tenant name follows the namespace rules.
            Namespace::new(&raw.tenant, "db").map_err(|e| invalid(key.clone(), e.to_string()))?;
            if tenants
                .insert(raw.tenant.clone(), quota(raw.max_entries, raw.max_mb))
                .is_some()
            {
                return Err(invalid(
                    key,
                    format!("tenant {} is listed twice", raw.tenant),
                ));
            }
        }
        Ok(crate::quota::Quotas {
            default: quota(self.max_entries_per_tenant, self.max_mb_per_tenant),
            tenants,
        })
    }
}
