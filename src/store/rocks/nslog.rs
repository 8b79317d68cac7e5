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
//! created on open and filled from `log` (see [`super::backfill`]); the
//! `nslog_built` mark in `meta` says it is complete.
//!
//! A release from before the index cannot open a database that has the
//! family (RocksDB opens all families or none); running one means dropping
//! the family, which leaves the mark behind. So a family that did not exist
//! before this open is built from the start, whatever the mark says.

use std::cell::Cell;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use rocksdb::{DB, Direction, IteratorMode, ReadOptions};

use super::backfill;
use super::{RocksStore, backend, fixed};
use crate::entry::{EntryId, Namespace};
use crate::store::{LogRecord, MergeBySeq, Seq, StoreError, distinct};

pub(super) const CF_NSLOG: &str = "nslog";
/// In `meta`: the index holds a row for every log record.
pub(super) const KEY_BUILT: &[u8] = b"nslog_built";
/// In `meta`, while a backfill runs: the last seq it indexed.
const KEY_BACKFILL_AT: &[u8] = b"nslog_backfill_at";
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
            Some(_) => store.bodies_at(
                chunk.iter().map(|(seq, ..)| *seq),
                &super::body_read_options(),
            )?,
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

/// Fills the index from the log unless it is marked complete (see
/// [`backfill`]).
pub(super) fn ensure_built(db: &DB, created: bool) -> Result<(), StoreError> {
    let nslog = db
        .cf_handle(CF_NSLOG)
        .expect("column families are created on open");
    let index = backfill::Index {
        what: "by namespace",
        built: KEY_BUILT,
        progress: KEY_BACKFILL_AT,
        reads_bodies: false,
    };
    backfill::ensure_built(db, &index, created, &mut |batch, seq, ns, id, _| {
        batch.put_cf(nslog, key(ns, seq), id.0);
        Ok(())
    })
}

/// Test support: the database at `path` as the release before the index
/// left it (no `nslog` family, no mark), optionally with a backfill that
/// stopped after `partial` records; or, with `keep_mark`, with the family
/// dropped by hand to run that release.
#[cfg(test)]
pub(super) fn remove_index(path: &std::path::Path, partial: Option<Seq>, keep_mark: bool) {
    use super::{CF_LOG, CF_META, decode_entry_key};
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
