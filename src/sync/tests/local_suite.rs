//! One suite every local side passes: the replica core and the device
//! store, each on memory and on RocksDB.

use super::*;
use crate::entry::RejectReason;
use crate::store::rocks::{RocksConfig, RocksStore};
use crate::store::{Appended, CursorRecord, CursorUpdate, PeerCursor};

fn bytes_of(batch: &[Entry]) -> Vec<(Bytes, Bytes)> {
    batch
        .iter()
        .map(|e| (Bytes::copy_from_slice(&e.id.0), e.data().clone()))
        .collect()
}

fn cursor_update(key: &str, seq: u64, id: EntryId) -> CursorUpdate {
    CursorUpdate {
        peer: key.into(),
        record: CursorRecord {
            cursor: PeerCursor {
                incarnation: Incarnation([3; 16]),
                seq,
                id_at_seq: id,
            },
            scope: 9,
            updated_ms: 1,
        },
    }
}

async fn suite(local: Arc<dyn Local>) {
    let (a, b) = (ns("a"), ns("b"));
    let first = local.identity();
    assert_eq!(local.identity(), first, "identity is stable");
    assert_eq!(local.stats().entries, 0);
    let mut head = local.subscribe();

    // Checks: a wrong id is rejected, the rest pass in order.
    let batch_a = entries(&a, 5, 64);
    let mut items = bytes_of(&batch_a);
    items[2].0 = Bytes::copy_from_slice(&[0; 32]);
    let (verified, rejections) = local.verify(items).await.unwrap();
    assert_eq!(verified.len(), 4);
    assert_eq!(rejections.len(), 1);
    assert_eq!(rejections[0].0, 2);
    assert_eq!(rejections[0].1.reason, RejectReason::IdMismatch);

    // A fatal rejection stores nothing, not even the cursor.
    let mut items = bytes_of(&batch_a);
    items[4].0 = Bytes::copy_from_slice(&[0; 32]);
    let update = cursor_update("peer-x", 7, batch_a[0].id);
    let (rejections, appended) = local
        .verify_and_ingest(items, Some(update.clone()), |r| {
            r.reason == RejectReason::IdMismatch
        })
        .await
        .unwrap();
    assert_eq!(rejections.len(), 1);
    assert!(appended.is_none());
    assert_eq!(local.stats().entries, 0);
    assert_eq!(local.cursor("peer-x").await.unwrap(), None);

    // Entries and the cursor land together; the head moves and wakes.
    let (_, appended) = local
        .verify_and_ingest(bytes_of(&batch_a), Some(update.clone()), |_| true)
        .await
        .unwrap();
    let appended = appended.unwrap();
    assert!(appended.iter().all(|a| matches!(a, Appended::Stored(_))));
    assert_eq!(local.stats().entries, 5);
    assert_eq!(local.stats().head_seq, 5);
    assert_eq!(
        local.cursor("peer-x").await.unwrap(),
        Some(update.record),
        "the cursor is stored with the entries"
    );
    tokio::time::timeout(Duration::from_secs(5), head.wait_for(|h| *h == 5))
        .await
        .expect("the head signal wakes")
        .unwrap();

    // Again: duplicates, nothing new logged.
    let (verified, _) = local.verify(bytes_of(&batch_a)).await.unwrap();
    let again = local.ingest(verified, None).await.unwrap();
    assert!(again.iter().all(|a| *a == Appended::Duplicate));
    assert_eq!(local.stats().head_seq, 5);

    // A cursor alone.
    let moved = cursor_update("peer-x", 9, batch_a[1].id);
    local.ingest(Vec::new(), Some(moved.clone())).await.unwrap();
    assert_eq!(local.cursor("peer-x").await.unwrap(), Some(moved.record));

    // Another namespace interleaved.
    let batch_b = entries(&b, 3, 64);
    let (verified, _) = local.verify(bytes_of(&batch_b)).await.unwrap();
    local.ingest(verified, None).await.unwrap();

    // missing / get, per namespace.
    let mut asked: Vec<EntryId> = batch_a.iter().map(|e| e.id).collect();
    let unknown = EntryId([42; 32]);
    asked.push(unknown);
    assert_eq!(
        local.missing(a.clone(), asked.clone()).await.unwrap(),
        [unknown]
    );
    let got = local.get(a.clone(), asked).await.unwrap();
    for (e, data) in batch_a.iter().zip(&got) {
        assert_eq!(data.as_ref(), Some(e.data()));
    }
    assert_eq!(got.last().unwrap(), &None);

    // The log: all, then filtered; `through` passes every record read.
    let all = local.log_since(0, 100, None, None).await.unwrap();
    assert_eq!(all.records.len(), 8);
    assert_eq!(all.through, Some((8, batch_b[2].id)));
    let only_b = local
        .log_since(0, 100, Some(vec![b.clone()]), None)
        .await
        .unwrap();
    let ids: Vec<EntryId> = only_b.records.iter().map(|r| r.id).collect();
    assert_eq!(ids, batch_b.iter().map(|e| e.id).collect::<Vec<_>>());
    assert_eq!(only_b.through, Some((8, batch_b[2].id)));
    let only_a_late = local
        .log_since(5, 100, Some(vec![a.clone()]), None)
        .await
        .unwrap();
    assert!(only_a_late.records.is_empty());
    assert_eq!(only_a_late.through.map(|t| t.0), Some(8));
    let limited = local.log_since(2, 2, None, None).await.unwrap();
    assert_eq!(
        limited.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [3, 4]
    );
    let past = local.log_since(8, 100, None, None).await.unwrap();
    assert_eq!(past, Default::default());
    // With data: every record carries its entry's, and a read that stops
    // at its data budget passes only what it returned.
    let one = local.log_since(0, 100, None, Some(1)).await.unwrap();
    assert_eq!(one.records.len(), 1, "at least one record, within 1 byte");
    assert_eq!(one.records[0].data.as_ref(), Some(batch_a[0].data()));
    assert_eq!(one.through, Some((1, batch_a[0].id)));
    let with_b = local
        .log_since(0, 100, Some(vec![b.clone()]), Some(1 << 20))
        .await
        .unwrap();
    let data: Vec<Option<&Bytes>> = with_b.records.iter().map(|r| r.data.as_ref()).collect();
    assert_eq!(
        data,
        batch_b.iter().map(|e| Some(e.data())).collect::<Vec<_>>()
    );
    assert_eq!(with_b.through, Some((8, batch_b[2].id)));
    assert_eq!(local.log_at(6).await.unwrap(), Some(batch_b[0].id));
    assert_eq!(local.log_at(99).await.unwrap(), None);
    assert!(local.max_ids_per_request() > 0);
}

fn rocks(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(RocksStore::open(&RocksConfig::new(dir.path().join("db"))).unwrap())
}

#[tokio::test(start_paused = true)]
async fn replica_on_memory() {
    suite(replica("r", Arc::new(MemoryStore::new()))).await;
}

#[tokio::test(start_paused = true)]
async fn replica_on_rocksdb() {
    let dir = tempfile::tempdir().unwrap();
    suite(replica("r", rocks(&dir))).await;
}

#[tokio::test(start_paused = true)]
async fn device_on_memory() {
    suite(device()).await;
}

#[tokio::test(start_paused = true)]
async fn device_on_rocksdb() {
    let dir = tempfile::tempdir().unwrap();
    suite(Arc::new(DeviceStore::new(rocks(&dir), Policy::default()))).await;
}
