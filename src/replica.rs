//! The replica core: a store plus the ingest policy, limits, metrics and the
//! live head signal. gRPC handlers and replication workers both go through it,
//! so every entry, from a client or a peer, is checked the same way.
//!
//! Store calls run on tokio's blocking pool, never on the async executor.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::entry::{EntryId, Namespace, Rejection};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::policy::{Policy, VerifiedEntry};
use crate::store::{
    Appended, CursorUpdate, Incarnation, LogRecord, PeerCursor, Seq, Store, StoreError, StoreStats,
};

/// What happened to one entry of a put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    Stored,
    Duplicate,
    Rejected(Rejection),
}

pub struct Replica {
    store: Arc<dyn Store>,
    policy: Arc<Policy>,
    limits: Limits,
    metrics: Arc<Metrics>,
    head: watch::Sender<Seq>,
    shutdown: CancellationToken,
}

impl Replica {
    pub fn new(
        store: Arc<dyn Store>,
        policy: Policy,
        limits: Limits,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        let (head, _) = watch::channel(store.stats().head_seq);
        Self {
            store,
            policy: Arc::new(policy),
            limits,
            metrics,
            head,
            shutdown,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn incarnation(&self) -> Incarnation {
        self.store.incarnation()
    }

    pub fn stats(&self) -> StoreStats {
        self.store.stats()
    }

    /// The text exposition of this replica's metrics.
    pub async fn render_metrics(&self) -> String {
        let store = self.store.clone();
        let disk_bytes = tokio::task::spawn_blocking(move || store.disk_bytes())
            .await
            .unwrap_or(0);
        self.metrics.render(&self.stats(), disk_bytes)
    }

    /// Cancelled when the replica starts shutting down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Follows the head sequence number as entries are stored.
    pub fn subscribe(&self) -> watch::Receiver<Seq> {
        self.head.subscribe()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&*store))
            .await
            .map_err(|e| Error::Internal(format!("store task failed: {e}")))?
            .map_err(Error::from)
    }

    /// Rejects a namespace this replica does not serve.
    pub fn check_namespace(&self, ns: &Namespace) -> Result<()> {
        match self.policy.serves(ns) {
            true => Ok(()),
            false => Err(Error::NamespaceNotAllowed(ns.clone())),
        }
    }

    /// Rejects a list longer than `limit`, before anything is allocated for it.
    pub fn check_count(what: &'static str, got: usize, limit: usize) -> Result<()> {
        match got <= limit {
            true => Ok(()),
            false => Err(Error::LimitExceeded { what, got, limit }),
        }
    }

    /// Verifies and stores a batch of `(claimed id, data)` pairs from a client.
    pub async fn put(&self, items: Vec<(Bytes, Bytes)>) -> Result<Vec<PutOutcome>> {
        Self::check_count(
            "entries in one batch",
            items.len(),
            self.limits.max_batch_entries,
        )?;
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let received: usize = items.iter().map(|(_, d)| d.len()).sum();
        self.metrics.entry_bytes_received.inc_by(received as u64);
        let count = items.len();
        let (verified, rejections) = self.verify(items).await?;
        let mut outcomes: Vec<Option<PutOutcome>> = vec![None; count];
        for (index, rejection) in rejections {
            outcomes[index] = Some(PutOutcome::Rejected(rejection));
        }
        let mut appended = self.ingest(verified, None).await?.into_iter();
        Ok(outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| match appended.next() {
                    Some(Appended::Stored(_)) => PutOutcome::Stored,
                    _ => PutOutcome::Duplicate,
                })
            })
            .collect())
    }

    /// Checks `(claimed id, data)` pairs against the policy on the blocking
    /// pool. Returns the entries that passed, in order, and the index and
    /// reason of each one that did not; every rejection is counted.
    pub async fn verify(
        &self,
        items: Vec<(Bytes, Bytes)>,
    ) -> Result<(Vec<VerifiedEntry>, Vec<(usize, Rejection)>)> {
        let policy = self.policy.clone();
        let (verified, rejections) = tokio::task::spawn_blocking(move || {
            let mut verified = Vec::with_capacity(items.len());
            let mut rejections = Vec::new();
            for (index, (id, data)) in items.into_iter().enumerate() {
                match policy.check(&id, data) {
                    Ok(entry) => verified.push(entry),
                    Err(rejection) => rejections.push((index, rejection)),
                }
            }
            (verified, rejections)
        })
        .await
        .map_err(|e| Error::Internal(format!("verify task failed: {e}")))?;
        for (_, r) in &rejections {
            self.metrics.rejected(r.reason);
            tracing::debug!(reason = %r.reason, detail = %r.detail, "entry rejected");
        }
        Ok((verified, rejections))
    }

    /// The persisted replication cursor into `peer`'s log.
    pub async fn peer_cursor(&self, peer: &str) -> Result<Option<PeerCursor>> {
        let peer = peer.to_owned();
        self.blocking(move |s| s.cursor(&peer)).await
    }

    /// Stores already-verified entries, optionally with a cursor update, in one
    /// atomic batch, and wakes live watchers.
    pub async fn ingest(
        &self,
        entries: Vec<VerifiedEntry>,
        cursor: Option<CursorUpdate>,
    ) -> Result<Vec<Appended>> {
        if entries.is_empty() && cursor.is_none() {
            return Ok(Vec::new());
        }
        let out = self
            .blocking(move |s| s.append(&entries, cursor.as_ref()))
            .await?;
        let stored = out
            .iter()
            .filter(|a| matches!(a, Appended::Stored(_)))
            .count() as u64;
        self.metrics.entries_stored.inc_by(stored);
        self.metrics
            .entries_duplicate
            .inc_by(out.len() as u64 - stored);
        if let Some(Appended::Stored(last)) =
            out.iter().rev().find(|a| matches!(a, Appended::Stored(_)))
        {
            self.head.send_if_modified(|head| {
                let newer = *last > *head;
                *head = (*head).max(*last);
                newer
            });
        }
        Ok(out)
    }

    /// The ids of `ids` this replica does not hold.
    pub async fn missing(&self, ns: Namespace, ids: Vec<EntryId>) -> Result<Vec<EntryId>> {
        self.check_namespace(&ns)?;
        self.blocking(move |s| {
            let held = s.contains(&ns, &ids)?;
            Ok(ids
                .into_iter()
                .zip(held)
                .filter_map(|(id, held)| (!held).then_some(id))
                .collect())
        })
        .await
    }

    /// The data of each id, if held.
    pub async fn get(&self, ns: Namespace, ids: Vec<EntryId>) -> Result<Vec<Option<Bytes>>> {
        self.check_namespace(&ns)?;
        let out = self.blocking(move |s| s.get(&ns, &ids)).await?;
        let sent: usize = out.iter().flatten().map(Bytes::len).sum();
        self.metrics.entry_bytes_sent.inc_by(sent as u64);
        Ok(out)
    }

    pub async fn list_ids(
        &self,
        ns: Namespace,
        after: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<EntryId>> {
        self.check_namespace(&ns)?;
        self.blocking(move |s| s.list_ids(&ns, after.as_ref(), limit))
            .await
    }

    /// Log records after `after`; see [`Store::log_since`].
    pub async fn log_since(
        &self,
        after: Seq,
        limit: usize,
        data_budget: Option<usize>,
    ) -> Result<Vec<LogRecord>> {
        let out = self
            .blocking(move |s| s.log_since(after, limit, data_budget))
            .await?;
        let sent: usize = out
            .iter()
            .filter_map(|r| r.data.as_ref())
            .map(Bytes::len)
            .sum();
        self.metrics.entry_bytes_sent.inc_by(sent as u64);
        Ok(out)
    }

    /// The id logged at `seq`, if any.
    pub async fn log_at(&self, seq: Seq) -> Result<Option<EntryId>> {
        self.blocking(move |s| s.log_at(seq)).await
    }

    /// Checks a cursor into this replica's log and returns the sequence number
    /// to resume after. `None` is the start of the log.
    pub async fn resume_point(&self, cursor: Option<PeerCursor>) -> Result<Seq> {
        let Some(c) = cursor else { return Ok(0) };
        if c.incarnation != self.incarnation() {
            return Err(Error::CursorIncarnation {
                cursor: c.incarnation.to_string(),
                ours: self.incarnation().to_string(),
            });
        }
        let head = self.stats().head_seq;
        if c.seq > head {
            return Err(Error::CursorBeyondHead { seq: c.seq, head });
        }
        if c.seq == 0 {
            return Ok(0);
        }
        let found = self.blocking(move |s| s.log_at(c.seq)).await?;
        match found {
            Some(id) if id == c.id_at_seq => Ok(c.seq),
            other => Err(Error::CursorMismatch {
                seq: c.seq,
                expected: c.id_at_seq.to_string(),
                found: other.map_or_else(|| "nothing".into(), |id| id.to_string()),
            }),
        }
    }

    /// Makes everything stored so far durable.
    pub async fn flush(&self) -> Result<()> {
        self.blocking(|s| s.flush()).await
    }
}
