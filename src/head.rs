//! What a replica says about itself when first asked: who it is, where its
//! log ends, and the limits its requests must fit. Answered by the replica
//! core, read by the sync engine and by clients.

use crate::entry::EntryId;
use crate::store::{Incarnation, PeerCursor, Seq};

/// A replica's head: who it is, where its log ends, and the limits its
/// requests must fit. What a puller asks first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub node: String,
    pub instance: [u8; 16],
    pub incarnation: Incarnation,
    pub head_seq: Seq,
    /// The id logged at `head_seq` (none for an empty log).
    pub head_id: Option<EntryId>,
    pub entry_count: u64,
    pub max_ids_per_request: usize,
    pub max_message_bytes: usize,
}

impl Head {
    /// A cursor at the head: following from it yields only what comes next.
    pub fn cursor(&self) -> Option<PeerCursor> {
        self.head_id.map(|id| PeerCursor {
            incarnation: self.incarnation,
            seq: self.head_seq,
            id_at_seq: id,
        })
    }
}
