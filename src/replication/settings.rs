//! Replication settings: the topology this replica pulls by, and the
//! settings each pull worker follows. Built and checked by [`crate::config`].

use std::collections::HashSet;
use std::time::Duration;

use crate::store::ranges::FingerprintKey;
use crate::sync::SyncSettings;

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
    pub keepalive_interval: Duration,
    /// What each worker follows (reloaded into running workers).
    pub pull: SyncSettings,
    /// Entry data all pulls together may hold in memory.
    pub max_inflight_bytes: usize,
    /// Entry data one peer's pull may hold in memory.
    pub max_peer_inflight_bytes: usize,
    /// A cursor into a peer that has not been pulled for this long, and is
    /// not in the topology, is removed.
    pub cursor_retention: Duration,
    /// How often the config file is checked for changes; `None`: only on
    /// SIGHUP (see [`crate::config::reload`]).
    pub config_poll: Option<Duration>,
    /// The key of the store's range fingerprints; `None`: no set
    /// reconciliation.
    pub fingerprint_key: Option<FingerprintKey>,
}

impl ReplicationSettings {
    /// The certificate names of the replicas this topology pairs with: each
    /// peer's and hub's host, and any name under the discovery name.
    pub fn peer_name_patterns(&self) -> Vec<String> {
        let hosts = self.peers.iter().chain(self.spoke_of.iter().flatten());
        let mut names: Vec<String> = hosts.map(|p| crate::tls::host_of(p).to_owned()).collect();
        if let Some(d) = &self.discovery {
            names.push(format!("*.{}", crate::tls::host_of(d)));
        }
        names
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
}
