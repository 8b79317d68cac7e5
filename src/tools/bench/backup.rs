//! `bench backup`: a replica process holding N entries is backed up while
//! a client keeps writing: once kept on its volume, then streamed into a
//! file unpaced and at `backup`'s default pace; the client's write rate
//! during each stream (its first 10 s) is printed beside its rate alone
//! just before. A scrub of the running replica is measured the same way.
//! Then, with the replica stopped: a plain copy of its data directory (the
//! baseline for the stream), a restore of the file into an empty
//! directory, and a scrub of the restored store.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{UNSIGNED_FIXTURES, unsigned_entries};
use crate::client::StoreClient;
use crate::entry::Namespace;
use crate::proto;
use crate::proto::backup_chunk::Part;
use crate::proto::replication_client::ReplicationClient;
use crate::store::rocks::{RocksConfig, RocksStore};
use crate::store::scrub::scrub_all;
use crate::tools::backup::DEFAULT_MB_PER_SECOND;
use crate::tools::child::ReplicaProcess;

/// Options of `bench backup`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupOptions {
    /// Entries the replica holds.
    #[arg(long, default_value_t = 1_000_000)]
    pub entries: usize,
    /// Ciphertext bytes per entry.
    #[arg(long = "size", default_value_t = 1024)]
    pub ciphertext_bytes: usize,
}

/// Entries per batch, and batches generated at once while filling.
const BATCH: usize = 1000;
const FILL_CHUNK: usize = 100_000;

/// `bench backup`. See the module docs.
pub async fn backup(opts: BackupOptions, exe: PathBuf) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("replica");
    let replica = ReplicaProcess::spawn(&exe, &data, false, &[UNSIGNED_FIXTURES]).await?;
    let addr = replica.grpc.to_string();
    let ns = Namespace::new("bench", "backup")?;
    let mut client = StoreClient::connect(&addr).await?;
    let started = Instant::now();
    let mut first = 0u64;
    while (first as usize) < opts.entries {
        let count = FILL_CHUNK.min(opts.entries - first as usize);
        let entries = unsigned_entries(&ns, first, count, opts.ciphertext_bytes);
        let batches: Vec<_> = entries.chunks(BATCH).map(<[_]>::to_vec).collect();
        client.put_stream(futures::stream::iter(batches)).await?;
        first += count as u64;
    }
    println!(
        "backup: {} entries of {} B ciphertext in a replica process, filled in {:.1} s",
        opts.entries,
        opts.ciphertext_bytes,
        started.elapsed().as_secs_f64()
    );

    let mut admin = ReplicationClient::connect(format!("http://{addr}"))
        .await?
        .max_decoding_message_size(crate::client::MAX_MESSAGE_BYTES);
    let started = Instant::now();
    let kept = done_of(
        admin
            .backup(proto::BackupRequest {
                download: false,
                mb_per_second: 0,
            })
            .await?
            .into_inner(),
    )
    .await?;
    println!(
        "backup: kept on the volume: {} files, {:.1} MB linked, checkpoint {} ms, {:.0} ms for the call",
        kept.files,
        kept.bytes as f64 / 1e6,
        kept.took_ms,
        started.elapsed().as_secs_f64() * 1e3
    );

    // The client's write rate alone, then during the streamed backup.
    let size = opts.ciphertext_bytes;
    let until = Instant::now() + Duration::from_secs(3);
    let alone = write_until(&mut client, &ns, &mut first, size, || {
        Instant::now() >= until
    })
    .await?;
    let mut next = first;
    let full = dir.path().join("backup-unpaced.tar");
    let unpaced = while_writing(
        &client,
        &ns,
        &mut next,
        size,
        stream_backup(&addr, &full, 0),
    )
    .await?;
    std::fs::remove_file(&full)?;
    let file = dir.path().join("backup.tar");
    let paced = DEFAULT_MB_PER_SECOND;
    let streamed = while_writing(
        &client,
        &ns,
        &mut next,
        size,
        stream_backup(&addr, &file, paced),
    )
    .await?;

    // A scrub of the running replica, unthrottled, while the client writes.
    let scrub = async {
        let request = proto::ScrubRequest { mb_per_second: 0 };
        Ok(admin.scrub(request).await?.into_inner())
    };
    let scrubbing = while_writing(&client, &ns, &mut next, size, scrub).await?;
    let scrubbed = &scrubbing.done;
    println!(
        "backup: scrub of the running replica: {} entries, {:.1} MB in {:.2} s = {:.0} entries/s, {} corrupt, while a client wrote {:.0} entries/s (alone: {alone:.0} entries/s, {:+.0} %)",
        scrubbed.entries,
        scrubbed.bytes as f64 / 1e6,
        scrubbing.secs,
        scrubbed.entries as f64 / scrubbing.secs,
        scrubbed.corrupt.len(),
        scrubbing.rate,
        (scrubbing.rate / alone - 1.0) * 100.0
    );
    replica.stop().await?;
    let stream_rate = unpaced.done as f64 / unpaced.secs / 1e6;
    println!(
        "backup: streamed into one file, unpaced (--mb-per-second 0): {:.1} MB in {:.2} s = {stream_rate:.0} MB/s, while a client wrote {:.0} entries/s (alone just before: {alone:.0} entries/s, {:+.0} %)",
        unpaced.done as f64 / 1e6,
        unpaced.secs,
        unpaced.rate,
        (unpaced.rate / alone - 1.0) * 100.0
    );
    println!(
        "backup: streamed into one file at the default --mb-per-second {paced}: {:.1} MB in {:.2} s = {:.0} MB/s, while a client wrote {:.0} entries/s ({:+.0} %)",
        streamed.done as f64 / 1e6,
        streamed.secs,
        streamed.done as f64 / streamed.secs / 1e6,
        streamed.rate,
        (streamed.rate / alone - 1.0) * 100.0
    );

    let (copied, copy_secs) = copy_dir(&data, &dir.path().join("copy"))?;
    let copy_rate = copied as f64 / copy_secs / 1e6;
    println!(
        "backup: baseline, a plain copy of the stopped data directory: {:.1} MB in {copy_secs:.2} s = {copy_rate:.0} MB/s (the stream reaches {:.0} %)",
        copied as f64 / 1e6,
        stream_rate / copy_rate * 100.0
    );

    let target = dir.path().join("restored");
    let started = Instant::now();
    let restored = crate::tools::backup::restore_from(&file, &target)?;
    println!(
        "backup: restore of the file into an empty directory: {:.2} s (unpacking included), log through {}, {} entries",
        started.elapsed().as_secs_f64(),
        restored.head_seq,
        restored.entries
    );

    let store = RocksStore::open(&RocksConfig::new(&target))?;
    let started = Instant::now();
    let totals = scrub_all(&store, BATCH, |_| {})?;
    let (checked, found) = (totals.checked, totals.findings.len());
    let secs = started.elapsed().as_secs_f64();
    println!(
        "backup: scrub of the restored store: {checked} entries in {secs:.2} s = {:.0} entries/s, {found} corrupt",
        checked as f64 / secs
    );
    anyhow::ensure!(found == 0, "the restored store has corrupt entries");
    Ok(())
}

/// What a client wrote while some work ran.
struct Writing<T> {
    /// What the work returned, and how long it took.
    done: T,
    secs: f64,
    /// The client's entries/s during its write window.
    rate: f64,
}

/// Runs `work` while a client writes from `next` on (and moves `next` past
/// what it wrote).
async fn while_writing<T>(
    client: &StoreClient,
    ns: &Namespace,
    next: &mut u64,
    size: usize,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<Writing<T>> {
    let stop = CancellationToken::new();
    let writer = {
        let (mut client, ns, stop) = (client.clone(), ns.clone(), stop.clone());
        let mut next = *next;
        tokio::spawn(async move {
            let rate = write_until(&mut client, &ns, &mut next, size, window(&stop)).await;
            rate.map(|rate| (rate, next))
        })
    };
    let started = Instant::now();
    let done = work.await;
    let secs = started.elapsed().as_secs_f64();
    stop.cancel();
    let (rate, written_to) = writer.await??;
    *next = written_to;
    Ok(Writing {
        done: done?,
        secs,
        rate,
    })
}

/// Streams a backup into `file` at `mb_per_second`: the file's bytes.
async fn stream_backup(addr: &str, file: &Path, mb_per_second: u64) -> anyhow::Result<u64> {
    crate::tools::backup::backup(crate::tools::backup::BackupArgs {
        addr: addr.to_owned(),
        out: Some(file.to_owned()),
        mb_per_second,
    })
    .await?;
    Ok(std::fs::metadata(file)?.len())
}

/// The last message of a backup call.
async fn done_of(
    mut chunks: tonic::Streaming<proto::BackupChunk>,
) -> anyhow::Result<proto::BackupDone> {
    while let Some(chunk) = chunks.message().await? {
        if let Some(Part::Done(done)) = chunk.part {
            return Ok(done);
        }
    }
    anyhow::bail!("the backup ended without its last message")
}

/// While a backup or a scrub runs, the client writes for its first
/// seconds only, so that what it adds to the store stays bounded.
const WRITE_WINDOW: Duration = Duration::from_secs(10);

/// Done when `stop` is cancelled or the write window is over.
fn window(stop: &CancellationToken) -> impl Fn() -> bool + use<> {
    let (stop, until) = (stop.clone(), Instant::now() + WRITE_WINDOW);
    move || stop.is_cancelled() || Instant::now() >= until
}

/// Writes batches until `done`; entries/s.
async fn write_until(
    client: &mut StoreClient,
    ns: &Namespace,
    next: &mut u64,
    size: usize,
    done: impl Fn() -> bool,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut written = 0u64;
    while !done() {
        let batch = unsigned_entries(ns, *next, BATCH, size);
        *next += BATCH as u64;
        client.put(&batch).await?;
        written += BATCH as u64;
    }
    Ok(written as f64 / started.elapsed().as_secs_f64())
}

/// Copies the files of `from` (not its backups) into `to`: bytes, seconds.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<(u64, f64)> {
    std::fs::create_dir_all(to)?;
    let started = Instant::now();
    let mut bytes = 0;
    for file in std::fs::read_dir(from)? {
        let file = file?;
        if file.file_type()?.is_file() {
            bytes += std::fs::copy(file.path(), to.join(file.file_name()))?;
        }
    }
    let copied = std::fs::File::open(to)?;
    copied.sync_all()?;
    Ok((bytes, started.elapsed().as_secs_f64()))
}
