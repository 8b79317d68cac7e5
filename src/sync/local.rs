//! The local side of a sync: what the engine needs from the store it syncs,
//! whether that is a replica's core, a device's store or a test's. A pull
//! checks and commits what a peer sends, each batch with the cursor that
//! passed it; a push reads the local log and the bodies a peer lacks.
//!
//! Every method that touches storage is async and keeps the store's
//! blocking calls off the executor.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use crate::entry::{EntryId, Namespace, Rejection, VerifiedEntry};
use crate::error::Result;
use crate::store::{Appended, CursorRecord, CursorUpdate, Incarnation, LogRecord, Seq, StoreStats};
use crate::sync::reconcile::{Part, Session};

pub use crate::policy::Checked;

/// Whether a rejection fails the whole batch it is in.
pub type Fatal = for<'a> fn(&'a Rejection) -> bool;

/// Who the local side is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalIdentity {
    /// New for every process start: a peer that reports this instance is
    /// this very process, reached through some address.
    pub instance: [u8; 16],
    /// One life of the local log; cursors into it name it.
    pub incarnation: Incarnation,
    /// The node name this side confirms what it pulled under (see
    /// `Peer::confirm`); `None` for a side that holds no replica's share of
    /// a write (a device).
    pub node: Option<String>,
}

/// The local side of the engine. See the module docs.
#[async_trait]
pub trait Local: Send + Sync + 'static {
    fn identity(&self) -> LocalIdentity;

    /// Entries held and where the local log ends.
    fn stats(&self) -> StoreStats;

    /// A digest of what decides which entries are stored here. A cursor
    /// moved under another digest may have passed entries now wanted.
    fn policy_digest(&self) -> u64;

    /// The most ids this side asks for or answers in one request.
    fn max_ids_per_request(&self) -> usize;

    /// The head of the local log, as entries are stored.
    fn subscribe(&self) -> watch::Receiver<Seq>;

    /// The persisted cursor under `key` (a peer's node identity, or a
    /// push's key, see [`super::pusher`]).
    async fn cursor(&self, key: &str) -> Result<Option<CursorRecord>>;

    /// The ids of `ids` not held here.
    async fn missing(&self, ns: Namespace, ids: Vec<EntryId>) -> Result<Vec<EntryId>>;

    /// Checks `(claimed id, data)` pairs as entries from a peer.
    async fn verify(&self, items: Vec<(Bytes, Bytes)>) -> Result<Checked>;

    /// Stores checked entries from a peer, with `cursor`, in one atomic
    /// batch. A cursor alone is stored too.
    async fn ingest(
        &self,
        entries: Vec<VerifiedEntry>,
        cursor: Option<CursorUpdate>,
    ) -> Result<Vec<Appended>>;

    /// [`Self::verify`] then [`Self::ingest`]: the entries that pass are
    /// stored with `cursor`, unless a rejection is `fatal`, in which case
    /// nothing is. Returns the rejections, and what the store did when it
    /// was asked.
    async fn verify_and_ingest(
        &self,
        items: Vec<(Bytes, Bytes)>,
        cursor: Option<CursorUpdate>,
        fatal: Fatal,
    ) -> Result<(Vec<(usize, Rejection)>, Option<Vec<Appended>>)> {
        let (verified, rejections) = self.verify(items).await?;
        if rejections.iter().any(|(_, r)| fatal(r)) {
            return Ok((rejections, None));
        }
        let appended = match verified.is_empty() && cursor.is_none() {
            true => Vec::new(),
            false => self.ingest(verified, cursor).await?,
        };
        Ok((rejections, Some(appended)))
    }

    /// Local log records after `after`, in order: up to `limit` read, and
    /// with `namespaces` only theirs returned. With `data`, each record
    /// carries its entry's data, within that many bytes (at least one
    /// record); without, ids only.
    async fn log_since(
        &self,
        after: Seq,
        limit: usize,
        namespaces: Option<Vec<Namespace>>,
        data: Option<usize>,
    ) -> Result<LogRead>;

    /// The id logged at `seq`, if any.
    async fn log_at(&self, seq: Seq) -> Result<Option<EntryId>>;

    /// The data of each id, if held.
    async fn get(&self, ns: Namespace, ids: Vec<EntryId>) -> Result<Vec<Option<Bytes>>>;

    /// The check of the key the local store keeps range fingerprints
    /// under (see [`crate::store::ranges::FingerprintKey::check`]); `None`:
    /// it keeps none and does not reconcile.
    fn reconcile_key(&self) -> Option<u64>;

    /// Opens a reconciliation session (`incoming: None`) or answers the
    /// peer's round, over the local store's range fingerprints.
    async fn reconcile(
        &self,
        session: Session,
        incoming: Option<Vec<Part>>,
    ) -> Result<(Session, Vec<Part>)>;
}

/// A read of the local log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRead {
    /// The records asked for, in log order.
    pub records: Vec<LogRecord>,
    /// The last position the read passed and the id logged there (records
    /// of other namespaces included); `None` when it passed nothing.
    pub through: Option<(Seq, EntryId)>,
}

/// How far a read of the log passed: its last record when it filled
/// `limit` or may have stopped at a data budget (`with_data`); else
/// everything up to `head`, the head seen before the read (or its last
/// record, if newer). `log_at` names the id at a seq.
pub async fn passed<F, Fut>(
    records: &[LogRecord],
    limit: usize,
    with_data: bool,
    after: Seq,
    head: Seq,
    log_at: F,
) -> Result<Option<(Seq, EntryId)>>
where
    F: FnOnce(Seq) -> Fut,
    Fut: std::future::Future<Output = Result<Option<EntryId>>>,
{
    let last = records.last().map(|r| (r.seq, r.id));
    match last {
        Some((seq, _)) if with_data || records.len() >= limit || seq >= head => Ok(last),
        _ if head > after => Ok(log_at(head).await?.map(|id| (head, id)).or(last)),
        _ => Ok(last),
    }
}

/// Log records grouped by namespace, each group in log order, with the
/// data each carried.
pub fn by_namespace(records: Vec<LogRecord>) -> BTreeMap<Namespace, Vec<(EntryId, Option<Bytes>)>> {
    let mut out: BTreeMap<Namespace, Vec<(EntryId, Option<Bytes>)>> = BTreeMap::new();
    for r in records {
        out.entry(r.namespace).or_default().push((r.id, r.data));
    }
    out
}
