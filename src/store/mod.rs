//! Storage: the narrow interface a replica needs from its database.
//!
//! A store holds entries keyed by `(namespace, id)`, a local log that numbers
//! every first insert with a sequence number, the replica's incarnation, and
//! the replication cursors into peers' logs. Appending a batch is atomic: the
//! entries, their log records and an optional advanced cursor are committed
//! together, so a crash never loses, duplicates or skips anything. An
//! append is visible at once and durable after [`Store::sync`], which
//! writers waiting at the same time share (group commit).
//!
//! The log can be read whole ([`Store::log_since`]) or for a few namespaces
//! ([`Store::log_since_in`]); the backends index the log by namespace, so a
//! reader of one namespace pays for its records, not for the replica's.
//!
//! Methods are blocking; async callers run them on the blocking pool (see
//! [`crate::replica`]). [`rocks::RocksStore`] is the production backend and the
//! only module that touches RocksDB; [`memory::MemoryStore`] serves tests and
//! throwaway replicas. Both pass the same conformance suite.

#[cfg(test)]
pub(crate) mod conformance;
#[cfg(any(test, feature = "tools"))]
pub mod decorated;
mod group_sync;
pub mod memory;
pub mod ranges;
pub mod rocks;
pub mod scrub;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::fmt;

use bytes::Bytes;

use crate::entry::{EntryId, Envelope, Namespace, VerifiedEntry};

/// A local log sequence number. The first record is 1; 0 means "before the start".
pub type Seq = u64;

/// Random id of one life of a database. A restored or rebuilt replica gets a new
/// one, so cursors into its old log are recognisably stale.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Incarnation(pub [u8; 16]);

impl Incarnation {
    pub fn random() -> Self {
        Self(rand::random())
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Incarnation({self})")
    }
}

/// One record of the local log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub seq: Seq,
    pub namespace: Namespace,
    pub id: EntryId,
    /// The entry's data, when it was asked for.
    pub data: Option<Bytes>,
}

/// One entry of a document, as a store's per-document index keeps it:
/// what reading, listing and a history need to know of an entry without
/// reading its body. From the entry's plaintext envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocRecord {
    /// The envelope's document id.
    pub doc: Vec<u8>,
    /// Where the entry is in the local log.
    pub seq: Seq,
    pub id: EntryId,
    pub kind: String,
    pub created_ms: u64,
    pub deps: Vec<EntryId>,
}

impl DocRecord {
    /// Where the record is in its namespace's document index.
    fn position(&self) -> (usize, &[u8], Seq) {
        doc_position(&self.doc, self.seq)
    }

    /// The record of entry `id`, stored at `seq` with `data`; `None` for
    /// an entry of no document, or data that is not an entry (a store
    /// holds only checked entries, so that is never the case).
    pub fn of(seq: Seq, id: EntryId, data: &[u8]) -> Option<Self> {
        let e = Envelope::parse(data).ok()?;
        (!e.doc_id.is_empty()).then_some(Self {
            doc: e.doc_id,
            seq,
            id,
            kind: e.kind,
            created_ms: e.created_ms,
            deps: e.deps,
        })
    }
}

/// The order of a namespace's document index: by document (shorter ids
/// first, then bytewise: the order of length-prefixed keys), then by seq.
fn doc_position(doc: &[u8], seq: Seq) -> (usize, &[u8], Seq) {
    (doc.len(), doc, seq)
}

/// Which records of a namespace's document index to read: those after
/// `after` (a document id and a seq within it; `None`: from the start), in
/// index order (see [`doc_position`]), of document `only` alone when it is
/// given.
#[derive(Debug, Clone, Copy, Default)]
pub struct DocRange<'a> {
    pub only: Option<&'a [u8]>,
    pub after: Option<(&'a [u8], Seq)>,
}

/// A position in a peer's log, persisted by the puller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCursor {
    pub incarnation: Incarnation,
    pub seq: Seq,
    pub id_at_seq: EntryId,
}

/// A persisted cursor and what it was advanced under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorRecord {
    pub cursor: PeerCursor,
    /// Digest of the namespace filter the cursor advanced under (0: none).
    /// When the filter changes, records the cursor already passed may now be
    /// wanted, so the puller re-scans the peer's log for them.
    pub scope: u64,
    /// Unix milliseconds of the last update (0 for cursors written before
    /// this was recorded); stale cursors of departed peers are removed by age.
    pub updated_ms: u64,
}

/// A cursor update committed together with a batch of entries.
#[derive(Debug, Clone)]
pub struct CursorUpdate {
    /// The peer's node identity (its advertised name), never an address.
    pub peer: String,
    pub record: CursorRecord,
}

/// What happened to one entry of an appended batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Newly stored at this log position.
    Stored(Seq),
    /// Already held (or repeated earlier in the same batch).
    Duplicate,
}

/// Counters a store keeps in memory; cheap enough for every request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub head_seq: Seq,
    pub entries: u64,
}

/// What one tenant has stored: entries and their bytes (every namespace
/// of the tenant, whichever way the entries came). Kept in the same commit
/// as the entries, so it is exact after any crash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub entries: u64,
    pub bytes: u64,
}

impl Usage {
    /// One more entry of `bytes`.
    pub fn add(&mut self, bytes: usize) {
        self.entries += 1;
        self.bytes += bytes as u64;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the database at {path} is locked by another process (is another replica running on it?)"
    )]
    Locked { path: String },
    #[error("no space left on the storage device: {0}")]
    DiskFull(String),
    #[error("the replica has no file descriptor left for the store: {0}")]
    OutOfFiles(String),
    #[error("database schema version {found} is not supported (expected {expected})")]
    Schema { found: u32, expected: u32 },
    #[error("corrupt record in {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("storage error: {0}")]
    Backend(String),
    #[error("{0}")]
    Unsupported(&'static str),
}

/// The storage interface. See the module docs for the guarantees.
pub trait Store: Send + Sync + 'static {
    fn incarnation(&self) -> Incarnation;

    fn stats(&self) -> StoreStats;

    /// What `tenant` has stored; kept in memory, cheap enough for every
    /// request.
    fn usage(&self, tenant: &str) -> Usage;

    /// Approximate bytes on disk (0 for memory). Asks the engine: for
    /// metrics, not for request paths.
    fn disk_bytes(&self) -> u64;

    /// Memory the engine reports using, by part (none for memory). For
    /// metrics, not for request paths.
    fn memory_bytes(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// Appends a batch atomically, with an optional cursor update. Returns one
    /// outcome per entry, in order. The batch is visible to readers when
    /// this returns; on a store that syncs, it is durable once a later
    /// [`Self::sync`] has returned.
    fn append(
        &self,
        entries: &[VerifiedEntry],
        cursor: Option<&CursorUpdate>,
    ) -> Result<Vec<Appended>, StoreError>;

    /// For each id, whether the store holds it in `ns`.
    fn contains(&self, ns: &Namespace, ids: &[EntryId]) -> Result<Vec<bool>, StoreError>;

    /// The ids of `ids` not held in `ns`, in order.
    fn missing(&self, ns: &Namespace, ids: Vec<EntryId>) -> Result<Vec<EntryId>, StoreError> {
        let held = self.contains(ns, &ids)?;
        Ok(ids
            .into_iter()
            .zip(held)
            .filter_map(|(id, held)| (!held).then_some(id))
            .collect())
    }

    /// For each id, the entry's data if held in `ns`.
    fn get(&self, ns: &Namespace, ids: &[EntryId]) -> Result<Vec<Option<Bytes>>, StoreError>;

    /// For each seq, the data of the entry logged there (`None` for 0 or a
    /// seq past the head). A reader that knows where its entries are (from
    /// [`Self::doc_records`]) reads them without looking their ids up.
    fn get_logged(&self, seqs: &[Seq]) -> Result<Vec<Option<Bytes>>, StoreError>;

    /// As [`Self::get_logged`], with every checksum the backend keeps
    /// verified on the way (RocksDB's over each body, its signature
    /// included): what a scrub reads.
    fn read_back(&self, seqs: &[Seq]) -> Result<Vec<Option<Bytes>>, StoreError> {
        self.get_logged(seqs)
    }

    /// Up to `limit` log records with `seq > after`, in order. With
    /// `data_budget`, each record carries its entry's data, and the list ends
    /// before the data would exceed the budget (it always holds one record).
    fn log_since(
        &self,
        after: Seq,
        limit: usize,
        data_budget: Option<usize>,
    ) -> Result<Vec<LogRecord>, StoreError>;

    /// Up to `limit` log records with `seq > after` whose namespace is one
    /// of `namespaces`, in log order across them (merged by seq), with
    /// `data_budget` as in [`Self::log_since`]. Cursors stay positions in the
    /// one log: a record's `seq` is the same whichever way it was read.
    ///
    /// The backends read only those namespaces' rows of their per-namespace
    /// index; this default, for stores without one, scans the whole log.
    fn log_since_in(
        &self,
        namespaces: &[Namespace],
        after: Seq,
        limit: usize,
        data_budget: Option<usize>,
    ) -> Result<Vec<LogRecord>, StoreError> {
        scan_log_in(self, namespaces, after, limit, data_budget)
    }

    /// Log and index rows that [`Self::log_since`] and [`Self::log_since_in`]
    /// have read since the store was opened: what log reads cost.
    fn log_records_read(&self) -> u64 {
        0
    }

    /// Up to `limit` records of `ns`'s documents in `range`, in the index's
    /// order: by document, then by seq. Entries without a document id are
    /// not listed.
    ///
    /// A store that keeps a per-document index (a device's) reads its rows
    /// and no body; this default scans the namespace's log and parses every
    /// body.
    fn doc_records(
        &self,
        ns: &Namespace,
        range: DocRange<'_>,
        limit: usize,
    ) -> Result<Vec<DocRecord>, StoreError> {
        scan_doc_records(self, ns, range, limit)
    }

    /// The id logged at `seq`, if any.
    fn log_at(&self, seq: Seq) -> Result<Option<EntryId>, StoreError>;

    /// Up to `limit` ids in `ns` greater than `after`, in id order.
    fn list_ids(
        &self,
        ns: &Namespace,
        after: Option<&EntryId>,
        limit: usize,
    ) -> Result<Vec<EntryId>, StoreError>;

    /// The persisted cursor into `peer`'s log.
    fn cursor(&self, peer: &str) -> Result<Option<CursorRecord>, StoreError>;

    /// Every persisted cursor, by peer.
    fn cursors(&self) -> Result<Vec<(String, CursorRecord)>, StoreError>;

    /// Forgets the cursor into `peer`'s log (a peer that left for good).
    fn delete_cursor(&self, peer: &str) -> Result<(), StoreError>;

    /// Makes everything appended so far durable.
    fn flush(&self) -> Result<(), StoreError>;

    /// Returns once every append that returned before this call is
    /// durable. Writers that call it at the same time share one fsync
    /// (group commit, see `group_sync.rs`). At once on a store that does
    /// not sync (memory, or RocksDB with `sync_writes` off).
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// fsyncs [`Self::sync`] has run since the store was opened.
    fn syncs(&self) -> u64 {
        0
    }

    /// The fingerprints of the store's key ranges, when it keeps them
    /// (it was given a [`ranges::FingerprintKey`]): what set
    /// reconciliation compares.
    fn ranges(&self) -> Option<&ranges::RangeIndex> {
        None
    }

    /// The entries stored in `range`, in key order (`ns ‖ id`), at most
    /// `limit`.
    fn range_ids(
        &self,
        range: &ranges::KeyRange,
        limit: usize,
    ) -> Result<Vec<(Namespace, EntryId)>, StoreError> {
        let _ = (range, limit);
        Err(StoreError::Unsupported(
            "this store does not list its entries by key range",
        ))
    }

    /// Takes entries a scrub found not as stored out of service, in one
    /// durable commit: each finding's log record, body and index rows go,
    /// so no reader is handed its bytes again, and the entry is missing,
    /// fetched again from a peer like any other missing entry (it then
    /// gets a new log position). A finding whose log position no longer
    /// names its entry is left alone. Returns the log records removed.
    fn quarantine(&self, found: &[scrub::Finding]) -> Result<usize, StoreError> {
        let _ = found;
        Err(StoreError::Unsupported(
            "this store cannot take entries out of service",
        ))
    }

    /// Where the periodic scrub stands (nothing, for a store that does not
    /// keep it).
    fn scrub_mark(&self) -> Result<scrub::ScrubMark, StoreError> {
        Ok(scrub::ScrubMark::default())
    }

    /// Keeps where the periodic scrub stands.
    fn set_scrub_mark(&self, mark: scrub::ScrubMark) -> Result<(), StoreError> {
        let _ = mark;
        Ok(())
    }

    /// Takes a consistent copy of the store into `dir` (which must not
    /// exist; its parent must) while it keeps serving: a backup.
    fn checkpoint(&self, dir: &std::path::Path) -> Result<(), StoreError> {
        let _ = dir;
        Err(StoreError::Unsupported(
            "this store keeps nothing on disk to back up (storage.backend = \"memory\")",
        ))
    }

    /// Writes a few bytes that mean nothing, to learn whether the store
    /// accepts writes again after it refused some.
    fn probe_write(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// `namespaces` without repeats, in a fixed order: one run of the log each.
pub(crate) fn distinct(namespaces: &[Namespace]) -> Vec<&Namespace> {
    let mut out: Vec<&Namespace> = namespaces.iter().collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Merges runs of `(seq, id)`, each in seq order (one per namespace), into
/// one in seq order, yielding `(seq, run, id)`. A run is read one row ahead
/// of what has been yielded from it.
pub(crate) struct MergeBySeq<I> {
    runs: Vec<I>,
    heads: BinaryHeap<Reverse<(Seq, usize, EntryId)>>,
}

impl<I: Iterator<Item = Result<(Seq, EntryId), StoreError>>> MergeBySeq<I> {
    pub(crate) fn new(mut runs: Vec<I>) -> Result<Self, StoreError> {
        let mut heads = BinaryHeap::with_capacity(runs.len());
        for (i, run) in runs.iter_mut().enumerate() {
            if let Some(first) = run.next() {
                let (seq, id) = first?;
                heads.push(Reverse((seq, i, id)));
            }
        }
        Ok(Self { runs, heads })
    }
}

impl<I: Iterator<Item = Result<(Seq, EntryId), StoreError>>> Iterator for MergeBySeq<I> {
    type Item = Result<(Seq, usize, EntryId), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let Reverse((seq, run, id)) = self.heads.pop()?;
        match self.runs[run].next() {
            Some(Ok((next, next_id))) => self.heads.push(Reverse((next, run, next_id))),
            Some(Err(e)) => return Some(Err(e)),
            None => {}
        }
        Some(Ok((seq, run, id)))
    }
}

/// [`Store::log_since_in`] for a store without a namespace index: pages
/// through the whole log, then reads the data of the records kept.
fn scan_log_in<S: Store + ?Sized>(
    store: &S,
    namespaces: &[Namespace],
    after: Seq,
    limit: usize,
    data_budget: Option<usize>,
) -> Result<Vec<LogRecord>, StoreError> {
    const PAGE: usize = 4096;
    let wanted: HashSet<&Namespace> = namespaces.iter().collect();
    let mut records = Vec::new();
    let mut at = after;
    while records.len() < limit && !wanted.is_empty() {
        let page = store.log_since(at, PAGE, None)?;
        let Some(last) = page.last() else { break };
        at = last.seq;
        records.extend(page.into_iter().filter(|r| wanted.contains(&r.namespace)));
    }
    records.truncate(limit);
    let Some(budget) = data_budget else {
        return Ok(records);
    };
    let mut bytes = 0;
    let mut kept = 0;
    for r in records.iter_mut() {
        let data = store
            .get(&r.namespace, &[r.id])?
            .pop()
            .flatten()
            .ok_or_else(|| StoreError::Corrupt {
                what: "log",
                detail: format!("no entry for the record at seq {}", r.seq),
            })?;
        if kept > 0 && bytes + data.len() > budget {
            break;
        }
        bytes += data.len();
        r.data = Some(data);
        kept += 1;
    }
    records.truncate(kept);
    Ok(records)
}

/// [`Store::doc_records`] for a store without a per-document index: reads
/// the namespace's whole log with its bodies, then picks the range.
pub(crate) fn scan_doc_records<S: Store + ?Sized>(
    store: &S,
    ns: &Namespace,
    range: DocRange<'_>,
    limit: usize,
) -> Result<Vec<DocRecord>, StoreError> {
    const PAGE: usize = 4096;
    const PAGE_BYTES: usize = 8 << 20;
    let only = std::slice::from_ref(ns);
    let mut records = Vec::new();
    let mut at = 0;
    loop {
        let page = store.log_since_in(only, at, PAGE, Some(PAGE_BYTES))?;
        let Some(last) = page.last() else { break };
        at = last.seq;
        records.extend(page.into_iter().filter_map(|r| {
            let record = DocRecord::of(r.seq, r.id, r.data.as_ref()?)?;
            let wanted = range.only.is_none_or(|d| d == record.doc)
                && range
                    .after
                    .is_none_or(|(doc, seq)| record.position() > doc_position(doc, seq));
            wanted.then_some(record)
        }));
    }
    records.sort_unstable_by(|a, b| a.position().cmp(&b.position()));
    records.truncate(limit);
    Ok(records)
}

/// Encodes a cursor record as stored: incarnation ‖ seq (u64 BE) ‖ id ‖
/// updated_ms (u64 BE) ‖ scope (u64 BE).
pub(crate) fn encode_cursor(r: &CursorRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(CURSOR_LEN);
    out.extend_from_slice(&r.cursor.incarnation.0);
    out.extend_from_slice(&r.cursor.seq.to_be_bytes());
    out.extend_from_slice(&r.cursor.id_at_seq.0);
    out.extend_from_slice(&r.updated_ms.to_be_bytes());
    out.extend_from_slice(&r.scope.to_be_bytes());
    out
}

const CURSOR_LEN: usize = 16 + 8 + 32 + 8 + 8;
/// Cursors written before `updated_ms` and `scope` were recorded.
const LEGACY_CURSOR_LEN: usize = 16 + 8 + 32;

pub(crate) fn decode_cursor(bytes: &[u8]) -> Result<CursorRecord, StoreError> {
    let corrupt = || StoreError::Corrupt {
        what: "cursors",
        detail: format!("cursor value of {} bytes", bytes.len()),
    };
    if bytes.len() != CURSOR_LEN && bytes.len() != LEGACY_CURSOR_LEN {
        return Err(corrupt());
    }
    let u64_at = |at: usize| -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(
            bytes[at..at + 8].try_into().map_err(|_| corrupt())?,
        ))
    };
    let cursor = PeerCursor {
        incarnation: Incarnation(bytes[..16].try_into().map_err(|_| corrupt())?),
        seq: u64_at(16)?,
        id_at_seq: EntryId(bytes[24..56].try_into().map_err(|_| corrupt())?),
    };
    let (updated_ms, scope) = match bytes.len() {
        CURSOR_LEN => (u64_at(56)?, u64_at(64)?),
        _ => (0, 0),
    };
    Ok(CursorRecord {
        cursor,
        scope,
        updated_ms,
    })
}
