//! An in-memory [`Store`]: same semantics as RocksDB, nothing on disk. Used by
//! tests and by throwaway replicas (`storage.backend = "memory"`). Like the
//! RocksDB backend it indexes the log by namespace, so a read of a few
//! namespaces ([`Store::log_since_in`]) touches only their records.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::ranges::{FingerprintKey, KeyRange, RangeIndex, ns_key};
use super::scrub::{Finding, ScrubMark};
use super::{
    Appended, CursorRecord, CursorUpdate, Incarnation, LogRecord, MergeBySeq, Seq, Store,
    StoreError, StoreStats, Usage, distinct,
};
use crate::entry::VerifiedEntry;
use crate::entry::{EntryId, Namespace};

pub struct MemoryStore {
    incarnation: Incarnation,
    inner: RwLock<Inner>,
    /// See [`Store::log_records_read`].
    records_read: AtomicU64,
    ranges: Option<RangeIndex>,
}

#[derive(Default, Clone)]
struct Inner {
    entries: BTreeMap<Namespace, BTreeMap<EntryId, Bytes>>,
    count: u64,
    /// `log[i]` has sequence number `i + 1`.
    log: Vec<(Namespace, EntryId)>,
    /// Each namespace's sequence numbers, ascending.
    by_namespace: HashMap<Namespace, Vec<Seq>>,
    cursors: HashMap<String, CursorRecord>,
    usage: HashMap<String, Usage>,
    /// Log positions taken out of service (see [`Store::quarantine`]).
    quarantined: HashSet<Seq>,
    scrub: ScrubMark,
}

impl Inner {
    /// The entry logged at `seq`, unless there is none or it was taken
    /// out of service.
    fn logged(&self, seq: Seq) -> Option<&(Namespace, EntryId)> {
        if self.quarantined.contains(&seq) {
            return None;
        }
        self.log.get(usize::try_from(seq).ok()?.checked_sub(1)?)
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self {
            incarnation: Incarnation::random(),
            inner: RwLock::new(Inner::default()),
            records_read: AtomicU64::new(0),
            ranges: None,
        }
    }

    /// A store that keeps range fingerprints under `key`.
    pub fn with_fingerprints(key: FingerprintKey) -> Self {
        Self {
            ranges: Some(RangeIndex::new(key)),
            ..Self::new()
        }
    }

    /// A copy of everything held now, under a new incarnation: a restore
    /// of a backup taken at this moment.
    pub fn restored_copy(&self) -> Self {
        let inner = self.read().clone();
        let ranges = self.ranges.as_ref().map(|r| {
            let index = RangeIndex::new(r.key().clone());
            for (ns, ids) in &inner.entries {
                index.insert(ids.keys().map(|id| (ns, id)));
            }
            index
        });
        Self {
            incarnation: Incarnation::random(),
            inner: RwLock::new(inner),
            records_read: AtomicU64::new(0),
            ranges,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl Store for MemoryStore {
    fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    fn stats(&self) -> StoreStats {
        let inner = self.read();
        StoreStats {
            head_seq: inner.log.len() as Seq,
            entries: inner.count,
        }
    }

    fn usage(&self, tenant: &str) -> Usage {
        self.read().usage.get(tenant).copied().unwrap_or_default()
    }

    fn disk_bytes(&self) -> u64 {
        0
    }

    fn append(
        &self,
        entries: &[VerifiedEntry],
        cursor: Option<&CursorUpdate>,
    ) -> Result<Vec<Appended>, StoreError> {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let held = inner
                .entries
                .get(&e.namespace)
                .is_some_and(|m| m.contains_key(&e.id));
            if held || !seen.insert((&e.namespace, e.id)) {
                out.push(Appended::Duplicate);
                continue;
            }
            inner
                .entries
                .entry(e.namespace.clone())
                .or_default()
                .insert(e.id, e.data.clone());
            inner.count += 1;
            inner
                .usage
                .entry(e.namespace.tenant().to_owned())
                .or_default()
                .add(e.data.len());
            inner.log.push((e.namespace.clone(), e.id));
            let seq = inner.log.len() as Seq;
            inner
                .by_namespace
                .entry(e.namespace.clone())
                .or_default()
                .push(seq);
            out.push(Appended::Stored(seq));
        }
        if let Some(update) = cursor {
            inner.cursors.insert(update.peer.clone(), update.record);
        }
        if let Some(index) = &self.ranges {
            index.insert_appended(entries, &out);
        }
        Ok(out)
    }

    fn ranges(&self) -> Option<&RangeIndex> {
        self.ranges.as_ref()
    }

    fn scrub_mark(&self) -> Result<ScrubMark, StoreError> {
        Ok(self.read().scrub)
    }

    fn set_scrub_mark(&self, mark: ScrubMark) -> Result<(), StoreError> {
        self.inner.write().unwrap_or_else(|e| e.into_inner()).scrub = mark;
        Ok(())
    }

    fn quarantine(&self, found: &[Finding]) -> Result<usize, StoreError> {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let mut records = 0;
        for f in found {
            if inner.logged(f.seq) != Some(&(f.namespace.clone(), f.id)) {
                continue;
            }
            records += 1;
            inner.quarantined.insert(f.seq);
            if let Some(seqs) = inner.by_namespace.get_mut(&f.namespace) {
                seqs.retain(|&s| s != f.seq);
            }
            let body = inner
                .entries
                .get_mut(&f.namespace)
                .and_then(|m| m.remove(&f.id));
            if let Some(body) = body {
                inner.count -= 1;
                let usage = inner
                    .usage
                    .entry(f.namespace.tenant().to_owned())
                    .or_default();
                usage.entries = usage.entries.saturating_sub(1);
                usage.bytes = usage.bytes.saturating_sub(body.len() as u64);
                if let Some(index) = &self.ranges {
                    index.remove([(&f.namespace, &f.id)]);
                }
            }
        }
        Ok(records)
    }

    fn range_ids(
        &self,
        range: &KeyRange,
        limit: usize,
    ) -> Result<Vec<(Namespace, EntryId)>, StoreError> {
        let inner = self.read();
        let mut keyed: Vec<(Vec<u8>, &Namespace, &EntryId)> = Vec::new();
        for (ns, ids) in &inner.entries {
            let prefix = ns_key(ns);
            // The first id at or after `lo` in this namespace.
            let mut from = [0u8; 32];
            if let Some(part) = range.lo.strip_prefix(prefix.as_slice()) {
                let n = part.len().min(32);
                from[..n].copy_from_slice(&part[..n]);
            } else if range.lo > prefix {
                continue;
            }
            for id in ids.range(EntryId(from)..).map(|(id, _)| id) {
                let key = [prefix.as_slice(), &id.0].concat();
                if !range.below_hi(&key) {
                    break;
                }
                if key >= range.lo {
                    keyed.push((key, ns, id));
                }
            }
        }
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        keyed.truncate(limit);
        Ok(keyed
            .into_iter()
            .map(|(_, ns, id)| (ns.clone(), *id))
            .collect())
    }

    fn contains(&self, ns: &Namespace, ids: &[EntryId]) -> Result<Vec<bool>, StoreError> {
        let inner = self.read();
        let map = inner.entries.get(ns);
        Ok(ids
            .iter()
            .map(|id| map.is_some_and(|m| m.contains_key(id)))
            .collect())
    }

    fn get(&self, ns: &Namespace, ids: &[EntryId]) -> Result<Vec<Option<Bytes>>, StoreError> {
        let inner = self.read();
        let map = inner.entries.get(ns);
        Ok(ids
            .iter()
            .map(|id| map.and_then(|m| m.get(id).cloned()))
            .collect())
    }

    fn get_logged(&self, seqs: &[Seq]) -> Result<Vec<Option<Bytes>>, StoreError> {
        let inner = self.read();
        Ok(seqs
            .iter()
            .map(|&seq| {
                let (ns, id) = inner.logged(seq)?;
                Some(inner.entries[ns][id].clone())
            })
            .collect())
    }

    fn log_since(
        &self,
        after: Seq,
        limit: usize,
        data_budget: Option<usize>,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let inner = self.read();
        let start = usize::try_from(after).unwrap_or(usize::MAX);
        let mut records = Vec::new();
        let mut bytes = 0;
        let held = inner
            .log
            .iter()
            .enumerate()
            .skip(start)
            .filter(|(i, _)| !inner.quarantined.contains(&(*i as Seq + 1)));
        for (i, (ns, id)) in held.take(limit) {
            self.records_read.fetch_add(1, Ordering::Relaxed);
            let data = data_budget.map(|_| inner.entries[ns][id].clone());
            let len = data.as_ref().map_or(0, Bytes::len);
            if !records.is_empty() && data_budget.is_some_and(|budget| bytes + len > budget) {
                break;
            }
            bytes += len;
            records.push(LogRecord {
                seq: i as Seq + 1,
                namespace: ns.clone(),
                id: *id,
                data,
            });
        }
        Ok(records)
    }

    fn log_since_in(
        &self,
        namespaces: &[Namespace],
        after: Seq,
        limit: usize,
        data_budget: Option<usize>,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let inner = self.read();
        let namespaces = distinct(namespaces);
        let read = Cell::new(0u64);
        let runs = namespaces
            .iter()
            .map(|ns| {
                let seqs = inner.by_namespace.get(*ns).map_or(&[][..], Vec::as_slice);
                let from = seqs.partition_point(|&s| s <= after);
                let (log, read) = (&inner.log, &read);
                seqs[from..].iter().map(move |&seq| {
                    read.set(read.get() + 1);
                    Ok((seq, log[seq as usize - 1].1))
                })
            })
            .collect();
        let mut records = Vec::new();
        let mut bytes = 0;
        for item in MergeBySeq::new(runs)?.take(limit) {
            let (seq, run, id) = item?;
            let namespace = namespaces[run];
            let data = data_budget.map(|_| inner.entries[namespace][&id].clone());
            let len = data.as_ref().map_or(0, Bytes::len);
            if !records.is_empty() && data_budget.is_some_and(|budget| bytes + len > budget) {
                break;
            }
            bytes += len;
            records.push(LogRecord {
                seq,
                namespace: namespace.clone(),
                id,
                data,
            });
        }
        self.records_read.fetch_add(read.get(), Ordering::Relaxed);
        Ok(records)
    }

    fn log_records_read(&self) -> u64 {
        self.records_read.load(Ordering::Relaxed)
    }

    fn log_at(&self, seq: Seq) -> Result<Option<EntryId>, StoreError> {
        Ok(self.read().logged(seq).map(|(_, id)| *id))
    }

    fn list_ids(
        &self,
        ns: &Namespace,
        after: Option<&EntryId>,
        limit: usize,
    ) -> Result<Vec<EntryId>, StoreError> {
        let inner = self.read();
        let Some(map) = inner.entries.get(ns) else {
            return Ok(Vec::new());
        };
        let iter: Box<dyn Iterator<Item = &EntryId>> = match after {
            Some(after) => Box::new(
                map.range((
                    std::ops::Bound::Excluded(*after),
                    std::ops::Bound::Unbounded,
                ))
                .map(|(k, _)| k),
            ),
            None => Box::new(map.keys()),
        };
        Ok(iter.take(limit).copied().collect())
    }

    fn cursor(&self, peer: &str) -> Result<Option<CursorRecord>, StoreError> {
        Ok(self.read().cursors.get(peer).copied())
    }

    fn cursors(&self) -> Result<Vec<(String, CursorRecord)>, StoreError> {
        let mut all: Vec<_> = self
            .read()
            .cursors
            .iter()
            .map(|(p, r)| (p.clone(), *r))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    fn delete_cursor(&self, peer: &str) -> Result<(), StoreError> {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .cursors
            .remove(peer);
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
