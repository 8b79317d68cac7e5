//! `bench append`: one client streams signed entries into one replica
//! process over loopback gRPC; prints entries/s, MB/s, wire bytes per entry
//! and the replica's memory, with signatures checked (the default) and not
//! checked, next to an in-process baseline of the same work without gRPC
//! (verify + RocksDB append), all measured in the same run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ed25519_dalek::SigningKey;

use super::{UNSIGNED_FIXTURES, WireCounters, connect_counted, sample_entries};
use crate::entry::{Entry, Namespace};
use crate::policy::{Origin, Policy};
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

/// What one run of the client's stream into a replica gave.
struct Run {
    secs: f64,
    stored: u64,
    duplicate: u64,
    rejected: u64,
    sent: u64,
    received: u64,
    rss: u64,
    peak: u64,
    status: String,
}

/// A replica's environment that requires clients to sign, any key may
/// read and write.
const CLIENT_AUTH: [(&str, &str); 3] = [
    ("MINDOO_REPLICA__AUTH__CLIENTS", "required"),
    ("MINDOO_REPLICA__AUTH__READERS", "*"),
    ("MINDOO_REPLICA__AUTH__WRITERS", "*"),
];

/// Streams `batches` into a fresh replica process configured with `env`,
/// signing requests with `key` when given.
async fn run(
    opts: &AppendOptions,
    dir: &std::path::Path,
    batches: Vec<Vec<Entry>>,
    env: &[(&str, &str)],
    key: Option<SigningKey>,
) -> anyhow::Result<Run> {
    let replica = ReplicaProcess::spawn(&opts.exe, dir, false, env).await?;
    let wire = Arc::new(WireCounters::default());
    let mut client = connect_counted(&replica.grpc.to_string(), wire.clone(), key).await?;
    let before = wire.snapshot();
    let start = Instant::now();
    let summary = client.put_stream(futures::stream::iter(batches)).await?;
    let secs = start.elapsed().as_secs_f64();
    let (sent, received) = wire.since(before);
    let (rss, peak) = replica.memory().unwrap_or_default();
    let status = replica.stop().await?;
    Ok(Run {
        secs,
        stored: summary.stored,
        duplicate: summary.duplicate,
        rejected: summary.rejected,
        sent,
        received,
        rss,
        peak,
        status: status.to_string(),
    })
}

/// `bench append`: one client streams entries into one replica process,
/// which checks their signatures (its default), then into another that
/// does not.
pub async fn append(opts: AppendOptions) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ns = Namespace::new("bench", "append")?;
    let key = SigningKey::from_bytes(&rand::random());
    let entries = sample_entries(&ns, &key, opts.entries, opts.ciphertext_bytes);
    let entry_bytes: usize = entries.iter().map(|e| e.data().len()).sum();
    let batches: Vec<Vec<Entry>> = entries.chunks(opts.batch).map(<[Entry]>::to_vec).collect();
    drop(entries);

    let checked = run(
        &opts,
        &dir.path().join("checked"),
        batches.clone(),
        &[],
        None,
    )
    .await?;
    let unchecked = run(
        &opts,
        &dir.path().join("unchecked"),
        batches.clone(),
        &[UNSIGNED_FIXTURES],
        None,
    )
    .await?;
    let client = SigningKey::from_bytes(&rand::random());
    let authenticated = run(
        &opts,
        &dir.path().join("authenticated"),
        batches.clone(),
        &CLIENT_AUTH,
        Some(client.clone()),
    )
    .await?;
    let unary = unary_calls(&opts, &dir.path().join("unary"), client).await?;
    let baseline_rate = baseline(&batches, &dir.path().join("baseline"))?;
    let n = opts.entries as f64;
    let per_entry = entry_bytes as f64 / n;
    let rate = |r: &Run| n / r.secs;
    println!(
        "append: {} signed entries, {} B ciphertext ({per_entry:.0} B encoded entry), batches of {}",
        opts.entries, opts.ciphertext_bytes, opts.batch
    );
    println!(
        "append: stored {} duplicate {} rejected {} in {:.2} s",
        checked.stored, checked.duplicate, checked.rejected, checked.secs
    );
    println!(
        "append: {:.0} entries/s, {:.1} MB/s of entries, each signature verified (policy.require_signatures = true, the default) (target >= 20000 entries/s)",
        rate(&checked),
        entry_bytes as f64 / checked.secs / 1e6
    );
    println!(
        "append: {:.0} entries/s with signatures not checked (policy.require_signatures = false), same run: checking costs {:.0} %",
        rate(&unchecked),
        (1.0 - rate(&checked) / rate(&unchecked)) * 100.0
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
        "append: baseline in-process verify (signatures included) + RocksDB append, no gRPC: {baseline_rate:.0} entries/s (gRPC path reaches {:.0} %)",
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
        [&checked, &unchecked, &authenticated]
            .iter()
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

async fn unary_calls(
    opts: &AppendOptions,
    dir: &std::path::Path,
    key: SigningKey,
) -> anyhow::Result<Unary> {
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
        let replica = ReplicaProcess::spawn(&opts.exe, &dir.join(name), false, env).await?;
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

/// The same batches verified and appended in-process: the ceiling for the gRPC path.
fn baseline(batches: &[Vec<Entry>], path: &std::path::Path) -> anyhow::Result<f64> {
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
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}
