//! Validated replication settings: the topology this replica pulls by.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{ConfigError, RawReplication, invalid};
use crate::entry::Namespace;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationSettings {
    /// This replica's own address, when known.
    pub advertise: Option<String>,
    /// Static peers to pull from, self and (for a spoke) non-hubs removed.
    pub peers: Vec<String>,
    /// Whether this replica only pulls from hubs (hub-and-spoke, not a hub).
    pub spoke_of: Option<Vec<String>>,
    pub discovery: Option<String>,
    pub discovery_interval: Duration,
    /// Namespaces to pull; empty pulls all.
    pub namespaces: Vec<Namespace>,
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
    pub session_idle_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl ReplicationSettings {
    /// How often an idle peer is asked to send a heartbeat.
    pub fn heartbeat(&self) -> Duration {
        self.session_idle_timeout / 3
    }

    /// Applies the topology to a set of candidate peers (static or
    /// discovered): drops this replica and, for a spoke, every non-hub.
    pub fn select(&self, candidates: impl IntoIterator<Item = String>) -> Vec<String> {
        let mut seen = HashSet::new();
        candidates
            .into_iter()
            .filter(|p| Some(p) != self.advertise.as_ref())
            .filter(|p| self.spoke_of.as_ref().is_none_or(|hubs| hubs.contains(p)))
            .filter(|p| seen.insert(p.clone()))
            .collect()
    }

    pub fn validate(raw: &RawReplication, listen: SocketAddr) -> Result<Self, ConfigError> {
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
            let (tenant, db) = n
                .split_once('/')
                .ok_or_else(|| invalid(&key, format!("{n:?} is not tenant/db")))?;
            namespaces.push(Namespace::new(tenant, db).map_err(|e| invalid(&key, e.to_string()))?);
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
        let mut settings = Self {
            advertise,
            peers: Vec::new(),
            spoke_of,
            discovery,
            discovery_interval: ms(
                "replication.discovery_interval_ms",
                raw.discovery_interval_ms,
                100,
            )?,
            namespaces,
            connect_timeout: ms("replication.connect_timeout_ms", raw.connect_timeout_ms, 10)?,
            keepalive_interval: ms(
                "replication.keepalive_interval_ms",
                raw.keepalive_interval_ms,
                100,
            )?,
            session_idle_timeout: ms(
                "replication.session_idle_timeout_ms",
                raw.session_idle_timeout_ms,
                300,
            )?,
            backoff_initial,
            backoff_max,
        };
        settings.peers = settings.select(peers);
        Ok(settings)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(peers: &[&str]) -> RawReplication {
        RawReplication {
            peers: peers.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn listen() -> SocketAddr {
        "127.0.0.1:7700".parse().unwrap()
    }

    #[test]
    fn full_mesh_from_one_list_drops_self() {
        let mut r = raw(&["a:1", "b:1", "http://c:1"]);
        r.advertise = "b:1".into();
        let s = ReplicationSettings::validate(&r, listen()).unwrap();
        assert_eq!(s.peers, ["a:1", "c:1"]);
    }

    #[test]
    fn hub_and_spoke() {
        let mut r = raw(&["hub:1", "s1:1", "s2:1"]);
        r.hubs = vec!["hub:1".into()];
        r.advertise = "s1:1".into();
        let spoke = ReplicationSettings::validate(&r, listen()).unwrap();
        assert_eq!(spoke.peers, ["hub:1"]);
        r.advertise = "hub:1".into();
        let hub = ReplicationSettings::validate(&r, listen()).unwrap();
        assert_eq!(hub.peers, ["s1:1", "s2:1"]);
    }

    #[test]
    fn bad_topologies_name_the_key() {
        let cases = [
            (raw(&["a:1", "a:1"]), "replication.peers[1]", "listed twice"),
            (
                raw(&["127.0.0.1:7700"]),
                "replication.peers[0]",
                "own server.listen",
            ),
            (raw(&["nohost"]), "replication.peers[0]", "not host:port"),
            (raw(&["a:0"]), "replication.peers[0]", "not host:port"),
            (
                RawReplication {
                    namespaces: vec!["x".into()],
                    ..Default::default()
                },
                "replication.namespaces[0]",
                "tenant/db",
            ),
            (
                RawReplication {
                    hubs: vec!["h:1".into()],
                    ..Default::default()
                },
                "replication.advertise",
                "hub",
            ),
        ];
        for (r, key, why) in cases {
            let err = ReplicationSettings::validate(&r, listen())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(why), "{err}");
        }
    }
}
