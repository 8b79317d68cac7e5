//! The `backup` and `restore` commands.
//!
//! - `backup` asks a running replica for an online backup
//!   (`Replication/Backup`): kept on its volume, or with `--out FILE`
//!   streamed here into one tar file, written as `FILE.partial` and renamed
//!   only once whole.
//! - `restore` puts a backup (a backup's directory, or such a tar file)
//!   in place of a stopped replica's database (see
//!   `crate::store::rocks::backup`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::proto;
use crate::proto::backup_chunk::Part;
use crate::proto::replication_client::ReplicationClient;
use crate::store::rocks::backup::{Restored, restore as restore_store};

/// `backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The replica's gRPC address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub addr: String,
    /// Stream the backup here as one tar file instead of keeping it on
    /// the replica's volume.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// With `--out`: the replica reads the backup's files at this many MiB
    /// a second at most (0: no limit), so that its writes carry on.
    #[arg(long, default_value_t = DEFAULT_MB_PER_SECOND)]
    pub mb_per_second: u64,
}

/// `restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The backup: a directory `backup` kept on a replica's volume
    /// (`<storage.path>/backups/…`), or a file `backup --out` wrote.
    #[arg(long)]
    pub from: PathBuf,
    /// The stopped replica's `storage.path`.
    #[arg(long)]
    pub data: PathBuf,
    /// Do nothing when the directory was already restored from this same
    /// backup (what the chart's restore step runs before each start).
    #[arg(long)]
    pub once: bool,
}

/// How fast a replica reads a backup it streams, unless told otherwise.
pub const DEFAULT_MB_PER_SECOND: u64 = 32;

/// How often a streamed backup's progress is printed.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// In a restored directory: the backup it was restored from.
const RESTORED_FROM: &str = "restored-from";

pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let dial = crate::client::Dial::from_env()?;
    let channel = crate::client::channel(&args.addr, dial.tls).await?;
    let signer = crate::auth::RequestSigner::new(dial.key);
    let mut chunks = ReplicationClient::with_interceptor(channel, signer)
        .max_decoding_message_size(crate::client::MAX_MESSAGE_BYTES)
        .backup(proto::BackupRequest {
            download: args.out.is_some(),
            mb_per_second: args.mb_per_second,
        })
        .await?
        .into_inner();
    let started = Instant::now();
    let mut out = match &args.out {
        Some(path) => Some(TarOut::create(path)?),
        None => None,
    };
    while let Some(chunk) = chunks.message().await? {
        match chunk.part {
            Some(Part::File(file)) => {
                let out = out
                    .as_mut()
                    .ok_or_else(|| anyhow::anyhow!("the replica sent a file unasked"))?;
                out.start(&file.name, file.size, file.backup_bytes)?;
            }
            Some(Part::Data(data)) => {
                let out = out
                    .as_mut()
                    .ok_or_else(|| anyhow::anyhow!("the replica sent data unasked"))?;
                out.write(&data)?;
            }
            Some(Part::Done(done)) => {
                let kept = match out.take() {
                    Some(out) => out.finish()?.display().to_string(),
                    None => format!("{} on the replica's volume", done.path),
                };
                println!(
                    "backup of {} (incarnation {}): log through at least {}, {} entries, {} files, {:.1} MB, checkpoint took {} ms, {:.1} s in all; kept at {kept}",
                    args.addr,
                    hex::encode(&done.incarnation),
                    done.head_seq,
                    done.entries,
                    done.files,
                    done.bytes as f64 / 1e6,
                    done.took_ms,
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            None => anyhow::bail!("the replica sent an empty backup message"),
        }
    }
    anyhow::bail!("the backup stream ended before the backup was whole; nothing was kept here")
}

/// A tar file written as a backup streams in: `FILE.partial` until whole.
struct TarOut {
    path: PathBuf,
    partial: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    /// Bytes the current file still expects, and its padding.
    left: u64,
    pad: u64,
    written: u64,
    /// The bytes of the whole backup.
    total: u64,
    started: Instant,
    shown: Instant,
}

impl TarOut {
    fn create(path: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(!path.exists(), "{} exists; name a new file", path.display());
        let partial = PathBuf::from(format!("{}.partial", path.display()));
        let file = std::fs::File::create(&partial)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", partial.display()))?;
        Ok(Self {
            path: path.to_owned(),
            partial,
            file: std::io::BufWriter::new(file),
            left: 0,
            pad: 0,
            written: 0,
            total: 0,
            started: Instant::now(),
            shown: Instant::now(),
        })
    }

    fn start(&mut self, name: &str, size: u64, total: u64) -> anyhow::Result<()> {
        self.end_file()?;
        self.total = total;
        anyhow::ensure!(
            !name.is_empty() && !name.contains('/') && name != ".." && name != ".",
            "the replica sent a file name that is not a plain name: {name:?}"
        );
        let mut header = tar::Header::new_gnu();
        header.set_path(name)?;
        header.set_size(size);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        self.file.write_all(header.as_bytes())?;
        self.left = size;
        self.pad = (512 - size % 512) % 512;
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> anyhow::Result<()> {
        anyhow::ensure!(
            data.len() as u64 <= self.left,
            "the replica sent more bytes than the file's size"
        );
        self.file.write_all(data)?;
        self.left -= data.len() as u64;
        self.written += data.len() as u64;
        if self.shown.elapsed() >= PROGRESS_EVERY {
            self.shown = Instant::now();
            let secs = self.started.elapsed().as_secs_f64();
            println!(
                "backup: {:.1} of {:.1} MB received ({:.0} %), {:.1} MB/s",
                self.written as f64 / 1e6,
                self.total as f64 / 1e6,
                100.0 * self.written as f64 / self.total.max(1) as f64,
                self.written as f64 / 1e6 / secs
            );
        }
        Ok(())
    }

    fn end_file(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.left == 0,
            "the replica's file ended {} bytes short",
            self.left
        );
        self.file.write_all(&vec![0; self.pad as usize])?;
        self.pad = 0;
        Ok(())
    }

    /// Ends the archive, makes it durable and gives it its name.
    fn finish(mut self) -> anyhow::Result<PathBuf> {
        self.end_file()?;
        self.file.write_all(&[0; 1024])?;
        let file = self.file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&self.partial, &self.path)?;
        Ok(self.path)
    }
}

pub fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let marker = args.data.join(RESTORED_FROM);
    let from_text = args.from.display().to_string();
    if args.once && std::fs::read_to_string(&marker).is_ok_and(|m| m == from_text) {
        println!(
            "{} was already restored from {from_text}; nothing to do",
            args.data.display()
        );
        return Ok(());
    }
    let restored = restore_from(&args.from, &args.data)?;
    std::fs::write(&marker, &from_text)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", marker.display()))?;
    println!(
        "restored {} into {} in {:.1} s: log through {}, {} entries, new incarnation {}",
        args.from.display(),
        args.data.display(),
        started.elapsed().as_secs_f64(),
        restored.head_seq,
        restored.entries,
        restored.incarnation
    );
    if let Some(aside) = restored.set_aside {
        println!(
            "the database it replaced is kept at {}; remove it once the restored replica runs",
            aside.display()
        );
    }
    println!(
        "start the replica: its peers' cursors into the old log are refused and they read its log again; it pulls what it missed from them"
    );
    Ok(())
}

/// Restores `from` (a backup's directory, or a file `backup --out`
/// wrote) into `data`.
pub fn restore_from(from: &Path, data: &Path) -> anyhow::Result<Restored> {
    let unpacked = match from.is_file() {
        false => None,
        true => Some(unpack(from, data)?),
    };
    let restored = restore_store(unpacked.as_ref().map_or(from, |u| u.path()), data);
    if let Some(dir) = unpacked {
        dir.close()?;
    }
    Ok(restored?)
}

/// Unpacks a backup tar file into a directory beside the data (on its
/// filesystem, so the restore moves files rather than copying them).
fn unpack(file: &Path, data: &Path) -> anyhow::Result<tempfile::TempDir> {
    std::fs::create_dir_all(data)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", data.display()))?;
    let dir = tempfile::Builder::new()
        .prefix(".restoring-unpacked-")
        .tempdir_in(data)?;
    let reader = std::fs::File::open(file)
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", file.display()))?;
    tar::Archive::new(std::io::BufReader::new(reader))
        .unpack(dir.path())
        .map_err(|e| anyhow::anyhow!("{} is not a backup file: {e}", file.display()))?;
    Ok(dir)
}
