//! `bench missing-ids`: how a replica answers "which of these do I lack?"
//! for ids it holds, with bodies in blob files. Prints the time and the
//! bytes the replica process read for `MissingIds` over held ids, over
//! unheld ids, and, as the baseline in the same run, for reading the same
//! bodies (`GetEntries`), which is what answering from the entries
//! themselves costs.

use std::path::PathBuf;
use std::time::Instant;

use super::{UNSIGNED_FIXTURES, unsigned_entries, wait_quiet};
use crate::client::StoreClient;
use crate::entry::{EntryId, Namespace};
use crate::tools::child::ReplicaProcess;

/// Options of `bench missing-ids`.
#[derive(Debug, Clone)]
pub struct MissingOptions {
    pub entries: usize,
    pub ciphertext_bytes: usize,
    pub exe: PathBuf,
}

/// Bytes a process has read: through read calls (`rchar`, page cache
/// included) and from the block device (`read_bytes`).
fn io_read(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("rchar:"), field("read_bytes:"))
}

/// Asks the kernel to drop clean page-cache pages, so reads reach the disk;
/// false where that is not permitted.
fn drop_page_cache() -> bool {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok()
}

pub async fn missing_ids(opts: MissingOptions) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db");
    let ns = Namespace::new("bench", "missing")?;
    let env = [
        ("MINDOO_REPLICA__LIMITS__MAX_IDS_PER_REQUEST", "20000"),
        UNSIGNED_FIXTURES,
    ];
    let replica = ReplicaProcess::spawn(&opts.exe, &db, false, &env).await?;
    let mut client = StoreClient::connect(&replica.grpc.to_string()).await?;
    let mut held: Vec<EntryId> = Vec::with_capacity(opts.entries);
    let per_batch = (1 << 20) / opts.ciphertext_bytes.max(1);
    let mut first = 0;
    while held.len() < opts.entries {
        let n = per_batch.max(1).min(opts.entries - held.len());
        let batch = unsigned_entries(&ns, first, n, opts.ciphertext_bytes);
        first += n as u64;
        held.extend(batch.iter().map(|e| e.id));
        client.put(&batch).await?;
    }
    // Restart, so every body is in blob files, none in a memtable.
    replica.stop().await?;
    let replica = ReplicaProcess::spawn(&opts.exe, &db, false, &env).await?;
    let pid = replica.pid().unwrap_or(0);
    wait_quiet(&replica, std::time::Duration::from_secs(30)).await;
    let mut client = StoreClient::connect(&replica.grpc.to_string()).await?;
    let unheld: Vec<EntryId> = (0..opts.entries)
        .map(|i| EntryId::of(&(i as u64).to_be_bytes()))
        .collect();
    println!(
        "missing-ids: {} held entries of {} B ciphertext, bodies in blob files",
        opts.entries, opts.ciphertext_bytes
    );
    let cold = drop_page_cache();
    if !cold {
        println!(
            "missing-ids: (page cache could not be dropped: disk bytes count cache misses only)"
        );
    }
    let measure = |what: &'static str, (r0, d0): (u64, u64), t: Instant| {
        let (r1, d1) = io_read(pid);
        println!(
            "missing-ids: {what}: {:.1} ms, replica read {:.1} MB through read calls, {:.1} MB from disk",
            t.elapsed().as_secs_f64() * 1e3,
            (r1 - r0) as f64 / 1e6,
            (d1 - d0) as f64 / 1e6
        );
    };

    let (io, t) = (io_read(pid), Instant::now());
    let missing = client.missing(&ns, &held).await?;
    measure("MissingIds of held ids", io, t);
    anyhow::ensure!(
        missing.is_empty(),
        "{} held ids reported missing",
        missing.len()
    );

    let (io, t) = (io_read(pid), Instant::now());
    let missing = client.missing(&ns, &unheld).await?;
    measure("MissingIds of unheld ids", io, t);
    anyhow::ensure!(missing.len() == unheld.len(), "unheld ids reported held");

    if cold {
        drop_page_cache();
    }
    let (io, t) = (io_read(pid), Instant::now());
    let got = client.get(&ns, &held).await?;
    measure(
        "baseline: GetEntries of the same held ids (reading every body)",
        io,
        t,
    );
    anyhow::ensure!(got.len() == held.len(), "bodies missing");
    replica.stop().await?;
    Ok(())
}
