//! `bench filtered`: a pull of one namespace (ScanSince with a namespace
//! filter, with data) from a replica process holding many namespaces, their
//! records interleaved in its log, beside the same pull from a replica
//! holding only that namespace, measured in the same run: time, and the log
//! records each replica read (`store_log_records_read_total`).

use std::path::PathBuf;
use std::time::Instant;

use futures::StreamExt;

use super::{UNSIGNED_FIXTURES, metric_sum, unsigned_entries, wait_quiet};
use crate::client::StoreClient;
use crate::entry::{Entry, Namespace};
use crate::proto;
use crate::proto::convert;
use crate::tools::child::{ReplicaProcess, http_get};

/// Options of `bench filtered`.
#[derive(Debug, Clone, clap::Args)]
pub struct FilteredOptions {
    /// Namespaces the large replica holds.
    #[arg(long, default_value_t = 1000)]
    pub namespaces: usize,
    /// Entries per namespace.
    #[arg(long, default_value_t = 1000)]
    pub per_namespace: usize,
    /// Ciphertext bytes per entry.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Pulls timed after the first (cold) one; their median is reported.
    #[arg(long, default_value_t = 20)]
    pub repeat: usize,
}

fn space(i: usize) -> Namespace {
    Namespace::new("bench", format!("db-{i}")).expect("a valid namespace")
}

/// One entry of each of `count` namespaces per batch, `rounds` batches: the
/// namespaces' records interleave in the log.
fn interleaved(
    count: usize,
    rounds: usize,
    size: usize,
) -> impl futures::Stream<Item = Vec<Entry>> {
    futures::stream::iter(0..rounds).map(move |round| {
        (0..count)
            .flat_map(|i| unsigned_entries(&space(i), round as u64, 1, size))
            .collect()
    })
}

/// Pulls namespace 0 from `replica`: seconds, entries received, records read.
async fn pull_one(replica: &ReplicaProcess, limit: usize) -> anyhow::Result<(f64, usize, f64)> {
    let addr = replica
        .metrics
        .ok_or_else(|| anyhow::anyhow!("the replica serves no metrics"))?;
    let read = |text: &str| metric_sum(text, "mindoo_replica_store_log_records_read_total");
    let before = read(&http_get(addr, "/metrics").await?).unwrap_or(0.0);
    let mut client = StoreClient::connect(&replica.grpc.to_string()).await?;
    let start = Instant::now();
    let mut stream = client
        .raw()
        .scan_since(proto::ScanSinceRequest {
            cursor: None,
            limit: limit as u32,
            include_data: true,
            namespaces: vec![convert::namespace_to_proto(&space(0))],
        })
        .await?
        .into_inner();
    let mut received = 0;
    while let Some(batch) = stream.message().await? {
        received += batch.records.len();
    }
    let secs = start.elapsed().as_secs_f64();
    let after = read(&http_get(addr, "/metrics").await?).unwrap_or(0.0);
    Ok((secs, received, after - before))
}

/// A series of pulls of namespace 0 from one replica.
struct Pulls {
    /// Seconds of the first pull, with the replica's caches cold.
    first: f64,
    /// Median seconds of the pulls after it.
    median: f64,
    /// Entries received by each pull.
    got: usize,
    /// Log records read per pull.
    read: f64,
}

async fn pulls(replica: &ReplicaProcess, limit: usize, repeat: usize) -> anyhow::Result<Pulls> {
    let (first, got, read) = pull_one(replica, limit).await?;
    let mut times = vec![first];
    for _ in 0..repeat {
        let (secs, again, _) = pull_one(replica, limit).await?;
        anyhow::ensure!(again == got, "received {again}, then {got}");
        times.push(secs);
    }
    let mut later = times.split_off(1);
    later.sort_by(f64::total_cmp);
    let median = later.get(later.len() / 2).copied().unwrap_or(first);
    Ok(Pulls {
        first,
        median,
        got,
        read,
    })
}

/// `bench filtered`. See the module docs.
pub async fn filtered(opts: FilteredOptions, exe: PathBuf) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let per = opts.per_namespace;
    // The log tail is off, so every read reaches the store.
    let tail_off = [
        ("MINDOO_REPLICA__STORAGE__LOG_TAIL_MB", "0"),
        UNSIGNED_FIXTURES,
    ];
    let many = ReplicaProcess::spawn(&exe, &dir.path().join("many"), true, &tail_off).await?;
    let alone = ReplicaProcess::spawn(&exe, &dir.path().join("alone"), true, &tail_off).await?;
    let load = Instant::now();
    let mut client = StoreClient::connect(&many.grpc.to_string()).await?;
    let summary = client
        .put_stream(interleaved(opts.namespaces, per, opts.size))
        .await?;
    let total = opts.namespaces * per;
    anyhow::ensure!(
        summary.stored as usize == total,
        "stored {}",
        summary.stored
    );
    let mut client = StoreClient::connect(&alone.grpc.to_string()).await?;
    client.put_stream(interleaved(1, per, opts.size)).await?;
    println!(
        "filtered: loaded {total} entries in {} namespaces, {} B ciphertext, in {:.1} s",
        opts.namespaces,
        opts.size,
        load.elapsed().as_secs_f64()
    );
    // Restarted, both serve from their table files with cold caches: a
    // replica that holds only 1,000 entries would otherwise serve them from
    // its memtable while the large one reads its files.
    many.stop().await?;
    alone.stop().await?;
    let many = ReplicaProcess::spawn(&exe, &dir.path().join("many"), true, &tail_off).await?;
    let alone = ReplicaProcess::spawn(&exe, &dir.path().join("alone"), true, &tail_off).await?;
    wait_quiet(&many, std::time::Duration::from_secs(30)).await;
    wait_quiet(&alone, std::time::Duration::from_secs(30)).await;

    let alone_pulls = pulls(&alone, per, opts.repeat).await?;
    let many_pulls = pulls(&many, per, opts.repeat).await?;
    many.stop().await?;
    alone.stop().await?;
    anyhow::ensure!(
        many_pulls.got == per && alone_pulls.got == per,
        "received {} and {}",
        many_pulls.got,
        alone_pulls.got
    );
    let line = |what: &str, p: &Pulls| {
        println!(
            "filtered: {what}: first pull {:.1} ms, median of {} more {:.1} ms; {:.0} log records read per pull",
            p.first * 1e3,
            opts.repeat,
            p.median * 1e3,
            p.read
        )
    };
    line(
        &format!(
            "one namespace of {per} entries from a replica of {total} entries in {} namespaces",
            opts.namespaces
        ),
        &many_pulls,
    );
    line(
        "the same from a replica holding only that namespace",
        &alone_pulls,
    );
    println!(
        "filtered: {:.2}x the time of the lone namespace, first pull {:.2}x (target within 2x); {:.2}x its records read",
        many_pulls.median / alone_pulls.median,
        many_pulls.first / alone_pulls.first,
        many_pulls.read / alone_pulls.read.max(1.0)
    );
    Ok(())
}
