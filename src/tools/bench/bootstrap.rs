//! `bench bootstrap`: an empty replica pulls every entry from one peer.
//! Prints entries/s, wire bytes per entry (counted by a proxy between the
//! two), both replicas' memory, and then the bytes an idle pair exchanges
//! per idle round (keepalive PING and Watch heartbeat) — the figure that must
//! not grow with the entry count.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::{CountingProxy, UNSIGNED_FIXTURES, memory_mb, unsigned_entries, wait_quiet};
use crate::client::{Dial, StoreClient};
use crate::entry::{Namespace, VerifiedEntry};
use crate::store::Store;
use crate::store::rocks::{RocksConfig, RocksStore};
use crate::tools::child::{ReplicaProcess, http_get};
use crate::tools::mesh::MeshCerts;

#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    pub entries: usize,
    pub ciphertext_bytes: usize,
    /// How long to measure the idle pair.
    pub idle_secs: u64,
    pub exe: PathBuf,
}

const FILL_BATCH: usize = 1000;

/// The store memory gauges of a replica with metrics, in MB, as one line.
async fn store_memory(p: &ReplicaProcess) -> String {
    let Some(addr) = p.metrics else {
        return "unknown".into();
    };
    let Ok(text) = http_get(addr, "/metrics").await else {
        return "unknown".into();
    };
    text.lines()
        .filter_map(|l| l.strip_prefix("mindoo_replica_store_memory_bytes{part=\""))
        .filter_map(|l| {
            let (part, value) = l.split_once("\"} ")?;
            Some(format!("{part} {:.0} MB", value.parse::<f64>().ok()? / 1e6))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn bootstrap(opts: BootstrapOptions) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let keepalive_ms = 1000;
    let source = ReplicaProcess::spawn(
        &opts.exe,
        &dir.path().join("source"),
        false,
        &[UNSIGNED_FIXTURES],
    )
    .await?;
    let ns = Namespace::new("bench", "bootstrap")?;

    // Fill the source (not timed as bootstrap; reported for comparison).
    let mut client = StoreClient::connect(&source.grpc.to_string()).await?;
    let (ns2, size, total) = (ns.clone(), opts.ciphertext_bytes, opts.entries);
    let batches = futures::stream::iter((0..total).step_by(FILL_BATCH)).map(move |first| {
        unsigned_entries(&ns2, first as u64, FILL_BATCH.min(total - first), size)
    });
    let start = Instant::now();
    let filled = client.put_stream(batches).await?;
    let fill_secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        filled.stored as usize == total,
        "fill stored {}",
        filled.stored
    );
    let entry_bytes = unsigned_entries(&ns, 0, 1, size)[0].data().len();
    println!(
        "bootstrap: source filled with {total} unsigned entries of {size} B ciphertext ({entry_bytes} B encoded) at {:.0} entries/s",
        total as f64 / fill_secs
    );

    // Let the source finish compacting what the fill wrote.
    wait_quiet(&source, Duration::from_secs(120)).await;
    let proxy = CountingProxy::start(source.grpc).await?;
    let peer = proxy.addr.to_string();
    let keepalive = keepalive_ms.to_string();
    let idle_timeout = (3 * keepalive_ms).to_string();
    let env = [
        ("MINDOO_REPLICA__REPLICATION__PEERS", peer.as_str()),
        (
            "MINDOO_REPLICA__REPLICATION__KEEPALIVE_INTERVAL_MS",
            keepalive.as_str(),
        ),
        // A heartbeat every second too (a third of the idle timeout).
        (
            "MINDOO_REPLICA__REPLICATION__SESSION_IDLE_TIMEOUT_MS",
            idle_timeout.as_str(),
        ),
    ];
    let start = Instant::now();
    let puller = ReplicaProcess::spawn(&opts.exe, &dir.path().join("puller"), true, &env).await?;
    let mut pclient = StoreClient::connect(&puller.grpc.to_string()).await?;
    let (mut last_report, mut last_held) = (Instant::now(), 0);
    loop {
        let held = pclient.head().await?.entry_count as usize;
        if held >= total {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            let rate = (held - last_held) as f64 / last_report.elapsed().as_secs_f64();
            let (rss, _) = memory_mb(&puller);
            println!(
                "bootstrap: … {held} of {total} after {:.1} s ({rate:.0} entries/s over the last interval, puller RSS {rss:.0} MB; store {})",
                start.elapsed().as_secs_f64(),
                store_memory(&puller).await
            );
            (last_report, last_held) = (Instant::now(), held);
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(1800),
            "bootstrap stalled at {held}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let (sent, received) = proxy.wire.snapshot();
    let (src_rss, src_peak) = memory_mb(&source);
    let (pull_rss, pull_peak) = memory_mb(&puller);
    let n = total as f64;
    println!(
        "bootstrap: {total} entries pulled in {secs:.2} s = {:.0} entries/s, {:.1} MB/s (target >= 100000 entries/s)",
        n / secs,
        n * entry_bytes as f64 / secs / 1e6
    );
    println!(
        "bootstrap: wire {:.1} B/entry peer->puller = entry + {:.1} B (target <= 64 B); {:.1} B/entry puller->peer",
        received as f64 / n,
        received as f64 / n - entry_bytes as f64,
        sent as f64 / n
    );
    println!(
        "bootstrap: RSS source {src_rss:.0} MB (peak {src_peak:.0}), puller {pull_rss:.0} MB (peak {pull_peak:.0}) (target <= 256 MB)"
    );
    println!(
        "bootstrap: puller store memory: {}",
        store_memory(&puller).await
    );

    // Idle: nothing new on either side; only keepalives cross.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = proxy.wire.snapshot();
    tokio::time::sleep(Duration::from_secs(opts.idle_secs)).await;
    let (s, r) = proxy.wire.since(before);
    let rounds = (opts.idle_secs * 1000 / keepalive_ms) as f64;
    println!(
        "idle: {total} entries each side, {} s: {s} B puller->peer + {r} B peer->puller = {:.1} B per idle round (HTTP/2 PING + Watch heartbeat) every {keepalive_ms} ms (target <= 200 B, independent of N)",
        opts.idle_secs,
        (s + r) as f64 / rounds
    );
    puller.stop().await?;
    source.stop().await?;

    let tls_secs = pull_over_tls(&opts, dir.path(), total).await?;
    println!(
        "bootstrap: over mutual TLS in this run (the same source, a fresh puller): {total} entries in {tls_secs:.2} s = {:.0} entries/s, {:.0} % of the plaintext rate",
        n / tls_secs,
        100.0 * secs / tls_secs
    );

    let raw = raw_ingest(&dir.path().join("raw"), &ns, total, size).await?;
    println!(
        "bootstrap: baseline raw RocksDB ingest of the same entries in this run (store appends of {FILL_BATCH}, no network, no verification): {raw:.0} entries/s; bootstrap reaches {:.0} %",
        100.0 * n / secs / raw
    );
    Ok(())
}

/// Restarts the source on its data with TLS on, and times a fresh puller's
/// bootstrap from it over mutual TLS.
async fn pull_over_tls(
    opts: &BootstrapOptions,
    dir: &std::path::Path,
    total: usize,
) -> anyhow::Result<f64> {
    let certs = MeshCerts::make(&dir.join("tls"), 2)?;
    let source_env = certs.env_of(0);
    let source_env: Vec<(&str, &str)> = source_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain([UNSIGNED_FIXTURES])
        .collect();
    let source = ReplicaProcess::spawn(&opts.exe, &dir.join("source"), false, &source_env).await?;
    let peer = source.grpc.to_string();
    let puller_env = certs.env_of(1);
    let puller_env: Vec<(&str, &str)> = puller_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain([("MINDOO_REPLICA__REPLICATION__PEERS", peer.as_str())])
        .collect();
    let start = Instant::now();
    let puller =
        ReplicaProcess::spawn(&opts.exe, &dir.join("puller-tls"), false, &puller_env).await?;
    let dial = Dial {
        tls: Some(certs.client(false)?),
        key: None,
    };
    let mut client = StoreClient::connect_with(&puller.grpc.to_string(), &dial).await?;
    while (client.head().await?.entry_count as usize) < total {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(1800),
            "bootstrap over TLS stalled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    puller.stop().await?;
    source.stop().await?;
    Ok(secs)
}

/// Entries/s of appending `total` entries straight into a RocksDB store, in
/// batches of [`FILL_BATCH`]; only the appends are timed.
async fn raw_ingest(
    path: &std::path::Path,
    ns: &Namespace,
    total: usize,
    size: usize,
) -> anyhow::Result<f64> {
    let store = RocksStore::open(&RocksConfig::new(path))?;
    let ns = ns.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        let mut appending = Duration::ZERO;
        for first in (0..total).step_by(FILL_BATCH) {
            let batch: Vec<VerifiedEntry> =
                unsigned_entries(&ns, first as u64, FILL_BATCH.min(total - first), size)
                    .into_iter()
                    .map(|e| VerifiedEntry {
                        id: e.id,
                        namespace: ns.clone(),
                        data: e.data().clone(),
                    })
                    .collect();
            let start = Instant::now();
            store.append(&batch, None)?;
            appending += start.elapsed();
        }
        Ok(total as f64 / appending.as_secs_f64())
    })
    .await?
}
