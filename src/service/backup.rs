//! `Replication/Backup`: a checkpoint of the replica's store, taken while
//! it serves (see `crate::store::rocks::backup`), kept on its volume or
//! streamed to the operator file by file, a chunk at a time as the
//! transport asks for it and at the rate asked for, and removed once
//! streamed (or when the caller goes away).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tonic::Status;

use super::ResponseStream;
use crate::pace::Pace;
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
/// it (`download`, reading `bytes_per_second` at most, 0: no limit) and
/// removes it.
pub async fn backup(
    replica: Arc<Replica>,
    backups: Option<&Backups>,
    download: bool,
    bytes_per_second: u64,
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
    let bytes = files.iter().map(|(_, size)| size).sum();
    let done = proto::BackupDone {
        path: match download {
            false => target.display().to_string(),
            true => String::new(),
        },
        incarnation: Bytes::copy_from_slice(&replica.incarnation().0),
        head_seq: stats.head_seq,
        entries: stats.entries,
        files: files.len() as u64,
        bytes,
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
    let streaming = Streaming {
        backup_bytes: bytes,
        files: files.into(),
        file: None,
        pace: Pace::new(bytes_per_second),
        last: Some(last),
        dir: Removed(target),
    };
    Ok(Box::pin(futures::stream::unfold(
        streaming,
        |mut s| async {
            let next = s.next().await?;
            if next.is_err() {
                s.files.clear();
                s.file = None;
                s.last = None;
            }
            Some((next, s))
        },
    )))
}

/// A backup being streamed: its files' headers and bytes, then the last
/// message.
struct Streaming {
    files: VecDeque<(String, u64)>,
    backup_bytes: u64,
    /// The file being sent: its path, size and the bytes sent.
    file: Option<(PathBuf, u64, u64)>,
    pace: Pace,
    last: Option<proto::BackupChunk>,
    /// The directory goes with the stream: streamed, or the caller gone.
    dir: Removed,
}

impl Streaming {
    async fn next(&mut self) -> Option<Result<proto::BackupChunk, Status>> {
        if let Some((path, size, sent)) = self.file.take().filter(|f| f.2 < f.1) {
            // Read off the executor, when the transport asks for it.
            let want = (size - sent).min(CHUNK_BYTES as u64) as usize;
            let read = {
                let path = path.clone();
                crate::blocking::run(move || read_at(&path, sent, want)).await
            };
            let data = match read {
                Ok(Ok(data)) => data,
                Ok(Err(e)) => return Some(Err(Status::internal(e))),
                Err(e) => return Some(Err(e.into())),
            };
            self.pace.read(data.len() as u64).await;
            self.file = Some((path, size, sent + data.len() as u64));
            return Some(Ok(proto::BackupChunk {
                part: Some(Part::Data(data)),
            }));
        }
        if let Some((name, size)) = self.files.pop_front() {
            self.file = Some((self.dir.0.join(&name), size, 0));
            return Some(Ok(proto::BackupChunk {
                part: Some(Part::File(proto::BackupFile {
                    name,
                    size,
                    backup_bytes: self.backup_bytes,
                })),
            }));
        }
        self.last.take().map(Ok)
    }
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
