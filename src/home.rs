//! A client's home directory on this device: its store, its Automerge actor
//! id and the name it is known by to peers, held by one process at a time.
//!
//! ```text
//! <home>/
//!   keys/<tenant>/<db>.toml   the database keys (crate::keys)
//!   store/                    the device store, every namespace's entries
//!   actor                     this device's actor id, hex
//!   lock                      held while a process has the store open
//! ```
//!
//! The store is RocksDB, which one process opens at a time. The `lock`
//! file says which process holds it, so a second one waits for it (a sync
//! round is short) and otherwise says who has it, rather than failing on
//! RocksDB's own lock.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::ActorId;

use crate::store::rocks::{RocksConfig, RocksStore};
use crate::store::{Store, StoreError};

/// How long opening a home waits, by default, for another process to let
/// it go.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{home} is in use by another process ({holder}); stop it, or edit while a \
         `sync --every` is between rounds"
    )]
    Busy { home: PathBuf, holder: String },
    #[error("{path}: not an actor id (hex)")]
    BadActor { path: PathBuf },
    #[error("the device store at {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
}

/// A client home, held by this process until dropped.
pub struct Home {
    path: PathBuf,
    actor: ActorId,
    /// Held (an advisory lock) while this value lives.
    _lock: File,
}

impl std::fmt::Debug for Home {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Home").field("path", &self.path).finish()
    }
}

impl Home {
    /// Takes `path` (made if missing) for this process, waiting up to
    /// `wait` for another that holds it. The lock file names this process
    /// and its command line, for whoever waits.
    pub fn open(path: &Path, wait: Duration) -> Result<Self, HomeError> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| HomeError::Io { path: p, source }
        };
        std::fs::create_dir_all(path).map_err(io(path))?;
        let lock_path = path.join("lock");
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        let start = Instant::now();
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < wait => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = lock.read_to_string(&mut holder);
                    return Err(HomeError::Busy {
                        home: path.to_path_buf(),
                        holder: match holder.trim() {
                            "" => "unknown".into(),
                            h => h.to_owned(),
                        },
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
            }
        }
        let command: Vec<String> = std::env::args().collect();
        let note = format!("pid {}: {}", std::process::id(), command.join(" "));
        let note: String = note.chars().take(240).collect();
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| lock.write_all(note.as_bytes()))
            .map_err(io(&lock_path))?;
        let actor = actor(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            actor,
            _lock: lock,
        })
    }

    /// [`Self::open`], then [`Self::open_store`], off the executor.
    pub async fn open_with_store(
        path: &Path,
        wait: Duration,
    ) -> Result<(Self, Arc<dyn Store>), HomeError> {
        let owned = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let home = Self::open(&owned, wait)?;
            let store = home.open_store()?;
            Ok((home, store))
        })
        .await
        .map_err(|e| HomeError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This device's Automerge actor id (made on first use).
    pub fn actor(&self) -> &ActorId {
        &self.actor
    }

    /// The name peers know this device by: stable across restarts and
    /// addresses, so their cursors into its log stay valid.
    pub fn device_name(&self) -> String {
        format!("device-{}", self.actor.to_hex_string())
    }

    /// Opens the device store (made if missing). Blocking: call it from a
    /// blocking context or at start-up.
    pub fn open_store(&self) -> Result<Arc<dyn Store>, HomeError> {
        let path = self.path.join("store");
        let mut config = RocksConfig::new(path.clone());
        config.index_documents = true;
        // An app saves change by change and waits for each: an fsync per
        // save would cost more than the save. A device's saves are durable
        // once pushed to a replica, which syncs before it acknowledges.
        config.sync_writes = false;
        RocksStore::open(&config)
            .map(|s| Arc::new(s) as Arc<dyn Store>)
            .map_err(|source| HomeError::Store { path, source })
    }
}

/// This device's actor id, made on first use.
fn actor(home: &Path) -> Result<ActorId, HomeError> {
    let path = home.join("actor");
    let io = |source| HomeError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => match hex::decode(text.trim()) {
            Ok(bytes) if !bytes.is_empty() => Ok(ActorId::from(bytes)),
            _ => Err(HomeError::BadActor { path }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id: [u8; 16] = rand::random();
            std::fs::write(&path, hex::encode(id)).map_err(io)?;
            Ok(ActorId::from(id.to_vec()))
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_then_is_told_who_holds_the_home() {
        let dir = tempfile::tempdir().unwrap();
        let first = Home::open(dir.path(), DEFAULT_WAIT).unwrap();
        let err = Home::open(dir.path(), Duration::from_millis(200)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("(pid {}: ", std::process::id())),
            "{text}"
        );
        let name = first.device_name();
        drop(first);
        let again = Home::open(dir.path(), Duration::ZERO).unwrap();
        assert_eq!(again.device_name(), name, "the actor id is kept");
    }
}
