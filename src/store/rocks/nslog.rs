//! The `nslog` family: the log indexed by namespace, so that a reader of a
//! few namespaces (a filtered ScanSince or Watch) reads their records and
//! not the whole replica's log.
//!
//! Key: `ns ‖ seq (u64 BE)`, where `ns` is [`Namespace::encode_key`]
//! (length-prefixed, hence prefix-free): one namespace's rows are one
//! contiguous key range, in log order. Value: the entry id. A row is written
//! in the same `WriteBatch` as its `log` row, so the index never lags the log.
//!
//! A database written before the index existed has no `nslog` family: it is
//! created on open and filled from `log` in bounded batches. Each batch
//! records how far it got, so an interrupted backfill resumes there; the
//! `nslog_built` mark in `meta` is written last. The log itself is untouched,
//! so cursors (global seqs) stay valid.
//!
//! A release from before the index cannot open a database that has the
//! family (RocksDB opens all families or none); running one means dropping
//! the family, which leaves the mark behind. So a family that did not exist
//! before this open is built from the start, whatever the mark says.

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch};

use super::{
    CF_BODIES, CF_LOG, CF_META, RocksStore, backend, body_read_options, decode_entry_key, fixed,
};
use crate::entry::{EntryId, Namespace};
use crate::store::{LogRecord, MergeBySeq, Seq, StoreError, distinct};

pub(super) const CF_NSLOG: &str = "nslog";
/// In `meta`: the index holds a row for every log record.
pub(super) const KEY_BUILT: &[u8] = b"nslog_built";
/// In `meta`, while a backfill runs: the last seq it indexed.
const KEY_BACKFILL_AT: &[u8] = b"nslog_backfill_at";
/// Log records indexed per `WriteBatch` while backfilling.
const BACKFILL_BATCH: usize = 10_000;
/// Bodies looked up at once by a read with data.
const BODY_CHUNK: usize = 64;

/// The index key of the record at `seq` in `ns`.
pub(super) fn key(ns: &Namespace, seq: Seq) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + 2 * 64 + 8);
    ns.encode_key(&mut key);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// See [`crate::store::Store::log_since_in`]: one iterator per namespace,
/// bounded to its rows up to the head, merged by seq.
pub(super) fn read(
    store: &RocksStore,
    namespaces: &[Namespace],
    after: Seq,
    limit: usize,
    data_budget: Option<usize>,
) -> Result<Vec<LogRecord>, StoreError> {
    let head = store.head.load(Ordering::Acquire);
    if after >= head || limit == 0 {
        return Ok(Vec::new());
    }
    let namespaces = distinct(namespaces);
    let cf = store.cf(CF_NSLOG);
    let read = Cell::new(0u64);
    let runs = namespaces
        .iter()
        .map(|ns| {
            let start = key(ns, after + 1);
            let prefix = start.len() - 8;
            let mut opts = ReadOptions::default();
            // Rows above the head belong to a batch still being committed.
            opts.set_iterate_upper_bound(key(ns, head.saturating_add(1)));
            let read = &read;
            store
                .db
                .iterator_cf_opt(cf, opts, IteratorMode::From(&start, Direction::Forward))
                .map(move |item| {
                    read.set(read.get() + 1);
                    let (k, v) = item.map_err(backend)?;
                    let seq = u64::from_be_bytes(fixed(&k[prefix..], "nslog key")?);
                    Ok((seq, EntryId(fixed(&v, "nslog value")?)))
                })
        })
        .collect();
    let mut merged = MergeBySeq::new(runs)?;
    let budget = data_budget.unwrap_or(usize::MAX);
    let mut records = Vec::with_capacity(limit.min(4096));
    let mut bytes = 0;
    'read: while records.len() < limit {
        let want = match data_budget {
            Some(_) => (limit - records.len()).min(BODY_CHUNK),
            None => limit - records.len(),
        };
        let chunk = merged.by_ref().take(want).collect::<Result<Vec<_>, _>>()?;
        if chunk.is_empty() {
            break;
        }
        let bodies = match data_budget {
            None => vec![None; chunk.len()],
            Some(_) => bodies(store, chunk.iter().map(|(seq, ..)| *seq))?,
        };
        for ((seq, run, id), data) in chunk.into_iter().zip(bodies) {
            let len = data.as_ref().map_or(0, Bytes::len);
            if !records.is_empty() && bytes + len > budget {
                break 'read;
            }
            bytes += len;
            records.push(LogRecord {
                seq,
                namespace: namespaces[run].clone(),
                id,
                data,
            });
        }
    }
    store.records_read.fetch_add(read.get(), Ordering::Relaxed);
    Ok(records)
}

/// The bodies logged at `seqs`, each one required.
fn bodies(
    store: &RocksStore,
    seqs: impl Iterator<Item = Seq>,
) -> Result<Vec<Option<Bytes>>, StoreError> {
    let keys: Vec<[u8; 8]> = seqs.map(Seq::to_be_bytes).collect();
    store
        .db
        .batched_multi_get_cf_opt(store.cf(CF_BODIES), &keys, false, &body_read_options())
        .into_iter()
        .zip(&keys)
        .map(|(body, seq)| {
            let body = body.map_err(backend)?.ok_or_else(|| StoreError::Corrupt {
                what: "bodies",
                detail: format!("no body at seq {}", u64::from_be_bytes(*seq)),
            })?;
            Ok(Some(Bytes::copy_from_slice(&body)))
        })
        .collect()
}

/// Fills the index from the log unless it is marked complete, resuming an
/// interrupted backfill where it stopped. `created`: the family was created
/// by this open, so neither the mark nor the progress in `meta` is its own.
pub(super) fn ensure_built(db: &DB, created: bool) -> Result<(), StoreError> {
    let cf = |name| {
        db.cf_handle(name)
            .expect("column families are created on open")
    };
    let (log, nslog, meta) = (cf(CF_LOG), cf(CF_NSLOG), cf(CF_META));
    let marked = db
        .get_pinned_cf(meta, KEY_BUILT)
        .map_err(backend)?
        .is_some();
    if marked && !created {
        return Ok(());
    }
    let resume = match db.get_cf(meta, KEY_BACKFILL_AT).map_err(backend)? {
        Some(at) if !created => u64::from_be_bytes(fixed(&at, "meta nslog_backfill_at")?),
        _ => 0,
    };
    let started = Instant::now();
    tracing::info!(
        resume_after = resume,
        "indexing the log by namespace (a database from before the nslog index)"
    );
    let mut indexed = 0u64;
    let mut batch = WriteBatch::default();
    let mut in_batch = 0;
    let mut last = resume;
    let start = (resume + 1).to_be_bytes();
    for item in db.iterator_cf(log, IteratorMode::From(&start, Direction::Forward)) {
        let (k, v) = item.map_err(backend)?;
        let seq = u64::from_be_bytes(fixed(&k, "log key")?);
        let (ns, id) = decode_entry_key(&v)?;
        batch.put_cf(nslog, key(&ns, seq), id.0);
        last = seq;
        in_batch += 1;
        if in_batch == BACKFILL_BATCH {
            batch.put_cf(meta, KEY_BACKFILL_AT, last.to_be_bytes());
            db.write(std::mem::take(&mut batch)).map_err(backend)?;
            indexed += in_batch as u64;
            in_batch = 0;
        }
    }
    indexed += in_batch as u64;
    batch.delete_cf(meta, KEY_BACKFILL_AT);
    batch.put_cf(meta, KEY_BUILT, [1]);
    db.write_opt(batch, &super::meta::synced())
        .map_err(backend)?;
    tracing::info!(
        indexed,
        through_seq = last,
        took_ms = started.elapsed().as_millis() as u64,
        "the log is indexed by namespace"
    );
    Ok(())
}

/// Test support: the database at `path` as the release before the index
/// left it (no `nslog` family, no mark), optionally with a backfill that
/// stopped after `partial` records; or, with `keep_mark`, with the family
/// dropped by hand to run that release.
#[cfg(test)]
pub(super) fn remove_index(path: &std::path::Path, partial: Option<Seq>, keep_mark: bool) {
    let opts = rocksdb::Options::default();
    let families = DB::list_cf(&opts, path).unwrap();
    let mut db = DB::open_cf(&opts, path, &families).unwrap();
    db.drop_cf(CF_NSLOG).unwrap();
    if !keep_mark {
        let meta = db.cf_handle(CF_META).unwrap();
        db.delete_cf(meta, KEY_BUILT).unwrap();
    }
    let Some(partial) = partial else { return };
    // An interrupted backfill: the rows of the first `partial` records and
    // how far it got.
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    db.create_cf(CF_NSLOG, &opts).unwrap();
    let (log, nslog, meta) = (
        db.cf_handle(CF_LOG).unwrap(),
        db.cf_handle(CF_NSLOG).unwrap(),
        db.cf_handle(CF_META).unwrap(),
    );
    for item in db.iterator_cf(log, IteratorMode::Start) {
        let (k, v) = item.unwrap();
        let seq = u64::from_be_bytes(fixed(&k, "log key").unwrap());
        if seq > partial {
            break;
        }
        let (ns, id) = decode_entry_key(&v).unwrap();
        db.put_cf(nslog, key(&ns, seq), id.0).unwrap();
    }
    db.put_cf(meta, KEY_BACKFILL_AT, partial.to_be_bytes())
        .unwrap();
}
