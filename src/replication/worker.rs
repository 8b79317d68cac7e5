//! One pull worker per peer: follows the peer's log and stores what is
//! missing here, each batch committed together with the advanced cursor.
//!
//! A session asks the peer for its head (which also tells whether the "peer"
//! is this replica), then Watches from the persisted cursor. From the start of
//! a peer's log (bootstrap) records carry their data; once caught up the
//! worker reconnects for ids only and fetches just the bodies it lacks, so in
//! a mesh each body crosses to each replica about once. Sessions end on error
//! and restart after a full-jitter backoff; cancellation stops the worker at
//! any await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tonic::Code;
use tonic::transport::Channel;

use super::backoff::Backoff;
use super::settings::ReplicationSettings;
use super::status::PeerStatus;
use crate::client::StoreClient;
use crate::entry::{EntryId, Namespace, RejectReason};
use crate::error::Error;
use crate::metrics::peer::PeerHandles;
use crate::proto;
use crate::replica::Replica;
use crate::service::convert;
use crate::store::{CursorUpdate, Incarnation, PeerCursor};

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("cannot reach the peer: {0}")]
    Connect(String),
    #[error("the peer did not answer {0} in time")]
    Timeout(&'static str),
    #[error("the peer answered {}: {}", .0.code(), .0.message())]
    Rpc(tonic::Status),
    #[error("the peer sent corrupt data: {0}")]
    DataLoss(String),
    #[error("storing pulled entries failed: {0}")]
    Store(#[from] Error),
    #[error("the peer closed the stream")]
    Closed,
}

impl PullError {
    fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Timeout(_) => "timeout",
            Self::Rpc(s) if s.code() == Code::DataLoss => "data_loss",
            Self::Rpc(s) if s.code() == Code::Unavailable => "connect",
            Self::Rpc(_) => "rpc",
            Self::DataLoss(_) => "data_loss",
            Self::Store(_) => "store",
            Self::Closed => "closed",
        }
    }
}

impl From<tonic::Status> for PullError {
    fn from(s: tonic::Status) -> Self {
        Self::Rpc(s)
    }
}

enum SessionEnd {
    /// Caught up after a bootstrap: reconnect for ids only.
    Reconnect,
    /// The peer is this replica.
    IsSelf,
}

pub struct PeerWorker {
    pub peer: String,
    pub replica: Arc<Replica>,
    pub settings: Arc<ReplicationSettings>,
    pub metrics: PeerHandles,
    pub status: Arc<Mutex<PeerStatus>>,
    pub cancel: CancellationToken,
}

/// A log batch fetched and verified, ready to store.
struct Prepared {
    verified: Vec<crate::policy::VerifiedEntry>,
    next: PeerCursor,
    head_seq: u64,
    bytes: usize,
}

/// A batch being stored.
struct Commit {
    task: AbortOnDropHandle<Result<Vec<crate::store::Appended>, Error>>,
    next: PeerCursor,
    head_seq: u64,
    bytes: usize,
}

/// Progress within one session, for metrics and backoff.
struct Progress {
    applied_batches: u64,
    caught_up_at: Instant,
}

impl PeerWorker {
    pub async fn run(self) {
        let mut backoff = Backoff::new(self.settings.backoff_initial, self.settings.backoff_max);
        let channel = match crate::client::endpoint(&self.peer) {
            Ok(e) => e
                .connect_timeout(self.settings.connect_timeout)
                .http2_keep_alive_interval(self.settings.keepalive_interval)
                .keep_alive_timeout(
                    self.settings
                        .keepalive_interval
                        .min(Duration::from_secs(20)),
                )
                .keep_alive_while_idle(true)
                .connect_lazy(),
            Err(e) => {
                // Stay idle rather than exit, so the supervisor does not
                // restart this worker in a loop; a reload can replace it.
                tracing::error!(peer = %self.peer, error = %e, "invalid peer address; not pulling from it");
                self.update(|s| s.last_error = Some(format!("invalid peer address: {e}")));
                self.cancel.cancelled().await;
                return;
            }
        };
        let mut progress = Progress {
            applied_batches: 0,
            caught_up_at: Instant::now(),
        };
        loop {
            self.metrics.sessions.inc();
            let before = progress.applied_batches;
            let result = tokio::select! {
                _ = self.cancel.cancelled() => break,
                r = self.session(&channel, &mut progress) => r,
            };
            self.metrics.connected.set(0);
            self.update(|s| s.connected = false);
            match result {
                Ok(SessionEnd::Reconnect) => backoff.reset(),
                Ok(SessionEnd::IsSelf) => {
                    tracing::info!(peer = %self.peer, "peer is this replica; not pulling from it");
                    self.update(|s| s.is_self = true);
                    self.cancel.cancelled().await;
                    break;
                }
                Err(e) => {
                    if progress.applied_batches > before {
                        backoff.reset();
                    }
                    self.metrics.error(e.kind());
                    self.metrics
                        .lag_seconds
                        .set(progress.caught_up_at.elapsed().as_secs_f64());
                    let delay = backoff.next_delay();
                    // An unreachable peer is routine (restarts, rollouts): the
                    // error metrics and PeerStatus carry it; logs stay quiet.
                    if e.kind() == "connect" {
                        tracing::info!(peer = %self.peer, error = %e, retry_in = ?delay, "peer unavailable");
                    } else {
                        tracing::warn!(peer = %self.peer, error = %e, retry_in = ?delay, "replication session ended");
                    }
                    self.update(|s| s.last_error = Some(e.to_string()));
                    tokio::select! {
                        _ = self.cancel.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        tracing::debug!(peer = %self.peer, "pull worker stopped");
    }

    fn update(&self, f: impl FnOnce(&mut PeerStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    async fn session(
        &self,
        channel: &Channel,
        progress: &mut Progress,
    ) -> Result<SessionEnd, PullError> {
        let timeout = self.settings.connect_timeout;
        let mut client = StoreClient::new(channel.clone());
        let head = tokio::time::timeout(timeout, client.head())
            .await
            .map_err(|_| PullError::Timeout("Head"))?
            .map_err(|s| match s.code() {
                Code::Unavailable | Code::Unknown => PullError::Connect(s.message().to_owned()),
                _ => PullError::Rpc(s),
            })?;
        if head.incarnation == self.replica.incarnation() {
            return Ok(SessionEnd::IsSelf);
        }
        self.update(|s| s.peer_incarnation = Some(head.incarnation));

        let mut cursor = self.replica.peer_cursor(&self.peer).await?;
        if let Some(c) = cursor
            && c.incarnation != head.incarnation
        {
            cursor = Some(
                self.reset_cursor(head.incarnation, "the peer's incarnation changed")
                    .await?,
            );
        }
        let bootstrap = cursor.is_none_or(|c| c.seq == 0);
        let request = proto::WatchRequest {
            cursor: cursor
                .map(|c| convert::cursor_to_proto(c.incarnation, c.seq, Some(&c.id_at_seq))),
            include_data: bootstrap,
            heartbeat_ms: self.settings.heartbeat().as_millis().min(u32::MAX as u128) as u32,
            namespaces: self
                .settings
                .namespaces
                .iter()
                .map(convert::namespace_to_proto)
                .collect(),
        };
        let watch = tokio::time::timeout(timeout, client.raw().watch(request))
            .await
            .map_err(|_| PullError::Timeout("Watch"))?;
        let mut stream = match watch {
            Ok(response) => response.into_inner(),
            Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::OutOfRange) => {
                self.reset_cursor(head.incarnation, s.message()).await?;
                return Ok(SessionEnd::Reconnect);
            }
            Err(s) => return Err(s.into()),
        };
        self.metrics.connected.set(1);
        self.update(|s| {
            s.connected = true;
            s.last_error = None;
        });
        // Batch N is stored while batch N+1 is fetched and verified; commits
        // stay in order because each waits for the one before.
        let mut applied = cursor.map_or(0, |c| c.seq);
        let mut inflight: Option<Commit> = None;
        loop {
            let batch = tokio::time::timeout(self.settings.session_idle_timeout, stream.message())
                .await
                .map_err(|_| PullError::Timeout("a Watch message or heartbeat"))??
                .ok_or(PullError::Closed)?;
            if batch.records.is_empty() && batch.next.is_none() {
                if let Some(commit) = inflight.take() {
                    applied = self.finish(commit, progress).await?.1;
                }
                self.heartbeat(batch.head_seq, applied, progress);
                continue;
            }
            let prepared = self.prepare(&mut client, batch).await?;
            if let Some(commit) = inflight.take() {
                applied = self.finish(commit, progress).await?.1;
            }
            let at_head = prepared.next.seq >= prepared.head_seq;
            let commit = self.commit(prepared);
            if !at_head {
                inflight = Some(commit);
                continue;
            }
            // At the head there is nothing to overlap with: finish now.
            let (caught_up, seq) = self.finish(commit, progress).await?;
            applied = seq;
            if bootstrap && caught_up {
                return Ok(SessionEnd::Reconnect);
            }
        }
    }

    /// Starts over from the beginning of the peer's log (its incarnation
    /// changed or it refused our cursor). Safe: entries already held are
    /// recognised by id and never stored twice.
    async fn reset_cursor(
        &self,
        incarnation: Incarnation,
        why: &str,
    ) -> Result<PeerCursor, PullError> {
        tracing::warn!(peer = %self.peer, reason = why, "cursor refused; pulling this peer's log from the start");
        self.metrics.cursor_resets.inc();
        let cursor = PeerCursor {
            incarnation,
            seq: 0,
            id_at_seq: EntryId([0; 32]),
        };
        self.replica
            .ingest(
                Vec::new(),
                Some(CursorUpdate {
                    peer: self.peer.clone(),
                    cursor,
                }),
            )
            .await?;
        Ok(cursor)
    }

    /// An idle peer's heartbeat: refreshes lag and liveness.
    fn heartbeat(&self, head_seq: u64, applied: u64, progress: &mut Progress) {
        let lag = head_seq.saturating_sub(applied);
        if lag == 0 {
            progress.caught_up_at = Instant::now();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO);
            self.metrics.last_success.set(now.as_secs_f64());
        }
        self.metrics.lag_entries.set(lag as i64);
        self.metrics
            .lag_seconds
            .set(progress.caught_up_at.elapsed().as_secs_f64());
        self.update(|s| {
            s.peer_head_seq = head_seq;
            if lag == 0 {
                s.last_success = Some(SystemTime::now());
            }
        });
    }

    /// Turns a log batch into verified entries ready to store: fetches the
    /// bodies this replica lacks and checks every entry like a client's.
    async fn prepare(
        &self,
        client: &mut StoreClient,
        batch: proto::LogBatch,
    ) -> Result<Prepared, PullError> {
        let next = convert::cursor(batch.next)
            .map_err(|e| PullError::DataLoss(format!("bad cursor in a log batch: {e}")))?
            .ok_or_else(|| PullError::DataLoss("log batch without a cursor".into()))?;
        let namespaces = batch
            .namespaces
            .into_iter()
            .map(|ns| convert::namespace(Some(ns)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PullError::DataLoss(format!("bad namespace in a log batch: {e}")))?;
        let mut items: Vec<(Bytes, Bytes)> = Vec::with_capacity(batch.records.len());
        let mut wanted: HashMap<Namespace, Vec<EntryId>> = HashMap::new();
        for r in batch.records {
            if !r.data.is_empty() {
                items.push((r.id, r.data));
                continue;
            }
            let ns = namespaces.get(r.namespace as usize).ok_or_else(|| {
                PullError::DataLoss(format!("record {} names namespace #{}", r.seq, r.namespace))
            })?;
            let id = EntryId::from_slice(&r.id).map_err(|e| PullError::DataLoss(e.to_string()))?;
            wanted.entry(ns.clone()).or_default().push(id);
        }
        for (ns, ids) in wanted {
            let missing = match self.replica.missing(ns.clone(), ids).await {
                Ok(missing) => missing,
                // Not served here: the entries would be rejected anyway.
                Err(Error::NamespaceNotAllowed(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            self.fetch(client, &ns, &missing, &mut items).await?;
        }
        let bytes: usize = items.iter().map(|(_, d)| d.len()).sum();
        let (verified, rejections) = self.replica.verify(items).await?;
        for (_, r) in &rejections {
            if matches!(r.reason, RejectReason::IdMismatch | RejectReason::Malformed) {
                return Err(PullError::DataLoss(r.to_string()));
            }
        }
        Ok(Prepared {
            verified,
            next,
            head_seq: batch.head_seq,
            bytes,
        })
    }

    /// Starts storing a prepared batch together with its cursor, as a task of
    /// its own, so the next batch can be prepared meanwhile.
    fn commit(&self, prepared: Prepared) -> Commit {
        let replica = self.replica.clone();
        let cursor = CursorUpdate {
            peer: self.peer.clone(),
            cursor: prepared.next,
        };
        let task =
            tokio::spawn(async move { replica.ingest(prepared.verified, Some(cursor)).await });
        Commit {
            task: AbortOnDropHandle::new(task),
            next: prepared.next,
            head_seq: prepared.head_seq,
            bytes: prepared.bytes,
        }
    }

    /// Waits for a commit and records its progress. Returns whether it
    /// reached the peer's head, and the new cursor seq.
    async fn finish(
        &self,
        commit: Commit,
        progress: &mut Progress,
    ) -> Result<(bool, u64), PullError> {
        let appended = commit
            .task
            .await
            .map_err(|e| PullError::Store(Error::Internal(format!("store task failed: {e}"))))??;
        let stored = appended
            .iter()
            .filter(|a| matches!(a, crate::store::Appended::Stored(_)))
            .count() as u64;
        self.metrics.entries.inc_by(stored);
        self.metrics.bytes.inc_by(commit.bytes as u64);
        let lag = commit.head_seq.saturating_sub(commit.next.seq);
        let caught_up = lag == 0;
        if caught_up {
            progress.caught_up_at = Instant::now();
        }
        progress.applied_batches += 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        self.metrics.lag_entries.set(lag as i64);
        self.metrics
            .lag_seconds
            .set(progress.caught_up_at.elapsed().as_secs_f64());
        self.metrics.last_success.set(now.as_secs_f64());
        self.update(|s| {
            s.cursor_seq = commit.next.seq;
            s.peer_head_seq = commit.head_seq;
            s.entries_pulled += stored;
            s.last_success = Some(SystemTime::now());
        });
        Ok((caught_up, commit.next.seq))
    }

    /// Fetches bodies by id in chunks the peer accepts.
    async fn fetch(
        &self,
        client: &mut StoreClient,
        ns: &Namespace,
        ids: &[EntryId],
        out: &mut Vec<(Bytes, Bytes)>,
    ) -> Result<(), PullError> {
        const CHUNK: usize = 4096;
        for chunk in ids.chunks(CHUNK) {
            let mut stream = client
                .raw()
                .get_entries(proto::GetEntriesRequest {
                    namespace: Some(convert::namespace_to_proto(ns)),
                    ids: chunk.iter().map(convert::id_bytes).collect(),
                })
                .await?
                .into_inner();
            let mut got = 0;
            while let Some(batch) = stream.message().await? {
                if let Some(id) = batch.missing.first() {
                    return Err(PullError::DataLoss(format!(
                        "the peer logged {} but cannot serve it",
                        hex::encode(id)
                    )));
                }
                got += batch.entries.len();
                out.extend(batch.entries.into_iter().map(|e| (e.id, e.data)));
            }
            if got != chunk.len() {
                return Err(PullError::DataLoss(format!(
                    "asked for {} entries, got {got}",
                    chunk.len()
                )));
            }
        }
        Ok(())
    }
}
