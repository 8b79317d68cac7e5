//! An in-memory [`Store`]: same semantics as RocksDB, nothing on disk. Used by
//! tests and by throwaway replicas (`storage.backend = "memory"`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::RwLock;

use bytes::Bytes;

use super::{
    Appended, CursorRecord, CursorUpdate, Incarnation, LogRecord, Seq, Store, StoreError,
    StoreStats,
};
use crate::entry::VerifiedEntry;
use crate::entry::{EntryId, Namespace};

pub struct MemoryStore {
    incarnation: Incarnation,
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: BTreeMap<Namespace, BTreeMap<EntryId, Bytes>>,
    count: u64,
    /// `log[i]` has sequence number `i + 1`.
    log: Vec<(Namespace, EntryId)>,
    cursors: HashMap<String, CursorRecord>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self {
            incarnation: Incarnation::random(),
            inner: RwLock::new(Inner::default()),
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
            inner.log.push((e.namespace.clone(), e.id));
            out.push(Appended::Stored(inner.log.len() as Seq));
        }
        if let Some(update) = cursor {
            inner.cursors.insert(update.peer.clone(), update.record);
        }
        Ok(out)
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
        for (i, (ns, id)) in inner.log.iter().enumerate().skip(start).take(limit) {
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

    fn log_at(&self, seq: Seq) -> Result<Option<EntryId>, StoreError> {
        let inner = self.read();
        let index = usize::try_from(seq).ok().and_then(|s| s.checked_sub(1));
        Ok(index.and_then(|i| inner.log.get(i)).map(|(_, id)| *id))
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
