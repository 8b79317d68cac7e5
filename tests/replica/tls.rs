//! Mutual TLS between replicas, over real gRPC, with certificates made in
//! the test: who gets in, who does not, and that the connection limits and
//! deadlines keep their meaning under TLS.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mindoo_replica::client::{Dial, StoreClient};
use mindoo_replica::config::RawConfig;
use mindoo_replica::proto;
use mindoo_replica::proto::replication_client::ReplicationClient;
use mindoo_replica::tls::TlsFiles;
use mindoo_replica::tools::certs::MeshCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::harness::*;

/// A replica's certificate names it, and its loopback address (how the
/// tests' peers dial each other).
const REPLICA_NAMES: [&str; 2] = ["replica.mesh.test", "127.0.0.1"];
const OPERATOR: &str = "operator.mesh.test";

fn with_tls(c: &mut RawConfig, files: &TlsFiles) {
    c.tls.enabled = true;
    c.tls.cert_file = files.cert.display().to_string();
    c.tls.key_file = files.key.display().to_string();
    c.tls.ca_file = files.ca.display().to_string();
    c.tls.operator_names = vec![OPERATOR.into()];
}

fn client_tls(ca: &Path, identity: Option<&TlsFiles>) -> Arc<rustls::ClientConfig> {
    let identity = identity.map(|f| (f.cert.as_path(), f.key.as_path()));
    mindoo_replica::tls::client(ca, identity).unwrap()
}

async fn tls_client(replica: &TestReplica, ca: &Path) -> StoreClient {
    // Signed with a client key: replicas in a mesh require it (those
    // started alone in these tests do not, and ignore it).
    let dial = Dial {
        tls: Some(client_tls(ca, None)),
        key: Some(ed25519_dalek::SigningKey::from_bytes(&[5; 32])),
    };
    StoreClient::connect_with(&replica.addr.to_string(), &dial)
        .await
        .unwrap()
}

/// Waits until `replica` holds `count` entries, read over TLS.
async fn wait_for_count_tls(replica: &TestReplica, ca: &Path, count: u64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut client = tls_client(replica, ca).await;
    loop {
        let held = client.head().await.unwrap().entry_count;
        if held == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} holds {held} entries, expected {count}",
            replica.addr
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` replicas in a full mesh over mutual TLS, each with a certificate of
/// its own from one CA (in `certs`), requiring clients to sign requests.
async fn tls_mesh(dirs: &[tempfile::TempDir], ca: &MeshCa, certs: &Path) -> Vec<TestReplica> {
    let files: Vec<TlsFiles> = (0..dirs.len())
        .map(|i| {
            ca.write(certs, &format!("replica-{i}"), &REPLICA_NAMES)
                .unwrap()
        })
        .collect();
    mesh_with(dirs, |i, c| {
        with_tls(c, &files[i]);
        // Clients sign their requests; peers are known by their
        // certificates and need no key.
        c.auth.clients = "required".into();
        c.auth.readers = vec!["*".into()];
        c.auth.writers = vec!["*".into()];
    })
    .await
}

/// One replica over TLS, adjusted by `tweak`: the replica, its CA, the
/// directory of certificates (`ca.pem` among them) and of its data.
async fn secured(
    tweak: impl FnOnce(&mut RawConfig),
) -> (TestReplica, MeshCa, tempfile::TempDir, tempfile::TempDir) {
    let certs = tempfile::tempdir().unwrap();
    let ca = MeshCa::new("mesh CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = ca.write(certs.path(), "replica", &REPLICA_NAMES).unwrap();
    let replica = TestReplica::start(dir.path(), |c| {
        with_tls(c, &files);
        tweak(c);
    })
    .await;
    (replica, ca, certs, dir)
}

async fn peer_status_with(
    replica: &TestReplica,
    tls: Arc<rustls::ClientConfig>,
) -> Result<proto::PeerStatusResponse, tonic::Status> {
    let channel = mindoo_replica::client::channel(&replica.addr.to_string(), Some(tls))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    ReplicationClient::new(channel)
        .peer_status(proto::PeerStatusRequest {})
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_pair_over_mutual_tls_and_admin_calls_need_a_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let ca = MeshCa::new("mesh CA").unwrap();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mesh = tls_mesh(&dirs, &ca, certs.path()).await;
    let ca_file = certs.path().join("ca.pem");

    // A client reaches a replica over TLS; what it writes reaches the
    // other replica over mutual TLS.
    let batch = entries(20);
    tls_client(&mesh[0], &ca_file)
        .await
        .put(&batch)
        .await
        .unwrap();
    wait_for_count_tls(&mesh[1], &ca_file, 20, 20).await;

    // Admin calls: an operator's certificate, or a peer's, gets in; a
    // client with none does not.
    let operator = ca.write(certs.path(), "operator", &[OPERATOR]).unwrap();
    let status = peer_status_with(&mesh[1], client_tls(&ca_file, Some(&operator)))
        .await
        .unwrap();
    let pulled: u64 = status.peers.iter().map(|p| p.entries_pulled).sum();
    assert_eq!(pulled, 20, "{status:?}");
    let peer = ca.write(certs.path(), "peer", &REPLICA_NAMES).unwrap();
    peer_status_with(&mesh[1], client_tls(&ca_file, Some(&peer)))
        .await
        .unwrap();
    let refused = peer_status_with(&mesh[1], client_tls(&ca_file, None))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    for r in mesh {
        r.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_not_of_the_mesh_are_refused() {
    let (replica, ca, certs, _dir) = secured(|_| {}).await;
    let ca_file = certs.path().join("ca.pem");

    let other_ca = MeshCa::new("another CA").unwrap();
    let now = time::OffsetDateTime::now_utc();
    let day = Duration::from_secs(86_400);
    let expired = ca
        .issue_valid(&REPLICA_NAMES, now - 2 * day, now - day)
        .unwrap();
    let cases = [
        (
            "from another CA",
            other_ca
                .write(&certs.path().join("other"), "x", &REPLICA_NAMES)
                .unwrap(),
        ),
        (
            "expired",
            ca.write_issued(&certs.path().join("expired"), "x", &expired)
                .unwrap(),
        ),
        (
            "naming no peer or operator",
            ca.write(&certs.path().join("stranger"), "x", &["stranger.example"])
                .unwrap(),
        ),
    ];
    for (what, identity) in &cases {
        // The client trusts the mesh CA; the replica must not trust it.
        let tls = client_tls(&ca_file, Some(identity));
        let outcome = async {
            let dial = Dial {
                tls: Some(tls),
                key: None,
            };
            let mut client = StoreClient::connect_with(&replica.addr.to_string(), &dial)
                .await
                .map_err(|e| e.to_string())?;
            client.head().await.map_err(|e| e.to_string())
        }
        .await;
        assert!(outcome.is_err(), "a certificate {what} got in: {outcome:?}");
    }
    let text = replica.metrics_text().await;
    let failed = metric(
        &text,
        "mindoo_replica_connection_tls_handshake_failures_total",
    );
    assert!(failed >= 3.0, "{failed} handshakes failed");
    // Nothing was stored, and a client with no certificate is served.
    let head = tls_client(&replica, &ca_file).await.head().await.unwrap();
    assert_eq!(head.entry_count, 0);
    replica.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_a_tls_port_fails_cleanly_and_quickly() {
    let (replica, _ca, _certs, _dir) = secured(|c| {
        c.server.handshake_timeout_ms = 60_000;
    })
    .await;
    let started = Instant::now();
    let outcome = async {
        let mut client = StoreClient::connect_with(&replica.addr.to_string(), &Dial::default())
            .await
            .map_err(|e| e.to_string())?;
        client.head().await.map_err(|e| e.to_string())
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), outcome)
        .await
        .expect("a plaintext call ends, not hangs");
    assert!(outcome.is_err(), "{outcome:?}");
    // Not left to the handshake deadline: the first bytes are not TLS.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    replica.stop().await.unwrap();
}

/// Reads until the server closes `conn`; false if `within` passes first.
async fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let read_to_end = async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_to_end).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_deadline_covers_the_tls_handshake() {
    let (replica, _ca, certs, _dir) = secured(|c| {
        c.server.handshake_timeout_ms = 300;
    })
    .await;
    // One says nothing; one starts a TLS record and stops.
    let mut silent = TcpStream::connect(replica.addr).await.unwrap();
    let mut half = TcpStream::connect(replica.addr).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(10)).await);
    assert!(closed_within(&mut half, Duration::from_secs(10)).await);
    assert!(started.elapsed() >= Duration::from_millis(200));
    let text = replica.metrics_text().await;
    let timed_out = metric(&text, "mindoo_replica_connection_handshake_timeouts_total");
    assert!(timed_out >= 2.0, "{timed_out}");
    // A client that completes the handshake is served meanwhile.
    let ca_file = certs.path().join("ca.pem");
    tls_client(&replica, &ca_file).await.head().await.unwrap();
    replica.stop().await.unwrap();
}

/// Follows `replica`'s log over its own TLS connection.
async fn watcher(replica: &TestReplica, ca: &Path) -> tonic::Streaming<proto::LogBatch> {
    tls_client(replica, ca)
        .await
        .watch_from_head(false)
        .await
        .unwrap()
}

/// The next batch `watch` delivers holds `count` records.
async fn receives(watch: &mut tonic::Streaming<proto::LogBatch>, count: usize) {
    let mut got = 0;
    while got < count {
        let batch = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("the watch delivers")
            .expect("the watch is still open")
            .expect("not ended");
        got += batch.records.len();
    }
}

async fn wait_for_metric(replica: &TestReplica, name: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = try_metric(&replica.metrics_text().await, name).unwrap_or(0.0);
        if value >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {value}, expected >= {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tls_connections_are_closed_and_busy_ones_kept() {
    let (replica, _ca, certs, _dir) = secured(|c| {
        c.server.idle_connection_timeout_ms = 300;
    })
    .await;
    let ca_file = certs.path().join("ca.pem");
    let mut busy = watcher(&replica, &ca_file).await;
    // A connection with one call made, then none open.
    let mut idle = tls_client(&replica, &ca_file).await;
    idle.head().await.unwrap();
    wait_for_metric(&replica, "mindoo_replica_connection_idle_closed_total", 1.0).await;
    // The watch, open longer than the idle timeout, is still served.
    tls_client(&replica, &ca_file)
        .await
        .put(&entries(3))
        .await
        .unwrap();
    receives(&mut busy, 3).await;
    replica.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_an_idle_tls_connection_gives_way() {
    let (replica, _ca, certs, _dir) = secured(|c| {
        c.server.max_connections = 2;
    })
    .await;
    let ca_file = certs.path().join("ca.pem");
    let mut busy = watcher(&replica, &ca_file).await;
    let mut idle = tls_client(&replica, &ca_file).await;
    idle.head().await.unwrap();
    // A third connection: the idle one is closed to make room.
    let mut third = tls_client(&replica, &ca_file).await;
    third.put(&entries(3)).await.unwrap();
    let text = replica.metrics_text().await;
    assert_eq!(
        metric(&text, "mindoo_replica_connections_evicted_total"),
        1.0
    );
    receives(&mut busy, 3).await;
    replica.stop().await.unwrap();
}

/// The certificate a TLS server at `addr` presents now.
async fn presented_certificate(addr: std::net::SocketAddr, ca: &Path) -> Vec<u8> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("replica.mesh.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_tls(ca, None))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_taken_up_without_a_restart() {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let (replica, ca, certs, _dir) = secured(|_| {}).await;
    let ca_file = certs.path().join("ca.pem");
    let first = presented_certificate(replica.addr, &ca_file).await;
    let mut session = watcher(&replica, &ca_file).await;

    // The files are replaced, as a Secret update or cert-manager does.
    let renewed = ca.issue(&REPLICA_NAMES).unwrap();
    ca.write_issued(certs.path(), "replica", &renewed).unwrap();
    let expected = CertificateDer::from_pem_slice(renewed.cert_pem.as_bytes())
        .unwrap()
        .to_vec();
    assert_ne!(first, expected);
    let deadline = Instant::now() + Duration::from_secs(10);
    while presented_certificate(replica.addr, &ca_file).await != expected {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate is not in use"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The session opened before the rotation goes on.
    tls_client(&replica, &ca_file)
        .await
        .put(&entries(2))
        .await
        .unwrap();
    receives(&mut session, 2).await;
    replica.stop().await.unwrap();
}

#[test]
fn tls_settings_are_checked_and_keys_never_quoted() {
    let certs = tempfile::tempdir().unwrap();
    let ca = MeshCa::new("mesh CA").unwrap();
    let files = ca.write(certs.path(), "replica", &REPLICA_NAMES).unwrap();
    let base = |c: &mut RawConfig| with_tls(c, &files);

    let mut raw = RawConfig::default();
    raw.tls.enabled = true;
    let e = raw.validate().unwrap_err().to_string();
    assert!(e.contains("tls.cert_file"), "{e}");

    let secret =
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n";
    let bad_key = certs.path().join("bad.key");
    std::fs::write(&bad_key, secret).unwrap();
    let mut raw = RawConfig::default();
    base(&mut raw);
    raw.tls.key_file = bad_key.display().to_string();
    let e = raw.validate().unwrap_err().to_string();
    assert!(e.contains("tls.key_file"), "{e}");
    assert!(
        !e.contains("c2VjcmV0"),
        "the key's contents are quoted: {e}"
    );

    let mut raw = RawConfig::default();
    base(&mut raw);
    raw.tls.ca_file = certs.path().join("missing.pem").display().to_string();
    let e = raw.validate().unwrap_err().to_string();
    assert!(
        e.contains("tls.ca_file") && e.contains("missing.pem"),
        "{e}"
    );

    let mut raw = RawConfig::default();
    base(&mut raw);
    raw.tls.peer_names = vec!["not a name".into()];
    let e = raw.validate().unwrap_err().to_string();
    assert!(e.contains("tls.peer_names"), "{e}");

    let mut raw = RawConfig::default();
    base(&mut raw);
    raw.validate().unwrap();
    // `config print` shows where the key is, never what it holds.
    let key = std::fs::read_to_string(&files.key).unwrap();
    let printed = raw.to_toml();
    let body = key.lines().nth(1).unwrap();
    assert!(!printed.contains(body));
}
