//! The RocksDB [`Store`]. This is the only module that uses the `rocksdb` crate.
//!
//! Column families:
//!
//! | cf        | key                     | value                                   |
//! |-----------|-------------------------|-----------------------------------------|
//! | `entries` | ns ‖ id                 | entry data (blob files, uncompressed: it is ciphertext) |
//! | `ids`     | ns ‖ id                 | empty: answers "is it held?" without touching a body |
//! | `log`     | seq (u64 BE)            | ns ‖ id (lz4)                           |
//! | `meta`    | `incarnation`, `node`, `head_seq`, `entry_count`, `schema_version` | small values |
//! | `cursors` | peer node name          | see [`super::encode_cursor`]            |
//!
//! `ns` is [`Namespace::encode_key`], which is prefix-free, so a namespace's
//! entries are one contiguous key range. Appends are serialised by a mutex and
//! committed as one `WriteBatch`, which keeps the head and the count exact.
//!
//! Existence checks (dedup on append, `MissingIds`, `ListIds`) read only the
//! `ids` family: with bodies in blob files, a point lookup in `entries` would
//! read the whole body to answer yes.
//!
//! The database remembers the node identity that last opened it. Opened by a
//! different node (a copied volume, a cloned or restored directory), it takes
//! a new incarnation, so no peer mistakes its log for the original's.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType,
    Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions,
};

use super::{
    Appended, CursorRecord, CursorUpdate, Incarnation, LogRecord, Seq, Store, StoreError,
    StoreStats, decode_cursor, encode_cursor,
};
use crate::entry::VerifiedEntry;
use crate::entry::{EntryId, ID_LEN, Namespace};

const CF_ENTRIES: &str = "entries";
const CF_LOG: &str = "log";
const CF_META: &str = "meta";
const CF_CURSORS: &str = "cursors";
const CF_IDS: &str = "ids";

const KEY_INCARNATION: &[u8] = b"incarnation";
const KEY_HEAD: &[u8] = b"head_seq";
const KEY_COUNT: &[u8] = b"entry_count";
const KEY_SCHEMA: &[u8] = b"schema_version";
const KEY_NODE: &[u8] = b"node";
/// 2 added the `ids` family; a version-1 database is upgraded on open.
const SCHEMA_VERSION: u32 = 2;

/// Tuning for the RocksDB backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RocksConfig {
    pub path: PathBuf,
    /// Shared block cache for all column families.
    pub block_cache_bytes: usize,
    /// Memtable size of the `entries` column family.
    pub write_buffer_bytes: usize,
    /// fsync the WAL on every batch (survives power loss, slower).
    pub sync_writes: bool,
    /// The node identity opening the database; a database last opened by
    /// another node gets a new incarnation. `None` skips the check.
    pub node: Option<String>,
}

impl RocksConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 32 << 20,
            sync_writes: false,
            node: None,
        }
    }
}

pub struct RocksStore {
    db: DB,
    incarnation: Incarnation,
    head: AtomicU64,
    count: AtomicU64,
    write_lock: Mutex<()>,
    sync_writes: bool,
}

impl RocksStore {
    /// Opens (or creates) the database at `config.path`.
    pub fn open(config: &RocksConfig) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&config.path).map_err(|e| {
            map_io(
                &config.path,
                format!("creating {}: {e}", config.path.display()),
            )
        })?;
        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        let table = |bloom: bool| {
            let mut t = BlockBasedOptions::default();
            t.set_block_cache(&cache);
            t.set_cache_index_and_filter_blocks(true);
            t.set_pin_l0_filter_and_index_blocks_in_cache(true);
            if bloom {
                t.set_bloom_filter(10.0, false);
            }
            t
        };

        let mut entries = Options::default();
        // No bloom filter: every lookup here is for an entry known to exist
        // (existence is asked of `ids`), so a filter would only cost reads.
        entries.set_block_based_table_factory(&table(false));
        entries.set_compression_type(DBCompressionType::None);
        entries.set_write_buffer_size(config.write_buffer_bytes);
        entries.set_max_write_buffer_number(3);
        // A bloom filter over memtable keys: most body lookups (a log scan,
        // GetEntries) are for keys not in the memtable, and skip its
        // skiplist entirely.
        entries.set_memtable_whole_key_filtering(true);
        entries.set_memtable_prefix_bloom_ratio(0.1);
        entries.set_target_file_size_base(64 << 20);
        // Entry bodies go to blob files (key-value separation): compactions
        // of the randomly keyed entries move small keys and blob references,
        // not ciphertext, which keeps write amplification low during bulk
        // ingest. Entries are immutable, so blob garbage never builds up.
        entries.set_enable_blob_files(true);
        entries.set_min_blob_size(256);
        entries.set_blob_file_size(256 << 20);
        entries.set_blob_compression_type(DBCompressionType::None);
        let mut log = Options::default();
        log.set_block_based_table_factory(&table(false));
        log.set_compression_type(DBCompressionType::Lz4);
        log.set_write_buffer_size(config.write_buffer_bytes / 4);
        let mut small = Options::default();
        small.set_block_based_table_factory(&table(false));
        let mut ids = Options::default();
        ids.set_block_based_table_factory(&table(true));
        ids.set_compression_type(DBCompressionType::Lz4);
        ids.set_write_buffer_size(config.write_buffer_bytes / 4);
        ids.set_memtable_whole_key_filtering(true);
        ids.set_memtable_prefix_bloom_ratio(0.1);

        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_bytes_per_sync(1 << 20);
        db_opts.set_keep_log_file_num(3);
        db_opts.set_max_total_wal_size(256 << 20);

        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_ENTRIES, entries),
            ColumnFamilyDescriptor::new(CF_LOG, log),
            ColumnFamilyDescriptor::new(CF_META, small.clone()),
            ColumnFamilyDescriptor::new(CF_CURSORS, small),
            ColumnFamilyDescriptor::new(CF_IDS, ids),
        ];
        let db = DB::open_cf_descriptors(&db_opts, &config.path, cfs)
            .map_err(|e| map_err(&config.path, e))?;
        let (incarnation, head, count) = load_meta(&db, config.node.as_deref())?;
        Ok(Self {
            db,
            incarnation,
            head: AtomicU64::new(head),
            count: AtomicU64::new(count),
            write_lock: Mutex::new(()),
            sync_writes: config.sync_writes,
        })
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created on open")
    }

    fn property(&self, cf: &str, name: &str) -> u64 {
        self.db
            .property_int_value_cf(self.cf(cf), name)
            .ok()
            .flatten()
            .unwrap_or(0)
    }
}

fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

/// Reads the incarnation, head and count, or creates them for a new
/// database; upgrades an older schema and takes a new incarnation when the
/// database was last opened by another node.
fn load_meta(db: &DB, node: Option<&str>) -> Result<(Incarnation, Seq, u64), StoreError> {
    let meta = db
        .cf_handle(CF_META)
        .expect("column families are created on open");
    let get = |key: &[u8]| db.get_cf(meta, key).map_err(backend);
    let Some(version) = get(KEY_SCHEMA)? else {
        // A new database: everything is created in one batch.
        let incarnation = Incarnation::random();
        let mut batch = WriteBatch::default();
        batch.put_cf(meta, KEY_SCHEMA, SCHEMA_VERSION.to_be_bytes());
        batch.put_cf(meta, KEY_INCARNATION, incarnation.0);
        batch.put_cf(meta, KEY_HEAD, 0u64.to_be_bytes());
        batch.put_cf(meta, KEY_COUNT, 0u64.to_be_bytes());
        if let Some(node) = node {
            batch.put_cf(meta, KEY_NODE, node.as_bytes());
        }
        db.write_opt(batch, &synced()).map_err(backend)?;
        return Ok((incarnation, 0, 0));
    };
    let found = u32::from_be_bytes(fixed(&version, "meta schema_version")?);
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

/// Builds the `ids` family of a version-1 database from its log (which
/// names every entry without touching a body), then records version 2.
fn upgrade_from_v1(db: &DB) -> Result<(), StoreError> {
    let cf = |name| {
        db.cf_handle(name)
            .expect("column families are created on open")
    };
    let (log, ids, meta) = (cf(CF_LOG), cf(CF_IDS), cf(CF_META));
    tracing::info!("upgrading the database to schema version {SCHEMA_VERSION}: indexing entry ids");
    let mut batch = WriteBatch::default();
    let mut indexed = 0u64;
    for item in db.iterator_cf(log, IteratorMode::Start) {
        let (_, key) = item.map_err(backend)?;
        batch.put_cf(ids, key, []);
        indexed += 1;
        if batch.len() >= 10_000 {
            db.write(std::mem::take(&mut batch)).map_err(backend)?;
        }
    }
    batch.put_cf(meta, KEY_SCHEMA, SCHEMA_VERSION.to_be_bytes());
    db.write_opt(batch, &synced()).map_err(backend)?;
    tracing::info!(indexed, "schema upgrade done");
    Ok(())
}

/// Options for reading entry bodies. Block checksums are not verified: every
/// reader re-hashes each body against its id (BLAKE3), which catches any
/// corruption a checksum would. The blocks read are small (keys and blob
/// references; bodies live in blob files, outside the cache), so they are
/// cached: a log scan would otherwise read the same index blocks from the
/// file again for every chunk.
fn body_read_options() -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.set_verify_checksums(false);
    opts
}

fn entry_key(ns: &Namespace, id: &EntryId) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + 2 * 64 + ID_LEN);
    ns.encode_key(&mut key);
    key.extend_from_slice(&id.0);
    key
}

fn decode_entry_key(key: &[u8]) -> Result<(Namespace, EntryId), StoreError> {
    Namespace::decode_key(key)
        .and_then(|(ns, rest)| Some((ns, EntryId::from_slice(rest).ok()?)))
        .ok_or_else(|| StoreError::Corrupt {
            what: "log",
            detail: format!("undecodable key {}", hex::encode(key)),
        })
}

fn fixed<const N: usize>(v: &[u8], what: &'static str) -> Result<[u8; N], StoreError> {
    v.try_into().map_err(|_| StoreError::Corrupt {
        what,
        detail: format!("{} bytes, expected {N}", v.len()),
    })
}

fn backend(e: rocksdb::Error) -> StoreError {
    let msg = e.into_string();
    if msg.contains("No space left on device") {
        StoreError::DiskFull(msg)
    } else {
        StoreError::Backend(msg)
    }
}

fn map_err(path: &Path, e: rocksdb::Error) -> StoreError {
    map_io(path, e.into_string())
}

fn map_io(path: &Path, msg: String) -> StoreError {
    if msg.contains("lock") && (msg.contains("LOCK") || msg.contains("unavailable")) {
        StoreError::Locked {
            path: path.display().to_string(),
        }
    } else if msg.contains("No space left on device") {
        StoreError::DiskFull(msg)
    } else {
        StoreError::Backend(msg)
    }
}

impl Store for RocksStore {
    fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            head_seq: self.head.load(Ordering::Acquire),
            entries: self.count.load(Ordering::Acquire),
        }
    }

    fn disk_bytes(&self) -> u64 {
        [CF_ENTRIES, CF_IDS, CF_LOG, CF_META, CF_CURSORS]
            .iter()
            .map(|cf| {
                self.property(cf, "rocksdb.total-sst-files-size")
                    + self.property(cf, "rocksdb.total-blob-file-size")
                    + self.property(cf, "rocksdb.size-all-mem-tables")
            })
            .sum()
    }

    fn append(
        &self,
        entries: &[VerifiedEntry],
        cursor: Option<&CursorUpdate>,
    ) -> Result<Vec<Appended>, StoreError> {
        let (cf_entries, cf_ids, cf_log, cf_meta) = (
            self.cf(CF_ENTRIES),
            self.cf(CF_IDS),
            self.cf(CF_LOG),
            self.cf(CF_META),
        );
        let keys: Vec<Vec<u8>> = entries
            .iter()
            .map(|e| entry_key(&e.namespace, &e.id))
            .collect();
        let _guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let held = self.db.batched_multi_get_cf(cf_ids, &keys, false);
        let mut seen = std::collections::HashSet::with_capacity(keys.len());
        let mut head = self.head.load(Ordering::Acquire);
        let mut count = self.count.load(Ordering::Acquire);
        let mut batch = WriteBatch::default();
        let mut out = Vec::with_capacity(entries.len());
        for ((entry, key), held) in entries.iter().zip(&keys).zip(held) {
            if held.map_err(backend)?.is_some() || !seen.insert(key.as_slice()) {
                out.push(Appended::Duplicate);
                continue;
            }
            head += 1;
            count += 1;
            batch.put_cf(cf_entries, key, &entry.data);
            batch.put_cf(cf_ids, key, []);
            batch.put_cf(cf_log, head.to_be_bytes(), key);
            out.push(Appended::Stored(head));
        }
        if let Some(update) = cursor {
            batch.put_cf(
                self.cf(CF_CURSORS),
                update.peer.as_bytes(),
                encode_cursor(&update.record),
            );
        }
        if batch.is_empty() {
            return Ok(out);
        }
        batch.put_cf(cf_meta, KEY_HEAD, head.to_be_bytes());
        batch.put_cf(cf_meta, KEY_COUNT, count.to_be_bytes());
        let mut opts = WriteOptions::default();
        opts.set_sync(self.sync_writes);
        self.db.write_opt(batch, &opts).map_err(backend)?;
        self.count.store(count, Ordering::Release);
        self.head.store(head, Ordering::Release);
        Ok(out)
    }

    fn contains(&self, ns: &Namespace, ids: &[EntryId]) -> Result<Vec<bool>, StoreError> {
        let keys: Vec<Vec<u8>> = ids.iter().map(|id| entry_key(ns, id)).collect();
        self.db
            .batched_multi_get_cf(self.cf(CF_IDS), &keys, false)
            .into_iter()
            .map(|r| r.map(|v| v.is_some()).map_err(backend))
            .collect()
    }

    fn get(&self, ns: &Namespace, ids: &[EntryId]) -> Result<Vec<Option<Bytes>>, StoreError> {
        let keys: Vec<Vec<u8>> = ids.iter().map(|id| entry_key(ns, id)).collect();
        self.db
            .batched_multi_get_cf_opt(self.cf(CF_ENTRIES), &keys, false, &body_read_options())
            .into_iter()
            .map(|r| {
                r.map(|v| v.map(|v| Bytes::copy_from_slice(&v)))
                    .map_err(backend)
            })
            .collect()
    }

    fn log_since(
        &self,
        after: Seq,
        limit: usize,
        data_budget: Option<usize>,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let head = self.head.load(Ordering::Acquire);
        if after >= head || limit == 0 {
            return Ok(Vec::new());
        }
        // With data, read the log a chunk at a time and stop at the budget,
        // so no log record is decoded that will not be sent.
        let chunk = match data_budget {
            Some(_) => 64,
            None => limit,
        };
        let budget = data_budget.unwrap_or(usize::MAX);
        let start = (after + 1).to_be_bytes();
        let mut iter = self
            .db
            .iterator_cf(
                self.cf(CF_LOG),
                IteratorMode::From(&start, Direction::Forward),
            )
            .take(limit);
        let mut records = Vec::with_capacity(limit.min(4096));
        let mut bytes = 0;
        loop {
            let first = records.len();
            let mut keys = Vec::with_capacity(chunk.min(4096));
            for item in iter.by_ref().take(chunk) {
                let (k, v) = item.map_err(backend)?;
                let seq = u64::from_be_bytes(fixed(&k, "log key")?);
                // Records above the head belong to a batch still being committed.
                if seq > head {
                    break;
                }
                let (namespace, id) = decode_entry_key(&v)?;
                records.push(LogRecord {
                    seq,
                    namespace,
                    id,
                    data: None,
                });
                keys.push(v);
            }
            if keys.is_empty() || data_budget.is_none() {
                break;
            }
            let values = self.db.batched_multi_get_cf_opt(
                self.cf(CF_ENTRIES),
                &keys,
                false,
                &body_read_options(),
            );
            let mut filled = first;
            let mut full = false;
            for value in values {
                let record = &mut records[filled];
                let value = value.map_err(backend)?.ok_or_else(|| StoreError::Corrupt {
                    what: "entries",
                    detail: format!("log record {} names a missing entry", record.seq),
                })?;
                if filled > 0 && bytes + value.len() > budget {
                    full = true;
                    break;
                }
                bytes += value.len();
                record.data = Some(Bytes::copy_from_slice(&value));
                filled += 1;
            }
            records.truncate(filled);
            if full || keys.len() < chunk {
                break;
            }
        }
        Ok(records)
    }

    fn log_at(&self, seq: Seq) -> Result<Option<EntryId>, StoreError> {
        if seq == 0 || seq > self.head.load(Ordering::Acquire) {
            return Ok(None);
        }
        let value = self
            .db
            .get_pinned_cf(self.cf(CF_LOG), seq.to_be_bytes())
            .map_err(backend)?;
        value
            .map(|v| decode_entry_key(&v).map(|(_, id)| id))
            .transpose()
    }

    fn list_ids(
        &self,
        ns: &Namespace,
        after: Option<&EntryId>,
        limit: usize,
    ) -> Result<Vec<EntryId>, StoreError> {
        let mut prefix = Vec::new();
        ns.encode_key(&mut prefix);
        let start = match after {
            Some(id) => entry_key(ns, id),
            None => prefix.clone(),
        };
        let iter = self.db.iterator_cf(
            self.cf(CF_IDS),
            IteratorMode::From(&start, Direction::Forward),
        );
        let mut ids = Vec::with_capacity(limit.min(4096));
        for item in iter {
            if ids.len() == limit {
                break;
            }
            let (k, _) = item.map_err(backend)?;
            let Some(rest) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            let id = EntryId::from_slice(rest).map_err(|e| StoreError::Corrupt {
                what: "ids",
                detail: e.to_string(),
            })?;
            if Some(&id) != after {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    fn cursor(&self, peer: &str) -> Result<Option<CursorRecord>, StoreError> {
        self.db
            .get_pinned_cf(self.cf(CF_CURSORS), peer.as_bytes())
            .map_err(backend)?
            .map(|v| decode_cursor(&v))
            .transpose()
    }

    fn cursors(&self) -> Result<Vec<(String, CursorRecord)>, StoreError> {
        self.db
            .iterator_cf(self.cf(CF_CURSORS), IteratorMode::Start)
            .map(|item| {
                let (k, v) = item.map_err(backend)?;
                Ok((String::from_utf8_lossy(&k).into_owned(), decode_cursor(&v)?))
            })
            .collect()
    }

    fn delete_cursor(&self, peer: &str) -> Result<(), StoreError> {
        self.db
            .delete_cf_opt(self.cf(CF_CURSORS), peer.as_bytes(), &synced())
            .map_err(backend)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true).map_err(backend)?;
        for cf in [CF_ENTRIES, CF_IDS, CF_LOG, CF_META, CF_CURSORS] {
            self.db.flush_cf(self.cf(cf)).map_err(backend)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Entry, Envelope};

    fn entry(ns: &Namespace, n: u32) -> VerifiedEntry {
        let env = Envelope {
            namespace: ns.clone(),
            author: [0; 32],
            created_ms: n as u64,
            kind: "doc_change".into(),
            doc_id: vec![],
            deps: vec![],
        };
        let e = Entry::create(env, &[n as u8; 600], None);
        VerifiedEntry {
            id: e.id,
            namespace: ns.clone(),
            data: e.data().clone(),
        }
    }

    /// Bytes this thread has read through read calls, page cache included.
    fn thread_rchar() -> u64 {
        std::fs::read_to_string("/proc/thread-self/io")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("rchar:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn existence_checks_do_not_read_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let config = RocksConfig::new(dir.path());
        let ns = Namespace::new("t", "d").unwrap();
        let big = |n: u32| {
            let env = Envelope {
                namespace: ns.clone(),
                author: [0; 32],
                created_ms: n as u64,
                kind: "doc_change".into(),
                doc_id: vec![],
                deps: vec![],
            };
            let e = Entry::create(env, &vec![n as u8; 64 << 10], None);
            VerifiedEntry {
                id: e.id,
                namespace: ns.clone(),
                data: e.data().clone(),
            }
        };
        let batch: Vec<_> = (0..200).map(big).collect();
        let ids: Vec<EntryId> = batch.iter().map(|e| e.id).collect();
        {
            let store = RocksStore::open(&config).unwrap();
            store.append(&batch, None).unwrap();
            store.flush().unwrap();
        }
        // Reopened: every body is in a blob file, none in a memtable.
        let store = RocksStore::open(&config).unwrap();
        let body_bytes = 200 * (64 << 10) as u64;
        let before = thread_rchar();
        assert!(store.contains(&ns, &ids).unwrap().into_iter().all(|h| h));
        assert_eq!(store.list_ids(&ns, None, 500).unwrap().len(), 200);
        assert!(
            store
                .append(&batch, None)
                .unwrap()
                .iter()
                .all(|a| *a == Appended::Duplicate)
        );
        let read = thread_rchar() - before;
        assert!(
            read < body_bytes / 10,
            "existence checks read {read} bytes; the bodies are {body_bytes}"
        );
        // Reading the bodies themselves does read them: the measure works.
        let before = thread_rchar();
        assert_eq!(store.get(&ns, &ids).unwrap().len(), 200);
        assert!(thread_rchar() - before >= body_bytes);
    }

    #[test]
    fn a_version_1_database_gets_its_id_index_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let config = RocksConfig::new(dir.path());
        let ns = Namespace::new("t", "d").unwrap();
        let batch: Vec<_> = (0..50).map(|i| entry(&ns, i)).collect();
        {
            // Make a version-1 database: entries and log, no `ids` rows.
            let store = RocksStore::open(&config).unwrap();
            store.append(&batch, None).unwrap();
            let ids_cf = store.cf(CF_IDS);
            for e in &batch {
                store
                    .db
                    .delete_cf(ids_cf, entry_key(&e.namespace, &e.id))
                    .unwrap();
            }
            store
                .db
                .put_cf(store.cf(CF_META), KEY_SCHEMA, 1u32.to_be_bytes())
                .unwrap();
            assert_eq!(store.contains(&ns, &[batch[0].id]).unwrap(), [false]);
        }
        let store = RocksStore::open(&config).unwrap();
        let ids: Vec<EntryId> = batch.iter().map(|e| e.id).collect();
        assert!(store.contains(&ns, &ids).unwrap().into_iter().all(|h| h));
        assert_eq!(store.list_ids(&ns, None, 100).unwrap().len(), 50);
        assert_eq!(
            store.append(&batch[..1], None).unwrap(),
            [Appended::Duplicate]
        );
        let version = store.db.get_cf(store.cf(CF_META), KEY_SCHEMA).unwrap();
        assert_eq!(version.unwrap(), SCHEMA_VERSION.to_be_bytes());
    }
}
