//! Pushing: a device store pushes to a replica and pulls back through the
//! same engine; a push stopped half way resumes from its cursor without
//! sending again what arrived; filters; live pushes.

use super::*;
use crate::sync::pusher::{PushProgress, Pusher};

fn pusher(local: Arc<dyn Local>, peer: Arc<dyn Peer>, settings: SyncSettings) -> Pusher {
    Pusher {
        local,
        peer,
        settings: watch::channel(settings).1,
        metrics: sync_metrics(),
        env: Env::new(Arc::new(SystemClock), 1),
        cancel: CancellationToken::new(),
        progress: watch::channel(PushProgress::default()).0,
    }
}

async fn write(device: &DeviceStore, batch: &[Entry]) {
    let items = batch
        .iter()
        .map(|e| (Bytes::copy_from_slice(&e.id.0), e.data().clone()))
        .collect();
    let (_, rejected) = device.write(items).await.unwrap();
    assert!(rejected.is_empty());
}

async fn wait_for_local(l: &dyn Local, count: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while l.stats().entries < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "holds {} entries, expected {count}",
            l.stats().entries
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(l.stats().entries, count);
}

#[tokio::test(start_paused = true)]
async fn a_device_pushes_to_a_replica_and_another_pulls_back() {
    let server = replica("server", Arc::new(MemoryStore::new()));
    let (laptop, phone) = (device(), device());
    write(&laptop, &entries(&ns("a"), 600, 100)).await;
    write(&laptop, &entries(&ns("b"), 400, 100)).await;

    let to_server: Arc<dyn Peer> = Arc::new(LocalPeer::new(server.clone()));
    let push = pusher(laptop.clone(), to_server.clone(), fast());
    let done = push.push_to_head().await.unwrap();
    assert_eq!(
        (done.records, done.sent, done.stored, done.duplicate),
        (1000, 1000, 1000, 0)
    );
    assert_eq!(done.node, "server");
    assert_eq!(done.through, 1000);
    assert_eq!(server.stats().entries, 1000);

    // Another device pulls them through the same engine.
    let pulling = pull_into(
        phone.clone(),
        sync_metrics(),
        to_server.clone(),
        fast(),
        1 << 20,
        Shared::default(),
    );
    wait_for_local(&*phone, 1000).await;
    drop(pulling);
    let laptop_ids = laptop.log_since(0, 2000, None, None).await.unwrap();
    for (ns, entries) in crate::sync::local::by_namespace(laptop_ids.records) {
        let ids = entries.into_iter().map(|(id, _)| id).collect();
        assert!(phone.missing(ns, ids).await.unwrap().is_empty());
    }

    // The laptop pulls back what another client wrote at the server, and
    // a second push sends nothing the server holds.
    put(&server, &entries(&ns("c"), 50, 100)).await;
    let pulling = pull_into(
        laptop.clone(),
        sync_metrics(),
        to_server.clone(),
        fast(),
        1 << 20,
        Shared::default(),
    );
    wait_for_local(&*laptop, 1050).await;
    drop(pulling);
    let again = pusher(laptop.clone(), to_server, fast());
    let done = again.push_to_head().await.unwrap();
    assert_eq!(done.records, 50, "resumed after what was pushed before");
    assert_eq!(done.sent, 0, "the server already holds them");
}

/// A replica in this process that counts the ids it is asked about and
/// the bodies it takes, and fails every put call after the first `puts`.
struct Counting {
    inner: LocalPeer,
    asked: AtomicUsize,
    delivered: AtomicUsize,
    put_calls: AtomicUsize,
    puts: usize,
}

#[async_trait::async_trait]
impl Peer for Counting {
    fn address(&self) -> &str {
        self.inner.address()
    }
    async fn head(&self) -> Result<crate::log::Head, PeerError> {
        self.inner.head().await
    }
    async fn follow(&self, request: FollowRequest) -> Result<LogStream, PeerError> {
        self.inner.follow(request).await
    }
    async fn missing(&self, ns: &Namespace, ids: Vec<EntryId>) -> Result<Vec<EntryId>, PeerError> {
        self.asked.fetch_add(ids.len(), Ordering::SeqCst);
        self.inner.missing(ns, ids).await
    }
    async fn get(&self, ns: &Namespace, ids: Vec<EntryId>) -> Result<EntryStream, PeerError> {
        self.inner.get(ns, ids).await
    }
    async fn put(
        &self,
        entries: Vec<(EntryId, Bytes)>,
        concern: WriteConcern,
    ) -> Result<Vec<PutOutcome>, PeerError> {
        if self.put_calls.fetch_add(1, Ordering::SeqCst) >= self.puts {
            return Err(PeerError::Unavailable("connection reset".into()));
        }
        self.delivered.fetch_add(entries.len(), Ordering::SeqCst);
        self.inner.put(entries, concern).await
    }
}

/// A store in this process holds what it is given alone: a push asking
/// for two replicas is refused with the reason, and nothing is stored.
#[tokio::test(start_paused = true)]
async fn a_store_in_this_process_refuses_a_push_that_asks_for_more_replicas() {
    let server = replica("server", Arc::new(MemoryStore::new()));
    let laptop = device();
    write(&laptop, &entries(&ns("a"), 10, 100)).await;
    let settings = SyncSettings {
        write_concern: WriteConcern::replicas(2, Duration::from_secs(1)),
        ..fast()
    };
    let peer: Arc<dyn Peer> = Arc::new(LocalPeer::new(server.clone()));
    let err = pusher(laptop.clone(), peer, settings)
        .push_to_head()
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("asks for 2 replicas but this mesh has 1"),
        "{err}"
    );
    assert_eq!(server.stats().entries, 0);
}

#[tokio::test(start_paused = true)]
async fn a_push_stopped_half_way_resumes_from_its_cursor() {
    let server = replica("server", Arc::new(MemoryStore::new()));
    let laptop = device();
    // 10,000 entries of about 1 KiB: a read batch is 4 MiB of data (about
    // 3,800 records), about four put calls.
    write(&laptop, &entries(&ns("a"), 10_000, 1000)).await;
    let counting = |puts| {
        Arc::new(Counting {
            inner: LocalPeer::new(server.clone()),
            asked: AtomicUsize::new(0),
            delivered: AtomicUsize::new(0),
            put_calls: AtomicUsize::new(0),
            puts,
        })
    };
    // The connection drops in the second batch, after some of it arrived.
    let first = counting(7);
    let err = pusher(laptop.clone(), first.clone(), fast())
        .push_to_head()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "connect");
    let delivered = first.delivered.load(Ordering::SeqCst);
    let cursor = laptop.cursor("push:server").await.unwrap().unwrap();
    let acked = cursor.cursor.seq as usize;
    assert!(
        acked > 3000 && acked < delivered && delivered < 10_000,
        "the first batch ({acked}) was acknowledged, the second one only sent in part ({delivered})"
    );
    assert_eq!(server.stats().entries, delivered as u64);

    let second = counting(usize::MAX);
    let done = pusher(laptop.clone(), second.clone(), fast())
        .push_to_head()
        .await
        .unwrap();
    assert_eq!(
        second.asked.load(Ordering::SeqCst),
        10_000 - acked,
        "resumed from the persisted cursor"
    );
    assert_eq!(
        second.delivered.load(Ordering::SeqCst),
        10_000 - delivered,
        "nothing that arrived is sent again"
    );
    assert_eq!(done.duplicate, 0);
    assert_eq!(server.stats().entries, 10_000);
    assert_eq!(
        laptop
            .cursor("push:server")
            .await
            .unwrap()
            .unwrap()
            .cursor
            .seq,
        10_000
    );
}

#[tokio::test(start_paused = true)]
async fn a_filtered_push_sends_only_its_namespaces_and_a_new_filter_starts_over() {
    let server = replica("server", Arc::new(MemoryStore::new()));
    let laptop = device();
    write(&laptop, &entries(&ns("a"), 100, 100)).await;
    write(&laptop, &entries(&ns("b"), 100, 100)).await;
    let peer: Arc<dyn Peer> = Arc::new(LocalPeer::new(server.clone()));
    let only_b = SyncSettings {
        namespaces: vec![ns("b")],
        ..fast()
    };
    let done = pusher(laptop.clone(), peer.clone(), only_b)
        .push_to_head()
        .await
        .unwrap();
    assert_eq!((done.records, done.sent, done.through), (100, 100, 200));
    assert_eq!(server.stats().entries, 100);
    assert!(
        server
            .missing(ns("a"), vec![entries(&ns("a"), 1, 100)[0].id])
            .await
            .unwrap()
            .len()
            == 1
    );
    // Without the filter, the cursor taken under it does not apply.
    let done = pusher(laptop.clone(), peer, fast())
        .push_to_head()
        .await
        .unwrap();
    assert_eq!((done.records, done.sent), (200, 100));
    assert_eq!(server.stats().entries, 200);
}

#[tokio::test(start_paused = true)]
async fn a_push_passes_over_namespaces_the_replica_does_not_serve() {
    // The replica serves only `b`; the device holds `a`, `b` and `c`,
    // interleaved over more than one read batch.
    let policy = Policy {
        allow_unlisted: false,
        namespaces: [(ns("b"), Default::default())].into(),
        ..Policy::default()
    };
    let server = replica_with("server", Arc::new(MemoryStore::new()), 8 << 20, policy);
    let laptop = device();
    for round in 0..3 {
        for db in ["a", "b", "c"] {
            let batch = entries(&ns(db), 3000, 200);
            write(&laptop, &batch[round * 1000..(round + 1) * 1000]).await;
        }
    }
    let peer: Arc<dyn Peer> = Arc::new(LocalPeer::new(server.clone()));
    let done = pusher(laptop.clone(), peer.clone(), fast())
        .push_to_head()
        .await
        .unwrap();
    assert_eq!(
        (
            done.records,
            done.sent,
            done.stored,
            done.unserved,
            done.through
        ),
        (9000, 3000, 3000, 6000, 9000),
        "b is pushed, a and c are passed over, and the cursor reaches the head"
    );
    assert_eq!(server.stats().entries, 3000);
    let cursor = laptop.cursor("push:server").await.unwrap().unwrap();
    assert_eq!(cursor.cursor.seq, 9000);
}

#[tokio::test(start_paused = true)]
async fn a_live_push_follows_what_the_device_writes() {
    let server = replica("server", Arc::new(MemoryStore::new()));
    let laptop = device();
    write(&laptop, &entries(&ns("a"), 100, 100)).await;
    let push = pusher(
        laptop.clone(),
        Arc::new(LocalPeer::new(server.clone())),
        fast(),
    );
    let cancel = push.cancel.clone();
    let mut progress = push.progress.subscribe();
    let task = tokio::spawn(push.run());
    wait_for(&server, 100).await;
    for round in 1..=3u64 {
        write(&laptop, &entries(&ns(&format!("live{round}")), 10, 100)).await;
        wait_for(&server, 100 + round * 10).await;
    }
    tokio::time::timeout(
        Duration::from_secs(10),
        progress.wait_for(|p| p.through == 130),
    )
    .await
    .unwrap()
    .unwrap();
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the push stops when cancelled")
        .unwrap();
}
