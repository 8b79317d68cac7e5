//! `Replication/Backup`: a checkpoint of the replica's store, taken while
//! it serves (see `crate::store::rocks::backup`), kept on its volume or
//! streamed to the operator file by file, a chunk at a time as the
//! transport asks for it, and removed once streamed (or when the caller
//! goes away).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use tonic::Status;

use super::ResponseStream;
use crate::proto;
use crate::proto::backup_chunk::Part;
use crate::replica::Replica;

/// Bytes of a file in one message.
const CHUNK_BYTES: usize = 1 << 20;

/// Where a replica keeps backups on its volume; `None` for a store with
/// nothing on disk.
#[derive(Debug, Clone)]
pub struct Backups {
    pub dir: PathBuf,
}

/// Takes a backup into `backups` and answers with where it is, or streams
/// it (`download`) and removes it.
pub async fn backup(
    replica: Arc<Replica>,
    backups: Option<&Backups>,
    download: bool,
) -> Result<ResponseStream<proto::BackupChunk>, Status> {
    let Some(backups) = backups else {
        return Err(Status::failed_precondition(
            "this replica keeps nothing on disk to back up (storage.backend = \"memory\")",
        ));
    };
    let stats = replica.stats();
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let name = format!("backup-{}-{}", since_epoch.as_secs(), stats.head_seq);
    let target = match download {
        false => backups.dir.join(&name),
        true => backups.dir.join(format!(".download-{name}")),
    };
    let started = Instant::now();
    replica
        .checkpoint(target.clone())
        .await
        .map_err(Status::from)?;
    let took_ms = started.elapsed().as_millis() as u64;
    let files = files_of(&target).map_err(|e| Status::internal(e.to_string()))?;
    let done = proto::BackupDone {
        path: match download {
            false => target.display().to_string(),
            true => String::new(),
        },
        incarnation: Bytes::copy_from_slice(&replica.incarnation().0),
        head_seq: stats.head_seq,
        entries: stats.entries,
        files: files.len() as u64,
        bytes: files.iter().map(|(_, size)| size).sum(),
        took_ms,
    };
    tracing::info!(
        path = %target.display(),
        download,
        files = done.files,
        bytes = done.bytes,
        took_ms,
        "backup taken"
    );
    let last = proto::BackupChunk {
        part: Some(Part::Done(done)),
    };
    if !download {
        return Ok(Box::pin(futures::stream::iter([Ok(last)])));
    }
    // The directory goes with the stream: streamed, or the caller gone.
    let streamed = Removed(target);
    let parts = futures::stream::iter(files).flat_map(move |(name, size)| {
        let path = streamed.0.join(&name);
        let header = proto::BackupChunk {
            part: Some(Part::File(proto::BackupFile { name, size })),
        };
        futures::stream::iter([Ok(header)]).chain(chunks(path, size))
    });
    Ok(Box::pin(parts.chain(futures::stream::iter([Ok(last)]))))
}

/// The regular files of a checkpoint, with their sizes, in name order.
fn files_of(dir: &Path) -> std::io::Result<Vec<(String, u64)>> {
    let mut files = Vec::new();
    for file in std::fs::read_dir(dir)? {
        let file = file?;
        let meta = file.metadata()?;
        if meta.is_file() {
            files.push((file.file_name().to_string_lossy().into_owned(), meta.len()));
        }
    }
    files.sort();
    Ok(files)
}

/// A streamed backup's directory, removed when dropped.
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "could not remove a streamed backup");
        }
    }
}

/// `size` bytes of the file at `path`, a chunk per message, each read off
/// the executor when the transport asks for it.
fn chunks(
    path: PathBuf,
    size: u64,
) -> impl futures::Stream<Item = Result<proto::BackupChunk, Status>> + Send {
    futures::stream::unfold(Some(0u64), move |at| {
        let path = path.clone();
        async move {
            let offset = at.filter(|&at| at < size)?;
            let want = (size - offset).min(CHUNK_BYTES as u64) as usize;
            let read = tokio::task::spawn_blocking(move || read_at(&path, offset, want)).await;
            match read {
                Ok(Ok(data)) => {
                    let next = offset + data.len() as u64;
                    let chunk = proto::BackupChunk {
                        part: Some(Part::Data(data)),
                    };
                    Some((Ok(chunk), Some(next)))
                }
                Ok(Err(e)) => Some((Err(Status::internal(e)), None)),
                Err(e) => Some((
                    Err(Status::internal(format!("read task failed: {e}"))),
                    None,
                )),
            }
        }
    })
}

fn read_at(path: &Path, offset: u64, want: usize) -> Result<Bytes, String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut data = vec![0; want];
    file.read_exact(&mut data)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(Bytes::from(data))
}
