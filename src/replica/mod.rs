//! The replica core: a store plus the ingest policy, limits, metrics and the
//! live head signal. gRPC handlers and replication workers both go through it,
//! so every entry, from a client or a peer, is checked the same way.
//!
//! Store calls run on tokio's blocking pool, never on the async executor.

mod commit;
pub mod confirm;
mod follow;
pub mod in_process;
mod local;
pub mod outgoing;
mod recent;
pub mod scrub;
mod serve;
mod tail;

pub use crate::sync::local::Checked;
pub use commit::Origin;
pub use follow::{FollowOptions, LogBatch, LogFollower, MAX_RELAY_DELAY, WithData};

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::entry::{EntryId, Namespace, PutOutcome, Rejection, VerifiedEntry};
use crate::error::{Error, Result, on_store};
use crate::limits::{Limits, check_count};
use crate::log::Head;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::quota::Quotas;
use crate::store::{
    Appended, CursorRecord, CursorUpdate, Incarnation, LogRecord, PeerCursor, Seq, Store,
    StoreError, StoreStats,
};

/// What a commit gave, to be had once the commit is durable: a commit is
/// visible at once, and its fsync is shared with the commits made while it
/// runs (group commit). Acknowledge nothing before [`Self::durable`].
#[must_use = "a write is acknowledged only once durable"]
pub struct Committed<T> {
    value: T,
    /// `None` when nothing was written.
    commit: Option<Arc<commit::Committer>>,
}

impl<T> Committed<T> {
    /// Waits, on the blocking pool, until the commit is durable.
    pub async fn durable(self) -> Result<T> {
        if let Some(commit) = self.commit {
            crate::blocking::run(move || commit.sync()).await??;
        }
        Ok(self.value)
    }
}

/// Who this replica process is. `node` is stable (the advertised name);
/// `instance` is new for every process start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    pub node: String,
    pub instance: [u8; 16],
}

impl NodeIdentity {
    /// `node` with a fresh random instance.
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            instance: rand::random(),
        }
    }
}

pub struct Replica {
    store: Arc<dyn Store>,
    identity: NodeIdentity,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// The write path and what it keeps in memory.
    commit: Arc<commit::Committer>,
    /// The policy never changes while the replica runs.
    policy_digest: u64,
    send_pool: outgoing::BytePool,
    /// Peers' confirmations, for writers that ask for more replicas.
    confirmations: confirm::Confirmations,
    shutdown: CancellationToken,
}

/// Ids remembered as recently stored (about 3 MB).
const RECENT_IDS: usize = 65_536;

impl Replica {
    pub fn new(
        store: Arc<dyn Store>,
        identity: NodeIdentity,
        policy: Policy,
        limits: Limits,
        log_tail_bytes: usize,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        let head_seq = store.stats().head_seq;
        let (head, _) = watch::channel(head_seq);
        let policy_digest = policy.digest();
        let commit = Arc::new(commit::Committer {
            store: store.clone(),
            policy,
            metrics: metrics.clone(),
            head,
            recent: recent::RecentIds::new(RECENT_IDS),
            tail: tail::LogTail::new(head_seq, log_tail_bytes),
            order: Mutex::new(()),
            writes: watch::channel(None).0,
        });
        Self {
            confirmations: confirm::Confirmations::new(store.incarnation()),
            store,
            identity,
            send_pool: outgoing::BytePool::new(limits.max_send_data_bytes),
            limits,
            metrics,
            commit,
            policy_digest,
            shutdown,
        }
    }

    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// Peers' confirmations of what they hold (write concern).
    pub fn confirmations(&self) -> &confirm::Confirmations {
        &self.confirmations
    }

    /// A digest of this replica's ingest policy (see [`Policy::digest`]).
    pub fn policy_digest(&self) -> u64 {
        self.policy_digest
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// What outgoing messages may hold in entry data, all streams together.
    pub fn send_pool(&self) -> &outgoing::BytePool {
        &self.send_pool
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

    /// This replica's head.
    pub async fn head(&self) -> Result<Head> {
        let stats = self.stats();
        let head_id = self.log_at(stats.head_seq).await?;
        Ok(Head {
            node: self.identity.node.clone(),
            instance: self.identity.instance,
            incarnation: self.incarnation(),
            head_seq: stats.head_seq,
            head_id,
            entry_count: stats.entries,
            max_ids_per_request: self.limits.max_ids_per_request,
            max_message_bytes: self.limits.max_message_bytes,
            reconcile_key: self.store.ranges().map(|r| r.key().check()),
            // What it pulls is the replication settings' to say (the
            // service adds it).
            pulls: Vec::new(),
        })
    }

    /// The text exposition of this replica's metrics.
    pub async fn render_metrics(&self) -> String {
        let store = self.store.clone();
        let (disk_bytes, memory) =
            crate::blocking::run(move || (store.disk_bytes(), store.memory_bytes()))
                .await
                .unwrap_or_default();
        self.metrics.set_store_memory(&memory);
        self.metrics
            .set_store_counts(self.store.log_records_read(), self.store.syncs());
        self.metrics
            .send_data_held_bytes
            .set(self.send_pool.held() as i64);
        self.metrics.render(&self.stats(), disk_bytes)
    }

    /// Cancelled when the replica starts shutting down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// `None` while the store takes writes; why it refused the last one
    /// while it does not.
    pub fn write_state(&self) -> watch::Receiver<Option<String>> {
        self.commit.writes.subscribe()
    }

    /// Tries a write that means nothing (see [`Store::probe_write`]), to
    /// learn whether the store takes writes again.
    pub async fn probe_writes(&self) {
        let commit = self.commit.clone();
        let _ = crate::blocking::run(move || commit.probe()).await;
    }

    /// Takes a consistent copy of the store into `dir` (a new directory;
    /// its parent is made if missing) while the replica keeps serving.
    pub async fn checkpoint(&self, dir: std::path::PathBuf) -> Result<()> {
        on_store(&self.store, move |store| {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    crate::store::StoreError::Backend(format!("creating {}: {e}", parent.display()))
                })?;
            }
            store.checkpoint(&dir)
        })
        .await
    }

    /// Follows the head sequence number as entries are stored.
    pub fn subscribe(&self) -> watch::Receiver<Seq> {
        self.commit.head.subscribe()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T> {
        on_store(&self.store, f).await
    }

    /// Rejects a namespace this replica does not serve.
    pub fn check_namespace(&self, ns: &Namespace) -> Result<()> {
        match self.commit.policy.serves(ns) {
            true => Ok(()),
            false => Err(Error::NamespaceNotAllowed(ns.clone())),
        }
    }

    /// Verifies and stores a batch of `(claimed id, data)` pairs from a
    /// client; returns once the batch is durable.
    pub async fn put(&self, items: Vec<(Bytes, Bytes)>) -> Result<Vec<PutOutcome>> {
        self.put_within(items, None).await?.durable().await
    }

    /// [`Self::put`] within the tenants' `quotas`: a batch that would take
    /// a tenant past its quota is refused whole. Returns once the batch is
    /// stored and visible; it is acknowledged once [`Committed::durable`].
    pub async fn put_within(
        &self,
        items: Vec<(Bytes, Bytes)>,
        quotas: Option<Arc<Quotas>>,
    ) -> Result<Committed<Vec<PutOutcome>>> {
        check_count(
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
        let (rejections, appended) = match quotas.filter(|q| q.any()) {
            None => {
                self.verify_and_commit(Origin::Client, items, None, |_| false)
                    .await?
            }
            Some(quotas) => {
                let commit = self.commit.clone();
                let (rejections, appended) = crate::blocking::run(move || {
                    let (verified, rejections) = commit.verify(Origin::Client, items);
                    let appended = match verified.is_empty() {
                        true => Vec::new(),
                        false => commit.commit_within(&verified, &quotas)?,
                    };
                    Ok::<_, Error>((rejections, Some(appended)))
                })
                .await??;
                self.count_rejections(&rejections);
                (rejections, appended)
            }
        };
        let mut outcomes: Vec<Option<PutOutcome>> = vec![None; count];
        for (index, rejection) in rejections {
            outcomes[index] = Some(PutOutcome::Rejected(rejection));
        }
        let wrote = appended.as_ref().is_some_and(|a| !a.is_empty());
        let mut appended = appended.unwrap_or_default().into_iter();
        let outcomes = outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| match appended.next() {
                    Some(Appended::Stored(_)) => PutOutcome::Stored,
                    _ => PutOutcome::Duplicate,
                })
            })
            .collect();
        Ok(self.committed(outcomes, wrote))
    }

    /// `value`, to be had once what was committed for it is durable (at
    /// once when nothing was written).
    fn committed<T>(&self, value: T, wrote: bool) -> Committed<T> {
        Committed {
            value,
            commit: wrote.then(|| self.commit.clone()),
        }
    }

    /// Checks `(claimed id, data)` pairs from `origin` against the policy
    /// on the blocking pool. Returns the entries that passed, in order, and
    /// the index and reason of each one that did not; every rejection is
    /// counted.
    pub async fn verify(&self, origin: Origin, items: Vec<(Bytes, Bytes)>) -> Result<Checked> {
        let commit = self.commit.clone();
        let (verified, rejections) =
            crate::blocking::run(move || commit.verify(origin, items)).await?;
        self.count_rejections(&rejections);
        Ok((verified, rejections))
    }

    fn count_rejections(&self, rejections: &[(usize, Rejection)]) {
        for (_, r) in rejections {
            self.metrics.rejected(r.reason);
            tracing::debug!(reason = %r.reason, detail = %r.detail, "entry rejected");
        }
    }

    /// [`Self::verify`] then [`Self::ingest`] in one trip to the blocking
    /// pool: the entries that pass are stored, with `cursor`, unless a
    /// rejection is `fatal`, in which case nothing is. Returns the
    /// rejections, and what the store did with the rest when it was asked.
    pub async fn verify_and_ingest(
        &self,
        origin: Origin,
        items: Vec<(Bytes, Bytes)>,
        cursor: Option<CursorUpdate>,
        fatal: fn(&Rejection) -> bool,
    ) -> Result<(Vec<(usize, Rejection)>, Option<Vec<Appended>>)> {
        let has_cursor = cursor.is_some();
        let (rejections, appended) = self.verify_and_commit(origin, items, cursor, fatal).await?;
        let wrote = appended
            .as_ref()
            .is_some_and(|a| !a.is_empty() || has_cursor);
        self.committed((rejections, appended), wrote)
            .durable()
            .await
    }

    /// [`Self::verify_and_ingest`], returning once the commit is visible,
    /// before it is durable.
    async fn verify_and_commit(
        &self,
        origin: Origin,
        items: Vec<(Bytes, Bytes)>,
        cursor: Option<CursorUpdate>,
        fatal: fn(&Rejection) -> bool,
    ) -> Result<(Vec<(usize, Rejection)>, Option<Vec<Appended>>)> {
        let commit = self.commit.clone();
        let (rejections, appended) = crate::blocking::run(move || {
            let (verified, rejections) = commit.verify(origin, items);
            if rejections.iter().any(|(_, r)| fatal(r)) {
                return Ok((rejections, None));
            }
            let appended = match verified.is_empty() && cursor.is_none() {
                true => Vec::new(),
                false => commit.commit(origin, &verified, cursor.as_ref())?,
            };
            Ok((rejections, Some(appended)))
        })
        .await?
        .map_err(|e: StoreError| Error::from(e))?;
        self.count_rejections(&rejections);
        Ok((rejections, appended))
    }

    /// The persisted replication cursor into `peer`'s log.
    pub async fn peer_cursor(&self, peer: &str) -> Result<Option<CursorRecord>> {
        let peer = peer.to_owned();
        self.blocking(move |s| s.cursor(&peer)).await
    }

    /// Every persisted replication cursor, by peer.
    pub async fn peer_cursors(&self) -> Result<Vec<(String, CursorRecord)>> {
        self.blocking(|s| s.cursors()).await
    }

    /// Forgets the cursor into `peer`'s log.
    pub async fn forget_peer_cursor(&self, peer: &str) -> Result<()> {
        let peer = peer.to_owned();
        self.blocking(move |s| s.delete_cursor(&peer)).await
    }

    /// Stores already-verified entries, optionally with a cursor update, in one
    /// atomic batch; returns once it is durable. Watchers are woken and the entries counted by the
    /// blocking task that commits, so this holds even when the caller is
    /// dropped while the commit runs.
    pub async fn ingest(
        &self,
        origin: Origin,
        entries: Vec<VerifiedEntry>,
        cursor: Option<CursorUpdate>,
    ) -> Result<Vec<Appended>> {
        if entries.is_empty() && cursor.is_none() {
            return Ok(Vec::new());
        }
        let commit = self.commit.clone();
        let appended =
            crate::blocking::run(move || commit.commit(origin, &entries, cursor.as_ref()))
                .await?
                .map_err(Error::from)?;
        self.committed(appended, true).durable().await
    }

    /// The ids of `ids` this replica does not hold.
    pub async fn missing(&self, ns: Namespace, ids: Vec<EntryId>) -> Result<Vec<EntryId>> {
        self.check_namespace(&ns)?;
        let ids = self.commit.recent.unknown(ids);
        if ids.is_empty() {
            return Ok(ids);
        }
        self.blocking(move |s| s.missing(&ns, ids)).await
    }

    /// Whether the records after `after` are known to be all pulled from
    /// peers (only the newest records are known).
    pub fn only_relayed_after(&self, after: Seq) -> bool {
        self.commit.tail.only_relayed_after(after)
    }

    /// The data of each id, if held.
    pub async fn get(&self, ns: Namespace, ids: Vec<EntryId>) -> Result<Vec<Option<Bytes>>> {
        self.check_namespace(&ns)?;
        let out = match self.commit.tail.get(&ns, &ids) {
            Some(out) => out,
            None => self.blocking(move |s| s.get(&ns, &ids)).await?,
        };
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

    /// Log records after `after`, from memory when the newest records are
    /// asked for, else from the store (see [`Store::log_since`]). Records
    /// read from the store carry data only when all data is asked for.
    ///
    /// With `only`, up to `limit` records of those namespaces, read from the
    /// store's index of them ([`Store::log_since_in`]), never the whole log.
    /// Unless a data budget cut it short, an answer of fewer than `limit`
    /// (an empty one in any case) means none of theirs beyond it up to the
    /// head read before the call (`stats().head_seq`, or the head announced
    /// by [`Self::subscribe`], which never runs ahead of it).
    pub async fn log_since(
        &self,
        after: Seq,
        limit: usize,
        with: WithData,
        only: Option<&std::collections::HashSet<Namespace>>,
    ) -> Result<Vec<LogRecord>> {
        let head = self.stats().head_seq;
        let out = match self.commit.tail.since(after, limit, with, only, head) {
            Some(out) => out,
            None => {
                let budget = match with {
                    WithData::All { budget } => Some(budget),
                    WithData::No | WithData::ClientWritten { .. } => None,
                };
                match only {
                    None => {
                        self.blocking(move |s| s.log_since(after, limit, budget))
                            .await?
                    }
                    Some(only) => {
                        let only: Vec<Namespace> = only.iter().cloned().collect();
                        self.blocking(move |s| s.log_since_in(&only, after, limit, budget))
                            .await?
                    }
                }
            }
        };
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
