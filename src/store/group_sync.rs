//! Group commit: writers that wait for durability at the same time share
//! one fsync.
//!
//! A store counts its writes as they land ([`GroupSync::wrote`]). A writer
//! that needs its writes durable calls [`GroupSync::sync`]: when no fsync
//! is running it becomes the leader, notes how many writes have landed and
//! runs one fsync, which covers all of them; writers arriving meanwhile
//! wait, and the first of them still uncovered when it ends leads the next
//! one. Under load an fsync covers every write that landed during the one
//! before it, so the number of fsyncs per second stays near what the disk
//! does, whatever the number of writers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use super::StoreError;

#[derive(Default)]
pub struct GroupSync {
    state: Mutex<State>,
    done: Condvar,
    /// fsyncs run so far.
    syncs: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Writes landed (in the OS, not yet known durable).
    written: u64,
    /// Writes known durable: every one up to this count.
    synced: u64,
    /// An fsync is running.
    syncing: bool,
}

impl GroupSync {
    /// Counts a write that has landed. Call it after the write returns and
    /// before anyone waits for it.
    pub fn wrote(&self) {
        self.lock().written += 1;
    }

    /// Returns once every write counted before this call is durable,
    /// running `fsync` (which must make every landed write durable) or
    /// waiting for another caller's. A failed fsync fails its leader; its
    /// waiters try again, each leading a fsync of its own in turn.
    pub fn sync(
        &self,
        mut fsync: impl FnMut() -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        let target = state.written;
        loop {
            if state.synced >= target {
                return Ok(());
            }
            if state.syncing {
                state = self.done.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            state.syncing = true;
            let covers = state.written;
            drop(state);
            let result = fsync();
            self.syncs.fetch_add(1, Ordering::Relaxed);
            state = self.lock();
            state.syncing = false;
            if result.is_ok() {
                state.synced = state.synced.max(covers);
            }
            self.done.notify_all();
            result?;
        }
    }

    /// fsyncs run so far: with the writes counted, how many share one.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    /// An fsync that takes a while and checks nobody runs one beside it.
    fn slow_fsync(running: &AtomicBool) -> Result<(), StoreError> {
        assert!(!running.swap(true, Ordering::SeqCst), "two fsyncs at once");
        std::thread::sleep(Duration::from_millis(2));
        running.store(false, Ordering::SeqCst);
        Ok(())
    }

    #[test]
    fn concurrent_writers_share_fsyncs_and_each_returns_covered() {
        let group = Arc::new(GroupSync::default());
        let running = Arc::new(AtomicBool::new(false));
        let writers = 16;
        let rounds = 50;
        let threads: Vec<_> = (0..writers)
            .map(|_| {
                let (group, running) = (group.clone(), running.clone());
                std::thread::spawn(move || {
                    for _ in 0..rounds {
                        group.wrote();
                        group.sync(|| slow_fsync(&running)).unwrap();
                        // Covered: nothing counted before the call is left.
                        let state = group.lock();
                        assert!(state.synced >= 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let state = group.lock();
        assert_eq!(
            (state.written, state.synced),
            (writers * rounds, writers * rounds)
        );
        let syncs = group.syncs();
        assert!(
            syncs * 4 <= writers * rounds,
            "{syncs} fsyncs for {} writes: not shared",
            writers * rounds
        );
    }

    #[test]
    fn a_write_after_an_fsync_started_waits_for_the_next_one() {
        let group = GroupSync::default();
        group.wrote();
        assert_eq!(fsyncs_run(&group), 1);
        // Nothing new: no fsync.
        group.sync(|| panic!("nothing to sync")).unwrap();
        group.wrote();
        assert_eq!(fsyncs_run(&group), 1);
    }

    /// Syncs `group`, counting the fsyncs this call ran.
    fn fsyncs_run(group: &GroupSync) -> usize {
        let mut calls = 0;
        group
            .sync(|| {
                calls += 1;
                Ok(())
            })
            .unwrap();
        calls
    }

    #[test]
    fn a_failed_fsync_fails_its_caller_and_covers_nothing() {
        let group = GroupSync::default();
        group.wrote();
        let err = group
            .sync(|| Err(StoreError::Backend("EIO".into())))
            .unwrap_err();
        assert!(err.to_string().contains("EIO"));
        assert_eq!(fsyncs_run(&group), 1, "the write is synced again");
    }
}
