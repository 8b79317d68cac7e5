//! Replication between real replicas: convergence, catch-up, reloads,
//! partitions, hung and corrupt peers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use mindoo_replica::entry::Namespace;
use mindoo_replica::fixtures::sample_entries;
use mindoo_replica::proto;
use mindoo_replica::proto::replication_client::ReplicationClient;
use mindoo_replica::server;
use mindoo_replica::store::decorated::{Decorated, Hooks};

use crate::harness::*;

fn dirs(n: usize) -> Vec<tempfile::TempDir> {
    (0..n).map(|_| tempfile::tempdir().unwrap()).collect()
}

/// Every replica holds exactly the same ids.
async fn assert_same_ids(replicas: &[TestReplica], ns: &Namespace) {
    let mut sets = Vec::new();
    for r in replicas {
        let mut page = r
            .client()
            .await
            .raw()
            .list_ids(proto::ListIdsRequest {
                namespace: Some(mindoo_replica::proto::convert::namespace_to_proto(ns)),
                page_token: Bytes::new(),
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .ids;
        page.sort();
        sets.push(page);
    }
    assert!(sets.windows(2).all(|w| w[0] == w[1]), "replicas differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_converge_on_writes_to_each() {
    let dirs = dirs(3);
    let replicas = mesh(&dirs).await;
    let batch = entries(600);
    for (i, chunk) in batch.chunks(200).enumerate() {
        replicas[i].client().await.put(chunk).await.unwrap();
    }
    for r in &replicas {
        r.wait_for_count(600, 20).await;
    }
    assert_same_ids(&replicas, &ns()).await;
    // Each body crossed to each replica about once: count the bytes each
    // received from its peers against the bytes it lacked.
    let size = |chunk: &[mindoo_replica::entry::Entry]| -> f64 {
        chunk.iter().map(|e| e.data().len() as f64).sum()
    };
    let total = size(&batch);
    for (i, r) in replicas.iter().enumerate() {
        let lacked = total - size(&batch[i * 200..(i + 1) * 200]);
        let text = r.metrics_text().await;
        let received = metric_sum(&text, "mindoo_replica_peer_bytes_pulled_total");
        eprintln!(
            "replica {i} received {:.2}x the bytes it lacked",
            received / lacked
        );
        assert!(
            received >= lacked && received <= lacked * 1.25,
            "replica {i} received {received} bytes for {lacked} it lacked"
        );
    }
    for r in replicas {
        r.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_replicas_converge_and_a_stopped_one_catches_up() {
    let dirs = dirs(5);
    let mut replicas = mesh(&dirs).await;
    let batch = entries(1000);
    replicas[0].client().await.put(&batch[..500]).await.unwrap();
    for r in &replicas {
        r.wait_for_count(500, 20).await;
    }

    // Replica 4 goes away; the others keep taking writes.
    let gone = replicas.pop().unwrap();
    let addr = gone.addr;
    gone.stop().await.unwrap();
    replicas[1]
        .client()
        .await
        .put(&batch[500..800])
        .await
        .unwrap();
    replicas[3].client().await.put(&batch[800..]).await.unwrap();
    for r in &replicas {
        r.wait_for_count(1000, 20).await;
    }

    // It comes back on the same address and catches up from its cursors.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let peers: Vec<String> = replicas
        .iter()
        .map(|r| r.addr.to_string())
        .chain([addr.to_string()])
        .collect();
    let back = TestReplica::start_on(dirs[4].path(), listener, |c| {
        c.replication.peers = peers;
        c.replication.advertise = addr.to_string();
    })
    .await;
    back.wait_for_count(1000, 20).await;
    replicas.push(back);
    assert_same_ids(&replicas, &ns()).await;
    for r in replicas {
        r.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_heals_through_a_config_reload() {
    let dirs = dirs(2);
    let a = TestReplica::start(dirs[0].path(), |_| {}).await;
    // B starts isolated: no peers.
    let b = TestReplica::start(dirs[1].path(), |_| {}).await;
    let batch = entries(400);
    a.client().await.put(&batch[..250]).await.unwrap();
    b.client().await.put(&batch[150..]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(a.entry_count().await, 250);
    assert_eq!(b.entry_count().await, 250);

    // Reload both with each other as peers: no restart.
    for (r, peer) in [(&a, b.addr), (&b, a.addr)] {
        r.peers.send_modify(|s| s.peers = vec![peer.to_string()]);
    }
    a.wait_for_count(400, 20).await;
    b.wait_for_count(400, 20).await;

    // Removing the peer stops its worker and drops its metrics.
    a.peers.send_modify(|s| s.peers.clear());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = a.metrics_text().await;
        if !text.contains("mindoo_replica_peer_sessions_total{") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "peer metrics remain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_peer_does_not_stall_the_others() {
    // Accepts connections and never says a word.
    let hung = bind().await;
    let hung_addr = hung.local_addr().unwrap();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            held.push(socket);
        }
    });
    let dirs = dirs(2);
    let source = TestReplica::start(dirs[0].path(), |_| {}).await;
    let source_addr = source.addr.to_string();
    let puller = TestReplica::start(dirs[1].path(), |c| {
        c.replication.peers = vec![
            hung_addr.to_string(),
            "no-such-replica.invalid:7700".into(),
            source_addr,
        ];
        c.replication.connect_timeout_ms = 200;
    })
    .await;
    source.client().await.put(&entries(100)).await.unwrap();
    puller.wait_for_count(100, 10).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let name = format!("mindoo_replica_peer_errors_total{{kind=\"timeout\",peer=\"{hung_addr}\"}}");
    while try_metric(&puller.metrics_text().await, &name).unwrap_or(0.0) < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no timeout recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An unresolvable name is a connect error on its own peer only.
    let unresolvable =
        "mindoo_replica_peer_errors_total{kind=\"connect\",peer=\"no-such-replica.invalid:7700\"}";
    assert!(metric(&puller.metrics_text().await, unresolvable) >= 1.0);
    // The status API tells the operator which peer is the problem.
    let channel = mindoo_replica::client::endpoint(&puller.addr.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = ReplicationClient::new(channel)
        .peer_status(proto::PeerStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let hung_state = status
        .peers
        .iter()
        .find(|p| p.peer == hung_addr.to_string())
        .unwrap();
    assert!(!hung_state.connected);
    assert!(hung_state.last_error.contains("in time"), "{hung_state:?}");
    let ok = status
        .peers
        .iter()
        .find(|p| p.peer == source.addr.to_string())
        .unwrap();
    assert!(ok.connected && ok.entries_pulled == 100, "{ok:?}");
    puller.stop().await.unwrap();
    source.stop().await.unwrap();
}

/// Corrupts entry data on the way out while `corrupt` is set.
struct Corrupting(Arc<AtomicBool>);

impl Hooks for Corrupting {
    fn data_out(&self, data: Bytes) -> Bytes {
        if !self.0.load(Ordering::Relaxed) {
            return data;
        }
        let mut v = data.to_vec();
        let at = v.len() / 2;
        v[at] ^= 0x55;
        v.into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_data_from_a_peer_is_refused_and_the_pair_recovers() {
    let dirs = dirs(2);
    let corrupt = Arc::new(AtomicBool::new(false));
    let listener = bind().await;
    let mut raw = test_config(dirs[0].path());
    raw.replication.advertise = listener.local_addr().unwrap().to_string();
    // The data rots in the store: nothing is served from memory.
    raw.storage.log_tail_mb = 0;
    let settings = raw.validate().unwrap();
    let node = settings.node_name(listener.local_addr().unwrap());
    let inner = server::open_store(&settings.storage, &node).await.unwrap();
    let store = Arc::new(Decorated {
        inner,
        hooks: Corrupting(corrupt.clone()),
    });
    let bad = TestReplica::start_with_store(settings, store, listener).await;
    bad.client().await.put(&entries(50)).await.unwrap();
    corrupt.store(true, Ordering::Relaxed);

    let peer = bad.addr.to_string();
    let puller = TestReplica::start(dirs[1].path(), |c| c.replication.peers = vec![peer]).await;
    let name = format!(
        "mindoo_replica_peer_errors_total{{kind=\"data_loss\",peer=\"{}\"}}",
        bad.addr
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while try_metric(&puller.metrics_text().await, &name).unwrap_or(0.0) < 2.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no data_loss recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(puller.entry_count().await, 0, "nothing corrupt is stored");
    let text = puller.metrics_text().await;
    assert!(
        metric(
            &text,
            "mindoo_replica_entries_rejected_total{reason=\"id_mismatch\"}"
        ) >= 2.0
    );

    // The peer is repaired: the pair recovers on its own.
    corrupt.store(false, Ordering::Relaxed);
    puller.wait_for_count(50, 10).await;
    puller.stop().await.unwrap();
    bad.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_filters_and_self_detection() {
    let dirs = dirs(2);
    let source = TestReplica::start(dirs[0].path(), |_| {}).await;
    let other = Namespace::new("acme", "other").unwrap();
    let notes = entries(30);
    source.client().await.put(&notes).await.unwrap();
    source
        .client()
        .await
        .put(&sample_entries(&other, &author(), 20, 64))
        .await
        .unwrap();

    let listener = bind().await;
    let me = listener.local_addr().unwrap();
    let source_addr = source.addr.to_string();
    // Its own address under another name: found out by incarnation.
    let myself = format!("localhost:{}", me.port());
    let puller = TestReplica::start_on(dirs[1].path(), listener, |c| {
        c.replication.peers = vec![source_addr, myself.clone()];
        c.replication.namespaces = vec!["acme/notes".into()];
    })
    .await;
    puller.wait_for_count(30, 10).await;
    // Once the cursor has passed the source's whole log, the 20 records of
    // acme/other included, the puller holds acme/notes and nothing else.
    wait_for_cursor(&puller, &source.addr.to_string(), 50, 10).await;
    assert_holds_exactly(&puller, &ns(), &notes).await;
    assert_eq!(puller.entry_count().await, 30, "only acme/notes is pulled");

    let channel = mindoo_replica::client::endpoint(&me.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = ReplicationClient::new(channel.clone())
            .peer_status(proto::PeerStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if status.peers.iter().any(|p| p.peer == myself && p.is_self) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    puller.stop().await.unwrap();
    source.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_are_discovered_from_a_dns_name() {
    let dirs = dirs(2);
    let source = TestReplica::start(dirs[0].path(), |_| {}).await;
    source.client().await.put(&entries(25)).await.unwrap();
    let name = format!("localhost:{}", source.addr.port());
    let puller = TestReplica::start(dirs[1].path(), |c| {
        c.replication.discovery = name;
        c.replication.discovery_interval_ms = 200;
    })
    .await;
    puller.wait_for_count(25, 10).await;
    let series = format!(
        "mindoo_replica_peer_entries_pulled_total{{peer=\"{}\"}}",
        source.addr
    );
    let text = puller.metrics_when(&series, 25.0, 10).await;
    assert_eq!(metric(&text, &series), 25.0);
    puller.stop().await.unwrap();
    source.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_peer_is_pulled_from_the_start_again() {
    let dirs = dirs(3);
    let listener = bind().await;
    let addr = listener.local_addr().unwrap();
    let source = TestReplica::start_on(dirs[0].path(), listener, |_| {}).await;
    let batch = entries(120);
    source.client().await.put(&batch[..60]).await.unwrap();
    let peer = addr.to_string();
    let puller = TestReplica::start(dirs[1].path(), |c| c.replication.peers = vec![peer]).await;
    puller.wait_for_count(60, 10).await;

    // The peer is rebuilt on the same address: a new database (new
    // incarnation) holding some old entries and some new ones, written
    // before the puller reaches it, as a restored replica would be.
    source.stop().await.unwrap();
    let node = addr.to_string();
    let filling = TestReplica::start(dirs[2].path(), |c| c.replication.advertise = node).await;
    filling.client().await.put(&batch[30..]).await.unwrap();
    filling.stop().await.unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let rebuilt = TestReplica::start_on(dirs[2].path(), listener, |_| {}).await;

    puller.wait_for_count(120, 20).await;
    assert_holds_exactly(&puller, &ns(), &batch).await;
    let text = puller.metrics_text().await;
    let resets = format!("mindoo_replica_peer_cursor_resets_total{{peer=\"{addr}\"}}");
    assert_eq!(metric(&text, &resets), 1.0);
    // Old entries were recognised by id: each body crossed once (60 from
    // the source, the 60 new ones from the rebuilt peer; the 30 the puller
    // held were not fetched again), and none reached the store twice.
    let bytes = format!("mindoo_replica_peer_bytes_pulled_total{{peer=\"{addr}\"}}");
    let written: usize = batch.iter().map(|e| e.data().len()).sum();
    assert_eq!(
        metric(&text, &bytes),
        written as f64,
        "bytes pulled from {addr}, for {written} bytes written"
    );
    let duplicates = metric(&text, "mindoo_replica_entries_duplicate_total");
    assert_eq!(duplicates, 0.0, "entries the puller's store already held");
    puller.stop().await.unwrap();
    rebuilt.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_and_spoke_routes_everything_through_the_hub() {
    let dirs = dirs(3);
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(bind().await);
    }
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let hub = addrs[0].clone();
    let mut replicas = Vec::new();
    for ((dir, listener), me) in dirs.iter().zip(listeners).zip(&addrs) {
        let (peers, hub, me) = (addrs.clone(), hub.clone(), me.clone());
        replicas.push(
            TestReplica::start_on(dir.path(), listener, |c| {
                c.replication.peers = peers;
                c.replication.hubs = vec![hub];
                c.replication.advertise = me;
            })
            .await,
        );
    }
    // Written to one spoke, read from the other: only through the hub.
    replicas[1].client().await.put(&entries(50)).await.unwrap();
    for r in &replicas {
        r.wait_for_count(50, 20).await;
    }
    let from_hub = format!(
        "mindoo_replica_peer_entries_pulled_total{{peer=\"{}\"}}",
        addrs[0]
    );
    let spoke = replicas[2].metrics_when(&from_hub, 50.0, 10).await;
    assert_eq!(metric(&spoke, &from_hub), 50.0);
    let other_spoke = format!(
        "mindoo_replica_peer_sessions_total{{peer=\"{}\"}}",
        addrs[1]
    );
    assert_eq!(
        try_metric(&spoke, &other_spoke),
        None,
        "spokes never pull from spokes"
    );
    for r in replicas {
        r.stop().await.unwrap();
    }
}
