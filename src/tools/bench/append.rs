//! `bench append`: one client streams entries into one replica process over
//! loopback gRPC; prints entries/s, MB/s, wire bytes per entry and the
//! replica's memory, next to an in-process baseline of the same work without
//! gRPC (verify + RocksDB append) measured in the same run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ed25519_dalek::SigningKey;

use super::{WireCounters, connect_counted, sample_entries};
use crate::entry::{Entry, Namespace};
use crate::policy::Policy;
use crate::store::Store;
use crate::store::rocks::{RocksConfig, RocksStore};
use crate::tools::child::ReplicaProcess;

/// Options of `bench append`.
#[derive(Debug, Clone)]
pub struct AppendOptions {
    pub entries: usize,
    pub ciphertext_bytes: usize,
    pub batch: usize,
    pub exe: PathBuf,
}

/// `bench append`: one client streams entries into one replica process.
pub async fn append(opts: AppendOptions) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let replica = ReplicaProcess::spawn(&opts.exe, &dir.path().join("db"), false, &[]).await?;
    let ns = Namespace::new("bench", "append")?;
    let key = SigningKey::from_bytes(&rand::random());
    let entries = sample_entries(&ns, &key, opts.entries, opts.ciphertext_bytes);
    let entry_bytes: usize = entries.iter().map(|e| e.data().len()).sum();
    let batches: Vec<Vec<Entry>> = entries.chunks(opts.batch).map(<[Entry]>::to_vec).collect();
    drop(entries);
    let same_batches = batches.clone();

    let wire = Arc::new(WireCounters::default());
    let mut client = connect_counted(&replica.grpc.to_string(), wire.clone()).await?;
    let before = wire.snapshot();
    let start = Instant::now();
    let summary = client.put_stream(futures::stream::iter(batches)).await?;
    let secs = start.elapsed().as_secs_f64();
    let (sent, received) = wire.since(before);
    let (rss, peak) = replica.memory().unwrap_or_default();
    let status = replica.stop().await?;

    let baseline_rate = baseline(&same_batches, &dir.path().join("baseline"))?;
    let n = opts.entries as f64;
    let per_entry = entry_bytes as f64 / n;
    println!(
        "append: {} entries, {} B ciphertext ({per_entry:.0} B encoded entry), batches of {}",
        opts.entries, opts.ciphertext_bytes, opts.batch
    );
    println!(
        "append: stored {} duplicate {} rejected {} in {secs:.2} s",
        summary.stored, summary.duplicate, summary.rejected
    );
    println!(
        "append: {:.0} entries/s, {:.1} MB/s of entries (target >= 20000 entries/s)",
        n / secs,
        entry_bytes as f64 / secs / 1e6
    );
    println!(
        "append: baseline in-process verify + RocksDB append, no gRPC: {baseline_rate:.0} entries/s (gRPC path reaches {:.0} %)",
        n / secs / baseline_rate * 100.0
    );
    println!(
        "append: wire {:.1} B/entry client->replica = entry + {:.1} B (target <= 64 B), {:.1} B/entry replica->client",
        sent as f64 / n,
        sent as f64 / n - per_entry,
        received as f64 / n
    );
    println!(
        "append: replica RSS {:.1} MB (peak {:.1} MB); exit {status}",
        rss as f64 / 1e6,
        peak as f64 / 1e6
    );
    anyhow::ensure!(
        summary.stored as usize == opts.entries,
        "not every entry was stored"
    );
    Ok(())
}

/// The same batches verified and appended in-process: the ceiling for the gRPC path.
fn baseline(batches: &[Vec<Entry>], path: &std::path::Path) -> anyhow::Result<f64> {
    let store = RocksStore::open(&RocksConfig::new(path))?;
    let policy = Policy::default();
    let start = Instant::now();
    let mut count = 0;
    for batch in batches {
        let verified = batch
            .iter()
            .map(|e| policy.check(&e.id.0, e.data().clone()))
            .collect::<Result<Vec<_>, _>>()?;
        count += store.append(&verified, None)?.len();
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}
