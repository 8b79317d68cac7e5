//! The RocksDB store's side of range fingerprints (see
//! [`crate::store::ranges`]): the index is built from the `ids` family when
//! the store opens, and key ranges are read from it.

use std::sync::atomic::Ordering;

use rocksdb::{DB, Direction, IteratorMode, ReadOptions};

use super::meta::synced;
use super::{CF_IDS, CF_META, KEY_COUNT, RocksStore, backend, decode_entry_key};
use crate::entry::{EntryId, Namespace};
use crate::store::StoreError;
use crate::store::ranges::{FingerprintKey, KeyRange, RangeIndex};

impl RocksStore {
    /// Builds the fingerprint index from the `ids` family (none without a
    /// key). A count that differs from the recorded one (entries lost on
    /// disk) is corrected.
    pub(super) fn with_ranges(mut self, key: Option<FingerprintKey>) -> Result<Self, StoreError> {
        let Some(key) = key else {
            return Ok(self);
        };
        let started = std::time::Instant::now();
        let index = RangeIndex::new(key);
        let mut batch: Vec<Box<[u8]>> = Vec::with_capacity(4096);
        for item in self.db.iterator_cf(self.cf(CF_IDS), IteratorMode::Start) {
            let (k, _) = item.map_err(backend)?;
            batch.push(k);
            if batch.len() == batch.capacity() {
                index.insert_keys(batch.iter().map(|k| &k[..]));
                batch.clear();
            }
        }
        index.insert_keys(batch.iter().map(|k| &k[..]));
        // The index counts what the `ids` family holds: a count that says
        // otherwise lost entries (or gained them) outside this store.
        let counted = index.count();
        let recorded = self.count.load(Ordering::Acquire);
        if counted != recorded {
            tracing::warn!(
                counted,
                recorded,
                "the store holds a different number of entries than it recorded (entries lost \
                 or damaged on disk); recording what it holds, and reconciliation with the \
                 peers brings back what is missing"
            );
            self.db
                .put_cf_opt(
                    self.cf(CF_META),
                    KEY_COUNT,
                    counted.to_be_bytes(),
                    &synced(),
                )
                .map_err(backend)?;
            self.count.store(counted, Ordering::Release);
        }
        tracing::info!(
            entries = counted,
            took_ms = started.elapsed().as_millis() as u64,
            memory_bytes = index.memory_bytes(),
            "range fingerprints built"
        );
        self.ranges = Some(index);
        Ok(self)
    }
}

/// The entries in `range`, in key order, at most `limit`.
pub(super) fn ids_in(
    db: &DB,
    range: &KeyRange,
    limit: usize,
) -> Result<Vec<(Namespace, EntryId)>, StoreError> {
    let mut opts = ReadOptions::default();
    if let Some(hi) = &range.hi {
        opts.set_iterate_upper_bound(hi.clone());
    }
    let cf = db.cf_handle(CF_IDS).expect("opened with every family");
    let iter = db.iterator_cf_opt(cf, opts, IteratorMode::From(&range.lo, Direction::Forward));
    let mut out = Vec::new();
    for item in iter {
        if out.len() >= limit {
            break;
        }
        let (k, _) = item.map_err(backend)?;
        out.push(decode_entry_key(&k)?);
    }
    Ok(out)
}
