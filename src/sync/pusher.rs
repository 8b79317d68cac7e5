//! The push direction: moves the local side's entries to a peer. It reads
//! the local log from a persisted push cursor, asks the peer which of those
//! entries it lacks, sends just those, and persists the cursor once the
//! peer has acknowledged everything before it.
//!
//! ```text
//!   connect ──► resume ──► push batches ──► at the head ──► wait for records ─┐
//!      ▲                        ▲───────────────────────────────────────────────┘
//!      └────── backoff ◄────── any error (live pushes; a push to the head returns it)
//! ```
//!
//! The cursor is a position in the *local* log, stored under
//! `push:<peer node>` with the namespace filter's digest. A cursor from
//! another incarnation, under another filter, or that no longer matches the
//! local log starts the push over; the peer's missing-ids answers keep that
//! cheap, so no body the peer holds is sent again. A push stopped half way
//! reads again at most the batch it was in. Entries of a namespace the peer
//! answers it does not serve stay here: the push moves past them and counts
//! them (`PushProgress::unserved`).

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::SyncSettings;
use super::backoff::Backoff;
use super::env::Env;
use super::error::SyncError;
use super::local::{Local, by_namespace};
use super::metrics::SyncMetrics;
use super::peer::{Peer, PeerError};
use crate::entry::{EntryId, Namespace, PutOutcome};
use crate::error::Error;
use crate::log::Head;
use crate::store::{CursorRecord, CursorUpdate, PeerCursor, Seq};

/// Log records read per batch.
const READ_RECORDS: usize = 4096;
/// Entry data read per batch, at most (at least one record): the log is
/// read with its bodies, in order, rather than looked up by id afterwards.
const READ_DATA_BYTES: usize = 4 << 20;
/// Put calls in flight at once.
const PUTS_IN_FLIGHT: usize = 4;
/// Entry data per put call, at most (and at most half the peer's message
/// limit).
const PUT_DATA_BYTES: usize = 1 << 20;

/// What a push did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushProgress {
    /// The peer's node identity, once it answered.
    pub node: String,
    /// The local log position pushed through.
    pub through: Seq,
    /// The local head when last looked at.
    pub head: Seq,
    /// Log records read, in the push's namespaces.
    pub records: u64,
    /// Bodies sent.
    pub sent: u64,
    /// Entries the peer newly stored.
    pub stored: u64,
    /// Entries the peer already held when they arrived.
    pub duplicate: u64,
    /// Entries the peer refused (its policy); the push moves past them.
    pub rejected: u64,
    /// Why the peer refused the last entry it refused.
    pub last_rejection: Option<String>,
    /// Entries not sent because the peer does not serve their namespace;
    /// the push moves past them.
    pub unserved: u64,
}

/// A push worker for one peer.
pub struct Pusher {
    pub local: Arc<dyn Local>,
    pub peer: Arc<dyn Peer>,
    pub settings: watch::Receiver<SyncSettings>,
    pub metrics: Arc<SyncMetrics>,
    pub env: Env,
    pub cancel: CancellationToken,
    /// Progress, for whoever shows it.
    pub progress: watch::Sender<PushProgress>,
}

/// A push session with one peer node.
struct Session {
    head: Head,
    key: String,
    scope: u64,
    namespaces: Option<Vec<Namespace>>,
    pos: Seq,
    handles: super::metrics::PeerHandles,
}

impl Pusher {
    /// Pushes everything up to the local head as it is when the push
    /// starts (or further), then returns what it did.
    pub async fn push_to_head(&self) -> Result<PushProgress, SyncError> {
        let mut session = self.connect().await?;
        let target = self.local.stats().head_seq;
        tokio::select! {
            _ = self.cancel.cancelled() => return Err(Error::ShuttingDown.into()),
            pushed = self.push_through(&mut session, target) => pushed?,
        };
        Ok(self.progress.borrow().clone())
    }

    /// Pushes, then follows the local log and pushes what is stored, until
    /// cancelled; backs off and reconnects after errors.
    pub async fn run(self) {
        let mut backoff = {
            let s = self.settings.borrow();
            Backoff::new(s.backoff_initial, s.backoff_max)
        };
        let cancel = self.cancel.clone();
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.live(&mut backoff) => r,
            };
            // A session ends without error when the namespace filter
            // changed: the next one resumes under the new filter.
            let Err(e) = result else { continue };
            let delay = backoff.next_delay(&self.env);
            tracing::info!(peer = %self.peer.address(), error = %e, retry_in = ?delay, "push ended");
            self.metrics.peer(self.peer.address()).error(e.kind());
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One live session: pushes what there is, then what follows, until
    /// the namespace filter changes.
    async fn live(&self, backoff: &mut Backoff) -> Result<(), SyncError> {
        let mut settings = self.settings.clone();
        let mut session = self.connect().await?;
        let filter = settings.borrow_and_update().namespaces.clone();
        let mut head = self.local.subscribe();
        let mut settings_open = true;
        loop {
            let target = self.local.stats().head_seq;
            if self.push_through(&mut session, target).await? {
                backoff.reset();
            }
            let pos = session.pos;
            tokio::select! {
                changed = head.wait_for(|h| *h > pos) => {
                    changed.map_err(|_| Error::ShuttingDown)?;
                }
                changed = settings.changed(), if settings_open => {
                    settings_open = changed.is_ok();
                    if settings_open && settings.borrow_and_update().namespaces != filter {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn connect(&self) -> Result<Session, SyncError> {
        let settings = self.settings.borrow().clone();
        let head = tokio::time::timeout(settings.connect_timeout, self.peer.head())
            .await
            .map_err(|_| PeerError::Timeout("Head"))??;
        let me = self.local.identity();
        if head.instance == me.instance {
            return Err(PeerError::Refused {
                code: "self".into(),
                message: "the address leads back to this store".into(),
            }
            .into());
        }
        let node = match head.node.is_empty() {
            true => self.peer.address().to_owned(),
            false => head.node.clone(),
        };
        let key = format!("push:{node}");
        let scope = settings.scope();
        let pos = match self.local.cursor(&key).await? {
            Some(r)
                if r.cursor.incarnation == me.incarnation
                    && r.scope == scope
                    && r.cursor.seq <= self.local.stats().head_seq
                    && self.local.log_at(r.cursor.seq).await? == Some(r.cursor.id_at_seq) =>
            {
                r.cursor.seq
            }
            Some(_) => {
                tracing::info!(peer = %node, "push cursor does not match the local log; pushing from the start");
                0
            }
            None => 0,
        };
        self.progress.send_modify(|p| {
            p.node = node.clone();
            p.through = pos;
            p.head = self.local.stats().head_seq;
        });
        Ok(Session {
            handles: self.metrics.peer(&node),
            head,
            key,
            scope,
            namespaces: (!settings.namespaces.is_empty()).then_some(settings.namespaces),
            pos,
        })
    }

    /// Pushes the local log through `until` (or further), in a pipeline:
    /// the next batch is read, its missing ids asked and its bodies read
    /// while the puts of the batch before are in flight. The cursor is
    /// persisted as each read batch is acknowledged in full. Returns whether
    /// it read anything.
    async fn push_through(&self, s: &mut Session, until: Seq) -> Result<bool, SyncError> {
        let per_request = s
            .head
            .max_ids_per_request
            .min(self.local.max_ids_per_request())
            .clamp(1, 4096);
        let data_per_put = PUT_DATA_BYTES.min(s.head.max_message_bytes / 2).max(1);
        let (tx, rx) = mpsc::channel::<Step>(PUTS_IN_FLIGHT);
        let from = s.pos;
        let namespaces = s.namespaces.clone();
        let produce = async move {
            let mut pos = from;
            // Namespaces the peer answered it does not serve.
            let mut unserved: HashSet<Namespace> = HashSet::new();
            while pos < until {
                let read = self
                    .local
                    .log_since(pos, READ_RECORDS, namespaces.clone(), Some(READ_DATA_BYTES))
                    .await?;
                let Some((seq, id)) = read.through else { break };
                let mut passed = Passed {
                    seq,
                    id,
                    records: read.records.len() as u64,
                    unserved: 0,
                };
                'namespaces: for (ns, entries) in by_namespace(read.records) {
                    if unserved.contains(&ns) {
                        passed.unserved += entries.len() as u64;
                        continue;
                    }
                    for (i, chunk) in entries.chunks(per_request).enumerate() {
                        let ids = chunk.iter().map(|(id, _)| *id).collect();
                        let missing: HashSet<EntryId> = match self.missing(&ns, ids).await {
                            Ok(missing) => missing.into_iter().collect(),
                            Err(SyncError::Peer(PeerError::NamespaceNotServed(why))) => {
                                tracing::info!(
                                    peer = %self.peer.address(), namespace = %ns, reason = %why,
                                    "the peer does not serve this namespace; its entries stay here"
                                );
                                passed.unserved += (entries.len() - i * per_request) as u64;
                                unserved.insert(ns);
                                continue 'namespaces;
                            }
                            Err(e) => return Err(e),
                        };
                        let lacked = chunk.iter().filter(|(id, _)| missing.contains(id)).cloned();
                        for put in self.bodies(&ns, lacked, data_per_put).await? {
                            if tx.send(Step::Put(put)).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                }
                if tx.send(Step::Passed(passed)).await.is_err() {
                    return Ok(());
                }
                pos = seq;
            }
            Ok::<_, SyncError>(())
        };
        let consume = async {
            let mut steps = ReceiverStream::new(rx)
                .map(|step| async move {
                    match step {
                        Step::Put(batch) => self.put(batch).await.map(Done::Put),
                        Step::Passed(passed) => Ok(Done::Passed(passed)),
                    }
                })
                .buffered(PUTS_IN_FLIGHT);
            let mut passed = None;
            while let Some(done) = steps.next().await {
                match done? {
                    Done::Put((sent, stored, duplicate, rejected, why)) => {
                        s.handles.pushed.inc_by(stored);
                        self.progress.send_modify(|p| {
                            p.sent += sent;
                            p.stored += stored;
                            p.duplicate += duplicate;
                            p.rejected += rejected;
                            if why.is_some() {
                                p.last_rejection = why;
                            }
                        });
                    }
                    // Every put before it is acknowledged.
                    Done::Passed(through) => {
                        self.persist(s, through.seq, through.id).await?;
                        passed = Some(through.seq);
                        self.progress.send_modify(|p| {
                            p.through = through.seq;
                            p.head = self.local.stats().head_seq;
                            p.records += through.records;
                            p.unserved += through.unserved;
                        });
                    }
                }
            }
            Ok::<_, SyncError>(passed)
        };
        let ((), passed) = tokio::try_join!(produce, consume)?;
        if let Some(seq) = passed {
            s.pos = seq;
        }
        Ok(passed.is_some())
    }

    /// The ids of `ids` the peer lacks.
    async fn missing(&self, ns: &Namespace, ids: Vec<EntryId>) -> Result<Vec<EntryId>, SyncError> {
        let timeout = self.settings.borrow().session_idle_timeout;
        Ok(tokio::time::timeout(timeout, self.peer.missing(ns, ids))
            .await
            .map_err(|_| PeerError::Timeout("MissingIds"))??)
    }

    /// Stores the push cursor at `seq`, where `id` is logged.
    async fn persist(&self, s: &Session, seq: Seq, id: EntryId) -> Result<(), SyncError> {
        let update = CursorUpdate {
            peer: s.key.clone(),
            record: CursorRecord {
                cursor: PeerCursor {
                    incarnation: self.local.identity().incarnation,
                    seq,
                    id_at_seq: id,
                },
                scope: s.scope,
                updated_ms: self.env.unix_ms(),
            },
        };
        self.local.ingest(Vec::new(), Some(update)).await?;
        Ok(())
    }

    /// `entries` in put calls of at most `data_per_put` bytes, with the
    /// data of any that came without it looked up.
    async fn bodies(
        &self,
        ns: &Namespace,
        entries: impl Iterator<Item = (EntryId, Option<Bytes>)>,
        data_per_put: usize,
    ) -> Result<Vec<Vec<(EntryId, Bytes)>>, SyncError> {
        let mut entries: Vec<(EntryId, Option<Bytes>)> = entries.collect();
        let without: Vec<EntryId> = entries
            .iter()
            .filter(|(_, data)| data.is_none())
            .map(|(id, _)| *id)
            .collect();
        if !without.is_empty() {
            let mut found = self.local.get(ns.clone(), without).await?.into_iter();
            for (_, data) in entries.iter_mut().filter(|(_, data)| data.is_none()) {
                *data = found.next().flatten();
            }
        }
        let mut puts: Vec<Vec<(EntryId, Bytes)>> = Vec::new();
        let mut current: Vec<(EntryId, Bytes)> = Vec::new();
        let mut bytes = 0;
        for (id, data) in entries {
            let data = data.ok_or_else(|| {
                Error::Internal(format!("{id} is logged here but its data is not held"))
            })?;
            if !current.is_empty() && bytes + data.len() > data_per_put {
                puts.push(std::mem::take(&mut current));
                bytes = 0;
            }
            bytes += data.len();
            current.push((id, data));
        }
        if !current.is_empty() {
            puts.push(current);
        }
        Ok(puts)
    }

    /// One put call.
    async fn put(&self, batch: Vec<(EntryId, Bytes)>) -> Result<PutDone, SyncError> {
        let (timeout, concern) = {
            let s = self.settings.borrow();
            (s.session_idle_timeout, s.write_concern)
        };
        let sent = batch.len() as u64;
        let outcomes = tokio::time::timeout(timeout, self.peer.put(batch, concern))
            .await
            .map_err(|_| PeerError::Timeout("PutEntries"))??;
        if outcomes.len() as u64 != sent {
            return Err(PeerError::DataLoss(format!(
                "sent {sent} entries, got {} outcomes",
                outcomes.len()
            ))
            .into());
        }
        let (mut stored, mut duplicate, mut rejected, mut why) = (0, 0, 0, None);
        for o in &outcomes {
            match o {
                PutOutcome::Stored => stored += 1,
                PutOutcome::Duplicate => duplicate += 1,
                PutOutcome::Rejected(r) => {
                    rejected += 1;
                    tracing::debug!(peer = %self.peer.address(), reason = %r, "the peer refused a pushed entry");
                    why = Some(r.to_string());
                }
            }
        }
        Ok((sent, stored, duplicate, rejected, why))
    }
}

/// What one put call did: `(sent, stored, duplicate, rejected, the last
/// rejection's reason)`.
type PutDone = (u64, u64, u64, u64, Option<String>);

/// Work handed from the push's reading side to its sending side, in order.
enum Step {
    Put(Vec<(EntryId, Bytes)>),
    /// Every put before this covers the log through here.
    Passed(Passed),
}

/// A read batch pushed in full.
struct Passed {
    /// The last position it passed and the id logged there.
    seq: Seq,
    id: EntryId,
    /// Records of the push's namespaces it held.
    records: u64,
    /// Of those, records in namespaces the peer does not serve.
    unserved: u64,
}

/// A step done.
enum Done {
    Put(PutDone),
    Passed(Passed),
}
