//! `bench append`: clients stream signed entries into one replica process
//! over loopback gRPC. Prints entries/s with every write fsynced before its
//! acknowledgement (the default) beside the same without, for 1, 4 and 16
//! concurrent streams, with signatures checked (the default) and not; then
//! MB/s, wire bytes per entry, the cost of client authentication and the
//! replica's memory, next to an in-process baseline of the same work
//! without gRPC (verify + RocksDB append + fsync), all in the same run.
//! Each figure comes from a fresh replica process.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ed25519_dalek::SigningKey;

use super::{UNSIGNED_FIXTURES, WireCounters, connect_counted, metric_sum, sample_entries};
use crate::entry::{Entry, Namespace};
use crate::policy::{Origin, Policy};
use crate::store::Store;
use crate::store::rocks::{RocksConfig, RocksStore};
use crate::tools::child::{ReplicaProcess, http_get};

/// Options of `bench append`.
#[derive(Debug, Clone, clap::Args)]
pub struct AppendOptions {
    /// Entries each run streams.
    #[arg(long, default_value_t = 100_000)]
    pub entries: usize,
    /// Ciphertext bytes per entry.
    #[arg(long = "size", default_value_t = 1024)]
    pub ciphertext_bytes: usize,
    /// Entries per PutEntries batch.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Concurrent client streams (each on its own connection) to measure,
    /// the batches dealt between them.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 4, 16])]
    pub streams: Vec<usize>,
}

/// What one run of the clients' streams into a replica gave.
struct Run {
    secs: f64,
    stored: u64,
    duplicate: u64,
    rejected: u64,
    sent: u64,
    received: u64,
    rss: u64,
    peak: u64,
    /// Commits that waited for an fsync, and the fsyncs run for them.
    commits_synced: f64,
    syncs: f64,
    status: String,
}

/// A replica's environment that requires clients to sign, any key may
/// read and write.
const CLIENT_AUTH: [(&str, &str); 3] = [
    ("MINDOO_REPLICA__AUTH__CLIENTS", "required"),
    ("MINDOO_REPLICA__AUTH__READERS", "*"),
    ("MINDOO_REPLICA__AUTH__WRITERS", "*"),
];
/// Acknowledgements before the fsync.
const NOT_DURABLE: (&str, &str) = ("MINDOO_REPLICA__STORAGE__SYNC_WRITES", "false");

/// Deals `batches` between `streams` clients, each on its own connection,
/// which stream them at once into a fresh replica process configured with
/// `env`, signing requests with `key` when given.
async fn run(
    exe: &Path,
    dir: &Path,
    batches: &[Vec<Entry>],
    streams: usize,
    env: &[(&str, &str)],
    key: Option<SigningKey>,
) -> anyhow::Result<Run> {
    let replica = ReplicaProcess::spawn(exe, dir, true, env).await?;
    let wire = Arc::new(WireCounters::default());
    let streams = streams.max(1);
    let mut clients = Vec::with_capacity(streams);
    for _ in 0..streams {
        clients.push(connect_counted(&replica.grpc.to_string(), wire.clone(), key.clone()).await?);
    }
    let mut dealt = vec![Vec::new(); streams];
    for (i, batch) in batches.iter().enumerate() {
        dealt[i % streams].push(batch.clone());
    }
    let before = wire.snapshot();
    let start = Instant::now();
    let summaries = futures::future::try_join_all(
        clients
            .iter_mut()
            .zip(dealt)
            .map(|(client, mine)| client.put_stream(futures::stream::iter(mine))),
    )
    .await?;
    let secs = start.elapsed().as_secs_f64();
    let (sent, received) = wire.since(before);
    let (rss, peak) = replica.memory().unwrap_or_default();
    let metrics = match replica.metrics {
        Some(addr) => http_get(addr, "/metrics").await?,
        None => String::new(),
    };
    let status = replica.stop().await?;
    let sum = |f: fn(&crate::client::PutSummary) -> u64| summaries.iter().map(f).sum();
    Ok(Run {
        secs,
        stored: sum(|s| s.stored),
        duplicate: sum(|s| s.duplicate),
        rejected: sum(|s| s.rejected),
        sent,
        received,
        rss,
        peak,
        commits_synced: metric_sum(&metrics, "mindoo_replica_store_sync_wait_seconds_count")
            .unwrap_or(0.0),
        syncs: metric_sum(&metrics, "mindoo_replica_store_syncs_total").unwrap_or(0.0),
        status: status.to_string(),
    })
}

/// `bench append`. See the module docs.
pub async fn append(opts: AppendOptions, exe: PathBuf) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ns = Namespace::new("bench", "append")?;
    let key = SigningKey::from_bytes(&rand::random());
    let entries = sample_entries(&ns, &key, opts.entries, opts.ciphertext_bytes);
    let entry_bytes: usize = entries.iter().map(|e| e.data().len()).sum();
    let batches: Vec<Vec<Entry>> = entries
        .chunks(opts.batch.max(1))
        .map(<[Entry]>::to_vec)
        .collect();
    drop(entries);
    let n = opts.entries as f64;
    let per_entry = entry_bytes as f64 / n;
    let rate = |r: &Run| n / r.secs;
    println!(
        "append: {} signed entries, {} B ciphertext ({per_entry:.0} B encoded entry), batches of {}; a fresh replica process per figure",
        opts.entries, opts.ciphertext_bytes, opts.batch
    );

    let mut runs = 0;
    let mut fresh = || {
        runs += 1;
        dir.path().join(format!("run-{runs}"))
    };
    // Durable and not, one after the other for each case, so a noisy
    // moment costs both.
    let policies = [
        (
            "signatures verified (policy.require_signatures = true, the default)",
            None,
        ),
        (
            "signatures not checked (policy.require_signatures = false)",
            Some(UNSIGNED_FIXTURES),
        ),
    ];
    let mut checked = None;
    let mut best_unchecked: f64 = 0.0;
    let mut all = Vec::new();
    for (policy, policy_env) in policies {
        for &streams in &opts.streams {
            let env: Vec<_> = policy_env.into_iter().collect();
            let durable = run(&exe, &fresh(), &batches, streams, &env, None).await?;
            let env: Vec<_> = policy_env.into_iter().chain([NOT_DURABLE]).collect();
            let fast = run(&exe, &fresh(), &batches, streams, &env, None).await?;
            println!(
                "append: {streams:>2} stream(s), {policy}: {:.0} entries/s fsynced before each acknowledgement (storage.sync_writes = true, the default; {:.1} commits per fsync), {:.0} entries/s not fsynced: durability costs {:.1} %",
                rate(&durable),
                durable.commits_synced / durable.syncs.max(1.0),
                rate(&fast),
                (1.0 - rate(&durable) / rate(&fast)) * 100.0
            );
            if policy_env.is_some() {
                best_unchecked = best_unchecked.max(rate(&durable));
            } else if checked.is_none() {
                checked = Some(durable);
                all.push(fast);
                continue;
            }
            all.extend([durable, fast]);
        }
    }
    let checked = checked.ok_or_else(|| anyhow::anyhow!("no stream count given"))?;
    println!(
        "append: best fsynced rate with signatures not checked: {best_unchecked:.0} entries/s (target >= 150000); with signatures verified, one stream: {:.0} entries/s (target >= 20000)",
        rate(&checked)
    );

    let client = SigningKey::from_bytes(&rand::random());
    let authenticated = run(
        &exe,
        &fresh(),
        &batches,
        1,
        &CLIENT_AUTH,
        Some(client.clone()),
    )
    .await?;
    let unary = unary_calls(&exe, &fresh(), client).await?;
    let baseline_rate = baseline(&batches, &fresh())?;
    println!(
        "append: one stream, signatures verified, fsynced: stored {} duplicate {} rejected {} in {:.2} s, {:.1} MB/s of entries",
        checked.stored,
        checked.duplicate,
        checked.rejected,
        checked.secs,
        entry_bytes as f64 / checked.secs / 1e6
    );
    println!(
        "append: {:.0} entries/s with client authentication required (auth.clients = required, requests signed by the client's key), same run: {:+.1} % against auth off",
        rate(&authenticated),
        (rate(&authenticated) / rate(&checked) - 1.0) * 100.0
    );
    println!(
        "append: per request, {} Head calls one after another: {:.1} us signed and checked against {:.1} us unsigned with auth off, in alternating rounds: authentication costs {:.1} us ({:+.1} %) (target <= 10 %)",
        unary.calls,
        unary.signed_us,
        unary.open_us,
        unary.signed_us - unary.open_us,
        (unary.signed_us / unary.open_us - 1.0) * 100.0
    );
    println!(
        "append: baseline in-process verify (signatures included) + RocksDB append + fsync per batch, no gRPC: {baseline_rate:.0} entries/s (one gRPC stream reaches {:.0} %)",
        rate(&checked) / baseline_rate * 100.0
    );
    println!(
        "append: wire {:.1} B/entry client->replica = entry + {:.1} B (target <= 64 B), {:.1} B/entry replica->client",
        checked.sent as f64 / n,
        checked.sent as f64 / n - per_entry,
        checked.received as f64 / n
    );
    println!(
        "append: replica RSS {:.1} MB (peak {:.1} MB); exit {}",
        checked.rss as f64 / 1e6,
        checked.peak as f64 / 1e6,
        checked.status
    );
    anyhow::ensure!(
        [&checked, &authenticated]
            .into_iter()
            .chain(&all)
            .all(|r| r.stored as usize == opts.entries),
        "not every entry was stored"
    );
    Ok(())
}

/// Mean latency of unary calls, signed against a replica that requires
/// client authentication and unsigned against one that does not.
struct Unary {
    calls: usize,
    signed_us: f64,
    open_us: f64,
}

async fn unary_calls(exe: &Path, dir: &Path, key: SigningKey) -> anyhow::Result<Unary> {
    const ROUNDS: usize = 10;
    const PER_ROUND: usize = 500;
    let mut sides = Vec::new();
    // Calls one after another, as fast as answered: beyond a client's
    // default rate, which is lifted on both sides alike.
    let lifted = [
        (
            "MINDOO_REPLICA__LIMITS__CLIENT_REQUESTS_PER_SECOND",
            "10000000",
        ),
        ("MINDOO_REPLICA__LIMITS__CLIENT_REQUEST_BURST", "10000000"),
    ];
    let signed: Vec<_> = CLIENT_AUTH.iter().chain(&lifted).copied().collect();
    for (name, env, key) in [
        ("open", &lifted[..], None),
        ("signed", &signed[..], Some(key)),
    ] {
        let replica = ReplicaProcess::spawn(exe, &dir.join(name), false, env).await?;
        let wire = Arc::new(WireCounters::default());
        let mut client = connect_counted(&replica.grpc.to_string(), wire, key).await?;
        for _ in 0..200 {
            client.head().await?;
        }
        sides.push((replica, client, std::time::Duration::ZERO));
    }
    // Rounds alternate between the two, so that a noisy moment costs both.
    for _ in 0..ROUNDS {
        for (_, client, spent) in sides.iter_mut() {
            let start = Instant::now();
            for _ in 0..PER_ROUND {
                client.head().await?;
            }
            *spent += start.elapsed();
        }
    }
    let calls = ROUNDS * PER_ROUND;
    let mut means = Vec::new();
    for (replica, _, spent) in sides {
        means.push(spent.as_secs_f64() * 1e6 / calls as f64);
        replica.stop().await?;
    }
    Ok(Unary {
        calls,
        open_us: means[0],
        signed_us: means[1],
    })
}

/// The same batches verified, appended and fsynced in-process: the
/// ceiling for one gRPC stream.
fn baseline(batches: &[Vec<Entry>], path: &Path) -> anyhow::Result<f64> {
    let store = RocksStore::open(&RocksConfig::new(path))?;
    let policy = Policy::default();
    let start = Instant::now();
    let mut count = 0;
    for batch in batches {
        let items = batch
            .iter()
            .map(|e| (Bytes::copy_from_slice(&e.id.0), e.data().clone()))
            .collect();
        let (verified, rejected) = policy.check_batch(items, Origin::Client);
        anyhow::ensure!(rejected.is_empty(), "rejected: {rejected:?}");
        count += store.append(&verified, None)?.len();
        store.sync()?;
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}
