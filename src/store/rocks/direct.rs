//! Whether a data directory takes direct I/O (`O_DIRECT`). Flushes and
//! compactions write table and blob files past the page cache when it does:
//! every body is written once to the WAL and once more to a blob file at the
//! flush, and copying that second write into the page cache costs the flush
//! thread a large part of its CPU, for pages a replica rarely reads again
//! soon (recent entries are served from memory). Some filesystems refuse
//! `O_DIRECT` (tmpfs, some FUSE and overlay setups): RocksDB would then fail
//! its first flush and stop taking writes, so the directory is probed first
//! with the same kind of write RocksDB makes.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The alignment and size of the probe's write: a page, which is a whole
/// number of logical blocks on every device RocksDB supports.
const BLOCK: usize = 4096;

/// Whether a file in `dir` opened with `O_DIRECT` takes an aligned write.
pub fn supported(dir: &Path) -> bool {
    let probe = dir.join(".direct-io-probe");
    let written = write_direct(&probe);
    let _ = std::fs::remove_file(&probe);
    match written {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(
                dir = %dir.display(),
                "storage: the data directory does not take direct I/O ({e}); flushes and compactions write through the page cache"
            );
            false
        }
    }
}

fn write_direct(path: &Path) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    file.write_all(&Box::new(Aligned([0; BLOCK])).0)
}

/// A block aligned to its size, as `O_DIRECT` requires of buffers.
#[repr(C, align(4096))]
struct Aligned([u8; BLOCK]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        supported(dir.path());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_missing_directory_is_not_supported() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!supported(&dir.path().join("absent")));
    }
}
