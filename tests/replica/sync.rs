//! The sync engine between real replicas: copied data directories, peers
//! that move to a new address, stale cursors, the smallest valid limits and
//! the memory a pull may hold.

use std::net::SocketAddr;
use std::time::Duration;

use mindoo_replica::fixtures::sample_entries;
use mindoo_replica::proto;
use mindoo_replica::proto::replication_client::ReplicationClient;
use mindoo_replica::tools::child::{ChildListeners, ReplicaProcess};

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
    // Bytes received from the peer, under whatever name the puller knows it by.
    let bytes = "mindoo_replica_peer_bytes_pulled_total";
    let before = metric_sum(&puller.metrics_text().await, bytes);
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
    let after = metric_sum(&puller.metrics_text().await, bytes);
    // Known by its node identity, not by either address.
    let series = format!("{bytes}{{peer=\"{node}\"}}");
    assert_eq!(metric(&puller.metrics_text().await, &series), after);
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

/// The smallest limits a replica accepts: one id per request, one entry per
/// batch, 64 KiB messages.
fn smallest_limits(c: &mut mindoo_replica::config::RawConfig) {
    c.limits.max_message_bytes = 64 << 10;
    c.limits.max_ids_per_request = 1;
    c.limits.max_batch_entries = 1;
    c.limits.max_page = 1;
    c.limits.max_entry_bytes = 60 << 10;
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
    for (i, (dir, listener)) in dirs.iter().zip(listeners).enumerate() {
        // The third joins later.
        let peers = match i {
            2 => Vec::new(),
            _ => addrs.clone(),
        };
        replicas.push(
            TestReplica::start_on(dir.path(), listener, |c| {
                c.replication.peers = peers;
                smallest_limits(c);
            })
            .await,
        );
    }
    // More log records than fit in one message, and entries big enough that
    // only a few fit in one.
    let mut batch = sample_entries(&ns(), &author(), 1500, 16);
    batch.extend(sample_entries(&ns(), &author(), 12, 12 << 10));
    let mut writer = replicas[0].client().await;
    for e in &batch {
        writer.put(std::slice::from_ref(e)).await.unwrap();
    }
    replicas[1].wait_for_count(batch.len() as u64, 60).await;
    // The third already holds most of them, so it walks the others' logs for
    // ids and fetches the rest one id per request.
    let mut seed = replicas[2].client().await;
    for e in &batch[..1200] {
        seed.put(std::slice::from_ref(e)).await.unwrap();
    }
    replicas[2]
        .peers
        .send_modify(|s| s.peers = vec![addrs[0].clone(), addrs[1].clone()]);
    replicas[2].wait_for_count(batch.len() as u64, 60).await;
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
    for s in &sources {
        s.client().await.put(&entries(100)).await.unwrap();
    }
    let peers = sources
        .iter()
        .map(|s| s.addr.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let env = [
        ("MINDOO_REPLICA__REPLICATION__PEERS", peers.as_str()),
        ("MINDOO_REPLICA__REPLICATION__MAX_INFLIGHT_MB", "16"),
        ("MINDOO_REPLICA__REPLICATION__MAX_PEER_INFLIGHT_MB", "8"),
        ("MINDOO_REPLICA__STORAGE__BLOCK_CACHE_MB", "8"),
        ("MINDOO_REPLICA__STORAGE__WRITE_BUFFER_MB", "8"),
    ];
    let start = || async {
        let puller = ReplicaProcess::spawn_on(
            EXE.as_ref(),
            dirs[3].path(),
            ChildListeners::bind_loopback().unwrap(),
            &env,
        )
        .await
        .unwrap();
        let client = mindoo_replica::client::StoreClient::connect(&puller.grpc.to_string())
            .await
            .unwrap();
        (puller, client)
    };
    let wait = |client: &mut mindoo_replica::client::StoreClient, count: u64| {
        let mut client = client.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while client.head().await.unwrap().entry_count < count {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "did not reach {count}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // The puller holds everything, so it follows ids only...
    let (puller, mut client) = start().await;
    wait(&mut client, 300).await;
    puller.stop().await.unwrap();
    // ...and comes back to find 80 MiB of 1 MiB entries at each peer: one
    // log batch names them all.
    for s in &sources {
        let batch = sample_entries(&ns(), &author(), 80, 1000 << 10);
        for chunk in batch.chunks(2) {
            s.client().await.put(chunk).await.unwrap();
        }
    }
    let (puller, mut client) = start().await;
    wait(&mut client, 540).await;
    let (_, peak) = puller.memory().unwrap();
    let peak_mb = peak as f64 / 1e6;
    // 16 MiB of pull budget, 8 MiB of block cache, memtables of 8 MiB, and
    // per-connection HTTP/2 windows; 240 MiB passed through.
    eprintln!("puller peak RSS {peak_mb:.0} MB");
    assert!(peak_mb < 200.0, "peak RSS {peak_mb:.0} MB");
    puller.stop().await.unwrap();
    for s in sources {
        s.stop().await.unwrap();
    }
}
