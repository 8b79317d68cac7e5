//! kill -9 of a real replica process in the middle of a bootstrap.

use std::time::Duration;

use mindoo_replica::client::StoreClient;
use mindoo_replica::tools::child::ReplicaProcess;

use crate::harness::*;

const EXE: &str = env!("CARGO_BIN_EXE_mindoo-replica");
/// The most entries one pulled batch can hold (the serving side's log chunk).
const ONE_BATCH: f64 = 2048.0;

async fn start(db: &std::path::Path, env: &[(&str, &str)]) -> (ReplicaProcess, StoreClient) {
    let process = ReplicaProcess::spawn(EXE.as_ref(), db, true, env)
        .await
        .unwrap();
    let client = StoreClient::connect(&process.grpc.to_string())
        .await
        .unwrap();
    (process, client)
}

/// Polls every `step_ms` until the replica holds at least `count` entries.
async fn wait_until(client: &mut StoreClient, count: u64, step_ms: u64, why: &str) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let held = client.head().await.unwrap().entry_count;
        if held >= count {
            return held;
        }
        assert!(tokio::time::Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(step_ms)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_bootstrap_loses_nothing_and_resends_at_most_one_batch() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let source = TestReplica::start(dirs[0].path(), |_| {}).await;
    let total = 100_000u64;
    let batch = mindoo_replica::fixtures::sample_entries(&ns(), &author(), total as usize, 1024);
    let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
    let summary = source
        .client()
        .await
        .put_stream(futures::stream::iter(
            batch.chunks(1000).map(<[_]>::to_vec).collect::<Vec<_>>(),
        ))
        .await
        .unwrap();
    assert_eq!(summary.stored, total);
    drop(batch);

    let peer = source.addr.to_string();
    let env = [("MINDOO_REPLICA__REPLICATION__PEERS", peer.as_str())];
    let db = dirs[1].path().join("db");
    let (puller, mut client) = start(&db, &env).await;
    let at_kill = wait_until(&mut client, 10_000, 1, "bootstrap did not start").await;
    puller.kill().await.unwrap();
    assert!(
        at_kill < total,
        "killed after the bootstrap had finished ({at_kill})"
    );

    let (puller, mut client) = start(&db, &env).await;
    wait_until(&mut client, total, 20, "restarted replica did not catch up").await;
    let head = client.head().await.unwrap();
    assert_eq!(
        (head.entry_count, head.head_seq),
        (total, total),
        "nothing twice in the log"
    );
    for chunk in ids.chunks(10_000) {
        assert!(
            client.missing(&ns(), chunk).await.unwrap().is_empty(),
            "nothing lost"
        );
    }
    let text = mindoo_replica::tools::child::http_get(puller.metrics.unwrap(), "/metrics")
        .await
        .unwrap();
    let resent = metric(&text, "mindoo_replica_entries_duplicate_total");
    assert!(resent <= ONE_BATCH, "{resent} entries were sent again");
    println!("killed at {at_kill} of {total}; re-sent after restart: {resent}");
    assert!(puller.stop().await.unwrap().success());
    source.stop().await.unwrap();
}
