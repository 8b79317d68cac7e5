//! The happy paths of the Store API.

use mindoo_replica::entry::PutOutcome;
use mindoo_replica::proto;
use mindoo_replica::proto::convert;

use crate::harness::*;

#[tokio::test]
async fn put_dedups_and_reads_back_verified() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |_| {}).await;
    let mut client = replica.client().await;
    let batch = entries(100);

    let out = client.put(&batch).await.unwrap();
    assert!(out.iter().all(|o| *o == PutOutcome::Stored));
    // The same entries again, plus one repeated inside the batch.
    let mut again = batch[..10].to_vec();
    again.push(batch[0].clone());
    let out = client.put(&again).await.unwrap();
    assert!(out.iter().all(|o| *o == PutOutcome::Duplicate), "{out:?}");

    let head = client.head().await.unwrap();
    assert_eq!((head.head_seq, head.entry_count), (100, 100));

    let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
    let back = client.get(&ns(), &ids).await.unwrap();
    assert_eq!(back.len(), 100);
    for (sent, got) in batch.iter().zip(&back) {
        assert_eq!(sent.data(), got.data());
    }
    let unknown = entries(1)[0].id;
    let missing = client.missing(&ns(), &[ids[5], unknown]).await.unwrap();
    assert_eq!(missing, vec![unknown]);
    // An id named many times is answered once: no amplification.
    let repeated = client.get(&ns(), &[ids[7]; 5000]).await.unwrap();
    assert_eq!(repeated.len(), 1);
    let missing = client.missing(&ns(), &[unknown; 3]).await.unwrap();
    assert_eq!(missing, vec![unknown]);

    let text = replica.metrics_text().await;
    assert_eq!(metric(&text, "mindoo_replica_entries_stored_total"), 100.0);
    assert_eq!(
        metric(&text, "mindoo_replica_entries_duplicate_total"),
        11.0
    );
    replica.stop().await.unwrap();
}

#[tokio::test]
async fn get_entries_reports_missing_ids_and_streams_large_sets() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |_| {}).await;
    let mut client = replica.client().await;
    // 6,000 entries of ~1.3 KB: more than one 1 MiB message.
    let batch = mindoo_replica::fixtures::sample_entries(&ns(), &author(), 6000, 1200);
    let summary = client
        .put_stream(futures::stream::iter(
            batch.chunks(1000).map(<[_]>::to_vec).collect::<Vec<_>>(),
        ))
        .await
        .unwrap();
    assert_eq!(summary.stored, 6000);
    let mut ids: Vec<_> = batch.iter().map(|e| convert::id_bytes(&e.id)).collect();
    ids.push(bytes::Bytes::from_static(&[1; 32]));
    let mut stream = client
        .raw()
        .get_entries(proto::GetEntriesRequest {
            namespace: Some(convert::namespace_to_proto(&ns())),
            ids,
        })
        .await
        .unwrap()
        .into_inner();
    let (mut messages, mut got, mut missing) = (0, 0, 0);
    while let Some(b) = stream.message().await.unwrap() {
        messages += 1;
        got += b.entries.len();
        missing += b.missing.len();
    }
    assert_eq!((got, missing), (6000, 1));
    assert!(messages > 1, "a large read is split into several messages");
    replica.stop().await.unwrap();
}

#[tokio::test]
async fn list_ids_pages_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |_| {}).await;
    let mut client = replica.client().await;
    let batch = entries(25);
    client.put(&batch).await.unwrap();
    let mut expected: Vec<_> = batch.iter().map(|e| e.id.0.to_vec()).collect();
    expected.sort();

    let mut seen = Vec::new();
    let mut token = bytes::Bytes::new();
    let mut pages = 0;
    loop {
        let page = client
            .raw()
            .list_ids(proto::ListIdsRequest {
                namespace: Some(convert::namespace_to_proto(&ns())),
                page_token: token.clone(),
                limit: 10,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        seen.extend(page.ids.iter().map(|id| id.to_vec()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, expected);
    replica.stop().await.unwrap();
}
