//! Where a pull's entries go: collected into chunks within the peer's byte
//! budget, verified, and committed in log order, one chunk verifying while
//! the one before commits, each advanced cursor in the same batch as the
//! entries before it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::budget::{BytePermit, PeerBudget};
use super::env::Env;
use super::error::SyncError;
use super::inflight::Fetching;
use super::local::Local;
use super::metrics::PeerHandles;
use super::peer::PeerError;
use super::status::PeerStatus;
use crate::entry::{EntryId, RejectReason, Rejection};
use crate::error::Error;
use crate::store::{Appended, CursorRecord, CursorUpdate, PeerCursor, Seq};

/// Entries on their way into the store: collected up to a chunk, verified,
/// then committed while the next chunk is collected. Holds permits for every
/// byte it keeps.
pub(super) struct Sink {
    local: Arc<dyn Local>,
    budget: PeerBudget,
    report: Report,
    node: String,
    scope: u64,
    chunk_bytes: usize,
    pending: Vec<(Bytes, Bytes)>,
    permit: BytePermit,
    inflight: VecDeque<Commit>,
    /// Claims on entries pending here (see [`super::inflight`]).
    claims: Vec<Fetching>,
    /// Entries taken so far.
    added: u64,
    /// Resolves once the newest chunk in flight is committed; dropped
    /// unresolved when it fails.
    last_done: Option<oneshot::Receiver<()>>,
    /// The peer log position stored so far.
    applied: Seq,
    progressed: bool,
}

/// An entry a peer logged but sent wrong: the peer's data, not this
/// replica's policy, is at fault.
fn is_fatal(r: &Rejection) -> bool {
    matches!(r.reason, RejectReason::IdMismatch | RejectReason::Malformed)
}

fn data_loss(rejections: &[(usize, Rejection)]) -> SyncError {
    let first = rejections.iter().map(|(_, r)| r).find(|r| is_fatal(r));
    PeerError::DataLoss(first.map_or_else(String::new, |r| r.to_string())).into()
}

/// Chunks verified or committed at once by one pull.
const COMMIT_DEPTH: usize = 2;

struct Commit {
    task: AbortOnDropHandle<Result<Vec<Appended>, SyncError>>,
    /// Claims on entries this commit (and those before it) store; reported
    /// stored when it lands, failed if it is dropped.
    fetching: Vec<Fetching>,
    /// Released when the commit is done.
    _permit: BytePermit,
    cursor: Option<(PeerCursor, Seq)>,
}

/// Where a sink reports progress: the peer's metrics and status.
pub(super) struct Report {
    pub handles: PeerHandles,
    pub inflight_gauge: prometheus::IntGauge,
    pub status: Arc<Mutex<PeerStatus>>,
    /// When this replica last had everything up to the peer's head.
    pub caught_up_at: Arc<Mutex<Instant>>,
    pub env: Env,
}

impl Sink {
    /// A sink for entries from `node`, whose cursor advances under the
    /// filter digest `scope`, from `applied`.
    pub(super) fn new(
        local: Arc<dyn Local>,
        budget: PeerBudget,
        report: Report,
        node: String,
        scope: u64,
        applied: Seq,
    ) -> Self {
        Self {
            chunk_bytes: (budget.cap() / 4).max(1),
            local,
            budget,
            report,
            node,
            scope,
            pending: Vec::new(),
            permit: BytePermit::empty(),
            inflight: VecDeque::new(),
            claims: Vec::new(),
            added: 0,
            last_done: None,
            applied,
            progressed: false,
        }
    }

    /// Entries taken so far.
    pub(super) fn added(&self) -> u64 {
        self.added
    }

    /// Whether a commit of this sink has landed.
    pub(super) fn progressed(&self) -> bool {
        self.progressed
    }

    /// Takes one received entry. Waits for budget when needed, after
    /// storing everything held, so a waiting worker holds nothing.
    pub(super) async fn add(&mut self, id: EntryId, data: Bytes) -> Result<(), SyncError> {
        self.report.handles.bytes.inc_by(data.len() as u64);
        let permit = match self.budget.try_acquire(data.len()) {
            Some(p) => p,
            None => {
                self.seal(None, 0).await?;
                self.drain().await?;
                self.budget.acquire(data.len()).await
            }
        };
        self.permit.merge(permit);
        self.added += 1;
        self.report
            .inflight_gauge
            .set(self.budget.total_in_use() as i64);
        self.pending.push((Bytes::copy_from_slice(&id.0), data));
        if self.permit.bytes() >= self.chunk_bytes {
            self.seal(None, 0).await?;
        }
        Ok(())
    }

    /// Starts verifying and committing what is pending, with `cursor` (and
    /// the peer's head then) when the batch is complete. Up to
    /// [`COMMIT_DEPTH`] chunks are in flight: one verifies while the one
    /// before commits. Commits land in log order, and none lands after one
    /// that failed, so a cursor never passes entries that were not stored.
    pub(super) async fn seal(
        &mut self,
        cursor: Option<PeerCursor>,
        head_seq: Seq,
    ) -> Result<(), SyncError> {
        if self.pending.is_empty() && cursor.is_none() && self.claims.is_empty() {
            return Ok(());
        }
        while self.inflight.len() >= COMMIT_DEPTH {
            self.finish_oldest().await?;
        }
        let items = std::mem::take(&mut self.pending);
        let permit = std::mem::replace(&mut self.permit, BytePermit::empty());
        let update = cursor.map(|c| CursorUpdate {
            peer: self.node.clone(),
            record: CursorRecord {
                cursor: c,
                scope: self.scope,
                updated_ms: self.report.env.unix_ms(),
            },
        });
        // Only a chunk still in flight is waited for.
        let previous = self.last_done.take().filter(|_| !self.inflight.is_empty());
        let (done, done_rx) = oneshot::channel();
        self.last_done = Some(done_rx);
        let local = self.local.clone();
        let task = tokio::spawn(async move {
            let appended = match previous {
                // Nothing to overlap with: verify and commit in one go.
                None => {
                    let (rejections, appended) =
                        local.verify_and_ingest(items, update, is_fatal).await?;
                    match appended {
                        Some(appended) => appended,
                        None => return Err(data_loss(&rejections)),
                    }
                }
                // Verify while the chunk before commits.
                Some(previous) => {
                    let (verified, rejections) = local.verify(items).await?;
                    if rejections.iter().any(|(_, r)| is_fatal(r)) {
                        return Err(data_loss(&rejections));
                    }
                    if previous.await.is_err() {
                        return Err(SyncError::Store(Error::Internal(
                            "an earlier commit of this pull failed".into(),
                        )));
                    }
                    local.ingest(verified, update).await?
                }
            };
            let _ = done.send(());
            Ok(appended)
        });
        self.inflight.push_back(Commit {
            task: AbortOnDropHandle::new(task),
            fetching: std::mem::take(&mut self.claims),
            _permit: permit,
            cursor: cursor.map(|c| (c, head_seq)),
        });
        Ok(())
    }

    pub(super) fn has_claims(&self) -> bool {
        !self.claims.is_empty()
    }

    /// The peer's log passed `cursor` with nothing to store: lag and status
    /// move on; the cursor is persisted later.
    pub(super) fn advance(&mut self, cursor: PeerCursor, head_seq: Seq) {
        self.applied = cursor.seq;
        {
            let mut status = self.report.status.lock().unwrap_or_else(|e| e.into_inner());
            status.cursor_seq = cursor.seq;
            status.peer_head_seq = head_seq;
            status.last_success = Some(self.report.env.now());
        }
        self.record_lag(head_seq);
    }

    /// Holds claims on entries added to this sink; they are reported stored
    /// with the commit that stores those entries.
    pub(super) fn claimed(&mut self, claims: Fetching) {
        if !claims.is_empty() {
            self.claims.push(claims);
        }
    }

    /// Ends a session that stops of its own accord: the cursor it moved in
    /// memory only (`unsaved`, with the peer's head) is sealed, then
    /// everything in flight lands.
    pub(super) async fn close(
        &mut self,
        unsaved: Option<(PeerCursor, Seq)>,
    ) -> Result<(), SyncError> {
        if let Some((cursor, head_seq)) = unsaved {
            self.seal(Some(cursor), head_seq).await?;
        }
        self.drain().await
    }

    /// Waits for every chunk in flight and records their progress.
    pub(super) async fn drain(&mut self) -> Result<(), SyncError> {
        while !self.inflight.is_empty() {
            self.finish_oldest().await?;
        }
        Ok(())
    }

    /// Waits for the oldest chunk in flight and records its progress.
    async fn finish_oldest(&mut self) -> Result<(), SyncError> {
        let Some(commit) = self.inflight.pop_front() else {
            return Ok(());
        };
        let Commit {
            task,
            fetching,
            _permit: permit,
            cursor,
        } = commit;
        let appended = task
            .await
            .map_err(|e| Error::Internal(format!("store task failed: {e}")))??;
        drop(permit);
        fetching.into_iter().for_each(Fetching::stored);
        self.report
            .inflight_gauge
            .set(self.budget.total_in_use() as i64);
        let stored = appended
            .iter()
            .filter(|a| matches!(a, Appended::Stored(_)))
            .count() as u64;
        self.report.handles.entries.inc_by(stored);
        self.progressed = true;
        let now = self.report.env.now();
        let mut status = self.report.status.lock().unwrap_or_else(|e| e.into_inner());
        status.entries_pulled += stored;
        if let Some((cursor, head_seq)) = cursor {
            self.applied = cursor.seq;
            status.cursor_seq = cursor.seq;
            status.peer_head_seq = head_seq;
            status.last_success = Some(now);
            drop(status);
            self.record_lag(head_seq);
        }
        Ok(())
    }

    /// An idle peer's heartbeat: refreshes lag and liveness. Returns whether
    /// this replica has everything up to the peer's head.
    pub(super) fn heartbeat(&mut self, head_seq: Seq) -> bool {
        {
            let mut status = self.report.status.lock().unwrap_or_else(|e| e.into_inner());
            status.peer_head_seq = head_seq;
            if head_seq <= self.applied {
                status.last_success = Some(self.report.env.now());
            }
        }
        self.record_lag(head_seq)
    }

    fn record_lag(&self, head_seq: Seq) -> bool {
        let lag = head_seq.saturating_sub(self.applied);
        let mut caught_up_at = self
            .report
            .caught_up_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if lag == 0 {
            *caught_up_at = Instant::now();
            self.report
                .handles
                .last_success
                .set(self.report.env.unix_ms() as f64 / 1000.0);
        }
        self.report.handles.lag_entries.set(lag as i64);
        self.report
            .handles
            .lag_seconds
            .set(caught_up_at.elapsed().as_secs_f64());
        lag == 0
    }
}
