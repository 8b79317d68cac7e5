//! Set reconciliation between replicas: what cursor pull cannot see (data a
//! replica lost silently, a peer restored from a backup) is found by
//! comparing the two sets, and only the difference moves. A replica that
//! does not reconcile is still kept in sync by cursor pull.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use mindoo_replica::entry::EntryId;

use crate::harness::*;

/// The key the test meshes share.
const KEY: &str = "4f1c3a9e8b7d6c5f4e3d2c1b0a99887766554433221100ffeeddccbbaa998877";

/// The mesh's config: a shared fingerprint key and a reconciliation every
/// second.
fn reconciling(c: &mut mindoo_replica::config::RawConfig) {
    c.replication.fingerprint_key = KEY.into();
    c.replication.reconcile_interval_ms = 1000;
}

async fn restart(dir: &Path, addr: SocketAddr, all: &[SocketAddr]) -> TestReplica {
    restart_member(dir, addr, all, reconciling).await
}

/// Deletes entries from a stopped replica's RocksDB, every row of them, as
/// a lost table file would: the store is not told.
fn lose(dir: &Path, ids: &[EntryId]) {
    let opts = rocksdb::Options::default();
    let families = rocksdb::DB::list_cf(&opts, dir).unwrap();
    let db = rocksdb::DB::open_cf(&opts, dir, &families).unwrap();
    let mut ns_key = Vec::new();
    ns().encode_key(&mut ns_key);
    for id in ids {
        let key = [ns_key.as_slice(), &id.0].concat();
        let cf = |name| db.cf_handle(name).unwrap();
        let seq = db.get_cf(cf("ids"), &key).unwrap().expect("stored");
        db.delete_cf(cf("ids"), &key).unwrap();
        db.delete_cf(cf("bodies"), &seq).unwrap();
        db.delete_cf(cf("log"), &seq).unwrap();
        db.delete_cf(cf("nslog"), [ns_key.as_slice(), &seq].concat())
            .unwrap();
    }
    db.flush_cf(db.cf_handle("ids").unwrap()).unwrap();
}

async fn wait_for_metric(replica: &TestReplica, series: &str, at_least: f64, secs: u64) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let text = replica.metrics_text().await;
        let value = try_metric(&text, series).unwrap_or(0.0);
        if value >= at_least {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} is {value}, expected at least {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_lost_silently_come_back_by_reconciliation_with_no_cursor_moving() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = mesh_with(&dirs, |_, c| reconciling(c)).await;
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let all = entries(1000);
    replicas[0].client().await.put(&all).await.unwrap();
    replicas[1].wait_for_count(1000, 20).await;
    let a_node = addrs[0].to_string();
    wait_for_cursor(&replicas[1], &a_node, 1000, 20).await;

    replicas.remove(1).stop().await.unwrap();
    // Scattered, the log's head among them neither way round: cursors
    // into the store stay valid.
    let lost: Vec<EntryId> = all[..990].iter().step_by(27).map(|e| e.id).collect();
    lose(dirs[1].path(), &lost);
    let b = restart(dirs[1].path(), addrs[1], &addrs).await;
    let at_start = b.entry_count().await;
    assert_eq!(
        at_start,
        1000 - lost.len() as u64,
        "the restarted replica counts what it holds"
    );
    // Cursor pull cannot bring them back: the cursors are past them. The
    // next reconciliation of the pair does, whichever side runs it.
    b.wait_for_count(1000, 30).await;
    let b_node = addrs[1].to_string();
    // What each side found is counted once its session has moved it; both
    // sides may find the same entries when their sessions overlap, never
    // anything else.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pulled = try_metric(
            &b.metrics_text().await,
            &format!("mindoo_replica_peer_reconcile_pulled_total{{peer=\"{a_node}\"}}"),
        )
        .unwrap_or(0.0);
        let pushed = try_metric(
            &replicas[0].metrics_text().await,
            &format!("mindoo_replica_peer_reconcile_pushed_total{{peer=\"{b_node}\"}}"),
        )
        .unwrap_or(0.0);
        let lost = lost.len() as f64;
        assert!(
            pulled <= lost && pushed <= lost,
            "only what was lost moved: pulled by b {pulled}, pushed by a {pushed}"
        );
        if pulled == lost || pushed == lost {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no session counted what was lost: pulled by b {pulled}, pushed by a {pushed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_holds_exactly(&b, &ns(), &all).await;
    let cursor = peer_status(&b)
        .await
        .peers
        .into_iter()
        .find(|p| p.peer == a_node)
        .expect("a is a peer")
        .cursor_seq;
    assert_eq!(cursor, 1000, "no cursor moved");
    b.stop().await.unwrap();
    replicas.remove(0).stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_does_not_reconcile_is_kept_in_sync_by_cursor_pull() {
    // Replica 2 runs without a fingerprint key, as the previous release
    // does: its head advertises nothing.
    paired_by_cursor_pull_alone(|_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_another_key_is_kept_in_sync_by_cursor_pull() {
    // Reconciling with it would find every entry different.
    paired_by_cursor_pull_alone(|c| {
        c.replication.fingerprint_key = "ab".repeat(32);
        c.replication.reconcile_interval_ms = 1000;
    })
    .await;
}

/// A mesh of three in which replica 2 is configured by `odd`, the others
/// reconcile: all converge, and nobody reconciles with replica 2.
async fn paired_by_cursor_pull_alone(odd: impl Fn(&mut mindoo_replica::config::RawConfig)) {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let replicas = mesh_with(&dirs, |i, c| match i {
        2 => odd(c),
        _ => reconciling(c),
    })
    .await;
    let all = entries(900);
    for (i, r) in replicas.iter().enumerate() {
        r.client()
            .await
            .put(&all[i * 300..(i + 1) * 300])
            .await
            .unwrap();
    }
    for r in &replicas {
        r.wait_for_count(900, 30).await;
        assert_holds_exactly(r, &ns(), &all).await;
    }
    // The two that reconcile do so with each other, never with replica 2,
    // and no session with it fails.
    let old = replicas[2].addr.to_string();
    let mid = replicas[1].addr.to_string();
    wait_for_metric(
        &replicas[0],
        &format!("mindoo_replica_peer_reconcile_sessions_total{{peer=\"{mid}\"}}"),
        1.0,
        10,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for r in &replicas[..2] {
        let text = r.metrics_text().await;
        let with_old = try_metric(
            &text,
            &format!("mindoo_replica_peer_reconcile_sessions_total{{peer=\"{old}\"}}"),
        );
        assert_eq!(
            with_old,
            Some(0.0),
            "no reconciliation with the old replica"
        );
        let errors: f64 = text
            .lines()
            .filter(|l| l.starts_with("mindoo_replica_peer_errors_total{") && l.contains(&old))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(errors, 0.0, "errors with the old replica:\n{text}");
    }
    for r in replicas {
        r.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_reconciles_only_the_namespaces_both_pull() {
    // Replica 0 pulls every namespace, replica 1 only `acme/notes`.
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let replicas = mesh_with(&dirs, |i, c| {
        reconciling(c);
        if i == 1 {
            c.replication.namespaces = vec![ns().to_string()];
        }
    })
    .await;
    let other = mindoo_replica::entry::Namespace::new("acme", "other").unwrap();
    let notes = entries(200);
    let others = mindoo_replica::fixtures::sample_entries(&other, &author(), 100, 256);
    let mut client = replicas[0].client().await;
    client.put(&notes).await.unwrap();
    client.put(&others).await.unwrap();
    replicas[1].wait_for_count(200, 20).await;
    // Both sides start sessions with each other: replica 1 as the one that
    // pulls `acme/notes` from 0, replica 0 as the one that pulls all.
    let (zero, one) = (replicas[0].addr.to_string(), replicas[1].addr.to_string());
    for (r, peer) in [(&replicas[0], &one), (&replicas[1], &zero)] {
        wait_for_metric(
            r,
            &format!("mindoo_replica_peer_reconcile_sessions_total{{peer=\"{peer}\"}}"),
            3.0,
            15,
        )
        .await;
    }
    assert_eq!(
        replicas[1].entry_count().await,
        200,
        "replica 1 holds only the namespace it pulls"
    );
    assert_holds_exactly(&replicas[1], &ns(), &notes).await;
    let pushed = try_metric(
        &replicas[0].metrics_text().await,
        &format!("mindoo_replica_peer_reconcile_pushed_total{{peer=\"{one}\"}}"),
    );
    assert_eq!(
        pushed.expect("the series exists once the pair has reconciled"),
        0.0,
        "nothing was pushed to replica 1"
    );
    for r in replicas {
        r.stop().await.unwrap();
    }
}

/// A raw `Reconcile` stream to `replica`: sends `frames`, returns the
/// status the replica ends it with.
async fn send_frames(
    replica: &TestReplica,
    frames: Vec<mindoo_replica::proto::ReconcileFrame>,
) -> tonic::Status {
    use mindoo_replica::proto::replication_client::ReplicationClient;
    let mut client = ReplicationClient::new(replica.channel().await);
    let outgoing = futures::stream::iter(frames);
    let mut answers = match client.reconcile(outgoing).await {
        Ok(r) => r.into_inner(),
        Err(status) => return status,
    };
    loop {
        match answers.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the replica answered the stream to its end"),
            Err(status) => return status,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_endless_reconcile_rounds_are_cut_off_and_the_replica_carries_on() {
    use mindoo_replica::proto::{self, reconcile_part::Part};
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), reconciling).await;
    replica.client().await.put(&entries(100)).await.unwrap();

    // A split whose sums do not fit its bits.
    let bad = proto::ReconcileFrame {
        parts: vec![proto::ReconcilePart {
            part: Some(Part::Split(proto::RangeSplit {
                bits: 8,
                sums: vec![0; 3],
                counts: vec![0; 3],
                ..Default::default()
            })),
        }],
        end_of_round: true,
        ..Default::default()
    };
    let status = send_frames(&replica, vec![bad]).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("split of 8 bits"), "{status:?}");

    // A round that never ends: frames of keys, never the last.
    let frame = proto::ReconcileFrame {
        parts: (0..2000)
            .map(|_| proto::ReconcilePart {
                part: Some(Part::Want(proto::RangeKeys {
                    range: Some(proto::ReconcileRange {
                        range: Some(proto::reconcile_range::Range::Span(proto::KeySpan {
                            lo: Default::default(),
                            hi: None,
                        })),
                    }),
                    keys: vec![7; 8],
                })),
            })
            .collect(),
        ..Default::default()
    };
    let endless = std::iter::repeat_n(frame, 400).collect();
    let status = send_frames(&replica, endless).await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("reconcile round"), "{status:?}");

    // The replica still answers a well-formed session.
    let head = replica.client().await.head().await.unwrap();
    assert_eq!(head.entry_count, 100);
    let fine = proto::ReconcileFrame {
        end_of_round: true,
        ..Default::default()
    };
    let mut client = proto::replication_client::ReplicationClient::new(replica.channel().await);
    let mut answers = client
        .reconcile(futures::stream::iter(vec![fine]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().expect("an answer");
    assert!(answer.end_of_round && answer.parts.is_empty());
    replica.stop().await.unwrap();
}
