//! Backups of a RocksDB store, and restoring one.
//!
//! A backup is a RocksDB checkpoint, taken while the store serves: every
//! family as of one moment (the memtables are flushed first), made of hard
//! links where it lies on the store's filesystem, so it copies nothing.
//!
//! A restore puts a backup in place of a stopped store's database, keeps
//! what it replaces beside it (`replaced-<time>/`), and gives the restored
//! database a new incarnation, so peers' cursors into the log it had are
//! refused and they read its log again. Table and blob files are immutable
//! and are linked from the backup when they can be; the files RocksDB
//! appends to (MANIFEST, WAL) are copied, so the restored store never
//! writes into the backup.

use std::path::{Path, PathBuf};

use rocksdb::checkpoint::Checkpoint;

use super::{RocksConfig, RocksStore, map_err, map_io, meta};
use crate::store::{Incarnation, Seq, Store, StoreError};

/// Where backups kept on a store's own volume go, inside its directory.
pub const BACKUPS_DIR: &str = "backups";
/// What a restore moved aside: `replaced-<unix seconds>`.
const REPLACED_PREFIX: &str = "replaced-";
/// A restore in progress: `.restoring-<unix seconds>`.
const STAGING_PREFIX: &str = ".restoring-";

impl RocksStore {
    /// See [`Store::checkpoint`].
    pub(super) fn checkpoint_to(&self, dir: &Path) -> Result<(), StoreError> {
        Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(dir))
            .map_err(|e| map_err(dir, e))
    }
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The restored database's new incarnation.
    pub incarnation: Incarnation,
    pub head_seq: Seq,
    pub entries: u64,
    /// Where the database the backup replaced went; `None` when the
    /// directory held none.
    pub set_aside: Option<PathBuf>,
}

/// Whether `name`, in a store's directory, belongs to the database (and
/// not to the backups and restores kept beside it).
fn is_database_file(name: &str) -> bool {
    name != BACKUPS_DIR
        && !name.starts_with(REPLACED_PREFIX)
        && !name.starts_with(STAGING_PREFIX)
        && name != "lost+found"
}

/// Restores the backup in `backup` (a checkpoint's directory) into `data`,
/// the directory of a store no process has open. See the module docs.
pub fn restore(backup: &Path, data: &Path) -> Result<Restored, StoreError> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        map_io(path, format!("{what} {}: {e}", path.display()))
    };
    if !backup.join("CURRENT").is_file() {
        return Err(StoreError::Backend(format!(
            "{} is not a backup: it has no CURRENT file",
            backup.display()
        )));
    }
    std::fs::create_dir_all(data).map_err(|e| io("creating", data, e))?;
    ensure_not_open(data)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let staging = data.join(format!("{STAGING_PREFIX}{stamp}"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| io("removing", &staging, e))?;
    }
    std::fs::create_dir(&staging).map_err(|e| io("creating", &staging, e))?;
    for file in std::fs::read_dir(backup).map_err(|e| io("reading", backup, e))? {
        let file = file.map_err(|e| io("reading", backup, e))?;
        let from = file.path();
        if !from.is_file() {
            return Err(StoreError::Backend(format!(
                "{} is not a backup: {} is not a file",
                backup.display(),
                from.display()
            )));
        }
        let to = staging.join(file.file_name());
        let name = file.file_name().to_string_lossy().into_owned();
        let immutable = name.ends_with(".sst") || name.ends_with(".blob");
        if !(immutable && std::fs::hard_link(&from, &to).is_ok()) {
            std::fs::copy(&from, &to).map_err(|e| io("copying", &from, e))?;
        }
    }
    // Opened where it stands, before anything is replaced: a backup that
    // does not open replaces nothing.
    let (incarnation, head_seq, entries) = {
        let store = RocksStore::open(&RocksConfig::new(&staging))?;
        let incarnation = meta::renew_incarnation(&store.db)?;
        let stats = store.stats();
        (incarnation, stats.head_seq, stats.entries)
    };
    let mut set_aside = None;
    for file in std::fs::read_dir(data).map_err(|e| io("reading", data, e))? {
        let file = file.map_err(|e| io("reading", data, e))?;
        let name = file.file_name().to_string_lossy().into_owned();
        if !is_database_file(&name) {
            continue;
        }
        let aside = set_aside.get_or_insert_with(|| data.join(format!("{REPLACED_PREFIX}{stamp}")));
        std::fs::create_dir_all(&*aside).map_err(|e| io("creating", aside, e))?;
        std::fs::rename(file.path(), aside.join(&name))
            .map_err(|e| io("moving aside", &file.path(), e))?;
    }
    for file in std::fs::read_dir(&staging).map_err(|e| io("reading", &staging, e))? {
        let file = file.map_err(|e| io("reading", &staging, e))?;
        std::fs::rename(file.path(), data.join(file.file_name()))
            .map_err(|e| io("moving into place", &file.path(), e))?;
    }
    std::fs::remove_dir(&staging).map_err(|e| io("removing", &staging, e))?;
    Ok(Restored {
        incarnation,
        head_seq,
        entries,
        set_aside,
    })
}

/// Fails when a process has the database in `data` open (RocksDB holds a
/// lock on its `LOCK` file while open).
fn ensure_not_open(data: &Path) -> Result<(), StoreError> {
    let lock = data.join("LOCK");
    if !lock.exists() {
        return Ok(());
    }
    // Opening takes the lock, and closing at once gives it back.
    match RocksStore::open(&RocksConfig::new(data)) {
        Ok(_) => Ok(()),
        Err(StoreError::Locked { path }) => Err(StoreError::Backend(format!(
            "the database at {path} is open in another process: stop the replica before \
             restoring into its directory"
        ))),
        // A database that does not open is replaced all the same (that is
        // what restores are for); it is kept aside.
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{EntryId, Namespace, VerifiedEntry};
    use crate::store::conformance::entry_with;

    fn entry(ns: &Namespace, n: u32) -> VerifiedEntry {
        entry_with(ns, n, &[n as u8; 600])
    }

    /// A checkpoint taken while the store takes writes holds what was there
    /// at that moment; restored over the store, the database is the
    /// checkpoint's with a new incarnation, what it replaced is kept aside,
    /// and writes to the restored store leave the backup as it was.
    #[test]
    fn a_checkpoint_restores_in_place_with_a_new_incarnation() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let ns = Namespace::new("t", "d").unwrap();
        let first: Vec<_> = (0..300).map(|i| entry(&ns, i)).collect();
        let later: Vec<_> = (300..400).map(|i| entry(&ns, i)).collect();
        let backup = dir.path().join("backup");
        let incarnation = {
            let store = RocksStore::open(&RocksConfig::new(&data)).unwrap();
            store.append(&first[..200], None).unwrap();
            store.flush().unwrap();
            // Some of it in a memtable when the checkpoint is taken.
            store.append(&first[200..], None).unwrap();
            store.checkpoint(&backup).unwrap();
            store.append(&later, None).unwrap();
            // The store is open: a restore into its directory is refused.
            let err = restore(&backup, &data).unwrap_err();
            assert!(err.to_string().contains("stop the replica"), "{err}");
            store.incarnation()
        };
        let restored = restore(&backup, &data).unwrap();
        assert_eq!((restored.head_seq, restored.entries), (300, 300));
        assert_ne!(restored.incarnation, incarnation);
        let aside = restored.set_aside.clone().unwrap();
        {
            let store = RocksStore::open(&RocksConfig::new(&data)).unwrap();
            assert_eq!(store.incarnation(), restored.incarnation);
            assert_eq!(store.stats().head_seq, 300);
            let ids: Vec<EntryId> = first.iter().map(|e| e.id).collect();
            let held = |ids: &[EntryId]| store.get(&ns, ids).unwrap().iter().flatten().count();
            assert_eq!(held(&ids), 300);
            let later_ids: Vec<EntryId> = later.iter().map(|e| e.id).collect();
            assert_eq!(held(&later_ids), 0);
            // The restored store takes writes; they stay out of the backup.
            store.append(&later, None).unwrap();
            store.flush().unwrap();
        }
        let again = RocksStore::open(&RocksConfig::new(&backup)).unwrap();
        assert_eq!(again.stats().head_seq, 300);
        drop(again);
        // What the restore replaced is whole, beside it.
        let replaced = RocksStore::open(&RocksConfig::new(&aside)).unwrap();
        assert_eq!(replaced.stats().head_seq, 400);
        assert_eq!(replaced.incarnation(), incarnation);
    }

    #[test]
    fn what_is_not_a_backup_is_refused_and_replaces_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        drop(RocksStore::open(&RocksConfig::new(&data)).unwrap());
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let err = restore(&empty, &data).unwrap_err();
        assert!(err.to_string().contains("is not a backup"), "{err}");
        assert!(data.join("CURRENT").is_file());
        let memory = crate::store::memory::MemoryStore::new();
        let err = memory.checkpoint(&dir.path().join("m")).unwrap_err();
        assert!(err.to_string().contains("nothing on disk"), "{err}");
    }
}
