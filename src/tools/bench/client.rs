//! `bench client`: Automerge document changes through a replica process,
//! end to end. One device makes N changes to a document (each committed,
//! encrypted, signed and stored on the device) and pushes them; a fresh
//! device pulls them, verifies, decrypts and materializes the document.
//! Then a fresh device loads a document of M changes, without a snapshot
//! and with one. Printed beside Automerge alone in the same run: the same N
//! commits on a document in memory, the same changes applied in one batch,
//! and the M-change document loaded from its saved bytes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};
use serde_json::json;

use crate::database::{DEFAULT_SNAPSHOT_EVERY, Database};
use crate::edit::set_path;
use crate::entry::Namespace;
use crate::exchange::Exchange;
use crate::keys::{KeyRing, key_path};
use crate::tools::child::ReplicaProcess;

/// Options of `bench client`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientOptions {
    /// Changes made to the document.
    #[arg(long, default_value_t = 10_000)]
    pub changes: usize,
    /// Changes in the document a fresh device loads, with and without a
    /// snapshot (0 skips that part).
    #[arg(long, default_value_t = 100_000)]
    pub load_changes: usize,
}

/// The edit of change `i`: one of 100 map fields set.
fn field(i: usize) -> String {
    format!("k{}", i % 100)
}

/// `bench client`. See the module docs.
pub async fn client(opts: ClientOptions, exe: PathBuf) -> anyhow::Result<()> {
    let n = opts.changes;
    let dir = tempfile::tempdir()?;
    let ns = Namespace::new("bench", "client")?;

    // Automerge alone, in memory.
    let start = Instant::now();
    let mut plain = AutoCommit::new();
    let mut changes = Vec::with_capacity(n);
    for i in 0..n {
        plain.put(ROOT, field(i), i as i64)?;
        plain.commit();
        changes.push(plain.get_last_local_change().expect("a change"));
    }
    let commit_rate = n as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut applied = AutoCommit::new();
    applied.apply_changes_batch(changes)?;
    let apply_rate = n as f64 / start.elapsed().as_secs_f64();

    let replica = ReplicaProcess::spawn(&exe, &dir.path().join("replica"), false, &[]).await?;
    let exchange =
        Exchange::grpc(&replica.grpc.to_string(), Duration::from_secs(600))?.only(ns.clone());
    let (home_a, home_b) = (dir.path().join("a"), dir.path().join("b"));
    let keys = KeyRing::generate(1);
    keys.create(&key_path(&home_a, &ns))?;
    keys.for_another_device().create(&key_path(&home_b, &ns))?;

    // Create, encrypt, sign and store each change on the device, then push.
    let a = Database::open(&home_a, ns.clone())?;
    let start = Instant::now();
    let mut doc = a.create(&json!({})).await?;
    for i in 1..n {
        set_path(&mut doc, &field(i), &json!(i))?;
        a.save(&mut doc).await?;
    }
    let made = start.elapsed().as_secs_f64();
    let pushed = exchange.push(a.store()).await?;
    let write_secs = start.elapsed().as_secs_f64();
    let snapshots = a.list().await?[0].snapshots;
    anyhow::ensure!(pushed.stored as usize == n + snapshots, "pushed {pushed:?}");

    // A fresh device: pull, verify, decrypt, materialize.
    let b = Database::open(&home_b, ns.clone())?;
    let start = Instant::now();
    let pulled = exchange.pull(b.store()).await?;
    let fetched = start.elapsed().as_secs_f64();
    let loaded = b.load(doc.id()).await?;
    let read_secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(pulled.stored as usize == n + snapshots, "pulled {pulled:?}");
    anyhow::ensure!(loaded.to_json() == doc.to_json(), "the documents differ");
    let load = match opts.load_changes {
        0 => None,
        m => Some(load(m, &exchange, dir.path(), &keys, &ns).await?),
    };
    replica.stop().await?;

    println!(
        "client: {n} changes to one document (one of 100 map fields set per change), through a replica process on loopback"
    );
    println!(
        "client: create + encrypt + sign + store + push: {:.0} changes/s ({made:.2} s on the device, {:.2} s pushing; {snapshots} snapshots written, one per {DEFAULT_SNAPSHOT_EVERY} changes) (target >= 5000)",
        n as f64 / write_secs,
        write_secs - made
    );
    println!(
        "client: pull + verify + decrypt + materialize on a fresh device: {:.0} changes/s ({fetched:.2} s pulling, {:.2} s loading) (target >= 10000)",
        n as f64 / read_secs,
        read_secs - fetched
    );
    println!(
        "client: baseline in this run, Automerge alone in memory: {commit_rate:.0} commits/s, the same changes applied in one batch at {apply_rate:.0}/s"
    );
    if let Some(l) = load {
        println!(
            "client: a fresh device loads a document of {} changes: {:.3} s without a snapshot, {:.3} s with one (target <= 0.5 s); pulling took {:.2} s and {:.2} s",
            opts.load_changes, l.without, l.with, l.pull_without, l.pull_with
        );
        println!(
            "client: baseline in this run, Automerge alone in memory: that document loaded from its saved bytes in {:.3} s",
            l.automerge_load
        );
    }
    Ok(())
}

/// What loading a large document took.
struct Loaded {
    without: f64,
    with: f64,
    pull_without: f64,
    pull_with: f64,
    automerge_load: f64,
}

/// A device makes an `m`-change document with no snapshot and pushes it; a
/// fresh device pulls and loads it; then the first writes a snapshot and
/// pushes that, and another fresh device pulls and loads.
async fn load(
    m: usize,
    exchange: &Exchange,
    dir: &std::path::Path,
    keys: &KeyRing,
    ns: &Namespace,
) -> anyhow::Result<Loaded> {
    let fresh = |name: &str| -> anyhow::Result<Database> {
        let home = dir.join(name);
        keys.for_another_device().create(&key_path(&home, ns))?;
        Ok(Database::open(&home, ns.clone())?)
    };
    let maker = fresh("maker")?.with_snapshot_every(0);
    let mut doc = maker.create(&json!({})).await?;
    for i in 1..m {
        set_path(&mut doc, &field(i), &json!(i))?;
        maker.save(&mut doc).await?;
    }
    exchange.push(maker.store()).await?;

    let (id, expected) = (doc.id(), doc.to_json());
    let timed_load = |db: Database| {
        let expected = &expected;
        async move {
            let start = Instant::now();
            exchange.pull(db.store()).await?;
            let pulled = start.elapsed().as_secs_f64();
            let start = Instant::now();
            let loaded = db.load(id).await?;
            let secs = start.elapsed().as_secs_f64();
            anyhow::ensure!(&loaded.to_json() == expected, "the documents differ");
            anyhow::Ok((pulled, secs))
        }
    };
    let (pull_without, without) = timed_load(fresh("without")?).await?;
    maker.snapshot(&mut doc).await?;
    exchange.push(maker.store()).await?;
    let (pull_with, with) = timed_load(fresh("with")?).await?;

    let saved = doc.doc_mut().save();
    let start = Instant::now();
    AutoCommit::load(&saved)?;
    Ok(Loaded {
        without,
        with,
        pull_without,
        pull_with,
        automerge_load: start.elapsed().as_secs_f64(),
    })
}
