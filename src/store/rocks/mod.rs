//! The RocksDB [`Store`]. This is the only module that uses the `rocksdb` crate.
//!
//! Column families:
//!
//! | cf        | key                     | value                                   |
//! |-----------|-------------------------|-----------------------------------------|
//! | `log`     | seq (u64 BE)            | ns ‖ id (lz4)                           |
//! | `bodies`  | seq (u64 BE)            | entry data (blob files, uncompressed: it is ciphertext) |
//! | `ids`     | ns ‖ id                 | seq (u64 BE)                            |
//! | `nslog`   | ns ‖ seq (u64 BE)       | id (lz4): the log by namespace (`nslog.rs`) |
//! | `meta`    | `incarnation`, `node`, `head_seq`, `entry_count`, `schema_version`, `scrub`, `usage/<tenant>` (`usage.rs`) | small values |
//! | `cursors` | peer node name          | see [`super::encode_cursor`]            |
//! | `docs`    | ns ‖ doc ‖ seq          | id, kind, time, deps: a device's index by document (`docindex.rs`) |
//!
//! Bodies are kept in log order: a log scan with data (how a peer
//! bootstraps) reads `log` and `bodies` with two sequential iterators, and
//! their keys only ever grow, so flushes never overlap and compactions move
//! files rather than rewrite them. `ids` indexes them by entry id: existence
//! checks (dedup on append, `MissingIds`, `ListIds`) read only this small
//! family, never a body, and `GetEntries` looks up the seq there first.
//! `nslog` indexes the log by namespace: a reader of a few namespaces
//! iterates their rows only.
//!
//! `ns` is [`Namespace::encode_key`], which is prefix-free, so a namespace's
//! ids are one contiguous key range. Appends are serialised by a mutex and
//! committed as one `WriteBatch`, which keeps the head and the count exact.
//! The batch lands in the WAL without an fsync, so the lock is held only
//! for the write itself; [`Store::sync`] then fsyncs the WAL once for every
//! writer waiting at that moment (group commit).
//!
//! The database remembers the node identity that last opened it. Opened by a
//! different node (a copied volume, a cloned or restored directory), it takes
//! a new incarnation, so no peer mistakes its log for the original's.
//!
//! Schema version 1 kept bodies keyed by ns ‖ id in an `entries` family; it
//! is rewritten to this layout once, on open.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, ReadOptions, WriteBatch,
};

use super::group_sync::GroupSync;
use super::ranges::{FingerprintKey, KeyRange, RangeIndex};
use super::scrub::ScrubMark;
use super::{
    Appended, CursorRecord, CursorUpdate, DocRange, DocRecord, Incarnation, LogRecord, Seq, Store,
    StoreError, StoreStats, Usage, decode_cursor, encode_cursor, scan_doc_records,
};
use crate::entry::{EntryId, ID_LEN, Namespace, VerifiedEntry};

mod backfill;
pub mod backup;
mod direct;
mod docindex;
mod meta;
mod nslog;
mod quarantine;
mod ranges;
mod tuning;
mod usage;
use docindex::CF_DOCS;
use meta::{load_meta, synced};
use nslog::CF_NSLOG;

/// Version 1's bodies by ns ‖ id; only read while upgrading.
const CF_ENTRIES_V1: &str = "entries";
const CF_BODIES: &str = "bodies";
const CF_LOG: &str = "log";
const CF_META: &str = "meta";
const CF_CURSORS: &str = "cursors";
const CF_IDS: &str = "ids";

const KEY_INCARNATION: &[u8] = b"incarnation";
const KEY_HEAD: &[u8] = b"head_seq";
/// Written when the store is probed for writes (see `Store::probe_write`).
const KEY_WRITE_PROBE: &[u8] = b"write_probe";
const KEY_COUNT: &[u8] = b"entry_count";
const KEY_SCHEMA: &[u8] = b"schema_version";
const KEY_NODE: &[u8] = b"node";
/// Where the periodic scrub stands (see [`ScrubMark`]).
const KEY_SCRUB: &[u8] = b"scrub";
/// 2 keeps bodies by seq and ids in an index; 1 is upgraded on open.
const SCHEMA_VERSION: u32 = 2;
/// Families of the current layout.
const FAMILIES: [&str; 6] = [CF_LOG, CF_BODIES, CF_IDS, CF_NSLOG, CF_META, CF_CURSORS];

/// Tuning for the RocksDB backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RocksConfig {
    pub path: PathBuf,
    /// Shared block cache for all column families.
    pub block_cache_bytes: usize,
    /// Memtable size of the `entries` column family.
    pub write_buffer_bytes: usize,
    /// [`Store::sync`] fsyncs the WAL (what it returned for survives a
    /// power loss); off, it returns at once.
    pub sync_writes: bool,
    /// Files RocksDB keeps open at most (table files beyond it are reopened
    /// on use).
    pub max_open_files: usize,
    /// The node identity opening the database; a database last opened by
    /// another node gets a new incarnation. `None` skips the check.
    pub node: Option<String>,
    /// Keep the index by document (`docindex.rs`) that a device reads its
    /// documents through. A replica never reads it, so it does not pay for
    /// it.
    pub index_documents: bool,
    /// Flushes and compactions write past the page cache (see `direct.rs`),
    /// when the data directory's filesystem takes direct I/O.
    pub direct_io: bool,
    /// Keep range fingerprints under this key (see [`super::ranges`]),
    /// rebuilt from the `ids` family on open.
    pub fingerprint_key: Option<FingerprintKey>,
}

impl RocksConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 32 << 20,
            sync_writes: true,
            max_open_files: 1024,
            node: None,
            index_documents: false,
            direct_io: true,
            fingerprint_key: None,
        }
    }
}

pub struct RocksStore {
    db: DB,
    incarnation: Incarnation,
    head: AtomicU64,
    count: AtomicU64,
    /// Each tenant's, as committed (see `usage.rs`).
    usage: Mutex<HashMap<String, Usage>>,
    write_lock: Mutex<()>,
    sync_writes: bool,
    /// Appends land in the WAL unsynced; [`Store::sync`] fsyncs it for
    /// every writer waiting at once.
    group: GroupSync,
    /// See [`RocksConfig::index_documents`].
    index_documents: bool,
    /// See [`RocksConfig::direct_io`].
    direct_io: bool,
    /// See [`Store::log_records_read`].
    records_read: AtomicU64,
    /// See [`RocksConfig::fingerprint_key`].
    ranges: Option<RangeIndex>,
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
        let tuned = tuning::tune(config);
        let mut cfs = vec![
            ColumnFamilyDescriptor::new(CF_LOG, tuned.log),
            ColumnFamilyDescriptor::new(CF_BODIES, tuned.bodies),
            ColumnFamilyDescriptor::new(CF_IDS, tuned.ids),
            ColumnFamilyDescriptor::new(CF_NSLOG, tuned.nslog),
            ColumnFamilyDescriptor::new(CF_META, tuned.small.clone()),
            ColumnFamilyDescriptor::new(CF_CURSORS, tuned.small.clone()),
        ];
        // A version-1 database still has its `entries` family until upgraded.
        let existing = DB::list_cf(&tuned.db, &config.path).unwrap_or_default();
        let exists = |name: &str| existing.iter().any(|cf| cf == name);
        // A database that has the document index opens it even when not
        // keeping it.
        let docs_existed = exists(CF_DOCS);
        if config.index_documents || docs_existed {
            cfs.push(ColumnFamilyDescriptor::new(CF_DOCS, tuned.docs));
        }
        if exists(CF_ENTRIES_V1) {
            cfs.push(ColumnFamilyDescriptor::new(CF_ENTRIES_V1, tuned.small));
        }
        let db = DB::open_cf_descriptors(&tuned.db, &config.path, cfs)
            .map_err(|e| map_err(&config.path, e))?;
        let mut db = db;
        let (incarnation, head, count) = load_meta(&mut db, config.node.as_deref())?;
        let index_created = !existing.is_empty() && !existing.iter().any(|cf| cf == CF_NSLOG);
        nslog::ensure_built(&db, index_created)?;
        let usage = usage::ensure_counted(&db)?;
        match config.index_documents {
            true => docindex::ensure_built(&db, !docs_existed)?,
            false if docs_existed => docindex::forget_built(&db)?,
            false => {}
        }
        Self {
            db,
            incarnation,
            head: AtomicU64::new(head),
            count: AtomicU64::new(count),
            usage: Mutex::new(usage),
            write_lock: Mutex::new(()),
            sync_writes: config.sync_writes,
            group: GroupSync::default(),
            index_documents: config.index_documents,
            direct_io: tuned.direct_io,
            records_read: AtomicU64::new(0),
            ranges: None,
        }
        .with_ranges(config.fingerprint_key.clone())
    }

    /// Whether flushes and compactions write past the page cache.
    pub fn direct_io(&self) -> bool {
        self.direct_io
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created on open")
    }

    /// The families open: those of the layout, and the document index
    /// when the database has it.
    fn families(&self) -> impl Iterator<Item = &'static str> + '_ {
        let docs = self.db.cf_handle(CF_DOCS).map(|_| CF_DOCS);
        FAMILIES.into_iter().chain(docs)
    }

    /// The bodies logged at `seqs`: `None` where nothing is logged (taken
    /// out of service by [`Store::quarantine`]); a log record without its
    /// body is corrupt.
    fn bodies_at(
        &self,
        seqs: impl Iterator<Item = Seq>,
        opts: &ReadOptions,
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        let keys: Vec<[u8; 8]> = seqs.map(Seq::to_be_bytes).collect();
        self.db
            .batched_multi_get_cf_opt(self.cf(CF_BODIES), &keys, false, opts)
            .into_iter()
            .zip(&keys)
            .map(|(body, seq)| match body.map_err(backend)? {
                Some(body) => Ok(Some(Bytes::copy_from_slice(&body))),
                None => match self
                    .db
                    .get_pinned_cf(self.cf(CF_LOG), seq)
                    .map_err(backend)?
                {
                    None => Ok(None),
                    Some(_) => Err(StoreError::Corrupt {
                        what: "bodies",
                        detail: format!("no body at seq {}", u64::from_be_bytes(*seq)),
                    }),
                },
            })
            .collect()
    }

    /// The bodies logged at `seqs`, `None` for 0 and past the head.
    fn logged_bodies(
        &self,
        seqs: &[Seq],
        opts: &ReadOptions,
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        let head = self.head.load(Ordering::Acquire);
        let held = |seq: Seq| (1..=head).contains(&seq);
        let mut bodies = self
            .bodies_at(seqs.iter().copied().filter(|&s| held(s)), opts)?
            .into_iter();
        Ok(seqs
            .iter()
            .map(|&seq| match held(seq) {
                true => bodies.next().flatten(),
                false => None,
            })
            .collect())
    }

    fn property(&self, cf: &str, name: &str) -> u64 {
        self.db
            .property_int_value_cf(self.cf(cf), name)
            .ok()
            .flatten()
            .unwrap_or(0)
    }
}

/// Options for reading entry bodies. Checksums are not verified: every
/// reader re-hashes each body against its id (BLAKE3), and checks its
/// signature where it requires one; a scrub reads with them verified (see
/// [`Store::read_back`]), which also covers the signature's bytes. The blocks read are small (keys and blob
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
    classify(e.into_string())
}

/// An engine error by what a caller can do about it: wait for space or
/// descriptors (the store recovers by itself), or nothing.
fn classify(msg: String) -> StoreError {
    if msg.contains("No space left on device") {
        StoreError::DiskFull(msg)
    } else if msg.contains("Too many open files") {
        StoreError::OutOfFiles(msg)
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
    } else {
        classify(msg)
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
        self.families()
            .map(|cf| {
                self.property(cf, "rocksdb.total-sst-files-size")
                    + self.property(cf, "rocksdb.total-blob-file-size")
                    + self.property(cf, "rocksdb.size-all-mem-tables")
            })
            .sum()
    }

    fn memory_bytes(&self) -> Vec<(&'static str, u64)> {
        let sum = |name: &str| self.families().map(|cf| self.property(cf, name)).sum();
        vec![
            ("memtables", sum("rocksdb.size-all-mem-tables")),
            ("table_readers", sum("rocksdb.estimate-table-readers-mem")),
            // One cache shared by every family.
            (
                "block_cache",
                self.property(CF_LOG, "rocksdb.block-cache-usage"),
            ),
            (
                "block_cache_pinned",
                self.property(CF_LOG, "rocksdb.block-cache-pinned-usage"),
            ),
        ]
    }

    fn append(
        &self,
        entries: &[VerifiedEntry],
        cursor: Option<&CursorUpdate>,
    ) -> Result<Vec<Appended>, StoreError> {
        let (cf_bodies, cf_ids, cf_log, cf_nslog, cf_meta) = (
            self.cf(CF_BODIES),
            self.cf(CF_IDS),
            self.cf(CF_LOG),
            self.cf(CF_NSLOG),
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
        let mut added: HashMap<&str, Usage> = HashMap::new();
        for ((entry, key), held) in entries.iter().zip(&keys).zip(held) {
            if held.map_err(backend)?.is_some() || !seen.insert(key.as_slice()) {
                out.push(Appended::Duplicate);
                continue;
            }
            head += 1;
            count += 1;
            let seq = head.to_be_bytes();
            batch.put_cf(cf_bodies, seq, &entry.data);
            batch.put_cf(cf_ids, key, seq);
            batch.put_cf(cf_log, seq, key);
            batch.put_cf(cf_nslog, nslog::key(&entry.namespace, head), entry.id.0);
            if self.index_documents
                && let Some(record) = DocRecord::of(head, entry.id, &entry.data)
            {
                docindex::put(&self.db, &mut batch, &entry.namespace, &record);
            }
            added
                .entry(entry.namespace.tenant())
                .or_default()
                .add(entry.data.len());
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
        // Appends are serialised: nothing changes the counts meanwhile.
        let usage: Vec<(&str, Usage)> = {
            let held = self.usage.lock().unwrap_or_else(|e| e.into_inner());
            added
                .into_iter()
                .map(|(tenant, more)| {
                    let was = held.get(tenant).copied().unwrap_or_default();
                    let now = Usage {
                        entries: was.entries + more.entries,
                        bytes: was.bytes + more.bytes,
                    };
                    (tenant, now)
                })
                .collect()
        };
        for (tenant, now) in &usage {
            usage::put(&self.db, &mut batch, tenant, now);
        }
        self.db.write(batch).map_err(backend)?;
        self.group.wrote();
        if let Some(index) = &self.ranges {
            index.insert_appended(entries, &out);
        }
        let mut held = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        for (tenant, now) in usage {
            held.insert(tenant.to_owned(), now);
        }
        drop(held);
        self.count.store(count, Ordering::Release);
        self.head.store(head, Ordering::Release);
        Ok(out)
    }

    fn usage(&self, tenant: &str) -> Usage {
        let held = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        held.get(tenant).copied().unwrap_or_default()
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
        // Where each id is in the log, then the bodies there.
        let seqs = self
            .db
            .batched_multi_get_cf(self.cf(CF_IDS), &keys, false)
            .into_iter()
            .map(|r| r.map_err(backend))
            .collect::<Result<Vec<_>, _>>()?;
        let held: Vec<&[u8]> = seqs.iter().flatten().map(|s| &s[..]).collect();
        let mut bodies = self
            .db
            .batched_multi_get_cf_opt(self.cf(CF_BODIES), &held, false, &body_read_options())
            .into_iter();
        seqs.iter()
            .map(|seq| {
                let Some(seq) = seq else { return Ok(None) };
                let body = bodies.next().expect("one body per held id");
                let body = body.map_err(backend)?.ok_or_else(|| StoreError::Corrupt {
                    what: "bodies",
                    detail: format!("no body at seq {}", hex::encode(&seq[..])),
                })?;
                Ok(Some(Bytes::copy_from_slice(&body)))
            })
            .collect()
    }

    fn read_back(&self, seqs: &[Seq]) -> Result<Vec<Option<Bytes>>, StoreError> {
        let mut opts = body_read_options();
        opts.set_verify_checksums(true);
        self.logged_bodies(seqs, &opts)
    }

    fn get_logged(&self, seqs: &[Seq]) -> Result<Vec<Option<Bytes>>, StoreError> {
        self.logged_bodies(seqs, &body_read_options())
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
        let start = (after + 1).to_be_bytes();
        let from = IteratorMode::From(&start, Direction::Forward);
        let log = self.db.iterator_cf(self.cf(CF_LOG), from);
        // Bodies share the log's keys: with data, both are read in step.
        let mut bodies = data_budget.map(|_| {
            self.db
                .iterator_cf_opt(self.cf(CF_BODIES), body_read_options(), from)
        });
        let budget = data_budget.unwrap_or(usize::MAX);
        let mut records = Vec::with_capacity(limit.min(4096));
        let mut bytes = 0;
        let mut read = 0;
        for item in log.take(limit) {
            read += 1;
            let (k, v) = item.map_err(backend)?;
            let seq = u64::from_be_bytes(fixed(&k, "log key")?);
            // Records above the head belong to a batch still being committed.
            if seq > head {
                break;
            }
            let (namespace, id) = decode_entry_key(&v)?;
            let data = match bodies.as_mut() {
                None => None,
                Some(bodies) => {
                    let body = bodies.next().transpose().map_err(backend)?;
                    let body = match body {
                        Some((key, body)) if *key == *k => body,
                        _ => {
                            return Err(StoreError::Corrupt {
                                what: "bodies",
                                detail: format!("no body at seq {seq}"),
                            });
                        }
                    };
                    if !records.is_empty() && bytes + body.len() > budget {
                        break;
                    }
                    bytes += body.len();
                    Some(Bytes::from(body.into_vec()))
                }
            };
            records.push(LogRecord {
                seq,
                namespace,
                id,
                data,
            });
        }
        self.records_read.fetch_add(read, Ordering::Relaxed);
        Ok(records)
    }

    fn log_since_in(
        &self,
        namespaces: &[Namespace],
        after: Seq,
        limit: usize,
        data_budget: Option<usize>,
    ) -> Result<Vec<LogRecord>, StoreError> {
        nslog::read(self, namespaces, after, limit, data_budget)
    }

    fn log_records_read(&self) -> u64 {
        self.records_read.load(Ordering::Relaxed)
    }

    fn doc_records(
        &self,
        ns: &Namespace,
        range: DocRange<'_>,
        limit: usize,
    ) -> Result<Vec<DocRecord>, StoreError> {
        match self.index_documents {
            true => docindex::read(self, ns, range, limit),
            false => scan_doc_records(self, ns, range, limit),
        }
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

    fn probe_write(&self) -> Result<(), StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        self.db
            .put_cf(self.cf(CF_META), KEY_WRITE_PROBE, now.to_be_bytes())
            .map_err(backend)
    }

    fn sync(&self) -> Result<(), StoreError> {
        if !self.sync_writes {
            return Ok(());
        }
        // SyncWAL: fsyncs every WAL file written so far.
        self.group.sync(|| self.db.flush_wal(true).map_err(backend))
    }

    fn syncs(&self) -> u64 {
        self.group.syncs()
    }

    fn ranges(&self) -> Option<&RangeIndex> {
        self.ranges.as_ref()
    }

    fn range_ids(
        &self,
        range: &KeyRange,
        limit: usize,
    ) -> Result<Vec<(Namespace, EntryId)>, StoreError> {
        ranges::ids_in(&self.db, range, limit)
    }

    fn quarantine(&self, found: &[super::scrub::Finding]) -> Result<usize, StoreError> {
        self.quarantine_found(found)
    }

    fn scrub_mark(&self) -> Result<ScrubMark, StoreError> {
        match self
            .db
            .get_cf(self.cf(CF_META), KEY_SCRUB)
            .map_err(backend)?
        {
            Some(bytes) => ScrubMark::from_bytes(&bytes),
            None => Ok(ScrubMark::default()),
        }
    }

    fn set_scrub_mark(&self, mark: ScrubMark) -> Result<(), StoreError> {
        self.db
            .put_cf(self.cf(CF_META), KEY_SCRUB, mark.to_bytes())
            .map_err(backend)
    }

    fn checkpoint(&self, dir: &Path) -> Result<(), StoreError> {
        self.checkpoint_to(dir)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true).map_err(backend)?;
        for cf in self.families() {
            self.db.flush_cf(self.cf(cf)).map_err(backend)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
