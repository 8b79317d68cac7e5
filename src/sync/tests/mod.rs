//! The engine driven over the in-process adapter: replica cores and device
//! stores on memory, no network, peers and store decorators that fail,
//! stall or count. Every test runs in paused time on one thread: timers
//! fire as soon as nothing else can run (never while a store call is in
//! flight), so the tests are fast and each run schedules alike.
//!
//! The shared helpers are here; the pull's tests are in `pull.rs`, the
//! push's in `push.rs`, what a replica serves to live followers in
//! `live.rs`, and the suite every local side passes in `local_suite.rs`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::budget::ByteBudget;
use super::device::DeviceStore;
use super::env::{Env, SystemClock};
use super::local::Local;
use super::metrics::SyncMetrics;
use super::peer::{EntryStream, FollowRequest, LogStream, Peer, PeerError};
use super::puller::Puller;
use super::status::StatusBoard;
use super::{Shared, SyncSettings};
use crate::entry::{Entry, EntryId, Namespace, PutOutcome};
use crate::limits::Limits;
use crate::log::WriteConcern;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::replica::in_process::LocalPeer;
use crate::replica::{NodeIdentity, Replica};
use crate::store::decorated::{Decorated, Hooks};
use crate::store::memory::MemoryStore;
use crate::store::{Incarnation, Store, StoreError};

mod live;
mod local_suite;
mod pull;
mod push;

fn ns(db: &str) -> Namespace {
    Namespace::new("acme", db).unwrap()
}

fn entries(ns: &Namespace, count: usize, size: usize) -> Vec<Entry> {
    crate::fixtures::sample_entries(ns, &SigningKey::from_bytes(&[7; 32]), count, size)
}

fn replica(name: &str, store: Arc<dyn Store>) -> Arc<Replica> {
    replica_with_tail(name, store, 8 << 20)
}

fn replica_with_tail(name: &str, store: Arc<dyn Store>, log_tail_bytes: usize) -> Arc<Replica> {
    replica_with(name, store, log_tail_bytes, Policy::default())
}

fn replica_with(
    name: &str,
    store: Arc<dyn Store>,
    log_tail_bytes: usize,
    policy: Policy,
) -> Arc<Replica> {
    Arc::new(Replica::new(
        store,
        NodeIdentity::new(name),
        policy,
        Limits::default(),
        log_tail_bytes,
        Arc::new(Metrics::new()),
        CancellationToken::new(),
    ))
}

async fn put(r: &Replica, batch: &[Entry]) {
    let items = batch
        .iter()
        .map(|e| (Bytes::copy_from_slice(&e.id.0), e.data().clone()))
        .collect();
    r.put(items).await.unwrap();
}

fn fast() -> SyncSettings {
    SyncSettings {
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        ..Default::default()
    }
}

/// A pull worker from `source` into `local`, running until the guard drops.
struct Pulling {
    settings: watch::Sender<SyncSettings>,
    budget: ByteBudget,
    board: StatusBoard,
    cancel: CancellationToken,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

impl Drop for Pulling {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn pull(
    local: &Arc<Replica>,
    source: &Arc<Replica>,
    settings: SyncSettings,
    budget_bytes: usize,
) -> Pulling {
    pull_shared(local, source, settings, budget_bytes, Shared::default())
}

fn pull_shared(
    local: &Arc<Replica>,
    source: &Arc<Replica>,
    settings: SyncSettings,
    budget_bytes: usize,
    shared: Shared,
) -> Pulling {
    pull_from(
        local,
        Arc::new(LocalPeer::new(source.clone())),
        settings,
        budget_bytes,
        shared,
    )
}

fn pull_from(
    local: &Arc<Replica>,
    peer: Arc<dyn Peer>,
    settings: SyncSettings,
    budget_bytes: usize,
    shared: Shared,
) -> Pulling {
    let metrics = local.metrics().sync.clone();
    pull_into(local.clone(), metrics, peer, settings, budget_bytes, shared)
}

/// A pull worker from `peer` into any local side.
fn pull_into(
    local: Arc<dyn Local>,
    metrics: Arc<SyncMetrics>,
    peer: Arc<dyn Peer>,
    settings: SyncSettings,
    budget_bytes: usize,
    shared: Shared,
) -> Pulling {
    let (tx, rx) = watch::channel(settings);
    let budget = ByteBudget::new(budget_bytes);
    let board = StatusBoard::default();
    let cancel = CancellationToken::new();
    let puller = Puller {
        local,
        peer,
        settings: rx,
        budget: budget.for_peer(budget_bytes),
        shared,
        metrics,
        status: board.slot("source"),
        env: Env::new(Arc::new(SystemClock), 1),
        cancel: cancel.clone(),
    };
    Pulling {
        settings: tx,
        budget,
        board,
        cancel,
        _task: tokio_util::task::AbortOnDropHandle::new(tokio::spawn(puller.run())),
    }
}

/// Metrics in a registry of their own.
fn sync_metrics() -> Arc<SyncMetrics> {
    Arc::new(SyncMetrics::new(&prometheus::Registry::new()))
}

/// A device store on memory.
fn device() -> Arc<DeviceStore> {
    Arc::new(DeviceStore::new(
        Arc::new(MemoryStore::new()),
        Policy::default(),
    ))
}

async fn wait_for(r: &Replica, count: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while r.stats().entries < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "holds {} entries, expected {count}",
            r.stats().entries
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(r.stats().entries, count);
}

/// Waits until the cursor `r` persisted for `peer` reaches `seq`.
async fn wait_for_cursor(r: &Replica, peer: &str, seq: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while r
        .peer_cursor(peer)
        .await
        .unwrap()
        .is_none_or(|c| c.cursor.seq < seq)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cursor into {peer} never reached {seq}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A peer in this process that counts `follow` and `get` calls, and whose
/// second `follow` call (the session after bootstrap), when `hold` is set,
/// waits until the test lets it go: a window to change settings in exactly
/// between two sessions.
struct Observed {
    inner: LocalPeer,
    /// Reached by its node identity, as a replica that advertises the
    /// address it is reached by.
    address: String,
    calls: AtomicUsize,
    gets: AtomicUsize,
    hold: bool,
    /// While set, the peer cannot be reached.
    down: AtomicBool,
    arrived: Arc<tokio::sync::Notify>,
    go: Arc<tokio::sync::Notify>,
}

impl Observed {
    fn new(source: &Arc<Replica>, hold: bool) -> Arc<Self> {
        Arc::new(Self {
            inner: LocalPeer::new(source.clone()),
            address: source.identity().node.clone(),
            calls: AtomicUsize::new(0),
            gets: AtomicUsize::new(0),
            hold,
            down: AtomicBool::new(false),
            arrived: Arc::default(),
            go: Arc::default(),
        })
    }
}

#[async_trait::async_trait]
impl Peer for Observed {
    fn address(&self) -> &str {
        &self.address
    }
    async fn head(&self) -> Result<crate::log::Head, PeerError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(PeerError::Unavailable("down".into()));
        }
        self.inner.head().await
    }
    async fn follow(&self, request: FollowRequest) -> Result<LogStream, PeerError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 1 && self.hold {
            self.arrived.notify_one();
            self.go.notified().await;
        }
        self.inner.follow(request).await
    }
    async fn missing(&self, ns: &Namespace, ids: Vec<EntryId>) -> Result<Vec<EntryId>, PeerError> {
        self.inner.missing(ns, ids).await
    }
    async fn get(&self, ns: &Namespace, ids: Vec<EntryId>) -> Result<EntryStream, PeerError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(ns, ids).await
    }
    async fn put(
        &self,
        entries: Vec<(EntryId, Bytes)>,
        concern: WriteConcern,
    ) -> Result<Vec<PutOutcome>, PeerError> {
        self.inner.put(entries, concern).await
    }
}

/// A peer that answers its head and then streams nothing, ever.
struct Silent(LocalPeer);

#[async_trait::async_trait]
impl Peer for Silent {
    fn address(&self) -> &str {
        self.0.address()
    }
    async fn head(&self) -> Result<crate::log::Head, PeerError> {
        self.0.head().await
    }
    async fn follow(&self, _: FollowRequest) -> Result<LogStream, PeerError> {
        Ok(Box::pin(futures::stream::pending()))
    }
    async fn missing(&self, ns: &Namespace, ids: Vec<EntryId>) -> Result<Vec<EntryId>, PeerError> {
        self.0.missing(ns, ids).await
    }
    async fn get(&self, ns: &Namespace, ids: Vec<EntryId>) -> Result<EntryStream, PeerError> {
        self.0.get(ns, ids).await
    }
    async fn put(
        &self,
        entries: Vec<(EntryId, Bytes)>,
        concern: WriteConcern,
    ) -> Result<Vec<PutOutcome>, PeerError> {
        self.0.put(entries, concern).await
    }
}

/// Holds an append inside the store while `armed`.
#[derive(Default)]
struct Stall {
    armed: AtomicBool,
    entered: AtomicBool,
}

/// Hooks on a memory store: fail the next `fail_appends` appends, stall
/// appends while armed, record the pull budget in use at each append, and
/// report another store's incarnation.
struct Faulty {
    /// Reported instead of the inner store's: a copy of another store.
    incarnation: Option<Incarnation>,
    fail_appends: Arc<AtomicUsize>,
    stall: Arc<Stall>,
    budget: Mutex<Option<ByteBudget>>,
    max_in_use: AtomicUsize,
}

impl Faulty {
    fn new() -> Self {
        Self {
            incarnation: None,
            fail_appends: Arc::new(AtomicUsize::new(0)),
            stall: Arc::new(Stall::default()),
            budget: Mutex::new(None),
            max_in_use: AtomicUsize::new(0),
        }
    }

    fn store(self) -> Arc<Decorated<Faulty>> {
        Arc::new(Decorated {
            inner: Arc::new(MemoryStore::new()),
            hooks: self,
        })
    }
}

impl Hooks for Faulty {
    fn incarnation(&self, inner: Incarnation) -> Incarnation {
        self.incarnation.unwrap_or(inner)
    }

    fn before_append(&self) -> Result<(), StoreError> {
        if let Some(b) = &*self.budget.lock().unwrap() {
            self.max_in_use.fetch_max(b.in_use(), Ordering::Relaxed);
        }
        if self
            .fail_appends
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::Backend("injected failure".into()));
        }
        if self.stall.armed.load(Ordering::SeqCst) {
            self.stall.entered.store(true, Ordering::SeqCst);
            while self.stall.armed.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    }
}
