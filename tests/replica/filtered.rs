//! Filtered log reads: a ScanSince or Watch for one namespace of a replica
//! holding many is answered from the store's index of that namespace, reads
//! about that namespace's records, and still hands out cursors into the one
//! log that a later Watch resumes from, before and after a restart.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mindoo_replica::entry::{Entry, Envelope, Namespace};
use mindoo_replica::proto;
use mindoo_replica::proto::convert;
use mindoo_replica::server;
use mindoo_replica::store::Store;
use tonic::Streaming;

use crate::harness::*;

const NAMESPACES: usize = 50;
const PER_NAMESPACE: usize = 200;

/// A replica on `dir` whose store the test can ask what it read. Reads are
/// not answered from the in-memory tail, so every one reaches the store; the
/// node name is fixed, so a restart keeps the incarnation.
async fn start(dir: &Path) -> (TestReplica, Arc<dyn Store>) {
    let grpc = bind().await;
    let mut raw = test_config(dir);
    raw.replication.advertise = "filtered-test:7700".into();
    raw.storage.log_tail_mb = 0;
    let settings = raw.validate().expect("test config is valid");
    let node = settings.node_name(grpc.local_addr().unwrap());
    let store = server::open_store(&settings.storage, &node).await.unwrap();
    let replica = TestReplica::start_with_store(settings, store.clone(), grpc).await;
    (replica, store)
}

fn space(i: usize) -> Namespace {
    Namespace::new("tenant", format!("db-{i}")).unwrap()
}

/// `count` signed entries of `ns`, numbered from `from`.
fn entries_of(ns: &Namespace, from: usize, count: usize) -> Vec<Entry> {
    (from..from + count)
        .map(|i| {
            let envelope = Envelope {
                namespace: ns.clone(),
                author: [0; 32],
                created_ms: 1_700_000_000_000 + i as u64,
                kind: "doc_change".into(),
                doc_id: b"doc".to_vec(),
                deps: vec![],
            };
            Entry::create(envelope, &[i as u8; 64], Some(&author()))
        })
        .collect()
}

async fn watch(
    client: &mut mindoo_replica::client::StoreClient,
    cursor: Option<proto::Cursor>,
    only: &Namespace,
) -> Streaming<proto::LogBatch> {
    client
        .raw()
        .watch(proto::WatchRequest {
            cursor,
            include_data: true,
            namespaces: vec![convert::namespace_to_proto(only)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn next_batch(stream: &mut Streaming<proto::LogBatch>) -> proto::LogBatch {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a batch within 10 s")
        .unwrap()
        .expect("the stream goes on")
}

/// The ids of `records`, as bytes.
fn ids(records: &[proto::LogRecord]) -> Vec<Vec<u8>> {
    records.iter().map(|r| r.id.to_vec()).collect()
}

fn ids_of(entries: &[Entry]) -> Vec<Vec<u8>> {
    entries.iter().map(|e| e.id.0.to_vec()).collect()
}

#[tokio::test]
async fn a_filtered_read_costs_its_namespace_and_its_cursors_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (replica, store) = start(dir.path()).await;
    let mut client = replica.client().await;
    // 50 namespaces × 200 entries, written in rounds so that they interleave.
    let mut written: Vec<Vec<Entry>> = vec![Vec::new(); NAMESPACES];
    for round in 0..4 {
        for (i, mine) in written.iter_mut().enumerate() {
            let batch = entries_of(&space(i), round * 50, PER_NAMESPACE / 4);
            client.put(&batch).await.unwrap();
            mine.extend(batch);
        }
    }
    let total = (NAMESPACES * PER_NAMESPACE) as u64;
    assert_eq!(client.head().await.unwrap().head_seq, total);
    let (ns, others) = (space(17), space(3));

    // ScanSince for one namespace: exactly its entries, with their data,
    // for about its share of the reads; the last cursor is at the head.
    let before = store.log_records_read();
    let mut stream = client
        .raw()
        .scan_since(proto::ScanSinceRequest {
            cursor: None,
            limit: 0,
            include_data: true,
            namespaces: vec![convert::namespace_to_proto(&ns)],
        })
        .await
        .unwrap()
        .into_inner();
    let mut batches = Vec::new();
    while let Some(b) = stream.message().await.unwrap() {
        batches.push(b);
    }
    let read = store.log_records_read() - before;
    let records: Vec<_> = batches.iter().flat_map(|b| b.records.clone()).collect();
    assert_eq!(ids(&records), ids_of(&written[17]));
    assert!(
        records
            .iter()
            .zip(&written[17])
            .all(|(r, e)| r.data == e.data())
    );
    assert!(records.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(
        (PER_NAMESPACE as u64..=PER_NAMESPACE as u64 + 50).contains(&read),
        "a scan of {PER_NAMESPACE} records read {read} log rows of {total}"
    );
    let last = batches.last().unwrap();
    assert!(last.records.is_empty(), "the position moves past the rest");
    assert_eq!(last.next.as_ref().unwrap().seq, total);

    // Watch: the same records, then a batch without records that moves the
    // position to the head; writes elsewhere move it again, one batch each.
    let before = store.log_records_read();
    let mut live = watch(&mut client, None, &ns).await;
    let mut got = Vec::new();
    let mut cursor = None;
    while cursor
        .as_ref()
        .is_none_or(|c: &proto::Cursor| c.seq < total)
    {
        let b = next_batch(&mut live).await;
        got.extend(b.records);
        cursor = b.next;
    }
    assert_eq!(ids(&got), ids_of(&written[17]));
    let read = store.log_records_read() - before;
    assert!(
        read <= PER_NAMESPACE as u64 + 50,
        "a watch of {PER_NAMESPACE} records read {read} log rows of {total}"
    );
    client.put(&entries_of(&others, 1000, 5)).await.unwrap();
    let moved = next_batch(&mut live).await;
    assert!(moved.records.is_empty());
    assert_eq!(moved.next.as_ref().unwrap().seq, total + 5);
    let idle = tokio::time::timeout(Duration::from_millis(200), live.message()).await;
    assert!(idle.is_err(), "no second batch for the same position");
    let fresh = entries_of(&ns, 1000, 3);
    client.put(&fresh).await.unwrap();
    let b = next_batch(&mut live).await;
    assert_eq!(ids(&b.records), ids_of(&fresh));
    let cursor = b.next.unwrap();
    assert_eq!(cursor.seq, total + 8);
    drop(live);

    // A later Watch resumes from that cursor: only what followed it.
    client.put(&entries_of(&others, 2000, 4)).await.unwrap();
    let after_resume = entries_of(&ns, 2000, 2);
    client.put(&after_resume).await.unwrap();
    let mut resumed = watch(&mut client, Some(cursor.clone()), &ns).await;
    let b = next_batch(&mut resumed).await;
    assert_eq!(ids(&b.records), ids_of(&after_resume));
    let cursor = b.next.unwrap();
    assert_eq!(cursor.seq, total + 14);
    drop(resumed);

    // And after a restart on the same directory.
    drop(client);
    replica.stop().await.unwrap();
    drop(store);
    let (replica, store) = start(dir.path()).await;
    let mut client = replica.client().await;
    let last = entries_of(&ns, 3000, 2);
    client.put(&entries_of(&others, 3000, 6)).await.unwrap();
    client.put(&last).await.unwrap();
    let before = store.log_records_read();
    let mut resumed = watch(&mut client, Some(cursor), &ns).await;
    let b = next_batch(&mut resumed).await;
    assert_eq!(ids(&b.records), ids_of(&last));
    assert_eq!(b.next.unwrap().seq, total + 22);
    assert!(store.log_records_read() - before <= 10);
    drop(resumed);
    drop(client);
    replica.stop().await.unwrap();
}

#[tokio::test]
async fn a_live_filtered_watch_is_answered_from_memory_and_moves_with_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |_| {}).await;
    let mut client = replica.client().await;
    let (ns, other) = (space(1), space(2));
    client.put(&entries_of(&other, 0, 10)).await.unwrap();
    let mut live = watch(&mut client, None, &ns).await;
    // Nothing of its namespace: the position moves to the head, once.
    let b = next_batch(&mut live).await;
    assert!(b.records.is_empty());
    assert_eq!(b.next.unwrap().seq, 10);
    let idle = tokio::time::timeout(Duration::from_millis(200), live.message()).await;
    assert!(idle.is_err(), "nothing to send while the log is idle");
    // Interleaved writes: its own records, with their data, and the
    // position past the others'.
    for round in 0..5 {
        let mine = entries_of(&ns, round * 10, 3);
        client
            .put(&entries_of(&other, 100 + round * 10, 2))
            .await
            .unwrap();
        client.put(&mine).await.unwrap();
        client
            .put(&entries_of(&other, 200 + round * 10, 2))
            .await
            .unwrap();
        let mut got = Vec::new();
        let end = 10 + (round as u64 + 1) * 7;
        let mut at = 0;
        while at < end {
            let b = next_batch(&mut live).await;
            got.extend(b.records);
            at = b.next.expect("records or a move, never a heartbeat").seq;
        }
        assert_eq!(ids(&got), ids_of(&mine), "round {round}");
        assert!(got.iter().zip(&mine).all(|(r, e)| r.data == e.data()));
    }
    drop(live);
    replica.stop().await.unwrap();
}
