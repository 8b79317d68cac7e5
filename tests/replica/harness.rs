//! Real replicas for tests: RocksDB in a temp dir, gRPC and metrics on
//! `127.0.0.1:0` listeners bound before the server starts.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use mindoo_replica::client::StoreClient;
use mindoo_replica::config::{RawConfig, Settings};
use mindoo_replica::entry::{Entry, Namespace};
use mindoo_replica::fixtures::sample_entries;
use mindoo_replica::replication::settings::ReplicationSettings;
use mindoo_replica::server::{self, Listeners};
use mindoo_replica::store::Store;
use mindoo_replica::tools::h2frames as frames;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

pub struct TestReplica {
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    /// Send new replication settings here to reload the peer set.
    pub peers: watch::Sender<ReplicationSettings>,
    /// Send a new access policy here to reload it.
    pub access: watch::Sender<mindoo_replica::access::AccessPolicy>,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Binds a listener on an ephemeral loopback port.
pub async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// The defaults, sized for tests, with RocksDB in `dir`.
pub fn test_config(dir: &Path) -> RawConfig {
    let mut raw = RawConfig::default();
    raw.storage.path = dir.display().to_string();
    raw.storage.block_cache_mb = 8;
    raw.storage.write_buffer_mb = 8;
    raw.server.drain_timeout_ms = 5_000;
    raw.server.shutdown_delay_ms = 0;
    raw.replication.backoff_initial_ms = 20;
    raw.replication.backoff_max_ms = 300;
    raw.replication.connect_timeout_ms = 1_000;
    // Clients sign nothing unless a test asks for client authentication.
    raw.auth.clients = "off".into();
    raw
}

impl TestReplica {
    /// Starts a replica on `dir` with the test config, adjusted by `tweak`.
    pub async fn start(dir: &Path, tweak: impl FnOnce(&mut RawConfig)) -> Self {
        Self::start_on(dir, bind().await, tweak).await
    }

    /// Starts a replica on an already-bound gRPC listener.
    pub async fn start_on(
        dir: &Path,
        grpc: TcpListener,
        tweak: impl FnOnce(&mut RawConfig),
    ) -> Self {
        let mut raw = test_config(dir);
        // Like a deployed replica, each advertises the name it is reached by.
        raw.replication.advertise = grpc.local_addr().unwrap().to_string();
        tweak(&mut raw);
        let settings = raw.validate().expect("test config is valid");
        let node = settings.node_name(grpc.local_addr().unwrap());
        let store = server::open_store(&settings.storage, &node).await.unwrap();
        Self::start_with_store(settings, store, grpc).await
    }

    /// Starts a replica serving `store` (for fault-injecting store wrappers).
    pub async fn start_with_store(
        settings: Settings,
        store: Arc<dyn Store>,
        grpc: TcpListener,
    ) -> Self {
        let listeners = Listeners {
            grpc,
            metrics: Some(bind().await),
        };
        let addr = listeners.grpc_addr().unwrap();
        let metrics = listeners.metrics_addr().unwrap();
        let stop = CancellationToken::new();
        let (peers, peers_rx) = watch::channel(settings.replication.clone());
        let (access, access_rx) = watch::channel(settings.auth.access.clone());
        let task = tokio::spawn(server::serve_with(
            settings,
            store,
            listeners,
            stop.clone().cancelled_owned(),
            peers_rx,
            access_rx,
        ));
        Self {
            addr,
            metrics,
            peers,
            access,
            stop,
            task,
        }
    }

    /// A channel to this replica, for calls no typed client makes.
    pub async fn channel(&self) -> tonic::transport::Channel {
        mindoo_replica::client::endpoint(&self.addr.to_string())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn client(&self) -> StoreClient {
        StoreClient::connect(&self.addr.to_string()).await.unwrap()
    }

    /// The metrics once `series` reads `value`, or after `secs` (then
    /// whatever they read). Entries are visible a moment before their
    /// fsync and counted by the pull after it, so a count seen in the
    /// store can lead the pull's metrics.
    pub async fn metrics_when(&self, series: &str, value: f64, secs: u64) -> String {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let text = self.metrics_text().await;
            if try_metric(&text, series) == Some(value) || tokio::time::Instant::now() > deadline {
                return text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    pub async fn metrics_text(&self) -> String {
        mindoo_replica::tools::child::http_get(self.metrics, "/metrics")
            .await
            .unwrap()
    }

    pub async fn entry_count(&self) -> u64 {
        self.client().await.head().await.unwrap().entry_count
    }

    /// Waits until this replica holds `count` entries, or panics after `secs`.
    pub async fn wait_for_count(&self, count: u64, secs: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let held = self.entry_count().await;
            if held == count {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "replica {} holds {held} entries, expected {count}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Begins a graceful shutdown without waiting for it.
    pub fn begin_stop(&self) {
        self.stop.cancel();
    }

    /// Shuts down gracefully and returns the server's result.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await?
    }
}

/// Starts a mesh member again on its address and directory, with the
/// mesh's peer list and its config adjusted by `tweak`.
pub async fn restart_member(
    dir: &Path,
    addr: SocketAddr,
    all: &[SocketAddr],
    tweak: impl FnOnce(&mut RawConfig),
) -> TestReplica {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let peers: Vec<String> = all.iter().map(|a| a.to_string()).collect();
    TestReplica::start_on(dir, listener, |c| {
        c.replication.peers = peers;
        c.replication.advertise = addr.to_string();
        tweak(c);
    })
    .await
}

/// `n` replicas in a full mesh: every listener is bound first, then each
/// replica starts with the complete peer list and its own address.
pub async fn mesh(dirs: &[tempfile::TempDir]) -> Vec<TestReplica> {
    mesh_with(dirs, |_, _| {}).await
}

/// As [`mesh`], with replica `i`'s config adjusted by `tweak(i, config)`.
pub async fn mesh_with(
    dirs: &[tempfile::TempDir],
    tweak: impl Fn(usize, &mut RawConfig),
) -> Vec<TestReplica> {
    let mut listeners = Vec::new();
    for _ in dirs {
        listeners.push(bind().await);
    }
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let mut replicas = Vec::new();
    for (i, ((dir, listener), me)) in dirs.iter().zip(listeners).zip(&addrs).enumerate() {
        let peers = addrs.clone();
        let me = me.clone();
        replicas.push(
            TestReplica::start_on(dir.path(), listener, |c| {
                c.replication.peers = peers;
                c.replication.advertise = me;
                tweak(i, c);
            })
            .await,
        );
    }
    replicas
}

pub fn ns() -> Namespace {
    Namespace::new("acme", "notes").unwrap()
}

pub fn author() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

pub fn entries(count: usize) -> Vec<Entry> {
    sample_entries(&ns(), &author(), count, 256)
}

/// The value of a metric line such as `name{labels}` in a text exposition.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    try_metric(text, name_and_labels)
        .unwrap_or_else(|| panic!("metric {name_and_labels} not found"))
}

/// As [`metric`], `None` when the series does not exist (yet).
pub fn try_metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

/// The sum of every series of metric `name`, whatever its labels.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Where attackers connect from; clients that must be served, and probes,
/// connect from addresses of their own, as on a network (loopback has them
/// all).
pub const ATTACKER: &str = "127.0.0.1";
pub const CLIENT: &str = "127.0.0.2";
pub const PROBE: &str = "127.0.0.3";

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A TCP connection to `to` from the loopback address `from`.
pub async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip(from), 0))?;
    socket.connect(to).await
}

/// A channel to `to` from the loopback address `from`.
pub async fn channel_from(from: &str, to: SocketAddr) -> Result<tonic::transport::Channel, String> {
    mindoo_replica::client::endpoint(&to.to_string())
        .unwrap()
        .local_address(Some(ip(from)))
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// A kubelet-style probe: a new connection, one health check, closed.
pub async fn probe(from: &str, to: SocketAddr, service: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let check = async {
        let mut health = HealthClient::new(channel_from(from, to).await?);
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map_err(|s| s.to_string())?
            .into_inner()
            .status;
        match status {
            1 => Ok(started.elapsed()),
            other => Err(format!("status {other}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(2), check)
        .await
        .map_err(|_| "no answer within 2 s".to_owned())?
}

/// A new client from `from` writes and reads back within `within`.
pub async fn served_from(from: &str, to: SocketAddr, within: Duration) {
    let work = async {
        let mut client = StoreClient::new(channel_from(from, to).await.unwrap());
        client.head().await.unwrap();
        let batch = entries(5);
        client.put(&batch).await.unwrap();
        let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
        assert_eq!(client.get(&ns(), &ids).await.unwrap().len(), 5);
    };
    tokio::time::timeout(within, work)
        .await
        .unwrap_or_else(|_| panic!("a client from {from} is served within {within:?}"));
}

/// True once the server has closed `conn` (false if `within` passes). What
/// it sends meanwhile is read and dropped; its PINGs are answered.
pub async fn closed_by_server(conn: &mut TcpStream, within: Duration) -> bool {
    tokio::time::timeout(within, frames::answer_pings_until_closed(conn))
        .await
        .is_ok()
}

/// Every id `replica` holds in `ns`, in id order, read page by page.
pub async fn listed_ids(
    replica: &TestReplica,
    ns: &Namespace,
) -> Vec<mindoo_replica::entry::EntryId> {
    let mut client = replica.client().await;
    let (mut ids, mut page_token) = (Vec::new(), bytes::Bytes::new());
    loop {
        let page = client
            .raw()
            .list_ids(mindoo_replica::proto::ListIdsRequest {
                namespace: Some(mindoo_replica::proto::convert::namespace_to_proto(ns)),
                page_token,
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner();
        ids.extend(
            page.ids
                .iter()
                .map(|id| mindoo_replica::entry::EntryId::from_slice(id).unwrap()),
        );
        if page.next_page_token.is_empty() {
            return ids;
        }
        page_token = page.next_page_token;
    }
}

/// Asserts that `replica` holds exactly `expected` in `ns`: the same ids,
/// none missing, none more, and read back through GetEntries, the same bytes.
pub async fn assert_holds_exactly(replica: &TestReplica, ns: &Namespace, expected: &[Entry]) {
    let mut want: Vec<mindoo_replica::entry::EntryId> = expected.iter().map(|e| e.id).collect();
    want.sort();
    let held = listed_ids(replica, ns).await;
    let extra = held
        .iter()
        .filter(|id| want.binary_search(id).is_err())
        .count();
    let missing = want
        .iter()
        .filter(|id| held.binary_search(id).is_err())
        .count();
    assert!(
        held == want,
        "replica {} holds {} entries in {ns}: {missing} written are missing, {extra} are not written",
        replica.addr,
        held.len()
    );
    let mut client = replica.client().await;
    let mut got = Vec::with_capacity(want.len());
    for chunk in want.chunks(5000) {
        got.extend(client.get(ns, chunk).await.unwrap());
    }
    assert_eq!(
        got.len(),
        expected.len(),
        "GetEntries from {}",
        replica.addr
    );
    let got: std::collections::HashMap<mindoo_replica::entry::EntryId, Entry> =
        got.into_iter().map(|e| (e.id, e)).collect();
    for e in expected {
        let read = got.get(&e.id).expect("every id read back");
        assert_eq!(
            read.data(),
            e.data(),
            "entry {} read from {}",
            e.id,
            replica.addr
        );
    }
}

/// What `replica` reports of its peers (the PeerStatus call).
pub async fn peer_status(replica: &TestReplica) -> mindoo_replica::proto::PeerStatusResponse {
    mindoo_replica::proto::replication_client::ReplicationClient::new(replica.channel().await)
        .peer_status(mindoo_replica::proto::PeerStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Waits until `replica`'s cursor into the peer `node` reaches `seq`, or
/// panics after `secs`.
pub async fn wait_for_cursor(replica: &TestReplica, node: &str, seq: u64, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let status = peer_status(replica).await;
        let state = status.peers.iter().find(|p| p.peer == node);
        if state.is_some_and(|p| p.cursor_seq >= seq) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replica {}'s cursor into {node} did not reach {seq}: {state:?}",
            replica.addr
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the command with the client's home set; stdout, or the failure.
pub fn cli(home: &Path, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mindoo-replica"))
        .args(args)
        .env("MINDOO_CLIENT_HOME", home)
        .env("MINDOO_PASSPHRASE", "pw")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match out.status.success() {
        true => Ok(text),
        false => Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr))),
    }
}
