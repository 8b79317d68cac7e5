//! The `meta` family: creating a database, checking and upgrading its
//! schema, and the incarnation that changes when another node opens it.

use rocksdb::{DB, IteratorMode, WriteBatch, WriteOptions};

use super::nslog::KEY_BUILT as KEY_NSLOG_BUILT;
use super::{
    CF_BODIES, CF_ENTRIES_V1, CF_IDS, CF_LOG, CF_META, KEY_COUNT, KEY_HEAD, KEY_INCARNATION,
    KEY_NODE, KEY_SCHEMA, SCHEMA_VERSION, backend, fixed,
};
use crate::store::{Incarnation, Seq, StoreError};

pub(super) fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

/// Reads the incarnation, head and count, or creates them for a new
/// database; upgrades an older schema and takes a new incarnation when the
/// database was last opened by another node.
pub(super) fn load_meta(
    db: &mut DB,
    node: Option<&str>,
) -> Result<(Incarnation, Seq, u64), StoreError> {
    let version = {
        let meta = db
            .cf_handle(CF_META)
            .expect("column families are created on open");
        db.get_cf(meta, KEY_SCHEMA).map_err(backend)?
    };
    if let Some(version) = &version {
        let found = u32::from_be_bytes(fixed(version, "meta schema_version")?);
        match found {
            SCHEMA_VERSION => {}
            1 => upgrade_from_v1(db)?,
            _ => {
                return Err(StoreError::Schema {
                    found,
                    expected: SCHEMA_VERSION,
                });
            }
        }
    }
    let db = &*db;
    let meta = db
        .cf_handle(CF_META)
        .expect("column families are created on open");
    let get = |key: &[u8]| db.get_cf(meta, key).map_err(backend);
    let Some(_) = version else {
        // A new database: everything is created in one batch.
        let incarnation = Incarnation::random();
        let mut batch = WriteBatch::default();
        batch.put_cf(meta, KEY_SCHEMA, SCHEMA_VERSION.to_be_bytes());
        // An empty log is indexed by namespace already.
        batch.put_cf(meta, KEY_NSLOG_BUILT, [1]);
        batch.put_cf(meta, super::usage::KEY_BUILT, [1]);
        batch.put_cf(meta, KEY_INCARNATION, incarnation.0);
        batch.put_cf(meta, KEY_HEAD, 0u64.to_be_bytes());
        batch.put_cf(meta, KEY_COUNT, 0u64.to_be_bytes());
        if let Some(node) = node {
            batch.put_cf(meta, KEY_NODE, node.as_bytes());
        }
        db.write_opt(batch, &synced()).map_err(backend)?;
        return Ok((incarnation, 0, 0));
    };
    let read = |key: &[u8], what| -> Result<Vec<u8>, StoreError> {
        get(key)?.ok_or_else(|| StoreError::Corrupt {
            what,
            detail: "missing".into(),
        })
    };
    let mut incarnation = Incarnation(fixed(
        &read(KEY_INCARNATION, "meta incarnation")?,
        "meta incarnation",
    )?);
    if let Some(node) = node {
        let last = get(KEY_NODE)?;
        if last.as_deref() != Some(node.as_bytes()) {
            let mut batch = WriteBatch::default();
            if let Some(last) = &last {
                let fresh = Incarnation::random();
                tracing::warn!(
                    last_node = %String::from_utf8_lossy(last),
                    node,
                    old_incarnation = %incarnation,
                    new_incarnation = %fresh,
                    "this database was last opened by another node (a copied or restored \
                     directory): taking a new incarnation so peers re-check their cursors"
                );
                incarnation = fresh;
                batch.put_cf(meta, KEY_INCARNATION, incarnation.0);
            }
            batch.put_cf(meta, KEY_NODE, node.as_bytes());
            db.write_opt(batch, &synced()).map_err(backend)?;
        }
    }
    let head = u64::from_be_bytes(fixed(&read(KEY_HEAD, "meta head_seq")?, "meta head_seq")?);
    let count = u64::from_be_bytes(fixed(
        &read(KEY_COUNT, "meta entry_count")?,
        "meta entry_count",
    )?);
    Ok((incarnation, head, count))
}

/// Rewrites a version-1 database (bodies keyed by ns ‖ id) to this layout:
/// bodies by seq and the `ids` index, in log order, a chunk at a time. Safe
/// to interrupt: it starts over, and the version changes only at the end.
fn upgrade_from_v1(db: &mut DB) -> Result<(), StoreError> {
    copy_v1_bodies(db)?;
    db.drop_cf(CF_ENTRIES_V1).map_err(backend)?;
    Ok(())
}

fn copy_v1_bodies(db: &DB) -> Result<(), StoreError> {
    let cf = |name| {
        db.cf_handle(name)
            .expect("column families are created on open")
    };
    let (log, bodies, ids, meta) = (cf(CF_LOG), cf(CF_BODIES), cf(CF_IDS), cf(CF_META));
    let old = db
        .cf_handle(CF_ENTRIES_V1)
        .ok_or_else(|| StoreError::Corrupt {
            what: "meta schema_version",
            detail: "version 1 without its entries family".into(),
        })?;
    tracing::info!(
        "upgrading the database to schema version {SCHEMA_VERSION}: bodies in log order"
    );
    let mut moved = 0u64;
    // (seq, ns ‖ id) log records whose bodies are to move.
    type Records = Vec<(Box<[u8]>, Box<[u8]>)>;
    let mut chunk: Records = Vec::with_capacity(1024);
    let flush = |chunk: &mut Records| -> Result<u64, StoreError> {
        let keys: Vec<&[u8]> = chunk.iter().map(|(_, key)| &key[..]).collect();
        let values = db.batched_multi_get_cf(old, &keys, false);
        let mut batch = WriteBatch::default();
        for ((seq, key), value) in chunk.iter().zip(values) {
            let value = value.map_err(backend)?.ok_or_else(|| StoreError::Corrupt {
                what: "entries",
                detail: format!("log record {} names a missing entry", hex::encode(seq)),
            })?;
            batch.put_cf(bodies, seq, &value);
            batch.put_cf(ids, key, seq);
        }
        db.write(batch).map_err(backend)?;
        let n = chunk.len() as u64;
        chunk.clear();
        Ok(n)
    };
    for item in db.iterator_cf(log, IteratorMode::Start) {
        chunk.push(item.map_err(backend)?);
        if chunk.len() == 1024 {
            moved += flush(&mut chunk)?;
        }
    }
    moved += flush(&mut chunk)?;
    db.put_cf_opt(meta, KEY_SCHEMA, SCHEMA_VERSION.to_be_bytes(), &synced())
        .map_err(backend)?;
    tracing::info!(moved, "schema upgrade done");
    Ok(())
}

/// Gives the database a new incarnation (a restored one), durably.
pub(super) fn renew_incarnation(db: &DB) -> Result<Incarnation, StoreError> {
    let meta = db
        .cf_handle(CF_META)
        .expect("column families are created on open");
    let incarnation = Incarnation::random();
    let mut batch = WriteBatch::default();
    batch.put_cf(meta, KEY_INCARNATION, incarnation.0);
    db.write_opt(batch, &synced()).map_err(backend)?;
    Ok(incarnation)
}
