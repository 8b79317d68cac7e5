//! The shared vocabulary of a log, below the client, the engine and the
//! core alike: what a replica says about itself and its log when first
//! asked ([`Head`]), what a reader asks to follow of it ([`FollowRequest`]),
//! one step of a stream of it ([`LogBatch`]), entries fetched by id
//! ([`EntryChunk`]), and how many replicas a write waits for
//! ([`WriteConcern`]).

use std::time::Duration;

use bytes::Bytes;

use crate::entry::{EntryId, Namespace};
use crate::store::{Incarnation, LogRecord, PeerCursor, Seq};

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
    /// The peer answers `Reconcile` (it advertises it; the previous
    /// release does not), with fingerprints under the key of this check
    /// (see [`crate::store::ranges::FingerprintKey::check`]).
    pub reconcile_key: Option<u64>,
    /// The namespaces the peer pulls from its peers; empty: all.
    pub pulls: Vec<Namespace>,
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

/// How many replicas must hold a batch durably before it is acknowledged,
/// and how long the replica that took it waits for their confirmations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteConcern {
    /// Replicas, the one written to included (at least 1).
    pub replicas: u32,
    pub timeout: Duration,
}

impl WriteConcern {
    /// The longest wait a request may ask for.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
    /// The wait when a request names none.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// `replicas` replicas, waiting at most `timeout` for them.
    pub fn replicas(replicas: u32, timeout: Duration) -> Self {
        Self {
            replicas: replicas.max(1),
            timeout,
        }
    }
}

impl Default for WriteConcern {
    /// The replica written to alone.
    fn default() -> Self {
        Self::replicas(1, Self::DEFAULT_TIMEOUT)
    }
}

/// One step of a log stream. A batch with no records and no `next` is a
/// heartbeat: the log is idle and the serving replica's head is `head_seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogBatch {
    /// Records after the reader's position, in log order, filtered by
    /// namespace when asked.
    pub records: Vec<LogRecord>,
    /// The position just after this batch. With a namespace filter it can
    /// move past records that were not sent; a reader resumes from here.
    pub next: Option<PeerCursor>,
    /// The serving replica's head when this batch was read.
    pub head_seq: Seq,
    /// A writer there waits for replicas: once this batch is stored
    /// durably, confirm the cursor (see `crate::replica::confirm`).
    pub confirm: bool,
}

impl LogBatch {
    pub fn is_heartbeat(&self) -> bool {
        self.records.is_empty() && self.next.is_none()
    }
}

/// The longest a follower holds relayed records back.
pub const MAX_RELAY_DELAY: Duration = Duration::from_secs(1);

/// What a reader asks to follow of a replica's (or a store's) log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FollowRequest {
    /// Resume after this position; `None` is the start of the log.
    pub from: Option<PeerCursor>,
    /// Records carry their entry's data.
    pub with_data: bool,
    /// Once at the head, records of entries the peer took from clients
    /// carry their data (see the replica's `FollowOptions`).
    pub live_data: bool,
    /// Only these namespaces; empty follows all.
    pub namespaces: Vec<Namespace>,
    /// Ask for a heartbeat after this long without records.
    pub heartbeat: Option<Duration>,
    /// Ask for records the peer pulled from others to be held back up to
    /// this long and sent together (see the replica's `FollowOptions`).
    pub relay_delay: Option<Duration>,
}

/// Part of an answer to a fetch by id: entries found, and ids not held.
#[derive(Debug, Clone, Default)]
pub struct EntryChunk {
    pub entries: Vec<(EntryId, Bytes)>,
    pub missing: Vec<EntryId>,
}
