//! Filling an index of the log for a database written before the index
//! existed (or while it was switched off). The log is read in order and
//! indexed in bounded batches, each of which records how far it got, so an
//! interrupted build resumes there; the index's mark in `meta` is written
//! last. The log itself is untouched, so cursors (global seqs) stay valid.

use std::time::Instant;

use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use super::{CF_BODIES, CF_LOG, CF_META, backend, body_read_options, decode_entry_key, fixed};
use crate::entry::{EntryId, Namespace};
use crate::store::{Seq, StoreError};

/// Log records indexed per `WriteBatch`.
const BATCH: usize = 10_000;

/// An index of the log, as its backfill knows it.
pub(super) struct Index {
    /// What the index is, for the logs.
    pub what: &'static str,
    /// In `meta`: the index holds a row for every log record.
    pub built: &'static [u8],
    /// In `meta`, while a backfill runs: the last seq it indexed.
    pub progress: &'static [u8],
    /// Its rows are made from the entries' bodies, not only from the log.
    pub reads_bodies: bool,
}

/// What one log record gives an index: the batch to add rows to, the
/// record, and its body when the index reads bodies.
pub(super) type Rows<'a> = dyn FnMut(&mut WriteBatch, Seq, &Namespace, &EntryId, Option<&[u8]>) -> Result<(), StoreError>
    + 'a;

/// Fills `index` from the log unless it is marked complete, resuming an
/// interrupted backfill where it stopped. `created`: the index's family was
/// created by this open, so neither the mark nor the progress in `meta` is
/// its own.
pub(super) fn ensure_built(
    db: &DB,
    index: &Index,
    created: bool,
    rows: &mut Rows<'_>,
) -> Result<(), StoreError> {
    let cf = |name| {
        db.cf_handle(name)
            .expect("column families are created on open")
    };
    let (log, bodies, meta) = (cf(CF_LOG), cf(CF_BODIES), cf(CF_META));
    let marked = db
        .get_pinned_cf(meta, index.built)
        .map_err(backend)?
        .is_some();
    if marked && !created {
        return Ok(());
    }
    let resume = match db.get_cf(meta, index.progress).map_err(backend)? {
        Some(at) if !created => u64::from_be_bytes(fixed(&at, "meta backfill progress")?),
        _ => 0,
    };
    let started = Instant::now();
    tracing::info!(
        resume_after = resume,
        index = index.what,
        "indexing the log (a database written without this index)"
    );
    let start = (resume + 1).to_be_bytes();
    let from = IteratorMode::From(&start, Direction::Forward);
    let mut bodies = index
        .reads_bodies
        .then(|| db.iterator_cf_opt(bodies, body_read_options(), from));
    let mut indexed = 0u64;
    let mut batch = WriteBatch::default();
    let mut in_batch = 0;
    let mut last = resume;
    for item in db.iterator_cf(log, from) {
        let (k, v) = item.map_err(backend)?;
        let seq = u64::from_be_bytes(fixed(&k, "log key")?);
        let (ns, id) = decode_entry_key(&v)?;
        let body = match bodies.as_mut() {
            None => None,
            Some(bodies) => match bodies.next().transpose().map_err(backend)? {
                Some((key, body)) if *key == *k => Some(body),
                _ => {
                    return Err(StoreError::Corrupt {
                        what: "bodies",
                        detail: format!("no body at seq {seq}"),
                    });
                }
            },
        };
        rows(&mut batch, seq, &ns, &id, body.as_deref())?;
        last = seq;
        in_batch += 1;
        if in_batch == BATCH {
            batch.put_cf(meta, index.progress, last.to_be_bytes());
            db.write(std::mem::take(&mut batch)).map_err(backend)?;
            indexed += in_batch as u64;
            in_batch = 0;
        }
    }
    indexed += in_batch as u64;
    batch.delete_cf(meta, index.progress);
    batch.put_cf(meta, index.built, [1]);
    db.write_opt(batch, &super::meta::synced())
        .map_err(backend)?;
    tracing::info!(
        indexed,
        through_seq = last,
        index = index.what,
        took_ms = started.elapsed().as_millis() as u64,
        "the log is indexed"
    );
    Ok(())
}
