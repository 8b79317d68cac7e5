//! The open-files limit, and how many connections fit beside the store.

use std::io;

/// Raises this process's soft limit of open files to its hard limit.
/// Returns the limit before and after.
pub fn raise_open_files_limit() -> io::Result<(u64, u64)> {
    let mut limit = files_rlimit()?;
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads `limit`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur))
}

/// This process's soft limit of open files (`u64::MAX` when unknown).
pub fn open_files_limit() -> u64 {
    files_rlimit().map_or(u64::MAX, |limit| limit.rlim_cur)
}

fn files_rlimit() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes `limit`.
    match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
        0 => Ok(limit),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Descriptors kept free beyond the store and the connections: the
/// listeners, peer connections, logs, the metrics endpoint, and evicted
/// connections still closing.
pub const SPARE_FILES: u64 = 256;

/// The connections that fit in `open_files` beside `store_files` and the
/// spare, up to `wanted`; at least 16 (or `wanted`, when fewer).
pub fn connections_that_fit(wanted: usize, store_files: usize, open_files: u64) -> usize {
    let room = open_files.saturating_sub(store_files as u64 + SPARE_FILES);
    (wanted as u64).min(room.max(16)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_give_way_to_the_store() {
        assert_eq!(connections_that_fit(1024, 1024, 1 << 20), 1024);
        assert_eq!(connections_that_fit(1024, 1024, 2048), 768);
        assert_eq!(connections_that_fit(1024, 1024, 1024), 16);
        assert_eq!(connections_that_fit(6, 1024, 1 << 20), 6);
    }
}
