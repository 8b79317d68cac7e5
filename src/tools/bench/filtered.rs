//! `bench filtered`: a pull of one namespace (ScanSince with a namespace
//! filter, with data) from a replica process holding many namespaces, their
//! records interleaved in its log, beside the same pull from a replica
//! holding only that namespace, measured in the same run: time, and the log
//! records each replica read (`store_log_records_read_total`).

use std::path::PathBuf;
use std::time::Instant;

use futures::StreamExt;

use super::{metric_sum, unsigned_entries, wait_quiet};
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

/// `bench filtered`. See the module docs.
pub async fn filtered(opts: FilteredOptions, exe: PathBuf) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let per = opts.per_namespace;
    // The log tail is off, so every read reaches the store.
    let tail_off = [("MINDOO_REPLICA__STORAGE__LOG_TAIL_MB", "0")];
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
    wait_quiet(&many, std::time::Duration::from_secs(30)).await;
    wait_quiet(&alone, std::time::Duration::from_secs(30)).await;

    let (alone_secs, alone_got, alone_read) = pull_one(&alone, per).await?;
    let (many_secs, many_got, many_read) = pull_one(&many, per).await?;
    many.stop().await?;
    alone.stop().await?;
    anyhow::ensure!(
        many_got == per && alone_got == per,
        "received {many_got} and {alone_got}"
    );
    println!(
        "filtered: one namespace of {per} entries from a replica of {total} entries in {} namespaces: {:.1} ms, {many_read:.0} log records read",
        opts.namespaces,
        many_secs * 1e3
    );
    println!(
        "filtered: the same from a replica holding only that namespace: {:.1} ms, {alone_read:.0} log records read",
        alone_secs * 1e3
    );
    println!(
        "filtered: {:.2}x the time of the lone namespace (target within 2x); {:.2}x its records read",
        many_secs / alone_secs,
        many_read / alone_read.max(1.0)
    );
    Ok(())
}
