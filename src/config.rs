//! Configuration: built-in defaults, then a TOML file, then environment
//! variables (`MINDOO_REPLICA__SECTION__KEY=value`), then validation into typed
//! [`Settings`]. Unknown keys are errors, and every error names the key.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::entry::Namespace;
use crate::policy::{NamespaceRules, Policy};
use crate::replication::settings::ReplicationSettings;
use crate::store::rocks::RocksConfig;

/// Prefix of environment overrides; sections and keys are separated by `__`.
pub const ENV_PREFIX: &str = "MINDOO_REPLICA";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {key}: {why}")]
    Invalid { key: String, why: String },
}

pub(crate) fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        why: why.into(),
    }
}

/// The configuration as written, before validation. `config print` shows it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub storage: RawStorage,
    pub limits: RawLimits,
    pub policy: RawPolicy,
    pub replication: RawReplication,
    pub log: RawLog,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// gRPC listen address.
    pub listen: String,
    /// Prometheus `/metrics` listen address; empty disables the endpoint.
    pub metrics_listen: String,
    /// How long to wait, once health reports NOT_SERVING, before draining.
    pub shutdown_delay_ms: u64,
    /// How long in-flight calls may take to finish on shutdown.
    pub drain_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStorage {
    /// `rocksdb` or `memory`.
    pub backend: String,
    pub path: String,
    pub block_cache_mb: u64,
    pub write_buffer_mb: u64,
    pub sync_writes: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub max_entry_bytes: u64,
    pub max_message_bytes: u64,
    pub max_ids_per_request: u64,
    pub max_batch_entries: u64,
    pub max_page: u64,
    /// A PutEntries stream with no batch for this long is closed.
    pub stream_idle_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPolicy {
    pub allow_unlisted: bool,
    pub namespaces: Vec<RawNamespace>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNamespace {
    pub tenant: String,
    pub db: String,
    /// Hex ed25519 public keys; non-empty means signatures are required.
    pub trusted_authors: Vec<String>,
    pub require_signature: bool,
}

/// Who this replica pulls from. Every replica pulls from its peers, so a
/// full mesh is every replica listing every other one (or all, itself included:
/// the entry equal to `advertise` is dropped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawReplication {
    /// This replica's own address as peers reach it; removed from `peers`.
    pub advertise: String,
    /// `host:port` of every replica to pull from.
    pub peers: Vec<String>,
    /// Hub-and-spoke when non-empty: a hub pulls from every peer, any other
    /// replica pulls only from the hubs.
    pub hubs: Vec<String>,
    /// A `host:port` DNS name whose every address is a peer (a headless
    /// Service), re-resolved every `discovery_interval_ms`.
    pub discovery: String,
    pub discovery_interval_ms: u64,
    /// `tenant/db` namespaces to pull; empty pulls all.
    pub namespaces: Vec<String>,
    pub connect_timeout_ms: u64,
    /// HTTP/2 keepalive PING interval on peer connections: the only traffic
    /// of an idle pair, and how a dead peer is noticed.
    pub keepalive_interval_ms: u64,
    /// A session with no message for this long is ended and restarted; the
    /// peer sends a heartbeat every third of it while its log is idle.
    pub session_idle_timeout_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for RawReplication {
    fn default() -> Self {
        Self {
            advertise: String::new(),
            peers: Vec::new(),
            hubs: Vec::new(),
            discovery: String::new(),
            discovery_interval_ms: 30_000,
            namespaces: Vec::new(),
            connect_timeout_ms: 5_000,
            keepalive_interval_ms: 30_000,
            session_idle_timeout_ms: 90_000,
            backoff_initial_ms: 100,
            backoff_max_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// An env-filter directive such as `info` or `mindoo_replica=debug`.
    pub filter: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7700".into(),
            metrics_listen: "127.0.0.1:9700".into(),
            shutdown_delay_ms: 0,
            drain_timeout_ms: 10_000,
        }
    }
}

impl Default for RawStorage {
    fn default() -> Self {
        Self {
            backend: "rocksdb".into(),
            path: "./data".into(),
            block_cache_mb: 64,
            write_buffer_mb: 32,
            sync_writes: false,
        }
    }
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_entry_bytes: 1 << 20,
            max_message_bytes: 2 << 20,
            max_ids_per_request: 10_000,
            max_batch_entries: 10_000,
            max_page: 10_000,
            stream_idle_timeout_ms: 300_000,
        }
    }
}

impl Default for RawPolicy {
    fn default() -> Self {
        Self {
            allow_unlisted: true,
            namespaces: Vec::new(),
        }
    }
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            filter: "info".into(),
            format: "text".into(),
        }
    }
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub storage: StorageSettings,
    pub limits: Limits,
    pub policy: Policy,
    pub replication: ReplicationSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub shutdown_delay: Duration,
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum StorageSettings {
    Rocks(RocksConfig),
    Memory,
}

/// Request limits, enforced before any work or allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_ids_per_request: usize,
    pub max_batch_entries: usize,
    pub max_page: usize,
    pub stream_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        let raw = RawLimits::default();
        Self {
            max_message_bytes: raw.max_message_bytes as usize,
            max_ids_per_request: raw.max_ids_per_request as usize,
            max_batch_entries: raw.max_batch_entries as usize,
            max_page: raw.max_page as usize,
            stream_idle_timeout: Duration::from_millis(raw.stream_idle_timeout_ms),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub filter: String,
    pub json: bool,
}

impl RawConfig {
    /// Defaults, then `file` (if any), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, None)
    }

    /// As [`RawConfig::load`], with an explicit environment (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: Option<HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let mut builder =
            config::Config::builder().add_source(config::Config::try_from(&RawConfig::default())?);
        if let Some(path) = file {
            if !path.is_file() {
                return Err(invalid(
                    "--config",
                    format!("{} does not exist or is not a file", path.display()),
                ));
            }
            builder = builder.add_source(
                config::File::from(path.to_path_buf()).format(config::FileFormat::Toml),
            );
        }
        let env_source = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("replication.peers")
            .with_list_parse_key("replication.hubs")
            .with_list_parse_key("replication.namespaces")
            .source(env.map(|e| e.into_iter().collect()));
        builder = builder.add_source(env_source);
        Ok(builder.build()?.try_deserialize()?)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the raw config serialises")
    }

    /// Checks every value and produces typed settings.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let addr = |key: &str, value: &str| -> Result<SocketAddr, ConfigError> {
            value
                .parse()
                .map_err(|e| invalid(key, format!("{value:?} is not an ip:port address ({e})")))
        };
        let s = &self.server;
        let server = ServerSettings {
            listen: addr("server.listen", &s.listen)?,
            metrics_listen: match s.metrics_listen.as_str() {
                "" => None,
                v => Some(addr("server.metrics_listen", v)?),
            },
            shutdown_delay: Duration::from_millis(s.shutdown_delay_ms),
            drain_timeout: Duration::from_millis(s.drain_timeout_ms),
        };
        let st = &self.storage;
        let storage = match st.backend.as_str() {
            "rocksdb" => {
                if st.path.is_empty() {
                    return Err(invalid("storage.path", "must not be empty"));
                }
                let mb = |key: &str, v: u64, min: u64, max: u64| {
                    if (min..=max).contains(&v) {
                        Ok(v as usize * (1 << 20))
                    } else {
                        Err(invalid(key, format!("{v} is outside {min}..={max} MiB")))
                    }
                };
                StorageSettings::Rocks(RocksConfig {
                    path: PathBuf::from(&st.path),
                    block_cache_bytes: mb("storage.block_cache_mb", st.block_cache_mb, 1, 65536)?,
                    write_buffer_bytes: mb("storage.write_buffer_mb", st.write_buffer_mb, 1, 4096)?,
                    sync_writes: st.sync_writes,
                })
            }
            "memory" => StorageSettings::Memory,
            other => {
                return Err(invalid(
                    "storage.backend",
                    format!("{other:?} is not one of \"rocksdb\", \"memory\""),
                ));
            }
        };
        let l = &self.limits;
        let range = |key: &str, v: u64, min: u64, max: u64| {
            if (min..=max).contains(&v) {
                Ok(v as usize)
            } else {
                Err(invalid(key, format!("{v} is outside {min}..={max}")))
            }
        };
        let max_entry_bytes = range("limits.max_entry_bytes", l.max_entry_bytes, 256, 16 << 20)?;
        let limits = Limits {
            max_message_bytes: range(
                "limits.max_message_bytes",
                l.max_message_bytes,
                64 << 10,
                64 << 20,
            )?,
            max_ids_per_request: range(
                "limits.max_ids_per_request",
                l.max_ids_per_request,
                1,
                100_000,
            )?,
            max_batch_entries: range("limits.max_batch_entries", l.max_batch_entries, 1, 100_000)?,
            max_page: range("limits.max_page", l.max_page, 1, 100_000)?,
            stream_idle_timeout: Duration::from_millis(range(
                "limits.stream_idle_timeout_ms",
                l.stream_idle_timeout_ms,
                100,
                86_400_000,
            )? as u64),
        };
        if limits.max_message_bytes < max_entry_bytes + 4096 {
            return Err(invalid(
                "limits.max_message_bytes",
                format!(
                    "{} must exceed limits.max_entry_bytes ({max_entry_bytes}) by at least 4096",
                    limits.max_message_bytes
                ),
            ));
        }
        // A list of ids costs at most 40 bytes per id on the wire; a full
        // request or page must fit in one message.
        for (key, count) in [
            ("limits.max_ids_per_request", limits.max_ids_per_request),
            ("limits.max_page", limits.max_page),
        ] {
            if count * 40 + 1024 > limits.max_message_bytes {
                return Err(invalid(
                    key,
                    format!(
                        "{count} ids do not fit in limits.max_message_bytes ({}); \
                         allow at most {}",
                        limits.max_message_bytes,
                        (limits.max_message_bytes - 1024) / 40
                    ),
                ));
            }
        }
        let policy = self.policy.validate(max_entry_bytes)?;
        let replication = ReplicationSettings::validate(&self.replication, server.listen)?;
        let log = LogSettings {
            filter: self.log.filter.clone(),
            json: match self.log.format.as_str() {
                "text" => false,
                "json" => true,
                other => {
                    return Err(invalid(
                        "log.format",
                        format!("{other:?} is not one of \"text\", \"json\""),
                    ));
                }
            },
        };
        tracing_subscriber::EnvFilter::try_new(&log.filter)
            .map_err(|e| invalid("log.filter", e.to_string()))?;
        Ok(Settings {
            server,
            storage,
            limits,
            policy,
            replication,
            log,
        })
    }
}

impl RawPolicy {
    fn validate(&self, max_entry_bytes: usize) -> Result<Policy, ConfigError> {
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
            namespaces,
            max_entry_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn load(toml: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica.toml");
        std::fs::write(&path, toml).unwrap();
        RawConfig::load_with_env(Some(&path), env(vars))?.validate()
    }

    #[test]
    fn defaults_validate() {
        let s = RawConfig::load_with_env(None, env(&[]))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(s.server.listen.port(), 7700);
        assert!(matches!(s.storage, StorageSettings::Rocks(_)));
    }

    #[test]
    fn file_then_env() {
        let s = load(
            "[server]\nlisten = \"127.0.0.1:1234\"\n[limits]\nmax_page = 5\n",
            &[("MINDOO_REPLICA__LIMITS__MAX_PAGE", "7")],
        )
        .unwrap();
        assert_eq!(s.server.listen.port(), 1234);
        assert_eq!(s.limits.max_page, 7);
    }

    #[test]
    fn lists_from_the_environment() {
        let s = load(
            "",
            &[
                ("MINDOO_REPLICA__REPLICATION__PEERS", "a:1,b:2"),
                ("MINDOO_REPLICA__REPLICATION__NAMESPACES", "t/d"),
            ],
        )
        .unwrap();
        assert_eq!(s.replication.peers, ["a:1", "b:2"]);
        assert_eq!(s.replication.namespaces.len(), 1);
    }

    #[test]
    fn errors_name_the_key() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("[server]\nlisten = \"nowhere\"\n", &[], "server.listen"),
            ("[storage]\nbackend = \"floppy\"\n", &[], "storage.backend"),
            ("[limits]\nmax_page = 0\n", &[], "limits.max_page"),
            ("[server]\nlisten = \n", &[], "replica.toml"),
            ("[server]\nlisen = \"x\"\n", &[], "lisen"),
            (
                "",
                &[("MINDOO_REPLICA__LIMITS__MAX_PAGE", "lots")],
                "max_page",
            ),
            (
                "[[policy.namespaces]]\ntenant = \"a\"\ndb = \"b\"\ntrusted_authors = [\"zz\"]\n",
                &[],
                "policy.namespaces[0].trusted_authors",
            ),
            ("[log]\nformat = \"xml\"\n", &[], "log.format"),
            ("[limits]\nmax_page = 100000\n", &[], "limits.max_page"),
        ];
        for (toml, vars, key) in cases {
            let err = load(toml, vars).unwrap_err().to_string();
            assert!(err.contains(key), "{err:?} should name {key}");
        }
    }
}
