//! Hostile clients against one replica: raw TCP and hand-written HTTP/2
//! frames that stall handshakes, flood resets or header fragments. After
//! each, a well-behaved client still writes and reads, and the replica's
//! connection count comes back down.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::*;

use mindoo_replica::tools::h2frames as frames;

/// A well-behaved client writes and reads back within `within`.
async fn still_serves(replica: &TestReplica, within: Duration) {
    served_from(CLIENT, replica.addr, within).await;
}

/// A connection that has started HTTP/2 (preface and SETTINGS sent).
async fn http2_connection(replica: &TestReplica) -> TcpStream {
    let mut conn = TcpStream::connect(replica.addr).await.unwrap();
    conn.write_all(frames::PREFACE).await.unwrap();
    conn.write_all(&frames::settings()).await.unwrap();
    conn
}

async fn open_connections(replica: &TestReplica) -> f64 {
    metric(
        &replica.metrics_text().await,
        "mindoo_replica_connections_open",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_handshakes_beyond_the_cap_are_shed() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |c| {
        c.server.max_connections = 8;
        c.server.handshake_timeout_ms = 300;
    })
    .await;
    // Far more silent connections than the replica keeps.
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(TcpStream::connect(replica.addr).await.unwrap());
    }
    // One that sends half a preface and stops.
    let mut half = TcpStream::connect(replica.addr).await.unwrap();
    half.write_all(&frames::PREFACE[..10]).await.unwrap();

    // Each silent connection is accepted and makes the oldest idle one
    // give way; the well-behaved client gets in the same way.
    still_serves(&replica, Duration::from_secs(20)).await;
    assert!(closed_by_server(&mut half, Duration::from_secs(20)).await);
    // The oldest gave way to newer ones; those left timed out.
    let text = replica.metrics_text().await;
    let timed_out = metric(&text, "mindoo_replica_connection_handshake_timeouts_total");
    let evicted = metric(&text, "mindoo_replica_connections_evicted_total");
    assert!(
        timed_out >= 1.0 && timed_out + evicted >= 41.0,
        "{timed_out} + {evicted}"
    );
    assert!(metric(&text, "mindoo_replica_connections_open") <= 8.0);
    drop(silent);
    replica.stop().await.unwrap();
}

/// A connection with no call open is closed after the idle timeout; one
/// with a call open stays however long the call lasts; a client whose idle
/// connection was closed connects again on its next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_busy_ones_kept() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |c| {
        c.server.idle_connection_timeout_ms = 400;
    })
    .await;
    let mut idle = http2_connection(&replica).await;
    let mut health = HealthClient::new(replica.channel().await)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(health.message().await.unwrap().is_some());
    let mut client = replica.client().await;
    client.put(&entries(3)).await.unwrap();

    assert!(
        closed_by_server(&mut idle, Duration::from_secs(5)).await,
        "a connection without calls must be closed after the idle timeout"
    );
    // Well past the timeout, the Watch's connection is still there.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let text = replica.metrics_text().await;
    assert!(metric(&text, "mindoo_replica_connection_idle_closed_total") >= 2.0);
    assert_eq!(
        metric(
            &text,
            "mindoo_replica_grpc_requests_in_flight{method=\"grpc.health.v1.Health/Watch\"}"
        ),
        1.0,
        "the health Watch is still open"
    );
    // The put's connection went idle and was closed: the client reconnects.
    client.put(&entries(4)).await.unwrap();
    assert_eq!(replica.entry_count().await, 7);
    drop(health);
    replica.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_ends_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |_| {}).await;
    let mut conn = http2_connection(&replica).await;
    // Open and immediately reset thousands of calls.
    let request = frames::request("/mindoo.replica.v1.Store/Head");
    let mut burst = Vec::new();
    for i in 0..5_000u32 {
        let stream = 2 * i + 1;
        burst.extend(frames::headers(stream, frames::END_HEADERS, &request));
        burst.extend(frames::rst(stream));
    }
    // The server may close before everything is written.
    let _ = conn.write_all(&burst).await;
    assert!(
        closed_by_server(&mut conn, Duration::from_secs(10)).await,
        "a reset flood must end the connection"
    );
    still_serves(&replica, Duration::from_secs(5)).await;
    replica.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_ends_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |_| {}).await;
    let mut conn = http2_connection(&replica).await;
    // A header block that never ends: HEADERS without END_HEADERS, then
    // CONTINUATION frames of junk headers, far beyond any header limit.
    let request = frames::request("/mindoo.replica.v1.Store/Head");
    conn.write_all(&frames::headers(1, frames::END_STREAM, &request))
        .await
        .unwrap();
    let filler = frames::block(&[("x-filler", &"y".repeat(100))]);
    let mut closed = false;
    for _ in 0..20_000 {
        if conn
            .write_all(&frames::continuation(1, 0, &filler))
            .await
            .is_err()
        {
            closed = true;
            break;
        }
    }
    assert!(
        closed || closed_by_server(&mut conn, Duration::from_secs(10)).await,
        "an endless header block must end the connection"
    );
    still_serves(&replica, Duration::from_secs(5)).await;
    replica.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_http2_is_dropped_and_slots_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |c| c.server.max_connections = 4).await;
    for _ in 0..20 {
        let mut conn = TcpStream::connect(replica.addr).await.unwrap();
        let _ = conn.write_all(&[0xAB; 4096]).await;
        assert!(closed_by_server(&mut conn, Duration::from_secs(10)).await);
    }
    still_serves(&replica, Duration::from_secs(5)).await;
    // Only the well-behaved client's connection may still be open.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while open_connections(&replica).await > 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "slots come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replica.stop().await.unwrap();
}

/// Calls that never end on their own do not hold a shutdown: a health
/// Watch, a Watch whose reader stopped reading (its window closed), and a
/// unary call whose body never came. SIGTERM still exits 0 within the
/// shutdown delay plus the drain deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_calls_end_within_the_drain_deadline() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("MINDOO_REPLICA__SERVER__SHUTDOWN_DELAY_MS", "500"),
        ("MINDOO_REPLICA__SERVER__DRAIN_TIMEOUT_MS", "1500"),
    ];
    let exe = env!("CARGO_BIN_EXE_mindoo-replica");
    let replica =
        mindoo_replica::tools::child::ReplicaProcess::spawn(exe.as_ref(), dir.path(), false, &env)
            .await
            .unwrap();
    let addr = replica.grpc.to_string();
    let mut client = mindoo_replica::client::StoreClient::connect(&addr)
        .await
        .unwrap();
    client
        .put(&mindoo_replica::fixtures::sample_entries(
            &ns(),
            &author(),
            30,
            60_000,
        ))
        .await
        .unwrap();

    // A health Watch.
    let channel = mindoo_replica::client::endpoint(&addr)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(health.message().await.unwrap().is_some());
    // A Watch with data whose reader announced a window of zero.
    let mut stalled = TcpStream::connect(replica.grpc).await.unwrap();
    stalled.write_all(&frames::unread_watch()).await.unwrap();
    // A unary call whose body never comes.
    let mut bodiless = TcpStream::connect(replica.grpc).await.unwrap();
    bodiless.write_all(frames::PREFACE).await.unwrap();
    bodiless.write_all(&frames::settings()).await.unwrap();
    let put = frames::request("/mindoo.replica.v1.Store/MissingIds");
    bodiless
        .write_all(&frames::headers(1, frames::END_HEADERS, &put))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = std::time::Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), replica.stop())
        .await
        .expect("the replica exits within its deadlines")
        .unwrap();
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    // 0.5 s delay + 1.5 s drain, plus the store's flush.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop((health, stalled, bodiless));
}

/// Under a low open-files limit, connections beyond what fits beside the
/// store make room by closing idle ones, or are refused: RocksDB keeps the
/// descriptors it needs for new WAL and table files, and no write fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_never_take_the_stores_descriptors() {
    use mindoo_replica::tools::child::{ReplicaProcess, http_get};

    mindoo_replica::connections::raise_open_files_limit().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("MINDOO_REPLICA__STORAGE__MAX_OPEN_FILES", "64"),
        // Small memtables: the writes below make RocksDB open many files.
        ("MINDOO_REPLICA__STORAGE__WRITE_BUFFER_MB", "1"),
        ("MINDOO_REPLICA__SERVER__HANDSHAKE_TIMEOUT_MS", "60000"),
    ];
    let exe = env!("CARGO_BIN_EXE_mindoo-replica");
    let replica = ReplicaProcess::spawn_with_open_files(exe.as_ref(), dir.path(), 400, &env)
        .await
        .unwrap();
    let metrics_addr = replica.metrics.unwrap();
    let mut client = mindoo_replica::client::StoreClient::connect(&replica.grpc.to_string())
        .await
        .unwrap();
    // More connections than the process has descriptors for, all silent.
    // Those beyond the listen backlog stay half-open on this side.
    let attempts = (0..500)
        .map(|_| tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(replica.grpc)));
    let silent: Vec<_> = futures::future::join_all(attempts).await;
    let accepted_by_kernel = silent.iter().filter(|c| matches!(c, Ok(Ok(_)))).count();
    assert!(accepted_by_kernel > 80, "{accepted_by_kernel}");
    let mut written = 0;
    for _ in 0..40 {
        let batch = mindoo_replica::fixtures::sample_entries(&ns(), &author(), 100, 4096);
        client.put(&batch).await.expect("writes go on");
        written += batch.len();
    }
    let text = http_get(metrics_addr, "/metrics").await.unwrap();
    assert_eq!(
        metric(&text, "mindoo_replica_store_write_errors_total"),
        0.0
    );
    assert_eq!(metric(&text, "mindoo_replica_store_writable"), 1.0);
    // 400 files, less 64 for the store and 256 spare.
    assert!(metric(&text, "mindoo_replica_connections_open") <= 80.0);
    assert_eq!(
        metric(&text, "mindoo_replica_entries_stored_total"),
        written as f64
    );

    // Once the attackers leave, their slots and descriptors come back.
    let during = replica.open_files();
    drop(silent);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = http_get(metrics_addr, "/metrics").await.unwrap();
        if metric(&text, "mindoo_replica_connections_open") == 1.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slots come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        replica.open_files() + 70 <= during,
        "{during} -> {}",
        replica.open_files()
    );
    let status = replica.stop().await.unwrap();
    assert!(status.success(), "{status}");
}
