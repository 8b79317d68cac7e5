//! RocksDB-only behaviour: schema upgrades and what existence checks read.

use super::*;
use crate::store::conformance::entry_with;

fn entry(ns: &Namespace, n: u32) -> VerifiedEntry {
    entry_with(ns, n, &[n as u8; 600])
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
    let big = |n: u32| entry_with(&ns, n, &vec![n as u8; 64 << 10]);
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
fn a_version_1_database_is_upgraded_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Namespace::new("t", "d").unwrap();
    let batch: Vec<_> = (0..50).map(|i| entry(&ns, i)).collect();
    {
        // The version-1 layout: bodies keyed by ns ‖ id, no index.
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = DB::open_cf(
            &opts,
            dir.path(),
            [CF_ENTRIES_V1, CF_LOG, CF_META, CF_CURSORS],
        )
        .unwrap();
        let cf = |n| db.cf_handle(n).unwrap();
        for (i, e) in batch.iter().enumerate() {
            let key = entry_key(&e.namespace, &e.id);
            db.put_cf(cf(CF_ENTRIES_V1), &key, &e.data).unwrap();
            db.put_cf(cf(CF_LOG), (i as u64 + 1).to_be_bytes(), &key)
                .unwrap();
        }
        let meta = cf(CF_META);
        db.put_cf(meta, KEY_SCHEMA, 1u32.to_be_bytes()).unwrap();
        db.put_cf(meta, KEY_INCARNATION, [9u8; 16]).unwrap();
        db.put_cf(meta, KEY_HEAD, 50u64.to_be_bytes()).unwrap();
        db.put_cf(meta, KEY_COUNT, 50u64.to_be_bytes()).unwrap();
    }
    let store = RocksStore::open(&RocksConfig::new(dir.path())).unwrap();
    assert_eq!(store.incarnation(), Incarnation([9; 16]));
    let ids: Vec<EntryId> = batch.iter().map(|e| e.id).collect();
    assert!(store.contains(&ns, &ids).unwrap().into_iter().all(|h| h));
    let got = store.get(&ns, &ids).unwrap();
    assert!(
        got.iter()
            .zip(&batch)
            .all(|(g, e)| g.as_ref() == Some(&e.data))
    );
    let log = store.log_since(0, 100, Some(usize::MAX)).unwrap();
    assert_eq!(log.len(), 50);
    assert!(
        log.iter()
            .zip(&batch)
            .all(|(r, e)| r.id == e.id && r.data.as_ref() == Some(&e.data))
    );
    assert_eq!(store.list_ids(&ns, None, 100).unwrap().len(), 50);
    assert_eq!(
        store.append(&batch[..1], None).unwrap(),
        [Appended::Duplicate]
    );
    assert_eq!(
        store.append(&[entry(&ns, 99)], None).unwrap(),
        [Appended::Stored(51)]
    );
    let version = store.db.get_cf(store.cf(CF_META), KEY_SCHEMA).unwrap();
    assert_eq!(version.unwrap(), SCHEMA_VERSION.to_be_bytes());
    drop(store);
    let families = DB::list_cf(&Options::default(), dir.path()).unwrap();
    assert!(!families.iter().any(|f| f == CF_ENTRIES_V1), "{families:?}");
}

#[test]
fn engine_errors_say_what_ran_out() {
    let full = "IO error: While appending to file: 000012.log: No space left on device";
    assert!(matches!(classify(full.into()), StoreError::DiskFull(_)));
    let files = "IO error: While open a file for appending: 000008.log: Too many open files";
    assert!(matches!(classify(files.into()), StoreError::OutOfFiles(_)));
    assert!(matches!(
        classify("Corruption: bad block".into()),
        StoreError::Backend(_)
    ));
}
