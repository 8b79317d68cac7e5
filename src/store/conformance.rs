//! One behaviour suite, run against every [`Store`] backend.

use super::memory::MemoryStore;
use super::rocks::{RocksConfig, RocksStore};
use super::scrub::ScrubMark;
use super::*;
use crate::entry::{Entry, Envelope};

fn ns(db: &str) -> Namespace {
    Namespace::new("tenant", db).unwrap()
}

fn entry(ns: &Namespace, n: u32) -> VerifiedEntry {
    entry_with(ns, n, &n.to_be_bytes())
}

/// Entry number `n` of `ns`, with the given ciphertext.
pub(crate) fn entry_with(ns: &Namespace, n: u32, ciphertext: &[u8]) -> VerifiedEntry {
    let env = Envelope {
        namespace: ns.clone(),
        author: [0; 32],
        created_ms: n as u64,
        kind: "doc_change".into(),
        doc_id: vec![],
        deps: vec![],
    };
    let e = Entry::create(env, ciphertext, None);
    VerifiedEntry {
        id: e.id,
        namespace: ns.clone(),
        data: e.data().clone(),
    }
}

/// Entry `n` of document `doc` in `ns`.
pub(super) fn doc_entry(
    ns: &Namespace,
    doc: &[u8],
    kind: &str,
    n: u64,
    deps: Vec<EntryId>,
) -> VerifiedEntry {
    let env = Envelope {
        namespace: ns.clone(),
        author: [0; 32],
        created_ms: n,
        kind: kind.into(),
        doc_id: doc.to_vec(),
        deps,
    };
    let e = Entry::create(env, &n.to_be_bytes(), None);
    VerifiedEntry {
        id: e.id,
        namespace: ns.clone(),
        data: e.data().clone(),
    }
}

/// `(document, seq)` of each record.
fn positions(records: &[DocRecord]) -> Vec<(&[u8], Seq)> {
    records.iter().map(|r| (&r.doc[..], r.seq)).collect()
}

fn doc_records_index_each_documents_entries(store: &dyn Store) {
    let (a, b) = (ns("a"), ns("b"));
    let x1 = doc_entry(&a, b"x", "doc_change", 1, vec![]);
    let y1 = doc_entry(&a, b"yy", "doc_change", 2, vec![]);
    let x2 = doc_entry(&a, b"x", "doc_snapshot", 3, vec![x1.id, y1.id]);
    // The same document id in another namespace is another document.
    let elsewhere = doc_entry(&b, b"x", "doc_change", 4, vec![]);
    let y2 = doc_entry(&a, b"yy", "doc_change", 5, vec![y1.id]);
    store
        .append(&[x1.clone(), y1.clone(), entry(&a, 9)], None)
        .unwrap();
    // A repeat is not indexed twice.
    store
        .append(&[elsewhere, x2.clone(), x1.clone(), y2], None)
        .unwrap();

    let all = store.doc_records(&a, DocRange::default(), 100).unwrap();
    // By document (shorter ids first), then in log order; the entry of no
    // document is not there.
    assert_eq!(
        positions(&all),
        [(&b"x"[..], 1), (b"x", 5), (b"yy", 2), (b"yy", 6)]
    );
    assert_eq!(
        all[1],
        DocRecord {
            doc: b"x".to_vec(),
            seq: 5,
            id: x2.id,
            kind: "doc_snapshot".into(),
            created_ms: 3,
            deps: vec![x1.id, y1.id],
        }
    );
    let only_y = DocRange {
        only: Some(b"yy"),
        after: None,
    };
    assert_eq!(
        positions(&store.doc_records(&a, only_y, 100).unwrap()),
        [(&b"yy"[..], 2), (b"yy", 6)]
    );
    // Page by page, from where the last page ended.
    let mut paged = Vec::new();
    let mut after: Option<(Vec<u8>, Seq)> = None;
    loop {
        let range = DocRange {
            only: None,
            after: after.as_ref().map(|(d, s)| (&d[..], *s)),
        };
        let page = store.doc_records(&a, range, 3).unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = Some((last.doc.clone(), last.seq));
        paged.extend(page);
    }
    assert_eq!(paged, all);
    let after_first_x = DocRange {
        only: Some(b"x"),
        after: Some((b"x", 1)),
    };
    assert_eq!(
        positions(&store.doc_records(&a, after_first_x, 100).unwrap()),
        [(&b"x"[..], 5)]
    );
    assert_eq!(
        positions(&store.doc_records(&b, DocRange::default(), 100).unwrap()),
        [(&b"x"[..], 4)]
    );
    assert!(
        store
            .doc_records(&ns("none"), DocRange::default(), 100)
            .unwrap()
            .is_empty()
    );
}

fn get_logged_reads_entries_where_they_are_logged(store: &dyn Store) {
    let a = ns("a");
    let batch: Vec<_> = (0..4).map(|i| entry(&a, i)).collect();
    store.append(&batch, None).unwrap();
    let got = store.get_logged(&[3, 0, 1, 9, 3]).unwrap();
    let data = |i: usize| Some(batch[i].data.clone());
    assert_eq!(got, vec![data(2), None, data(0), None, data(2)]);
}

fn append_dedups_and_numbers(store: &dyn Store) {
    let a = ns("a");
    let batch: Vec<_> = (0..5).map(|i| entry(&a, i)).collect();
    let out = store.append(&batch, None).unwrap();
    assert_eq!(out, (1..=5).map(Appended::Stored).collect::<Vec<_>>());
    // A batch with old entries, a new one and a repeat of the new one.
    let again = vec![entry(&a, 1), entry(&a, 9), entry(&a, 9)];
    let out = store.append(&again, None).unwrap();
    assert_eq!(
        out,
        vec![
            Appended::Duplicate,
            Appended::Stored(6),
            Appended::Duplicate
        ]
    );
    let stats = store.stats();
    assert_eq!((stats.head_seq, stats.entries), (6, 6));
    // The same bytes under another namespace key are a different entry.
    let b = ns("b");
    let mut moved = entry(&a, 1);
    moved.namespace = b.clone();
    assert_eq!(
        store.append(&[moved], None).unwrap(),
        vec![Appended::Stored(7)]
    );
    assert_eq!(store.append(&[], None).unwrap(), vec![]);
}

fn reads(store: &dyn Store) {
    let a = ns("a");
    let batch: Vec<_> = (0..10).map(|i| entry(&a, i)).collect();
    store.append(&batch, None).unwrap();
    let unknown = entry(&a, 100).id;
    let ids = [batch[3].id, unknown];
    assert_eq!(store.contains(&a, &ids).unwrap(), vec![true, false]);
    assert_eq!(
        store.contains(&ns("zzz"), &ids).unwrap(),
        vec![false, false]
    );
    let got = store.get(&a, &ids).unwrap();
    assert_eq!(got[0].as_ref(), Some(&batch[3].data));
    assert_eq!(got[1], None);

    let log = store.log_since(0, 4, None).unwrap();
    assert_eq!(log.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(log[0].id, batch[0].id);
    assert!(log[0].data.is_none());
    let log = store.log_since(8, 100, Some(1 << 20)).unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].data.as_ref(), Some(&batch[9].data));
    assert_eq!(log[1].namespace, a);
    assert!(store.log_since(10, 100, None).unwrap().is_empty());
    // A data budget ends the list early but always returns one record.
    let size = batch[0].data.len();
    assert_eq!(store.log_since(0, 100, Some(1)).unwrap().len(), 1);
    assert_eq!(store.log_since(0, 100, Some(3 * size)).unwrap().len(), 3);
    assert_eq!(
        store.log_since(0, 100, Some(4 * size - 1)).unwrap().len(),
        3
    );
    assert_eq!(store.log_since(0, 100, Some(4 * size)).unwrap().len(), 4);
    assert!(store.log_since(u64::MAX, 100, None).unwrap().is_empty());
    assert_eq!(store.log_at(10).unwrap(), Some(batch[9].id));
    assert_eq!(store.log_at(0).unwrap(), None);
    assert_eq!(store.log_at(11).unwrap(), None);

    let mut sorted: Vec<_> = batch.iter().map(|e| e.id).collect();
    sorted.sort();
    assert_eq!(store.list_ids(&a, None, 100).unwrap(), sorted);
    let page = store.list_ids(&a, None, 4).unwrap();
    assert_eq!(page, sorted[..4]);
    let next = store.list_ids(&a, page.last(), 4).unwrap();
    assert_eq!(next, sorted[4..8]);
    assert!(store.list_ids(&ns("zzz"), None, 4).unwrap().is_empty());
    // A namespace whose key is a prefix of another's does not leak into it.
    assert!(store.list_ids(&ns("a "), None, 4).unwrap().is_empty());
}

fn cursors_commit_with_the_batch(store: &dyn Store) {
    let a = ns("a");
    assert_eq!(store.cursor("peer-1").unwrap(), None);
    let cursor = PeerCursor {
        incarnation: Incarnation([5; 16]),
        seq: 42,
        id_at_seq: EntryId([6; 32]),
    };
    let record = CursorRecord {
        cursor,
        scope: 7,
        updated_ms: 1_700_000_000_000,
    };
    let update = CursorUpdate {
        peer: "peer-1".into(),
        record,
    };
    store.append(&[entry(&a, 1)], Some(&update)).unwrap();
    assert_eq!(store.cursor("peer-1").unwrap(), Some(record));
    // A cursor advances even when the whole batch was already held.
    let later = CursorUpdate {
        peer: "peer-1".into(),
        record: CursorRecord {
            cursor: PeerCursor { seq: 43, ..cursor },
            ..record
        },
    };
    store.append(&[entry(&a, 1)], Some(&later)).unwrap();
    assert_eq!(store.cursor("peer-1").unwrap().unwrap().cursor.seq, 43);
    assert_eq!(store.cursor("peer-2").unwrap(), None);
    // Cursors are listed and removed by peer.
    store
        .append(
            &[],
            Some(&CursorUpdate {
                peer: "peer-2".into(),
                record,
            }),
        )
        .unwrap();
    let peers: Vec<String> = store.cursors().unwrap().into_iter().map(|c| c.0).collect();
    assert_eq!(peers, ["peer-1", "peer-2"]);
    store.delete_cursor("peer-1").unwrap();
    assert_eq!(store.cursor("peer-1").unwrap(), None);
    assert_eq!(store.cursors().unwrap().len(), 1);
}

#[test]
fn legacy_cursor_values_decode() {
    let record = CursorRecord {
        cursor: PeerCursor {
            incarnation: Incarnation([1; 16]),
            seq: 9,
            id_at_seq: EntryId([2; 32]),
        },
        scope: 3,
        updated_ms: 4,
    };
    let bytes = encode_cursor(&record);
    assert_eq!(decode_cursor(&bytes).unwrap(), record);
    let legacy = decode_cursor(&bytes[..56]).unwrap();
    assert_eq!(legacy.cursor, record.cursor);
    assert_eq!((legacy.scope, legacy.updated_ms), (0, 0));
    assert!(decode_cursor(&bytes[..50]).is_err());
}

fn concurrent_appends_keep_the_log_dense(store: &dyn Store) {
    let a = ns("a");
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let a = &a;
            s.spawn(move || {
                for i in 0..50u32 {
                    // Overlapping ranges: each entry is written by two threads.
                    let n = (t / 2) * 1000 + i;
                    store.append(&[entry(a, n)], None).unwrap();
                }
            });
        }
    });
    let stats = store.stats();
    assert_eq!((stats.head_seq, stats.entries), (100, 100));
    let log = store.log_since(0, 1000, None).unwrap();
    assert_eq!(log.len(), 100);
    assert!(log.iter().enumerate().all(|(i, r)| r.seq == i as u64 + 1));
}

fn seqs(records: &[LogRecord]) -> Vec<Seq> {
    records.iter().map(|r| r.seq).collect()
}

/// What `log_since_in` must return: the whole log, filtered.
fn filtered_log(
    store: &dyn Store,
    namespaces: &[Namespace],
    after: Seq,
    limit: usize,
) -> Vec<LogRecord> {
    let mut all = store.log_since(after, usize::MAX, None).unwrap();
    all.retain(|r| namespaces.contains(&r.namespace));
    all.truncate(limit);
    all
}

fn log_since_in_merges_namespaces_in_log_order(store: &dyn Store) {
    let (a, b, c) = (ns("a"), ns("b"), ns("ab"));
    // Interleaved: seq 1 in a, 2 in b, 3 in ab, 4 in a, ...
    let spaces = [&a, &b, &c];
    for i in 0..30u32 {
        let e = entry_with(spaces[i as usize % 3], i, &vec![i as u8; 10 + i as usize]);
        store.append(&[e], None).unwrap();
    }
    let ab = [a.clone(), b.clone()];
    let got = store.log_since_in(&ab, 0, 100, None).unwrap();
    let want: Vec<Seq> = (1..=30).filter(|s| s % 3 != 0).collect();
    assert_eq!(seqs(&got), want);
    assert!(got.iter().all(|r| r.data.is_none()));
    assert_eq!(got, filtered_log(store, &ab, 0, 100));
    // The same records as the whole log holds at those seqs.
    for r in &got {
        assert_eq!(store.log_at(r.seq).unwrap(), Some(r.id));
    }
    // `after` and `limit`, at every position; order and repeats of the
    // filter do not matter.
    let ba = [b.clone(), a.clone(), b.clone()];
    for after in 0..=31 {
        for limit in [0, 1, 4, 100] {
            let got = store.log_since_in(&ba, after, limit, None).unwrap();
            assert_eq!(
                got,
                filtered_log(store, &ab, after, limit),
                "{after} {limit}"
            );
        }
    }
    // A namespace whose key starts like another's holds only its own.
    let only_a = store
        .log_since_in(std::slice::from_ref(&a), 0, 100, None)
        .unwrap();
    assert_eq!(seqs(&only_a), (1..=30).step_by(3).collect::<Vec<_>>());
    assert!(only_a.iter().all(|r| r.namespace == a));
    // Unknown namespaces, no namespaces, nothing after the head.
    assert!(
        store
            .log_since_in(&[ns("zzz")], 0, 100, None)
            .unwrap()
            .is_empty()
    );
    assert!(store.log_since_in(&[], 0, 100, None).unwrap().is_empty());
    assert!(store.log_since_in(&ab, 30, 100, None).unwrap().is_empty());
    assert!(
        store
            .log_since_in(&ab, u64::MAX, 100, None)
            .unwrap()
            .is_empty()
    );

    // With data: each record carries its entry's bytes, within the budget,
    // and always one record.
    let full = store.log_since_in(&ab, 0, 100, Some(usize::MAX)).unwrap();
    assert_eq!(seqs(&full), want);
    let whole = store.log_since(0, 100, Some(usize::MAX)).unwrap();
    for r in &full {
        assert_eq!(r.data, whole[r.seq as usize - 1].data);
        assert!(r.data.is_some());
    }
    let size = |n: usize| -> usize {
        full[..n]
            .iter()
            .map(|r| r.data.as_ref().unwrap().len())
            .sum()
    };
    assert_eq!(store.log_since_in(&ab, 0, 100, Some(1)).unwrap().len(), 1);
    assert_eq!(
        store
            .log_since_in(&ab, 0, 100, Some(size(3)))
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        store
            .log_since_in(&ab, 0, 100, Some(size(4) - 1))
            .unwrap()
            .len(),
        3
    );
    let late = store.log_since_in(&ab, 20, 2, Some(usize::MAX)).unwrap();
    assert_eq!(seqs(&late), [22, 23]);
    assert_eq!(late[0].data, whole[21].data);
}

fn log_since_in_reads_only_its_namespaces(store: &dyn Store) {
    // 40 namespaces of 25 entries each, written round-robin.
    let spaces: Vec<Namespace> = (0..40).map(|i| ns(&format!("db-{i}"))).collect();
    for round in 0..25u32 {
        let batch: Vec<_> = spaces.iter().map(|s| entry(s, round)).collect();
        store.append(&batch, None).unwrap();
    }
    let one = [spaces[7].clone()];
    let before = store.log_records_read();
    let got = store
        .log_since_in(&one, 0, 10_000, Some(usize::MAX))
        .unwrap();
    let read = store.log_records_read() - before;
    assert_eq!(got.len(), 25);
    assert!(got.iter().all(|r| r.namespace == spaces[7]));
    assert!(
        (25..=26).contains(&read),
        "read {read} rows for 25 records of 1000"
    );
    // From the middle, and for two namespaces: their rows only (each read at
    // most one row ahead).
    let two = [spaces[3].clone(), spaces[30].clone()];
    let before = store.log_records_read();
    let got = store.log_since_in(&two, 500, 10, None).unwrap();
    let read = store.log_records_read() - before;
    assert_eq!(got.len(), 10);
    assert!(read <= 12, "read {read} rows for 10 records");
    // The measure works: a whole-log read counts every row.
    let before = store.log_records_read();
    assert_eq!(store.log_since(0, 10_000, None).unwrap().len(), 1000);
    assert_eq!(store.log_records_read() - before, 1000);
}

fn usage_counts_each_tenants_new_entries(store: &dyn Store) {
    let a = ns("a");
    let other = Namespace::new("other", "a").unwrap();
    let first: Vec<_> = (0..3).map(|i| entry_with(&a, i, &[7; 100])).collect();
    store.append(&first, None).unwrap();
    let size = first[0].data.len() as u64;
    assert_eq!(
        store.usage("tenant"),
        Usage {
            entries: 3,
            bytes: 3 * size
        }
    );
    // Duplicates (held, or twice in a batch) count once; another tenant
    // counts apart, and a tenant with nothing has nothing.
    let elsewhere = entry_with(&other, 1, &[7; 100]);
    let again = vec![first[0].clone(), elsewhere.clone(), elsewhere.clone()];
    store.append(&again, None).unwrap();
    assert_eq!(store.usage("tenant").entries, 3);
    assert_eq!(
        store.usage("other"),
        Usage {
            entries: 1,
            bytes: elsewhere.data.len() as u64
        }
    );
    assert_eq!(store.usage("nobody"), Usage::default());
}

fn quarantine_takes_an_entry_out_of_every_read(store: &dyn Store) {
    let (a, b) = (ns("a"), ns("b"));
    let batch: Vec<_> = (0..6)
        .map(|i| doc_entry([&a, &b][i as usize % 2], b"doc", "doc_change", i, vec![]))
        .collect();
    store.append(&batch, None).unwrap();
    let bad = &batch[2];
    let usage = store.usage("tenant");
    let finding = |seq: Seq, entry: &VerifiedEntry| scrub::Finding {
        seq,
        namespace: entry.namespace.clone(),
        id: entry.id,
        problem: "test".into(),
    };
    // A finding whose position names another entry changes nothing.
    assert_eq!(store.quarantine(&[finding(4, bad)]).unwrap(), 0);
    assert_eq!(store.quarantine(&[finding(3, bad)]).unwrap(), 1);
    assert_eq!(store.contains(&a, &[bad.id]).unwrap(), vec![false]);
    assert_eq!(store.get(&a, &[bad.id]).unwrap(), vec![None]);
    assert_eq!(store.get_logged(&[3]).unwrap(), vec![None]);
    assert_eq!(store.log_at(3).unwrap(), None);
    assert_eq!(
        seqs(&store.log_since(0, 100, Some(1 << 20)).unwrap()),
        [1, 2, 4, 5, 6]
    );
    assert_eq!(seqs(&store.log_since(1, 2, None).unwrap()), [2, 4]);
    assert_eq!(
        seqs(
            &store
                .log_since_in(std::slice::from_ref(&a), 0, 100, Some(1 << 20))
                .unwrap()
        ),
        [1, 5]
    );
    assert!(!store.list_ids(&a, None, 100).unwrap().contains(&bad.id));
    let docs = store.doc_records(&a, DocRange::default(), 100).unwrap();
    assert_eq!(positions(&docs), [(&b"doc"[..], 1), (&b"doc"[..], 5)]);
    assert_eq!(store.stats().entries, 5);
    assert_eq!(store.stats().head_seq, 6);
    assert_eq!(
        store.usage("tenant"),
        Usage {
            entries: usage.entries - 1,
            bytes: usage.bytes - bad.data.len() as u64
        }
    );
    // Taken out twice: nothing more happens.
    assert_eq!(store.quarantine(&[finding(3, bad)]).unwrap(), 0);
    assert_eq!(store.stats().entries, 5);
    // A good copy comes back as a new entry of the log, and a scrub finds
    // the store sound.
    assert_eq!(
        store.append(std::slice::from_ref(bad), None).unwrap(),
        [Appended::Stored(7)]
    );
    assert_eq!(
        store.get(&a, &[bad.id]).unwrap(),
        vec![Some(bad.data.clone())]
    );
    assert_eq!(store.stats().entries, 6);
    let totals = scrub::scrub_all(store, 2, |_| {}).unwrap();
    assert!(totals.findings.is_empty(), "{:?}", totals.findings);
    assert_eq!(totals.checked, 6);
}

macro_rules! conformance {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;

            #[test]
            fn append_dedups_and_numbers() {
                let (store, _guard) = $make;
                super::append_dedups_and_numbers(&store);
            }

            #[test]
            fn reads() {
                let (store, _guard) = $make;
                super::reads(&store);
            }

            #[test]
            fn cursors_commit_with_the_batch() {
                let (store, _guard) = $make;
                super::cursors_commit_with_the_batch(&store);
            }

            #[test]
            fn log_since_in_merges_namespaces_in_log_order() {
                let (store, _guard) = $make;
                super::log_since_in_merges_namespaces_in_log_order(&store);
            }

            #[test]
            fn log_since_in_reads_only_its_namespaces() {
                let (store, _guard) = $make;
                super::log_since_in_reads_only_its_namespaces(&store);
            }

            #[test]
            fn doc_records_index_each_documents_entries() {
                let (store, _guard) = $make;
                super::doc_records_index_each_documents_entries(&store);
            }

            #[test]
            fn get_logged_reads_entries_where_they_are_logged() {
                let (store, _guard) = $make;
                super::get_logged_reads_entries_where_they_are_logged(&store);
            }

            #[test]
            fn usage_counts_each_tenants_new_entries() {
                let (store, _guard) = $make;
                super::usage_counts_each_tenants_new_entries(&store);
            }

            #[test]
            fn quarantine_takes_an_entry_out_of_every_read() {
                let (store, _guard) = $make;
                super::quarantine_takes_an_entry_out_of_every_read(&store);
            }

            #[test]
            fn concurrent_appends_keep_the_log_dense() {
                let (store, _guard) = $make;
                super::concurrent_appends_keep_the_log_dense(&store);
            }
        }
    };
}

conformance!(memory, (MemoryStore::new(), ()));
conformance!(rocks, {
    let dir = tempfile::tempdir().unwrap();
    (
        RocksStore::open(&RocksConfig::new(dir.path())).unwrap(),
        dir,
    )
});
// A device's store: the same behaviour, read through its document index.
conformance!(rocks_indexing_documents, {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RocksConfig::new(dir.path());
    config.index_documents = true;
    (RocksStore::open(&config).unwrap(), dir)
});

#[test]
fn rocks_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = RocksConfig::new(dir.path());
    let a = ns("a");
    let (incarnation, batch) = {
        let store = RocksStore::open(&config).unwrap();
        let batch: Vec<_> = (0..3).map(|i| entry(&a, i)).collect();
        store.append(&batch, None).unwrap();
        assert_eq!(store.scrub_mark().unwrap(), ScrubMark::default());
        store.set_scrub_mark(MARK).unwrap();
        (store.incarnation(), batch)
    };
    const MARK: ScrubMark = ScrubMark {
        after: 2,
        end: 3,
        last_pass_ms: 1_800_000_000_000,
        due_ms: 1_800_000_600_000,
    };
    let store = RocksStore::open(&config).unwrap();
    assert_eq!(store.scrub_mark().unwrap(), MARK);
    assert_eq!(store.incarnation(), incarnation);
    assert_eq!(store.stats().head_seq, 3);
    assert_eq!(store.stats().entries, 3);
    assert_eq!(store.log_at(3).unwrap(), Some(batch[2].id));
    assert_eq!(
        store.append(&[entry(&a, 3)], None).unwrap(),
        vec![Appended::Stored(4)]
    );
}

#[test]
fn rocks_takes_a_new_incarnation_when_another_node_opens_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RocksConfig::new(dir.path());
    config.node = Some("replica-0.mesh:7700".into());
    let first = RocksStore::open(&config).unwrap().incarnation();
    // The same node again keeps it.
    assert_eq!(RocksStore::open(&config).unwrap().incarnation(), first);
    // A copy of the directory opened by another node does not.
    let copy = tempfile::tempdir().unwrap();
    for file in std::fs::read_dir(dir.path()).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), copy.path().join(file.file_name())).unwrap();
    }
    let mut other = RocksConfig::new(copy.path());
    other.node = Some("replica-1.mesh:7700".into());
    let store = RocksStore::open(&other).unwrap();
    assert_ne!(store.incarnation(), first);
    let second = store.incarnation();
    drop(store);
    assert_eq!(RocksStore::open(&other).unwrap().incarnation(), second);
    // The original is unaffected.
    assert_eq!(RocksStore::open(&config).unwrap().incarnation(), first);
}

#[test]
fn rocks_reports_a_locked_database() {
    let dir = tempfile::tempdir().unwrap();
    let config = RocksConfig::new(dir.path());
    let _first = RocksStore::open(&config).unwrap();
    let err = RocksStore::open(&config)
        .err()
        .expect("second open must fail");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("locked by another process"));
}
