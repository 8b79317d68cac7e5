//! The `docs` family: a device's entries indexed by document, so that
//! reading one document, listing a database's documents or showing a
//! history reads small rows and only the bodies it needs, never the whole
//! namespace's.
//!
//! Key: `ns ‖ doc length (u8) ‖ doc id ‖ seq (u64 BE)`, where `ns` is
//! [`Namespace::encode_key`]: one namespace's rows are one key range, one
//! document's rows a range within it, in log order. Value: `id ‖ created_ms
//! (u64 BE) ‖ kind length (u8) ‖ kind ‖ dep count (u16 BE) ‖ deps`, from
//! the entry's plaintext envelope. A row is written in the same
//! `WriteBatch` as its entry, so the index never lags the log.
//!
//! Kept only when the store is opened with
//! [`super::RocksConfig::index_documents`] (a device's store; a replica
//! never reads it). A store opened without it keeps the family but drops
//! its `docs_built` mark, so the next open with it builds the index again
//! from the log (see [`super::backfill`]).

use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use super::{RocksStore, backend, backfill, fixed};
use crate::entry::{EntryId, ID_LEN, Namespace};
use crate::store::{DocRange, DocRecord, StoreError};

pub(super) const CF_DOCS: &str = "docs";
/// In `meta`: the index holds a row for every entry of a document.
pub(super) const KEY_BUILT: &[u8] = b"docs_built";
/// In `meta`, while a backfill runs: the last seq it indexed.
const KEY_BACKFILL_AT: &[u8] = b"docs_backfill_at";

/// The key prefix of `ns`'s rows, and of `doc`'s within them.
fn prefix(ns: &Namespace, doc: Option<&[u8]>) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + 2 * 64 + 1 + 64 + 8);
    ns.encode_key(&mut key);
    if let Some(doc) = doc {
        key.push(doc.len() as u8);
        key.extend_from_slice(doc);
    }
    key
}

/// Adds the row of `record` in `ns` to `batch`.
pub(super) fn put(db: &DB, batch: &mut WriteBatch, ns: &Namespace, record: &DocRecord) {
    let mut key = prefix(ns, Some(&record.doc));
    key.extend_from_slice(&record.seq.to_be_bytes());
    let mut value =
        Vec::with_capacity(ID_LEN + 8 + 1 + record.kind.len() + 2 + ID_LEN * record.deps.len());
    value.extend_from_slice(&record.id.0);
    value.extend_from_slice(&record.created_ms.to_be_bytes());
    value.push(record.kind.len() as u8);
    value.extend_from_slice(record.kind.as_bytes());
    value.extend_from_slice(&(record.deps.len() as u16).to_be_bytes());
    for dep in &record.deps {
        value.extend_from_slice(&dep.0);
    }
    batch.put_cf(family(db), key, value);
}

/// Adds the removal of `record`'s row in `ns` to `batch`.
pub(super) fn delete(db: &DB, batch: &mut WriteBatch, ns: &Namespace, record: &DocRecord) {
    let mut key = prefix(ns, Some(&record.doc));
    key.extend_from_slice(&record.seq.to_be_bytes());
    batch.delete_cf(family(db), key);
}

fn family(db: &DB) -> &rocksdb::ColumnFamily {
    db.cf_handle(CF_DOCS)
        .expect("the docs family is opened with index_documents")
}

/// Decodes a row of `ns`: the key after the namespace, and the value.
fn decode(after_ns: &[u8], value: &[u8]) -> Result<DocRecord, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        what: "docs",
        detail,
    };
    let (&len, rest) = after_ns
        .split_first()
        .ok_or_else(|| corrupt("empty key".into()))?;
    let len = len as usize;
    if rest.len() != len + 8 {
        return Err(corrupt(format!("key of {} bytes", after_ns.len())));
    }
    let seq = u64::from_be_bytes(fixed(&rest[len..], "docs key")?);
    let mut at = 0;
    let mut take = |n: usize| {
        let part = value
            .get(at..at + n)
            .ok_or_else(|| corrupt(format!("value of {} bytes", value.len())));
        at += n;
        part
    };
    let id = EntryId(fixed(take(ID_LEN)?, "docs value")?);
    let created_ms = u64::from_be_bytes(fixed(take(8)?, "docs value")?);
    let kind_len = take(1)?[0] as usize;
    let kind = String::from_utf8_lossy(take(kind_len)?).into_owned();
    let deps = u16::from_be_bytes(fixed(take(2)?, "docs value")?) as usize;
    let deps = take(deps * ID_LEN)?
        .chunks_exact(ID_LEN)
        .map(|d| EntryId(d.try_into().expect("chunks of ID_LEN")))
        .collect();
    Ok(DocRecord {
        doc: rest[..len].to_vec(),
        seq,
        id,
        kind,
        created_ms,
        deps,
    })
}

/// See [`crate::store::Store::doc_records`].
pub(super) fn read(
    store: &RocksStore,
    ns: &Namespace,
    range: DocRange<'_>,
    limit: usize,
) -> Result<Vec<DocRecord>, StoreError> {
    let ns_len = prefix(ns, None).len();
    let bound = prefix(ns, range.only);
    let start = match range.after {
        Some((doc, seq)) => {
            let mut key = prefix(ns, Some(doc));
            // The first key after (doc, seq).
            key.extend_from_slice(&seq.saturating_add(1).to_be_bytes());
            key.max(bound.clone())
        }
        None => bound.clone(),
    };
    let iter = store.db.iterator_cf(
        family(&store.db),
        IteratorMode::From(&start, Direction::Forward),
    );
    let mut records = Vec::with_capacity(limit.min(4096));
    for item in iter {
        if records.len() == limit {
            break;
        }
        let (k, v) = item.map_err(backend)?;
        if !k.starts_with(&bound) {
            break;
        }
        records.push(decode(&k[ns_len..], &v)?);
    }
    Ok(records)
}

/// Fills the index from the log and the bodies unless it is marked
/// complete.
pub(super) fn ensure_built(db: &DB, created: bool) -> Result<(), StoreError> {
    let index = backfill::Index {
        what: "by document",
        built: KEY_BUILT,
        progress: KEY_BACKFILL_AT,
        reads_bodies: true,
    };
    backfill::ensure_built(db, &index, created, &mut |batch, seq, ns, id, body| {
        if let Some(record) = DocRecord::of(seq, *id, body.unwrap_or_default()) {
            put(db, batch, ns, &record);
        }
        Ok(())
    })
}

/// Drops the mark of a complete index: the store is open without keeping
/// it, so the next open that keeps it builds it again.
pub(super) fn forget_built(db: &DB) -> Result<(), StoreError> {
    let meta = db
        .cf_handle(super::CF_META)
        .expect("column families are created on open");
    db.delete_cf_opt(meta, KEY_BUILT, &super::meta::synced())
        .map_err(backend)
}
