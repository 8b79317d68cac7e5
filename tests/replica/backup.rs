//! Backups and restores: `backup` takes an online backup of a replica
//! that keeps taking writes, kept on its volume or streamed into one file;
//! `restore` puts the file in place of the stopped replica's database; the
//! restored replica has a new incarnation, and the mesh heals it both ways.

use std::net::SocketAddr;
use std::path::Path;

use crate::harness::*;

async fn restart(dir: &Path, addr: SocketAddr, all: &[SocketAddr]) -> TestReplica {
    restart_member(dir, addr, all, |_| {}).await
}

async fn incarnation(replica: &TestReplica) -> Vec<u8> {
    peer_status(replica).await.incarnation.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_backup_is_read_at_the_pace_asked_for_and_shows_its_progress() {
    let dirs = vec![tempfile::tempdir().unwrap()];
    let replica = mesh(&dirs).await.remove(0);
    let mut client = replica.client().await;
    for batch in entries(8000).chunks(1000) {
        client.put(batch).await.unwrap();
    }
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("paced.tar");
    let addr = replica.addr.to_string();
    let started = std::time::Instant::now();
    let out = cli(
        home.path(),
        &[
            "backup",
            "--addr",
            &addr,
            "--out",
            file.to_str().unwrap(),
            "--mb-per-second",
            "1",
        ],
    )
    .unwrap();
    let took = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&file).unwrap().len() as f64;
    // The tar file holds the backup's bytes, and headers.
    let due = 0.95 * bytes / f64::from(1 << 20);
    assert!(due > 2.0, "a backup of {bytes} bytes is too small to pace");
    assert!(
        took >= due,
        "{bytes} bytes at 1 MiB/s took {took:.2} s, under {due:.2} s:\n{out}"
    );
    let progress: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("MB received ("))
        .collect();
    assert!(!progress.is_empty(), "no progress shown:\n{out}");
    assert!(progress[0].contains(" of "), "{out}");
    replica.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restored_from_a_backup_file_heals_both_ways() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = mesh(&dirs).await;
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let (a, b) = (&replicas[0], &replicas[1]);
    let first = entries(3000);
    a.client().await.put(&first[..2000]).await.unwrap();
    b.wait_for_count(2000, 20).await;
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("a.tar");
    let addr = a.addr.to_string();

    // Writes go on while the backups are taken.
    let writer = {
        let mut client = a.client().await;
        let more = first[2000..].to_vec();
        tokio::spawn(async move {
            for batch in more.chunks(100) {
                client.put(batch).await.unwrap();
            }
        })
    };
    let kept = cli(home.path(), &["backup", "--addr", &addr]).unwrap();
    assert!(kept.contains("on the replica's volume"), "{kept}");
    let streamed = cli(
        home.path(),
        &["backup", "--addr", &addr, "--out", file.to_str().unwrap()],
    )
    .unwrap();
    assert!(
        streamed.contains(&format!("kept at {}", file.display())),
        "{streamed}"
    );
    writer.await.unwrap();
    let on_volume = std::fs::read_dir(dirs[0].path().join("backups"))
        .unwrap()
        .count();
    assert_eq!(
        on_volume, 1,
        "one backup kept on the volume, none left by the download"
    );
    // A file that exists is not overwritten.
    let err = cli(
        home.path(),
        &["backup", "--addr", &addr, "--out", file.to_str().unwrap()],
    )
    .unwrap_err();
    assert!(err.contains("exists"), "{err}");

    // Written after the backups: only the mesh can bring these back.
    let late = entries(500);
    a.client().await.put(&late).await.unwrap();
    b.wait_for_count(3500, 20).await;
    let old = incarnation(a).await;
    let data = dirs[0].path().to_str().unwrap().to_owned();
    let err = cli(
        home.path(),
        &["restore", "--from", file.to_str().unwrap(), "--data", &data],
    )
    .unwrap_err();
    assert!(err.contains("stop the replica"), "{err}");
    replicas.remove(0).stop().await.unwrap();
    let restored = cli(
        home.path(),
        &["restore", "--from", file.to_str().unwrap(), "--data", &data],
    )
    .unwrap();
    assert!(restored.contains("new incarnation"), "{restored}");
    assert!(restored.contains("kept at"), "{restored}");
    // Run again before each start (the chart's restore step), it restores
    // only once.
    let again = cli(
        home.path(),
        &[
            "restore",
            "--once",
            "--from",
            file.to_str().unwrap(),
            "--data",
            &data,
        ],
    )
    .unwrap();
    assert!(again.contains("already restored"), "{again}");

    let a = restart(dirs[0].path(), addrs[0], &addrs).await;
    assert_ne!(incarnation(&a).await, old);
    let at_start = a.entry_count().await;
    assert!(
        (2000..3500).contains(&at_start),
        "the backup holds what was there when it was taken: {at_start}"
    );
    // It pulls what it missed; its peer reads its new log and finds
    // nothing new.
    a.wait_for_count(3500, 30).await;
    assert_holds_exactly(&a, &ns(), &[first.clone(), late.clone()].concat()).await;
    // Its peer pulls from the new incarnation, having found nothing new.
    let b = &replicas[0];
    let new = incarnation(&a).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = peer_status(b).await;
        let from_a = status
            .peers
            .iter()
            .find(|p| p.address == addrs[0].to_string());
        if from_a.is_some_and(|p| p.peer_incarnation == new && p.cursor_seq >= at_start) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the peer does not follow the restored log: {status:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(b.entry_count().await, 3500);
    a.stop().await.unwrap();
    replicas.remove(0).stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_a_disk_has_nothing_to_back_up() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |c| c.storage.backend = "memory".into()).await;
    let err = cli(dir.path(), &["backup", "--addr", &replica.addr.to_string()]).unwrap_err();
    assert!(err.contains("keeps nothing on disk"), "{err}");
    replica.stop().await.unwrap();
}

/// Replicas that share a fingerprint key and reconcile only when a cursor
/// is refused.
fn reconciling_on_refusal(c: &mut mindoo_replica::config::RawConfig) {
    c.replication.fingerprint_key =
        "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed".into();
    c.replication.reconcile_interval_ms = 0;
}

fn counter(text: &str, series: &str) -> f64 {
    try_metric(text, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restored_from_a_backup_5000_entries_old_heals_both_ways_moving_only_the_difference()
 {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = mesh_with(&dirs, |_, c| reconciling_on_refusal(c)).await;
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let all = entries(30_200);
    let (old, rest) = all.split_at(25_000);
    let (missed, fresh) = rest.split_at(5_000);
    let mut client = replicas[0].client().await;
    for batch in old.chunks(1000) {
        client.put(batch).await.unwrap();
    }
    replicas[1].wait_for_count(25_000, 60).await;

    // The backup is taken while the other replica takes the next 5,000.
    let writer = {
        let mut client = replicas[1].client().await;
        let missed = missed.to_vec();
        tokio::spawn(async move {
            for batch in missed.chunks(250) {
                client.put(batch).await.unwrap();
            }
        })
    };
    let home = tempfile::tempdir().unwrap();
    cli(home.path(), &["backup", "--addr", &addrs[0].to_string()]).unwrap();
    writer.await.unwrap();
    replicas[0].wait_for_count(30_000, 60).await;
    let b_node = addrs[1].to_string();
    let a_node = addrs[0].to_string();
    wait_for_cursor(&replicas[0], &b_node, 5_000, 30).await;
    let b_sent_before = counter(
        &replicas[1].metrics_text().await,
        "mindoo_replica_entry_bytes_sent_total",
    );

    replicas.remove(0).stop().await.unwrap();
    let backup = std::fs::read_dir(dirs[0].path().join("backups"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let data = dirs[0].path().to_str().unwrap().to_owned();
    cli(
        home.path(),
        &[
            "restore",
            "--from",
            backup.to_str().unwrap(),
            "--data",
            &data,
        ],
    )
    .unwrap();
    let a = restart_member(dirs[0].path(), addrs[0], &addrs, reconciling_on_refusal).await;
    let restored = a.entry_count().await;
    assert!(
        (25_000..30_000).contains(&restored),
        "the backup holds what was there when it was taken: {restored}"
    );
    // Written to the restored replica alone: the other side lacks these.
    a.client().await.put(fresh).await.unwrap();
    let b = &replicas[0];
    a.wait_for_count(30_200, 60).await;
    b.wait_for_count(30_200, 60).await;

    // B's cursor into the old incarnation was refused, and B reconciled
    // with the restored replica instead of reading its log again.
    let b_text = b.metrics_text().await;
    let of_a = |name: &str| format!("{name}{{peer=\"{a_node}\"}}");
    assert!(counter(&b_text, &of_a("mindoo_replica_peer_cursor_resets_total")) >= 1.0);
    assert!(
        counter(
            &b_text,
            &of_a("mindoo_replica_peer_reconcile_sessions_total")
        ) >= 1.0
    );
    // Bytes of entries that crossed, either way, since the restore (read
    // before any client reads entries back): within
    // a small factor of what the restored replica missed and what only it
    // held, far from the whole store.
    let a_text = a.metrics_text().await;
    let moved = counter(&a_text, "mindoo_replica_entry_bytes_sent_total")
        + counter(&b_text, "mindoo_replica_entry_bytes_sent_total")
        - b_sent_before;
    let size = |es: &[mindoo_replica::entry::Entry]| {
        es.iter().map(|e| e.data().len()).sum::<usize>() as f64
    };
    let difference = size(missed) + size(fresh);
    let whole = size(&all);
    assert!(
        moved <= 2.0 * difference,
        "moved {moved} bytes of entries for a difference of {difference} (whole store {whole})"
    );
    // Nobody read the restored replica's log from the start.
    let read = counter(&a_text, "mindoo_replica_store_log_records_read_total");
    assert!(
        read < 2.0 * 5_200.0,
        "{read} log records read on the restored replica"
    );
    assert_holds_exactly(&a, &ns(), &all).await;
    assert_holds_exactly(b, &ns(), &all).await;
    a.stop().await.unwrap();
    replicas.remove(0).stop().await.unwrap();
}
