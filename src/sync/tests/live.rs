//! Serving live followers: entries from memory and with their records,
//! relayed records held back, commits that always wake watchers.

use super::*;

/// A follower at the head gets entries just written at its peer with their
/// log records, without asking for them; entries the peer merely relays
/// come as ids, and are fetched.
#[tokio::test(start_paused = true)]
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
#[tokio::test(start_paused = true)]
async fn relayed_records_are_held_back_and_client_records_are_not() {
    use crate::replica::{FollowOptions, LogFollower, Origin};
    let r = replica("r", Arc::new(MemoryStore::new()));
    let follow = |delay: Duration| {
        let opts = FollowOptions {
            relay_delay: Some(delay),
            ..Default::default()
        };
        let send = crate::replica::outgoing::SendScope::replica(r.send_pool());
        LogFollower::new(r.clone(), r.stats().head_seq, None, opts, send)
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
#[tokio::test(start_paused = true)]
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

#[tokio::test(start_paused = true)]
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
        // Time stands still while the store call runs: no sleeping here.
        tokio::task::yield_now().await;
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
