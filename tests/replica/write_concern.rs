//! Write concern: a batch that asks for k replicas is acknowledged only
//! once k - 1 peers confirmed holding it durably, in a 3-replica mesh.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mindoo_replica::entry::{Entry, EntryId};
use mindoo_replica::log::WriteConcern;
use tonic::Code;

use crate::harness::*;

fn dirs(n: usize) -> Vec<tempfile::TempDir> {
    (0..n).map(|_| tempfile::tempdir().unwrap()).collect()
}

fn ids(batch: &[Entry]) -> Vec<EntryId> {
    batch.iter().map(|e| e.id).collect()
}

/// How many of `replicas` hold every entry of `batch` now.
async fn holding(replicas: &[&TestReplica], batch: &[Entry]) -> usize {
    let mut n = 0;
    for r in replicas {
        let missing = r.client().await.missing(&ns(), &ids(batch)).await.unwrap();
        n += usize::from(missing.is_empty());
    }
    n
}

/// Starts replica `i` of a mesh again, on its address and directory.
async fn restart(dir: &tempfile::TempDir, addr: SocketAddr, all: &[SocketAddr]) -> TestReplica {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let peers: Vec<String> = all.iter().map(|a| a.to_string()).collect();
    TestReplica::start_on(dir.path(), listener, |c| {
        c.replication.peers = peers;
        c.replication.advertise = addr.to_string();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_hold_a_batch_before_it_is_acknowledged() {
    let dirs = dirs(3);
    let replicas = mesh(&dirs).await;
    let mut client = replicas[0].client().await;
    for round in 0..20 {
        let batch = entries(10);
        let (outcomes, confirmed) = client
            .put_with(&batch, WriteConcern::replicas(2, Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(outcomes.len(), 10);
        assert!(confirmed >= 2, "round {round}: {confirmed} replicas");
        // Checked right after the acknowledgement, with no waiting.
        let peers = [&replicas[1], &replicas[2]];
        assert!(
            holding(&peers, &batch).await >= 1,
            "round {round}: acknowledged before a peer held the batch"
        );
    }
    let text = replicas[0].metrics_text().await;
    assert_eq!(
        metric(
            &text,
            "mindoo_replica_write_concern_batches_total{result=\"met\"}"
        ),
        20.0
    );
    assert!(metric_sum(&text, "mindoo_replica_peer_confirmation_seconds_count") >= 20.0);
    for r in replicas {
        r.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_both_peers_gone_the_deadline_passes_and_the_batch_still_replicates() {
    let dirs = dirs(3);
    let mut replicas = mesh(&dirs).await;
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    replicas.pop().unwrap().stop().await.unwrap();
    replicas.pop().unwrap().stop().await.unwrap();
    let origin = &replicas[0];

    let batch = entries(10);
    let started = Instant::now();
    let err = origin
        .client()
        .await
        .put_with(
            &batch,
            WriteConcern::replicas(2, Duration::from_millis(500)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains("stored on this replica") && err.message().contains("1 of the 2"),
        "{}",
        err.message()
    );
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(holding(&[origin], &batch).await, 1, "stored on the origin");
    let text = origin.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            "mindoo_replica_write_concern_batches_total{result=\"timed_out\"}"
        ),
        1.0
    );

    // The peers come back and get the batch.
    let back = [
        restart(&dirs[1], addrs[1], &addrs).await,
        restart(&dirs[2], addrs[2], &addrs).await,
    ];
    for r in &back {
        r.wait_for_count(10, 20).await;
    }
    assert_eq!(holding(&[&back[0], &back[1]], &batch).await, 2);
    for r in back.into_iter().chain(replicas) {
        r.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_peer_partitioned_two_replicas_still_confirm() {
    let dirs = dirs(3);
    let mut replicas = mesh(&dirs).await;
    replicas.pop().unwrap().stop().await.unwrap();
    let batch = entries(10);
    let (_, confirmed) = replicas[0]
        .client()
        .await
        .put_with(&batch, WriteConcern::replicas(2, Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(confirmed, 2);
    assert_eq!(holding(&[&replicas[1]], &batch).await, 1);
    // Three cannot be had: the deadline passes.
    let err = replicas[0]
        .client()
        .await
        .put_with(
            &entries(1),
            WriteConcern::replicas(3, Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("2 of the 3"), "{}", err.message());
    for r in replicas {
        r.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_concern_the_mesh_cannot_meet_is_refused_and_nothing_stored() {
    let dirs = dirs(3);
    let replicas = mesh(&dirs).await;
    let mut client = replicas[0].client().await;
    let batch = entries(5);
    let err = client
        .put_with(&batch, WriteConcern::replicas(4, Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("asks for 4 replicas but this mesh has 3"),
        "{}",
        err.message()
    );
    let err = client
        .put_with(&batch, WriteConcern::replicas(2, Duration::from_secs(61)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("confirm_timeout_ms"),
        "{}",
        err.message()
    );
    assert_eq!(holding(&[&replicas[0]], &batch).await, 0, "nothing stored");
    for r in replicas {
        r.stop().await.unwrap();
    }
}

/// `push --min-replicas 2`: the command returns once another replica holds
/// what it pushed; with both peers gone it fails with the deadline's
/// message and what it sent stays stored; a concern the mesh cannot meet
/// and a wait past the limit are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_command_asks_for_two_replicas() {
    let dirs = dirs(3);
    let mut replicas = mesh(&dirs).await;
    let home = tempfile::tempdir().unwrap();
    let origin = replicas[0].addr.to_string();
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--namespace", "acme/notes"]);
        cli(home.path(), &all)
    };
    let push = |extra: &[&str]| {
        let mut all = vec!["push", "--replica", &origin, "--min-replicas"];
        all.extend(extra);
        run(&all)
    };
    run(&["keys", "init"]).unwrap();
    for round in 1..=3u64 {
        run(&["doc", "create", "--json", r#"{"title":"notes"}"#]).unwrap();
        let pushed = push(&["2"]).unwrap();
        assert!(
            pushed.contains("1 stored") && pushed.contains("held by at least 2 replicas"),
            "{pushed}"
        );
        // Checked right after the command returned, with no waiting.
        let peers = replicas[1].entry_count().await + replicas[2].entry_count().await;
        assert!(
            peers >= round,
            "round {round}: the push returned before a peer held its entry"
        );
    }

    run(&["doc", "create", "--json", r#"{"title":"four"}"#]).unwrap();
    let err = push(&["4"]).unwrap_err();
    assert!(
        err.contains("asks for 4 replicas but this mesh has 3"),
        "{err}"
    );
    let err = push(&["2", "--confirm-timeout", "61s"]).unwrap_err();
    assert!(
        err.contains("--confirm-timeout may be at most 60s"),
        "{err}"
    );

    replicas.pop().unwrap().stop().await.unwrap();
    replicas.pop().unwrap().stop().await.unwrap();
    run(&["doc", "create", "--json", r#"{"title":"alone"}"#]).unwrap();
    let err = push(&["2", "--confirm-timeout", "500ms"]).unwrap_err();
    assert!(
        err.contains(&format!(
            "{origin}: the batch is stored on this replica, durably"
        )) && err.contains("1 of the 2")
            && err.contains("Pushing again waits"),
        "{err}"
    );
    assert_eq!(replicas[0].entry_count().await, 5);
    // Pushed again without a concern: nothing to send, the replica holds
    // both entries of the failed push (the refused one's and this one's).
    let pushed = run(&["push", "--replica", &origin]).unwrap();
    assert!(pushed.contains("2 records read, 0 sent"), "{pushed}");
    replicas.pop().unwrap().stop().await.unwrap();
}
