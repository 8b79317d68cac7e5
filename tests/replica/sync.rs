//! The sync engine between real replicas: copied data directories, peers
//! that move to a new address, stale cursors, the smallest valid limits and
//! the memory a pull may hold.

use std::net::SocketAddr;
use std::time::Duration;

use mindoo_replica::bench::sample_entries;
use mindoo_replica::local::{ChildListeners, ReplicaProcess};
use mindoo_replica::proto;
use mindoo_replica::proto::replication_client::ReplicationClient;

use crate::harness::*;

const EXE: &str = env!("CARGO_BIN_EXE_mindoo-replica");

fn dirs(n: usize) -> Vec<tempfile::TempDir> {
    (0..n).map(|_| tempfile::tempdir().unwrap()).collect()
}

async fn peer_status(addr: SocketAddr) -> proto::PeerStatusResponse {
    let channel = mindoo_replica::client::endpoint(&addr.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    ReplicationClient::new(channel)
        .peer_status(proto::PeerStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for file in std::fs::read_dir(from).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), to.join(file.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_copies_of_one_data_directory_replicate_with_each_other() {
    let dirs = dirs(2);
    let la = bind().await;
    let a_addr = la.local_addr().unwrap();
    let a = TestReplica::start_on(dirs[0].path(), la, |_| {}).await;
    let batch = entries(60);
    a.client().await.put(&batch[..40]).await.unwrap();
    a.stop().await.unwrap();
    // A volume snapshot of A becomes B's data directory.
    copy_dir(dirs[0].path(), dirs[1].path());

    let la = tokio::net::TcpListener::bind(a_addr).await.unwrap();
    let lb = bind().await;
    let b_addr = lb.local_addr().unwrap();
    let a = TestReplica::start_on(dirs[0].path(), la, |c| {
        c.replication.peers = vec![b_addr.to_string()]
    })
    .await;
    let b = TestReplica::start_on(dirs[1].path(), lb, |c| {
        c.replication.peers = vec![a_addr.to_string()]
    })
    .await;
    let (ha, hb) = (
        a.client().await.head().await.unwrap(),
        b.client().await.head().await.unwrap(),
    );
    assert_ne!(ha.incarnation, hb.incarnation, "the copy took a new one");
    a.client().await.put(&batch[40..50]).await.unwrap();
    b.client().await.put(&batch[50..]).await.unwrap();
    a.wait_for_count(60, 20).await;
    b.wait_for_count(60, 20).await;
    for (r, other) in [(&a, b_addr), (&b, a_addr)] {
        let status = peer_status(r.addr).await;
        let p = status
            .peers
            .iter()
            .find(|p| p.address == other.to_string())
            .unwrap();
        assert!(!p.is_self && !p.shares_incarnation, "{p:?}");
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_back_at_a_new_address_is_not_pulled_again() {
    let dirs = dirs(2);
    let node = "replica-s.mesh.svc:7700";
    let source =
        TestReplica::start(dirs[0].path(), |c| c.replication.advertise = node.into()).await;
    let batch = sample_entries(&ns(), &author(), 105, 1024);
    source.client().await.put(&batch[..100]).await.unwrap();
    let discover = |port: u16| format!("127.0.0.1:{port}");
    let puller = TestReplica::start(dirs[1].path(), |c| {
        c.replication.discovery = discover(source.addr.port());
        c.replication.discovery_interval_ms = 100;
    })
    .await;
    puller.wait_for_count(100, 20).await;
    let bytes = format!("mindoo_replica_peer_bytes_pulled_total{{peer=\"{node}\"}}");
    let before = metric(&puller.metrics_text().await, &bytes);
    assert!(before >= 100.0 * 1024.0, "{before}");

    // The pod restarts elsewhere: same data, same name, new address.
    source.stop().await.unwrap();
    let source =
        TestReplica::start(dirs[0].path(), |c| c.replication.advertise = node.into()).await;
    source.client().await.put(&batch[100..]).await.unwrap();
    puller
        .peers
        .send_modify(|s| s.discovery = Some(discover(source.addr.port())));
    puller.wait_for_count(105, 20).await;
    let after = metric(&puller.metrics_text().await, &bytes);
    let moved = after - before;
    assert!(
        moved <= 6.0 * 1300.0,
        "{moved} bytes pulled again for 5 new entries of 1 KiB"
    );
    puller.stop().await.unwrap();
    source.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_of_peers_that_left_are_removed_after_the_retention() {
    let dirs = dirs(2);
    let source = TestReplica::start(dirs[0].path(), |_| {}).await;
    source.client().await.put(&entries(10)).await.unwrap();
    let peer = source.addr.to_string();
    let puller = TestReplica::start(dirs[1].path(), |c| {
        c.replication.peers = vec![peer];
        c.replication.cursor_retention_ms = 1_000;
    })
    .await;
    puller.wait_for_count(10, 10).await;
    let gauge = "mindoo_replica_peer_cursors";
    let wait_for_gauge = |want: f64| {
        let puller = &puller;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let now = metric(&puller.metrics_text().await, gauge);
                if now == want {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{gauge} is {now}, expected {want}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // Kept while the peer is pulled, however old.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    wait_for_gauge(1.0).await;
    // The peer leaves the topology: its cursor goes once it is old enough.
    puller.peers.send_modify(|s| s.peers.clear());
    wait_for_gauge(0.0).await;
    puller.stop().await.unwrap();
    source.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_with_the_smallest_valid_limits_converges() {
    let dirs = dirs(3);
    let mut listeners = Vec::new();
    for _ in &dirs {
        listeners.push(bind().await);
    }
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let mut replicas = Vec::new();
    for (dir, listener) in dirs.iter().zip(listeners) {
        let peers = addrs.clone();
        replicas.push(
            TestReplica::start_on(dir.path(), listener, |c| {
                c.replication.peers = peers;
                c.limits.max_message_bytes = 64 << 10;
                c.limits.max_ids_per_request = 1;
                c.limits.max_batch_entries = 1;
                c.limits.max_page = 1;
                c.limits.max_entry_bytes = 60 << 10;
            })
            .await,
        );
    }
    // Entries big enough that only a few fit in one message.
    let batch = sample_entries(&ns(), &author(), 45, 12 << 10);
    for (i, e) in batch.iter().enumerate() {
        let out = replicas[i % 3]
            .client()
            .await
            .put(std::slice::from_ref(e))
            .await
            .unwrap();
        assert_eq!(out.len(), 1);
    }
    for r in &replicas {
        r.wait_for_count(45, 30).await;
    }
    for r in replicas {
        r.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_of_large_entries_from_several_peers_stay_within_the_memory_budget() {
    let dirs = dirs(4);
    let mut sources = Vec::new();
    for dir in &dirs[..3] {
        sources.push(TestReplica::start(dir.path(), |_| {}).await);
    }
    let peers = sources
        .iter()
        .map(|s| s.addr.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let listeners = ChildListeners::bind_loopback().unwrap();
    let puller = ReplicaProcess::spawn_on(
        EXE.as_ref(),
        dirs[3].path(),
        listeners,
        &[
            ("MINDOO_REPLICA__REPLICATION__PEERS", &peers),
            ("MINDOO_REPLICA__REPLICATION__MAX_INFLIGHT_MB", "16"),
            ("MINDOO_REPLICA__REPLICATION__MAX_PEER_INFLIGHT_MB", "8"),
            ("MINDOO_REPLICA__STORAGE__BLOCK_CACHE_MB", "8"),
            ("MINDOO_REPLICA__STORAGE__WRITE_BUFFER_MB", "8"),
        ],
    )
    .await
    .unwrap();
    let mut client = mindoo_replica::client::StoreClient::connect(&puller.grpc.to_string())
        .await
        .unwrap();
    let (_, baseline) = puller.memory().unwrap();

    // Caught up and following ids only; then each peer gets 80 MiB of 1 MiB
    // entries at once.
    for s in &sources {
        let batch = sample_entries(&ns(), &author(), 80, 1000 << 10);
        for chunk in batch.chunks(2) {
            s.client().await.put(chunk).await.unwrap();
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while client.head().await.unwrap().entry_count < 240 {
        assert!(tokio::time::Instant::now() < deadline, "did not converge");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, peak) = puller.memory().unwrap();
    let grown_mb = peak.saturating_sub(baseline) as f64 / 1e6;
    // 16 MiB of pull budget, 8 MiB of block cache, up to 3 × 8 MiB of
    // memtables, per-connection HTTP/2 windows; 240 MiB passed through.
    assert!(
        grown_mb < 140.0,
        "peak RSS grew by {grown_mb:.0} MB (baseline {:.0} MB)",
        baseline as f64 / 1e6
    );
    puller.stop().await.unwrap();
    for s in sources {
        s.stop().await.unwrap();
    }
}
