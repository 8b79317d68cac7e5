//! Taking corrupt entries out of service (see [`crate::store::Store::quarantine`]):
//! everything stored of an entry at a log position goes in one synced
//! `WriteBatch`, so no reader finds the bad bytes again, and the entry is
//! missing, to be fetched again from a peer.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use rocksdb::WriteBatch;

use super::meta::synced;
use super::{
    CF_BODIES, CF_IDS, CF_LOG, CF_META, KEY_COUNT, RocksStore, backend, docindex, entry_key, nslog,
    usage,
};
use crate::store::scrub::Finding;
use crate::store::{DocRecord, StoreError, Usage};

impl RocksStore {
    pub(super) fn quarantine_found(&self, found: &[Finding]) -> Result<usize, StoreError> {
        let (cf_log, cf_bodies, cf_ids) = (self.cf(CF_LOG), self.cf(CF_BODIES), self.cf(CF_IDS));
        let _guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = WriteBatch::default();
        let mut count = self.count.load(Ordering::Acquire);
        let mut removed = Vec::new();
        let mut records = 0;
        let mut taken: HashMap<String, Usage> = HashMap::new();
        for f in found {
            let key = entry_key(&f.namespace, &f.id);
            let seq = f.seq.to_be_bytes();
            // Only the record the scrub judged: one already taken out, or
            // a position that names another entry, is left alone.
            let logged = self.db.get_pinned_cf(cf_log, seq).map_err(backend)?;
            if logged.as_deref() != Some(key.as_slice()) {
                continue;
            }
            // A body that cannot be read at all counts as empty.
            let body = self.db.get_cf(cf_bodies, seq).ok().flatten();
            records += 1;
            batch.delete_cf(cf_log, seq);
            batch.delete_cf(cf_bodies, seq);
            batch.delete_cf(self.cf(super::CF_NSLOG), nslog::key(&f.namespace, f.seq));
            if self.index_documents
                && let Some(record) = body.as_deref().and_then(|b| DocRecord::of(f.seq, f.id, b))
            {
                docindex::delete(&self.db, &mut batch, &f.namespace, &record);
            }
            let indexed = self.db.get_pinned_cf(cf_ids, &key).map_err(backend)?;
            if indexed.as_deref() == Some(&seq[..]) {
                batch.delete_cf(cf_ids, &key);
                count = count.saturating_sub(1);
                removed.push((f.namespace.clone(), f.id));
                taken
                    .entry(f.namespace.tenant().to_owned())
                    .or_default()
                    .add(body.map_or(0, |b| b.len()));
            }
        }
        if batch.is_empty() {
            return Ok(0);
        }
        batch.put_cf(self.cf(CF_META), KEY_COUNT, count.to_be_bytes());
        let usage: Vec<(String, Usage)> = {
            let held = self.usage.lock().unwrap_or_else(|e| e.into_inner());
            taken
                .into_iter()
                .map(|(tenant, gone)| {
                    let was = held.get(&tenant).copied().unwrap_or_default();
                    let now = Usage {
                        entries: was.entries.saturating_sub(gone.entries),
                        bytes: was.bytes.saturating_sub(gone.bytes),
                    };
                    (tenant, now)
                })
                .collect()
        };
        for (tenant, now) in &usage {
            usage::put(&self.db, &mut batch, tenant, now);
        }
        self.db.write_opt(batch, &synced()).map_err(backend)?;
        if let Some(index) = &self.ranges {
            index.remove(removed.iter().map(|(ns, id)| (ns, id)));
        }
        let mut held = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        held.extend(usage);
        drop(held);
        self.count.store(count, Ordering::Release);
        Ok(records)
    }
}
