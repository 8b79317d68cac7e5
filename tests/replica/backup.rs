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
