//! The engine driven over the in-process adapter: two replica cores on
//! memory stores, no network, store decorators that fail or stall commits.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::budget::ByteBudget;
use super::env::{Env, SystemClock};
use super::local::LocalPeer;
use super::peer::{EntryStream, FollowRequest, LogStream, Peer, PeerError};
use super::puller::Puller;
use super::status::StatusBoard;
use super::{PullSettings, Shared};
use crate::entry::{Entry, EntryId, Namespace, PutOutcome};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::replica::{NodeIdentity, Replica};
use crate::store::decorated::{Decorated, Hooks};
use crate::store::memory::MemoryStore;
use crate::store::{Incarnation, Store, StoreError};

fn ns(db: &str) -> Namespace {
    Namespace::new("acme", db).unwrap()
}

fn entries(ns: &Namespace, count: usize, size: usize) -> Vec<Entry> {
    crate::tools::fixtures::sample_entries(ns, &SigningKey::from_bytes(&[7; 32]), count, size)
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

fn fast() -> PullSettings {
    PullSettings {
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        ..Default::default()
    }
}

/// A pull worker from `source` into `local`, running until the guard drops.
struct Pulling {
    settings: watch::Sender<PullSettings>,
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
    settings: PullSettings,
    budget_bytes: usize,
) -> Pulling {
    pull_shared(local, source, settings, budget_bytes, Shared::default())
}

fn pull_shared(
    local: &Arc<Replica>,
    source: &Arc<Replica>,
    settings: PullSettings,
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
    settings: PullSettings,
    budget_bytes: usize,
    shared: Shared,
) -> Pulling {
    let (tx, rx) = watch::channel(settings);
    let budget = ByteBudget::new(budget_bytes);
    let board = StatusBoard::default();
    let cancel = CancellationToken::new();
    let puller = Puller {
        local: local.clone(),
        peer,
        settings: rx,
        budget: budget.for_peer(budget_bytes),
        shared,
        metrics: local.metrics().clone(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstraps_then_follows_through_the_in_process_adapter() {
    let source = replica("source", Arc::new(MemoryStore::new()));
    let local = replica("local", Arc::new(MemoryStore::new()));
    put(&source, &entries(&ns("a"), 500, 100)).await;
    let pulling = pull(&local, &source, fast(), 1 << 20);
    wait_for(&local, 500).await;
    // Live entries follow.
    put(&source, &entries(&ns("a"), 50, 100)).await;
    wait_for(&local, 550).await;
    // The status follows the commit a moment later.
    wait_for_cursor(&local, "source", 550).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = pulling.board.snapshot().remove(0);
        if status.cursor_seq == 550 || tokio::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(status.peer, "source", "keyed by node identity");
    assert_eq!(status.state, "follow");
    assert_eq!(status.cursor_seq, 550);
    drop(pulling);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_three_peers_moves_each_body_once() {
    // Three peers that all hold the same 300 entries.
    let batch = entries(&ns("a"), 300, 200);
    let mut sources = Vec::new();
    for name in ["p1", "p2", "p3"] {
        let source = replica(name, Arc::new(MemoryStore::new()));
        put(&source, &batch).await;
        sources.push(source);
    }
    let local = replica("local", Arc::new(MemoryStore::new()));
    let shared = Shared::default();
    let pullings: Vec<Pulling> = sources
        .iter()
        .map(|s| pull_shared(&local, s, fast(), 1 << 20, shared.clone()))
        .collect();
    wait_for(&local, 300).await;
    let body_bytes: usize = batch.iter().map(|e| e.data().len()).sum();
    // Every worker is past the entries (its cursor is at the peer's head).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for p in &pullings {
        while p.board.snapshot()[0].cursor_seq < 300 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                pullings
                    .iter()
                    .map(|p| p.board.snapshot())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let text = local.metrics().render(&local.stats(), 0);
    let received: f64 = text
        .lines()
        .filter(|l| l.starts_with("mindoo_replica_peer_bytes_pulled_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(received as usize, body_bytes, "each body crossed once");
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
    async fn head(&self) -> Result<crate::head::Head, PeerError> {
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
    async fn put(&self, entries: Vec<Entry>) -> Result<Vec<PutOutcome>, PeerError> {
        self.inner.put(entries).await
    }
}

/// A filter change that lands while a worker passes from one session to
/// the next (here: bootstrap done, follow opening) still reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_change_between_two_sessions_is_not_lost() {
    let source = replica("source", Arc::new(MemoryStore::new()));
    let local = replica("local", Arc::new(MemoryStore::new()));
    put(&source, &entries(&ns("a"), 20, 64)).await;
    put(&source, &entries(&ns("b"), 10, 64)).await;
    let peer = Observed::new(&source, true);
    let only_a = PullSettings {
        namespaces: vec![ns("a")],
        ..fast()
    };
    let pulling = pull_from(&local, peer.clone(), only_a, 1 << 20, Shared::default());
    peer.arrived.notified().await;
    pulling.settings.send_modify(|s| s.namespaces.push(ns("b")));
    peer.go.notify_one();
    wait_for(&local, 30).await;
}

/// Entries a policy refused are not forgotten: after a restart with a
/// policy that trusts their author, the pull looks at what its cursor
/// passed again and they arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_a_newly_trusted_author_arrive_after_a_restart() {
    use crate::policy::NamespaceRules;
    let (alice, bob) = (
        SigningKey::from_bytes(&[1; 32]),
        SigningKey::from_bytes(&[2; 32]),
    );
    let trusting = |keys: &[&SigningKey]| Policy {
        namespaces: [(
            ns("a"),
            NamespaceRules {
                trusted_authors: keys.iter().map(|k| k.verifying_key().to_bytes()).collect(),
                require_signature: true,
            },
        )]
        .into(),
        ..Default::default()
    };
    let sample = |key: &SigningKey| crate::tools::fixtures::sample_entries(&ns("a"), key, 10, 64);
    let source = replica("source", Arc::new(MemoryStore::new()));
    put(&source, &sample(&alice)).await;
    put(&source, &sample(&bob)).await;

    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let local = replica_with("local", store.clone(), 8 << 20, trusting(&[&alice]));
    let pulling = pull(&local, &source, fast(), 1 << 20);
    wait_for(&local, 10).await;
    wait_for_cursor(&local, "source", 20).await;
    drop(pulling);

    // Restarted on the same store, now trusting bob too.
    let local = replica_with("local", store, 8 << 20, trusting(&[&alice, &bob]));
    let _pulling = pull(&local, &source, fast(), 1 << 20);
    wait_for(&local, 20).await;
}

/// Right after a restart, before the peer answers (here: it is down), the
/// status shows where the pull got to and when, from the persisted cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_status_shows_the_persisted_cursor() {
    let source = replica("source", Arc::new(MemoryStore::new()));
    put(&source, &entries(&ns("a"), 20, 64)).await;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let local = replica("local", store.clone());
    let pulling = pull(&local, &source, fast(), 1 << 20);
    wait_for(&local, 20).await;
    wait_for_cursor(&local, "source", 20).await;
    drop(pulling);

    let local = replica("local", store);
    let peer = Observed::new(&source, false);
    peer.down.store(true, Ordering::SeqCst);
    let pulling = pull_from(&local, peer, fast(), 1 << 20, Shared::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = pulling.board.snapshot().remove(0);
        if s.last_error.is_some() {
            assert_eq!(s.cursor_seq, 20, "{s:?}");
            assert!(s.last_success.is_some(), "{s:?}");
            assert!(!s.connected);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A follower at the head gets entries just written at its peer with their
/// log records, without asking for them; entries the peer merely relays
/// come as ids, and are fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_written_at_the_peer_arrive_with_their_records() {
    use crate::replica::Origin;
    let source = replica("source", Arc::new(MemoryStore::new()));
    let local = replica("local", Arc::new(MemoryStore::new()));
    let peer = Observed::new(&source, false);
    let pulling = pull_from(&local, peer.clone(), fast(), 1 << 20, Shared::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pulling
        .board
        .snapshot()
        .first()
        .is_none_or(|s| s.state != "follow")
    {
        assert!(tokio::time::Instant::now() < deadline, "never followed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for round in 1..=10 {
        put(&source, &entries(&ns("a"), 5, 64)).await;
        wait_for(&local, round * 5).await;
    }
    assert_eq!(peer.gets.load(Ordering::SeqCst), 0, "nothing fetched");

    let relayed = entries(&ns("a"), 5, 64)
        .iter()
        .map(|e| (Bytes::copy_from_slice(&e.id.0), e.data().clone()))
        .collect();
    source
        .verify_and_ingest(Origin::Peer, relayed, None, |_| false)
        .await
        .unwrap();
    wait_for(&local, 55).await;
    assert!(
        peer.gets.load(Ordering::SeqCst) > 0,
        "relayed entries are fetched"
    );
}

/// A follower asked to hold relayed records back: records pulled from a
/// peer wait for the delay and go out together; a record written by a
/// client goes out at once, taking the held ones with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_records_are_held_back_and_client_records_are_not() {
    use crate::replica::{FollowOptions, LogFollower, Origin};
    let r = replica("r", Arc::new(MemoryStore::new()));
    let follow = |delay: Duration| {
        let opts = FollowOptions {
            relay_delay: Some(delay),
            ..Default::default()
        };
        LogFollower::new(r.clone(), r.stats().head_seq, None, opts)
    };
    let relay = |batch: Vec<Entry>| {
        let r = r.clone();
        async move {
            let items = batch
                .iter()
                .map(|e| (Bytes::copy_from_slice(&e.id.0), e.data().clone()))
                .collect();
            r.verify_and_ingest(Origin::Peer, items, None, |_| false)
                .await
                .unwrap();
        }
    };

    // Only relayed records: held for the delay, then sent together.
    let mut follower = follow(Duration::from_millis(300));
    let started = tokio::time::Instant::now();
    relay(entries(&ns("a"), 1, 64)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    relay(entries(&ns("a"), 1, 64)).await;
    let batch = follower.next_batch().await.unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(batch.records.len(), 2, "sent together");

    // A client record behind relayed ones ends the hold at once.
    let mut follower = follow(Duration::from_secs(30));
    let started = tokio::time::Instant::now();
    relay(entries(&ns("a"), 1, 64)).await;
    let writer = {
        let r = r.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            put(&r, &entries(&ns("a"), 1, 64)).await;
        })
    };
    let batch = tokio::time::timeout(Duration::from_secs(10), follower.next_batch())
        .await
        .expect("the client record ended the hold")
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert_eq!(batch.records.len(), 2);
    assert!(started.elapsed() < Duration::from_secs(30));

    // A client record alone is not held at all.
    let mut follower = follow(Duration::from_secs(30));
    put(&r, &entries(&ns("a"), 1, 64)).await;
    let batch = tokio::time::timeout(Duration::from_secs(10), follower.next_batch())
        .await
        .expect("not held")
        .unwrap()
        .unwrap();
    assert_eq!(batch.records.len(), 1);
}

/// Counts entry data read out of the store.
#[derive(Clone, Default)]
struct CountsReads(Arc<AtomicUsize>);

impl Hooks for CountsReads {
    fn data_out(&self, data: Bytes) -> Bytes {
        self.0.fetch_add(1, Ordering::Relaxed);
        data
    }
}

/// Entries a peer pulls live, just after they were stored, come from the
/// log tail in memory, not from the store; with the tail off, from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_entries_are_served_from_memory() {
    for (tail, from_store) in [(8 << 20, false), (0, true)] {
        let reads = CountsReads::default();
        let store = Arc::new(Decorated {
            inner: Arc::new(MemoryStore::new()) as Arc<dyn Store>,
            hooks: reads.clone(),
        });
        let source = replica_with_tail("source", store, tail);
        let local = replica("local", Arc::new(MemoryStore::new()));
        let _pulling = pull(&local, &source, fast(), 1 << 20);
        for round in 1..=5 {
            put(&source, &entries(&ns("a"), 20, 64)).await;
            wait_for(&local, round * 20).await;
        }
        let read = reads.0.load(Ordering::Relaxed);
        assert_eq!(
            read > 0,
            from_store,
            "tail {tail}: {read} bodies read from the store"
        );
    }
}

/// A peer that answers its head and then streams nothing, ever.
struct Silent(LocalPeer);

#[async_trait::async_trait]
impl Peer for Silent {
    fn address(&self) -> &str {
        self.0.address()
    }
    async fn head(&self) -> Result<crate::head::Head, PeerError> {
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
    async fn put(&self, entries: Vec<Entry>) -> Result<Vec<PutOutcome>, PeerError> {
        self.0.put(entries).await
    }
}

/// Simulated time: a silent session is given up after exactly the idle
/// timeout, then retried after the backoff, without waiting in real time.
#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_given_up_after_the_idle_timeout_in_simulated_time() {
    let source = replica("source", Arc::new(MemoryStore::new()));
    let local = replica("local", Arc::new(MemoryStore::new()));
    let settings = PullSettings {
        session_idle_timeout: Duration::from_secs(90),
        ..fast()
    };
    let peer = Arc::new(Silent(LocalPeer::new(source.clone())));
    let pulling = pull_from(&local, peer, settings, 1 << 20, Shared::default());
    let timeouts = || {
        let text = local.metrics().render(&local.stats(), 0);
        let line = "mindoo_replica_peer_errors_total{kind=\"timeout\",peer=\"source\"} ";
        text.lines()
            .find_map(|l| l.strip_prefix(line))
            .map_or(0, |v| v.parse::<u64>().unwrap())
    };
    let started = tokio::time::Instant::now();
    let connected = || {
        let text = local.metrics().render(&local.stats(), 0);
        text.lines()
            .find_map(|l| l.strip_prefix("mindoo_replica_peer_connected{peer=\"source\"} "))
            .map_or(0, |v| v.parse::<u64>().unwrap())
    };
    // Heartbeats are due every 30 s: at 44 s the peer still counts as
    // connected; at 46 s, half a beat late, it shows as disconnected while
    // the session waits out the idle timeout.
    tokio::time::sleep(Duration::from_secs(44)).await;
    assert_eq!(connected(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(connected(), 0, "silent for a heartbeat and a half");
    assert!(!pulling.board.snapshot()[0].connected);
    assert_eq!(timeouts(), 0, "the session goes on");
    tokio::time::sleep(Duration::from_secs(43)).await;
    assert_eq!(timeouts(), 0, "still within the idle timeout");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(timeouts(), 1, "given up once, at 90 s");
    // Retried after at most the backoff ceiling, and given up again 90 s later.
    tokio::time::sleep(Duration::from_secs(90)).await;
    assert_eq!(timeouts(), 2);
    assert!(started.elapsed() >= Duration::from_secs(181));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_this_process_pauses_the_worker() {
    let local = replica("local", Arc::new(MemoryStore::new()));
    let pulling = pull(&local, &local, fast(), 1 << 20);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = pulling.board.snapshot().remove(0);
        if s.is_self && s.state == "paused" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_with_one_incarnation_still_replicate() {
    // The same store under two node identities: one data directory copied
    // to two processes. Neither may take the other for itself.
    let shared: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = replica("a", shared.clone());
    let b_store = Faulty {
        incarnation: Some(shared.incarnation()),
        ..Faulty::new()
    }
    .store();
    let b = replica("b", b_store);
    assert_eq!(a.incarnation(), b.incarnation());
    put(&a, &entries(&ns("a"), 20, 64)).await;
    let pulling = pull(&b, &a, fast(), 1 << 20);
    wait_for(&b, 20).await;
    let s = pulling.board.snapshot().remove(0);
    assert!(!s.is_self && s.shares_incarnation, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_widened_filter_brings_entries_the_cursor_already_passed() {
    let source = replica("source", Arc::new(MemoryStore::new()));
    let local = replica("local", Arc::new(MemoryStore::new()));
    // Interleaved, so the cursor passes `b` records while pulling `a`.
    for _ in 0..5 {
        put(&source, &entries(&ns("a"), 20, 64)).await;
        put(&source, &entries(&ns("b"), 10, 64)).await;
    }
    let only_a = PullSettings {
        namespaces: vec![ns("a")],
        ..fast()
    };
    let pulling = pull(&local, &source, only_a, 1 << 20);
    wait_for(&local, 100).await;
    // The cursor passes every record (batches of `b` alone store nothing,
    // so it is persisted a moment later).
    wait_for_cursor(&local, "source", 150).await;

    // A reload adds `b`: what the cursor passed must arrive too.
    pulling.settings.send_modify(|s| s.namespaces.push(ns("b")));
    wait_for(&local, 150).await;
    // And the cursor remembers the new filter, so a restart does not rescan.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let record = local.peer_cursor("source").await.unwrap().unwrap();
        let now = pulling.settings.borrow().scope();
        if record.scope == now {
            assert_eq!(record.cursor.seq, 150);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_commits_back_off_and_the_pull_recovers() {
    let source = replica("source", Arc::new(MemoryStore::new()));
    let failures = Arc::new(AtomicUsize::new(3));
    let store = Faulty {
        fail_appends: failures.clone(),
        ..Faulty::new()
    }
    .store();
    let local = replica("local", store);
    put(&source, &entries(&ns("a"), 200, 64)).await;
    let _pulling = pull(&local, &source, fast(), 1 << 20);
    wait_for(&local, 200).await;
    assert_eq!(failures.load(Ordering::Relaxed), 0, "every failure was hit");
    let text = local.metrics().render(&local.stats(), 0);
    assert!(
        text.contains("mindoo_replica_peer_errors_total{kind=\"store\",peer=\"source\"} 3"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_data_held_by_a_pull_stays_within_the_budget() {
    let source = replica("source", Arc::new(MemoryStore::new()));
    let store = Faulty::new().store();
    let local = replica("local", store.clone());
    // Caught up first, so the rest arrives as ids only and bodies are fetched.
    put(&source, &entries(&ns("a"), 1, 64)).await;
    let budget = 1 << 20;
    let pulling = pull(&local, &source, fast(), budget);
    *store.hooks.budget.lock().unwrap() = Some(pulling.budget.clone());
    wait_for(&local, 1).await;
    // 64 entries of 256 KiB: 16 MiB through a 1 MiB budget.
    put(&source, &entries(&ns("a"), 64, 256 << 10)).await;
    wait_for(&local, 65).await;
    let peak = store.hooks.max_in_use.load(Ordering::Relaxed);
    assert!(peak > 0, "the budget was in use while committing");
    assert!(peak <= budget, "held {peak} bytes, budget {budget}");
    assert_eq!(pulling.budget.in_use(), 0, "everything given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_dropped_mid_commit_still_wakes_watchers() {
    let stall = Arc::new(Stall::default());
    let store = Faulty {
        stall: stall.clone(),
        ..Faulty::new()
    }
    .store();
    let r = replica("r", store);
    let mut head = r.subscribe();
    stall.armed.store(true, Ordering::SeqCst);
    let batch = entries(&ns("a"), 3, 64);
    let call = {
        let r = r.clone();
        tokio::spawn(async move { put(&r, &batch).await })
    };
    // The commit is inside the store; the caller goes away.
    while !stall.entered.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    call.abort();
    let _ = call.await;
    stall.armed.store(false, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(5), head.wait_for(|h| *h == 3))
        .await
        .expect("watchers are woken by the commit itself")
        .unwrap();
    let text = r.metrics().render(&r.stats(), 0);
    assert!(
        text.contains("mindoo_replica_entries_stored_total 3"),
        "{text}"
    );
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
