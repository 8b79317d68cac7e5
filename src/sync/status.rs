//! What each pull worker reports about its peer, for `PeerStatus` and the
//! `status` / `peers` commands.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::store::Incarnation;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer's node identity once it has answered, else its address.
    pub peer: String,
    /// Where the peer is reached.
    pub address: String,
    /// The engine's state for this peer (`connect`, `bootstrap`, `follow`, …).
    pub state: &'static str,
    pub connected: bool,
    /// The address turned out to be this replica.
    pub is_self: bool,
    pub peer_incarnation: Option<Incarnation>,
    /// The last applied position in the peer's log.
    pub cursor_seq: u64,
    /// The peer's head when last heard from.
    pub peer_head_seq: u64,
    /// Entries pulled from this peer and newly stored since start.
    pub entries_pulled: u64,
    pub last_success: Option<SystemTime>,
    pub last_error: Option<String>,
    /// When the last reconciliation with the peer completed, and what it
    /// found.
    pub last_reconcile: Option<SystemTime>,
    pub last_reconcile_result: Option<String>,
    /// The newest repair request answered (see [`super::repair`]), and
    /// what the answer found.
    pub repaired: u64,
    pub last_repair_result: Option<String>,
    /// The peer is another process with this replica's incarnation: one
    /// data directory was copied to both.
    pub shares_incarnation: bool,
}

/// The statuses of every current peer by address, shared by the workers and the API.
#[derive(Clone, Default)]
pub struct StatusBoard(Arc<Mutex<BTreeMap<String, Arc<Mutex<PeerStatus>>>>>);

impl StatusBoard {
    /// The slot a worker for `peer` writes to.
    pub fn slot(&self, peer: &str) -> Arc<Mutex<PeerStatus>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(peer.to_owned())
            .or_insert_with(|| {
                Arc::new(Mutex::new(PeerStatus {
                    peer: peer.to_owned(),
                    address: peer.to_owned(),
                    state: "connect",
                    ..Default::default()
                }))
            })
            .clone()
    }

    pub fn remove(&self, peer: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
    }

    /// A consistent copy of every peer's status, ordered by address.
    pub fn snapshot(&self) -> Vec<PeerStatus> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.values()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }
}
