//! The sync engine: moves entries between a local side and a peer, both
//! ways, whatever either is. One engine serves every pair: replica ↔
//! replica, device ↔ replica and store ↔ store.
//!
//! - [`local`]: the local side's interface (a replica core, a device's
//!   store, a test's); [`device`] is one over any [`crate::store::Store`].
//! - [`peer`]: the peer's interface, in domain types; [`grpc`] adapts a
//!   replica over the network, [`crate::replica::in_process`] one in this
//!   process.
//! - [`puller`]: one worker per peer, an explicit state machine;
//!   [`pusher`]: the other direction.
//! - [`budget`]: the byte budget every pull draws from; `sink`: where a
//!   pull's entries are verified and committed.
//! - [`env`]: the clock and random source, injectable for replay.
//! - [`status`]: what each worker reports, for `PeerStatus`.
//! - [`repair`]: requests to compare sets with peers now.
//!
//! Peers are known by their node identity (the name they advertise), never
//! by the address they are reached at: cursors, metrics and status follow a
//! peer across restarts and address changes.

pub mod backoff;
pub mod budget;
pub mod device;
pub mod env;
pub mod error;
pub mod grpc;
pub mod inflight;
pub mod local;
pub mod metrics;
pub mod peer;
pub mod puller;
pub mod pusher;
pub mod reconcile;
pub mod repair;
mod sink;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::entry::Namespace;
use crate::log::WriteConcern;

/// What a pull or push worker follows; reloadable while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSettings {
    /// Namespaces to sync; empty syncs all.
    pub namespaces: Vec<Namespace>,
    pub connect_timeout: Duration,
    pub session_idle_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Asked of a followed peer: how long it may hold back entries it
    /// pulled from others (zero: not at all).
    pub relay_delay: Duration,
    /// What each push's puts ask of the peer: how many replicas hold a
    /// batch before it is acknowledged.
    pub write_concern: WriteConcern,
    /// How often a pair compares its whole sets (jittered); `None`: only
    /// when a cursor is refused, after a bootstrap, or on demand.
    pub reconcile_interval: Option<Duration>,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            session_idle_timeout: Duration::from_secs(90),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            relay_delay: Duration::ZERO,
            write_concern: WriteConcern::default(),
            reconcile_interval: None,
        }
    }
}

impl SyncSettings {
    /// How often an idle peer is asked for a heartbeat.
    pub fn heartbeat(&self) -> Duration {
        (self.session_idle_timeout / 3).max(Duration::from_millis(100))
    }

    /// A digest of the namespace filter, stored with each cursor: 0 for no
    /// filter. When it changes, records the cursor passed may now be wanted.
    pub fn scope(&self) -> u64 {
        if self.namespaces.is_empty() {
            return 0;
        }
        let mut names: Vec<String> = self.namespaces.iter().map(|n| n.to_string()).collect();
        names.sort();
        names.dedup();
        let digest = blake3::hash(names.join("\n").as_bytes());
        let bytes: [u8; 8] = digest.as_bytes()[..8].try_into().expect("8 bytes");
        u64::from_be_bytes(bytes) | 1
    }
}

/// What the pull workers of one replica share.
#[derive(Clone)]
pub struct Shared {
    pub claims: Claims,
    pub in_flight: inflight::InFlight,
    /// One bootstrap with data at a time: bodies streamed from several
    /// peers at once would cross several times. A worker that would
    /// bootstrap waits for a running bootstrap to end, then usually finds
    /// it has most entries and follows ids only.
    bootstrap: Arc<tokio::sync::Semaphore>,
    /// Requests to compare sets with peers now.
    pub repairs: repair::Repairs,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            claims: Claims::default(),
            in_flight: inflight::InFlight::default(),
            bootstrap: Arc::new(tokio::sync::Semaphore::new(1)),
            repairs: repair::Repairs::default(),
        }
    }
}

impl Shared {
    /// The right to bootstrap with data, once no other worker has it.
    pub async fn bootstrap(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.bootstrap
            .clone()
            .acquire_owned()
            .await
            .expect("the bootstrap semaphore is never closed")
    }
}

/// Which worker pulls each peer node right now. Two addresses can lead to
/// one node for a while (a pod restarted with a new address while the old
/// one is still listed); only one worker pulls it, so its cursor has one
/// writer.
#[derive(Clone, Default)]
pub struct Claims(Arc<Mutex<HashMap<String, String>>>);

/// Releases a node's claim when dropped.
pub struct Claim {
    claims: Claims,
    node: String,
}

impl Claims {
    /// Claims `node` for the worker at `address`; fails with the address of
    /// the worker that holds it.
    pub fn claim(&self, node: &str, address: &str) -> Result<Claim, String> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(node) {
            Some(holder) if holder != address => Err(holder.clone()),
            _ => {
                map.insert(node.to_owned(), address.to_owned());
                Ok(Claim {
                    claims: self.clone(),
                    node: node.to_owned(),
                })
            }
        }
    }

    /// Nodes being pulled right now.
    pub fn nodes(&self) -> Vec<String> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.keys().cloned().collect()
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.claims
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.node);
    }
}

// The engine's tests sync replica cores as well as device stores.
#[cfg(all(test, feature = "server"))]
mod tests;
