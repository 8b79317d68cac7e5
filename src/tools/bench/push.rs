//! `bench push`: a device store on RocksDB pushes its entries through the
//! sync engine (the push worker over the gRPC adapter) to a replica
//! process; printed beside `bench append`'s path (one client streaming the
//! same entries into another replica process) measured in the same run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::sample_entries;
use crate::client::StoreClient;
use crate::entry::{Entry, Namespace};
use crate::policy::Policy;
use crate::store::rocks::{RocksConfig, RocksStore};
use crate::sync::SyncSettings;
use crate::sync::device::DeviceStore;
use crate::sync::env::Env;
use crate::sync::grpc::GrpcPeer;
use crate::sync::metrics::SyncMetrics;
use crate::sync::peer::ConnectOptions;
use crate::sync::pusher::{PushProgress, Pusher};
use crate::tools::child::ReplicaProcess;

/// Options of `bench push`.
#[derive(Debug, Clone, clap::Args)]
pub struct PushOptions {
    /// Entries the device holds and pushes.
    #[arg(long, default_value_t = 100_000)]
    pub entries: usize,
    /// Ciphertext bytes per entry.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Entries per PutEntries batch of the append path.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
}

/// `bench push`. See the module docs.
pub async fn push(opts: PushOptions, exe: PathBuf) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ns = Namespace::new("bench", "push")?;
    let key = SigningKey::from_bytes(&rand::random());
    let entries = sample_entries(&ns, &key, opts.entries, opts.size);
    let n = opts.entries as f64;

    // The device's store, filled before the clock starts.
    let device = Arc::new(DeviceStore::new(
        Arc::new(RocksStore::open(&RocksConfig::new(
            dir.path().join("device"),
        ))?),
        Policy::default(),
    ));
    for chunk in entries.chunks(10_000) {
        let items = chunk
            .iter()
            .map(|e| (Bytes::copy_from_slice(&e.id.0), e.data().clone()))
            .collect();
        let (_, rejected) = device.write(items).await?;
        anyhow::ensure!(rejected.is_empty(), "the device refused its own entries");
    }

    // The append path, in the same run.
    let target = ReplicaProcess::spawn(&exe, &dir.path().join("append"), false, &[]).await?;
    let batches: Vec<Vec<Entry>> = entries
        .chunks(opts.batch.max(1))
        .map(<[Entry]>::to_vec)
        .collect();
    drop(entries);
    let mut client = StoreClient::connect(&target.grpc.to_string()).await?;
    let start = Instant::now();
    let summary = client.put_stream(futures::stream::iter(batches)).await?;
    let append_rate = n / start.elapsed().as_secs_f64();
    target.stop().await?;
    anyhow::ensure!(
        summary.stored as usize == opts.entries,
        "append stored {}",
        summary.stored
    );

    // The push.
    let replica = ReplicaProcess::spawn(&exe, &dir.path().join("push"), false, &[]).await?;
    let options = ConnectOptions {
        connect_timeout: Duration::from_secs(5),
        keepalive_interval: Duration::from_secs(30),
    };
    let peer = Arc::new(GrpcPeer::lazy(&replica.grpc.to_string(), options)?);
    let pusher = Pusher {
        local: device.clone(),
        peer,
        settings: watch::channel(SyncSettings::default()).1,
        metrics: Arc::new(SyncMetrics::new(&prometheus::Registry::new())),
        env: Env::system(),
        cancel: CancellationToken::new(),
        progress: watch::channel(PushProgress::default()).0,
    };
    let start = Instant::now();
    let done = pusher.push_to_head().await?;
    let secs = start.elapsed().as_secs_f64();
    let (rss, _) = replica.memory().unwrap_or_default();
    replica.stop().await?;

    println!(
        "push: {} entries of {} B ciphertext from a device store (RocksDB) through the sync engine to a replica",
        opts.entries, opts.size
    );
    println!(
        "push: read {} records, sent {} bodies, stored {} duplicate {} rejected {} in {secs:.2} s",
        done.records, done.sent, done.stored, done.duplicate, done.rejected
    );
    println!(
        "push: {:.0} entries/s; append path in the same run {append_rate:.0} entries/s: push reaches {:.0} % (target >= 80 %)",
        n / secs,
        n / secs / append_rate * 100.0
    );
    println!("push: replica RSS {:.1} MB", rss as f64 / 1e6);
    anyhow::ensure!(
        done.stored as usize == opts.entries,
        "not every entry was stored"
    );
    Ok(())
}
