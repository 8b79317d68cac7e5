//! What each tenant has stored, in `meta` under `usage/<tenant>`: entries
//! and bytes (u64 BE each), written in the same batch as the entries, so
//! the counts are exact after any crash, and read into memory on open. A
//! database written before the counts existed has them counted from its
//! log once, on open (see [`super::backfill`]).

use std::collections::HashMap;

use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use super::{CF_META, backend, backfill, fixed};
use crate::store::{StoreError, Usage};

const PREFIX: &[u8] = b"usage/";
/// In `meta`: every logged entry is counted.
pub(super) const KEY_BUILT: &[u8] = b"usage_counted";
/// In `meta`, while the counts are made from the log: the last seq counted.
const KEY_BACKFILL_AT: &[u8] = b"usage_backfill_at";

fn key(tenant: &str) -> Vec<u8> {
    [PREFIX, tenant.as_bytes()].concat()
}

fn value(usage: &Usage) -> [u8; 16] {
    let mut out = [0; 16];
    out[..8].copy_from_slice(&usage.entries.to_be_bytes());
    out[8..].copy_from_slice(&usage.bytes.to_be_bytes());
    out
}

/// Puts `tenant`'s `usage` into `batch`.
pub(super) fn put(db: &DB, batch: &mut WriteBatch, tenant: &str, usage: &Usage) {
    let meta = db
        .cf_handle(CF_META)
        .expect("column families are created on open");
    batch.put_cf(meta, key(tenant), value(usage));
}

/// Every tenant's usage, as stored.
pub(super) fn load(db: &DB) -> Result<HashMap<String, Usage>, StoreError> {
    let meta = db
        .cf_handle(CF_META)
        .expect("column families are created on open");
    let mut out = HashMap::new();
    for item in db.iterator_cf(meta, IteratorMode::From(PREFIX, Direction::Forward)) {
        let (k, v) = item.map_err(backend)?;
        let Some(tenant) = k.strip_prefix(PREFIX) else {
            break;
        };
        let tenant = String::from_utf8(tenant.to_vec()).map_err(|_| StoreError::Corrupt {
            what: "meta usage",
            detail: "a tenant name that is not UTF-8".into(),
        })?;
        let v: [u8; 16] = fixed(&v, "meta usage")?;
        let usage = Usage {
            entries: u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
            bytes: u64::from_be_bytes(v[8..].try_into().expect("8 bytes")),
        };
        out.insert(tenant, usage);
    }
    Ok(out)
}

/// Counts the log unless it is counted; returns every tenant's usage.
pub(super) fn ensure_counted(db: &DB) -> Result<HashMap<String, Usage>, StoreError> {
    let index = backfill::Index {
        what: "usage by tenant",
        built: KEY_BUILT,
        progress: KEY_BACKFILL_AT,
        reads_bodies: true,
    };
    // What an interrupted count had committed, with its progress.
    let mut usage = load(db)?;
    backfill::ensure_built(db, &index, false, &mut |batch, _, ns, _, body| {
        let tenant = usage.entry(ns.tenant().to_owned()).or_default();
        tenant.add(body.map_or(0, <[u8]>::len));
        put(db, batch, ns.tenant(), tenant);
        Ok(())
    })?;
    load(db)
}
