//! Real replicas for tests: RocksDB in a temp dir, gRPC and metrics on
//! `127.0.0.1:0` listeners bound before the server starts.

use std::net::SocketAddr;
use std::path::Path;

use ed25519_dalek::SigningKey;
use mindoo_replica::bench::sample_entries;
use mindoo_replica::client::StoreClient;
use mindoo_replica::config::RawConfig;
use mindoo_replica::entry::{Entry, Namespace};
use mindoo_replica::server::{self, Listeners};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct TestReplica {
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestReplica {
    /// Starts a replica on `dir` with the default config, adjusted by `tweak`.
    pub async fn start(dir: &Path, tweak: impl FnOnce(&mut RawConfig)) -> Self {
        let mut raw = RawConfig::default();
        raw.storage.path = dir.display().to_string();
        raw.storage.block_cache_mb = 8;
        raw.storage.write_buffer_mb = 8;
        raw.server.drain_timeout_ms = 5_000;
        tweak(&mut raw);
        let settings = raw.validate().expect("test config is valid");
        let listeners = Listeners {
            grpc: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            metrics: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        };
        let addr = listeners.grpc_addr().unwrap();
        let metrics = listeners.metrics_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(server::run(
            settings,
            listeners,
            stop.clone().cancelled_owned(),
        ));
        Self {
            addr,
            metrics,
            stop,
            task,
        }
    }

    pub async fn client(&self) -> StoreClient {
        StoreClient::connect(&self.addr.to_string()).await.unwrap()
    }

    pub async fn metrics_text(&self) -> String {
        mindoo_replica::local::http_get(self.metrics, "/metrics")
            .await
            .unwrap()
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
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("metric {name_and_labels} not found"))
        .trim()
        .parse()
        .unwrap()
}
