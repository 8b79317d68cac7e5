//! ScanSince and Watch: the change log, its cursors and live following.

use std::time::Duration;

use bytes::Bytes;
use mindoo_replica::entry::Namespace;
use mindoo_replica::fixtures::sample_entries;
use mindoo_replica::proto;
use mindoo_replica::proto::convert;
use tonic::Code;

use crate::harness::*;

async fn scan(
    client: &mut mindoo_replica::client::StoreClient,
    cursor: Option<proto::Cursor>,
    limit: u32,
    include_data: bool,
    namespaces: Vec<proto::Namespace>,
) -> Result<Vec<proto::LogBatch>, tonic::Status> {
    let mut stream = client
        .raw()
        .scan_since(proto::ScanSinceRequest {
            cursor,
            limit,
            include_data,
            namespaces,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(b) = stream.message().await? {
        out.push(b);
    }
    Ok(out)
}

#[tokio::test]
async fn scan_since_pages_with_cursors() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |_| {}).await;
    let mut client = replica.client().await;
    let batch = entries(25);
    client.put(&batch).await.unwrap();

    let mut cursor = None;
    let mut seqs = Vec::new();
    for expected in [10, 10, 5, 0] {
        let batches = scan(&mut client, cursor.clone(), 10, false, vec![])
            .await
            .unwrap();
        let records: Vec<_> = batches.iter().flat_map(|b| &b.records).collect();
        assert_eq!(records.len(), expected);
        for r in &records {
            assert!(r.data.is_empty(), "no data unless asked for");
        }
        seqs.extend(records.iter().map(|r| r.seq));
        if let Some(last) = batches.last() {
            assert_eq!(last.head_seq, 25);
            cursor = last.next.clone();
        }
    }
    assert_eq!(seqs, (1..=25).collect::<Vec<_>>());

    // With data: every record carries the exact bytes that were put.
    let batches = scan(&mut client, None, 0, true, vec![]).await.unwrap();
    let records: Vec<_> = batches.iter().flat_map(|b| &b.records).collect();
    assert_eq!(records.len(), 25);
    for (r, e) in records.iter().zip(&batch) {
        assert_eq!(&r.data, e.data());
        assert_eq!(r.id.as_ref(), &e.id.0);
        let b = &batches[0];
        assert_eq!(b.namespaces[r.namespace as usize].tenant, "acme");
    }
    replica.stop().await.unwrap();
}

#[tokio::test]
async fn scan_since_filters_namespaces_and_still_advances() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |_| {}).await;
    let mut client = replica.client().await;
    let other = Namespace::new("acme", "other").unwrap();
    client.put(&entries(3)).await.unwrap();
    client
        .put(&sample_entries(&other, &author(), 4, 64))
        .await
        .unwrap();
    let only_other = vec![convert::namespace_to_proto(&other)];
    let batches = scan(&mut client, None, 0, false, only_other).await.unwrap();
    let records: Vec<_> = batches.iter().flat_map(|b| &b.records).collect();
    assert_eq!(records.len(), 4);
    assert!(records.iter().all(|r| r.seq > 3));
    assert_eq!(batches.last().unwrap().next.as_ref().unwrap().seq, 7);
    replica.stop().await.unwrap();
}

#[tokio::test]
async fn cursors_from_elsewhere_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |_| {}).await;
    let mut client = replica.client().await;
    let batch = entries(5);
    client.put(&batch).await.unwrap();
    let head = client.head().await.unwrap();
    let inc = Bytes::copy_from_slice(&head.incarnation.0);
    let id = |i: usize| convert::id_bytes(&batch[i].id);
    let cases = [
        // Another incarnation: the replica was restored or rebuilt.
        (
            Bytes::from_static(&[9; 16]),
            3,
            id(2),
            Code::FailedPrecondition,
        ),
        // Beyond the head.
        (inc.clone(), 6, id(2), Code::OutOfRange),
        // The log holds a different entry at that seq.
        (inc.clone(), 3, id(4), Code::FailedPrecondition),
        // Malformed fields.
        (Bytes::from_static(&[1; 3]), 3, id(2), Code::InvalidArgument),
        (
            inc.clone(),
            3,
            Bytes::from_static(&[1; 5]),
            Code::InvalidArgument,
        ),
    ];
    for (incarnation, seq, id_at_seq, code) in cases {
        let cursor = proto::Cursor {
            incarnation,
            seq,
            id_at_seq,
        };
        let err = scan(&mut client, Some(cursor.clone()), 0, false, vec![])
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{cursor:?}: {err}");
        let err = client
            .raw()
            .watch(proto::WatchRequest {
                cursor: Some(cursor),
                include_data: false,
                namespaces: vec![],
                heartbeat_ms: 0,
                relay_delay_ms: 0,
                live_data: false,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code);
    }
    // The right cursor resumes exactly after seq 3.
    let ok = proto::Cursor {
        incarnation: inc,
        seq: 3,
        id_at_seq: id(2),
    };
    let batches = scan(&mut client, Some(ok), 0, false, vec![]).await.unwrap();
    let seqs: Vec<_> = batches
        .iter()
        .flat_map(|b| &b.records)
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, [4, 5]);
    replica.stop().await.unwrap();
}

#[tokio::test]
async fn watch_follows_the_log_live_and_ends_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |_| {}).await;
    let mut client = replica.client().await;
    let batch = entries(30);
    client.put(&batch[..10]).await.unwrap();

    let mut watch = client
        .raw()
        .watch(proto::WatchRequest {
            cursor: None,
            include_data: true,
            namespaces: vec![],
            heartbeat_ms: 0,
            relay_delay_ms: 0,
            live_data: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let b = watch.message().await.unwrap().unwrap();
        seen.extend(b.records.into_iter().map(|r| r.seq));
    }
    // Nothing new: the stream waits.
    let idle = tokio::time::timeout(Duration::from_millis(200), watch.message()).await;
    assert!(idle.is_err(), "watch sent something while the log was idle");

    let mut writer = replica.client().await;
    for chunk in batch[10..].chunks(5) {
        writer.put(chunk).await.unwrap();
    }
    while seen.len() < 30 {
        let b = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .expect("live entries arrive")
            .unwrap()
            .unwrap();
        for r in b.records {
            assert_eq!(&r.data, batch[r.seq as usize - 1].data());
            seen.push(r.seq);
        }
    }
    assert_eq!(seen, (1..=30).collect::<Vec<_>>());

    replica.begin_stop();
    let end = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("watch ends on shutdown");
    assert_eq!(end.unwrap_err().code(), Code::Unavailable);
    replica.stop().await.unwrap();
}

#[tokio::test]
async fn an_idle_watch_sends_heartbeats_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |_| {}).await;
    let mut client = replica.client().await;
    client.put(&entries(3)).await.unwrap();
    let err = client
        .raw()
        .watch(proto::WatchRequest {
            heartbeat_ms: 50,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .raw()
        .watch(proto::WatchRequest {
            relay_delay_ms: 1001,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("relay_delay_ms"), "{err:?}");

    let mut watch = client
        .raw()
        .watch(proto::WatchRequest {
            heartbeat_ms: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.records.len(), 3);
    for _ in 0..3 {
        let beat = tokio::time::timeout(Duration::from_secs(2), watch.message())
            .await
            .expect("a heartbeat within 2 s")
            .unwrap()
            .unwrap();
        assert!(beat.records.is_empty() && beat.next.is_none());
        assert_eq!(beat.head_seq, 3);
    }
    replica.stop().await.unwrap();
}
