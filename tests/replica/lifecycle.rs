//! Restarts, graceful shutdown, health, and process-level failures.

use std::process::Command;
use std::time::Duration;

use mindoo_replica::entry::PutOutcome;
use mindoo_replica::tools::child::ReplicaProcess;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::harness::*;

const EXE: &str = env!("CARGO_BIN_EXE_mindoo-replica");

#[tokio::test]
async fn entries_and_incarnation_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let batch = entries(50);
    let replica = TestReplica::start(dir.path(), |_| {}).await;
    let mut client = replica.client().await;
    client.put(&batch).await.unwrap();
    let before = client.head().await.unwrap();
    replica.stop().await.unwrap();

    // Same node identity, another port: the database keeps its incarnation.
    let replica = TestReplica::start(dir.path(), |c| {
        c.replication.advertise = before.node.clone()
    })
    .await;
    let mut client = replica.client().await;
    let after = client.head().await.unwrap();
    assert_eq!(
        (after.incarnation, after.head_seq, after.entry_count),
        (before.incarnation, before.head_seq, before.entry_count)
    );
    assert_ne!(after.instance, before.instance, "a new process");
    let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
    assert_eq!(client.get(&ns(), &ids).await.unwrap().len(), 50);
    let out = client.put(&batch[..5]).await.unwrap();
    assert!(out.iter().all(|o| *o == PutOutcome::Duplicate));
    replica.stop().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_loses_no_acknowledged_entry() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |c| c.server.shutdown_delay_ms = 300).await;
    let batch = entries(40_000);
    let batches: Vec<Vec<_>> = batch.chunks(100).map(<[_]>::to_vec).collect();

    // Stream batches and count those the replica acknowledged.
    let mut client = replica.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut responses = client
        .raw()
        .put_entries(requests)
        .await
        .unwrap()
        .into_inner();
    let feeder = tokio::spawn(async move {
        for b in batches {
            let req = mindoo_replica::proto::PutEntriesRequest {
                entries: b
                    .iter()
                    .map(|e| mindoo_replica::proto::Entry {
                        id: bytes::Bytes::copy_from_slice(&e.id.0),
                        data: e.data().clone(),
                    })
                    .collect(),
                ..Default::default()
            };
            if tx.send(req).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let mut acked = 0;
    while acked < 10 {
        responses.message().await.unwrap().unwrap();
        acked += 1;
    }

    // Health turns NOT_SERVING first, during the shutdown delay.
    let channel = replica.channel().await;
    let mut health = HealthClient::new(channel);
    let check = |h: &mut HealthClient<_>| {
        let mut h = h.clone();
        async move {
            h.check(HealthCheckRequest {
                service: "mindoo.replica.v1.Store".into(),
            })
            .await
            .map(|r| r.into_inner().status())
        }
    };
    assert_eq!(check(&mut health).await.unwrap(), ServingStatus::Serving);
    replica.begin_stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(check(&mut health).await.unwrap(), ServingStatus::NotServing);
    // So does a probe on a new connection, as Kubernetes makes each time.
    let probe = async {
        let mut probe = HealthClient::new(replica.channel().await);
        check(&mut probe).await
    };
    let status = tokio::time::timeout(Duration::from_secs(1), probe)
        .await
        .expect("a new connection is answered during the shutdown delay");
    assert_eq!(status.unwrap(), ServingStatus::NotServing);

    let end = loop {
        match responses.message().await {
            Ok(Some(_)) => acked += 1,
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    let end = end.expect("the put stream ends with a status");
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end}");
    feeder.abort();
    replica.stop().await.unwrap();

    let replica = TestReplica::start(dir.path(), |_| {}).await;
    let mut client = replica.client().await;
    let held = client.head().await.unwrap().entry_count;
    assert_eq!(
        held,
        acked * 100,
        "every acknowledged batch, and only those"
    );
    let acked_ids: Vec<_> = batch[..(acked * 100) as usize]
        .iter()
        .map(|e| e.id)
        .collect();
    assert!(
        client
            .missing(&ns(), &acked_ids[..10_000.min(acked_ids.len())])
            .await
            .unwrap()
            .is_empty()
    );
    replica.stop().await.unwrap();
}

#[tokio::test]
async fn a_locked_database_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let first = ReplicaProcess::spawn(EXE.as_ref(), dir.path(), false, &[])
        .await
        .unwrap();
    let out = Command::new(EXE)
        .arg("serve")
        .env("MINDOO_REPLICA__SERVER__LISTEN", "127.0.0.1:0")
        .env("MINDOO_REPLICA__SERVER__METRICS_LISTEN", "")
        .env("MINDOO_REPLICA__STORAGE__PATH", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("locked by another process"), "{stderr}");
    let status = first.stop().await.unwrap();
    assert!(status.success(), "SIGTERM exits 0, got {status}");
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("replica.toml");
    std::fs::write(&file, "[storage]\nblock_cache_mb = \"lots\"\n").unwrap();
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["serve", "--config", file.to_str().unwrap()],
            vec![],
            "block_cache_mb",
        ),
        (
            vec!["serve", "--config", "/nonexistent/replica.toml"],
            vec![],
            "does not exist",
        ),
        (
            vec!["serve"],
            vec![("MINDOO_REPLICA__SERVER__LISTEN", "not-an-address")],
            "server.listen",
        ),
        (
            vec!["config", "print"],
            vec![("MINDOO_REPLICA__LIMITS__MAX_PAGE", "0")],
            "limits.max_page",
        ),
    ];
    for (args, env, needle) in cases {
        let out = Command::new(EXE).args(&args).envs(env).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: {stderr:?} lacks {needle}"
        );
    }
    let out = Command::new(EXE)
        .args(["config", "print"])
        .env("MINDOO_REPLICA__STORAGE__PATH", "/var/lib/mindoo")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("path = \"/var/lib/mindoo\""), "{text}");
    assert!(text.contains("[limits]"), "{text}");
}

/// Unmounts a test filesystem however the test ends.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_resource_exhausted_and_loses_nothing_acknowledged() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test mounts a small tmpfs and needs root (CI runs as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs for the disk-full test");
    let _unmount = Unmount(dir.path().to_owned());

    let replica = TestReplica::start(dir.path(), |_| {}).await;
    let mut client = replica.client().await;
    let mut acked = Vec::new();
    let mut refusal = None;
    for _ in 0..100 {
        let batch = mindoo_replica::fixtures::sample_entries(&ns(), &author(), 10, 100_000);
        match client.put(&batch).await {
            Ok(out) => {
                assert!(out.iter().all(|o| *o == PutOutcome::Stored));
                acked.extend(batch.iter().map(|e| e.id));
            }
            Err(status) => {
                refusal = Some(status);
                break;
            }
        }
    }
    let refusal = refusal.expect("a 24 MB disk fills up");
    assert_eq!(refusal.code(), tonic::Code::ResourceExhausted, "{refusal}");
    assert!(refusal.message().contains("no space left"), "{refusal}");
    // Nothing partial: exactly the acknowledged entries, all readable.
    let head = client.head().await.unwrap();
    assert_eq!(head.entry_count, acked.len() as u64);
    assert_eq!(client.get(&ns(), &acked).await.unwrap().len(), acked.len());
    let text = replica.metrics_text().await;
    let name = "mindoo_replica_grpc_requests_total{caller=\"anonymous\",code=\"ResourceExhausted\",method=\"mindoo.replica.v1.Store/PutEntries\"}";
    assert_eq!(metric(&text, name), 1.0);
    assert_eq!(metric(&text, "mindoo_replica_store_writable"), 0.0);
    // Readiness (the Store service) says so; liveness (overall) does not.
    let channel = replica.channel().await;
    let health = HealthClient::new(channel);
    let status = |service: &'static str| {
        let mut h = health.clone();
        async move {
            h.check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status()
        }
    };
    assert_eq!(
        status("mindoo.replica.v1.Store").await,
        ServingStatus::NotServing
    );
    assert_eq!(status("").await, ServingStatus::Serving);

    // Space comes back: the replica notices by itself, before any client
    // writes, and takes writes again.
    let grown = Command::new("mount")
        .args(["-o", "remount,size=256m"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(grown.success(), "growing the tmpfs");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while status("mindoo.replica.v1.Store").await != ServingStatus::Serving {
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness did not come back with the space"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let batch = mindoo_replica::fixtures::sample_entries(&ns(), &author(), 10, 1_000);
    loop {
        match client.put(&batch).await {
            Ok(_) => break,
            Err(status) => assert!(
                tokio::time::Instant::now() < deadline,
                "writes did not recover once space came back: {status}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let head = client.head().await.unwrap();
    assert_eq!(head.entry_count, acked.len() as u64 + 10);
    assert_eq!(client.get(&ns(), &acked).await.unwrap().len(), acked.len());
    replica.stop().await.unwrap();
}

/// A replica process reading `file` (`--config` through the environment),
/// with a client connected to it.
async fn replica_with_config(
    file: &std::path::Path,
    db: &std::path::Path,
) -> (ReplicaProcess, mindoo_replica::client::StoreClient) {
    let env = [("MINDOO_REPLICA_CONFIG", file.to_str().unwrap())];
    let replica = ReplicaProcess::spawn(EXE.as_ref(), db, false, &env)
        .await
        .unwrap();
    let client = mindoo_replica::client::StoreClient::connect(&replica.grpc.to_string())
        .await
        .unwrap();
    (replica, client)
}

/// Waits up to 10 s until the replica holds `count` entries.
async fn holds_within(client: &mut mindoo_replica::client::StoreClient, count: u64, why: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.head().await.unwrap().entry_count < count {
        assert!(tokio::time::Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sighup_reloads_the_peer_list_without_a_restart() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let source = TestReplica::start(dirs[0].path(), |_| {}).await;
    source.client().await.put(&entries(40)).await.unwrap();

    let file = dirs[1].path().join("replica.toml");
    // Only the signal reloads: the file is not polled.
    std::fs::write(
        &file,
        "[replication]\npeers = []\nconfig_poll_ms = 0\n[auth]\nclients = \"off\"\n",
    )
    .unwrap();
    let (puller, mut client) = replica_with_config(&file, &dirs[1].path().join("db")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(client.head().await.unwrap().entry_count, 0);

    std::fs::write(
        &file,
        format!(
            "[replication]\npeers = [\"{}\"]\nconfig_poll_ms = 0\n[auth]\nclients = \"off\"\n",
            source.addr
        ),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(client.head().await.unwrap().entry_count, 0);
    // SAFETY: kill(2) on our own child with a valid signal.
    unsafe { libc::kill(puller.pid().unwrap() as i32, libc::SIGHUP) };
    holds_within(&mut client, 40, "reload did not add the peer").await;
    let pid = puller.pid();
    assert!(puller.stop().await.unwrap().success(), "pid {pid:?}");
    source.stop().await.unwrap();
}

/// A config file mounted from a Kubernetes ConfigMap is replaced in place
/// (a `..data` symlink swapped to a new directory) and no signal is sent:
/// the replica notices the new content and pulls from the added peer.
#[tokio::test]
async fn a_config_file_replaced_in_place_adds_the_peer() {
    use std::os::unix::fs::symlink;

    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let source = TestReplica::start(dirs[0].path(), |_| {}).await;
    source.client().await.put(&entries(40)).await.unwrap();

    let mount = dirs[1].path().join("config");
    let version = |name: &str, peers: String| {
        let dir = mount.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let toml = format!(
            "[replication]\npeers = [{peers}]\nconfig_poll_ms = 200\n[auth]\nclients = \"off\"\n"
        );
        std::fs::write(dir.join("config.toml"), toml).unwrap();
    };
    version("..v1", String::new());
    symlink("..v1", mount.join("..data")).unwrap();
    symlink("..data/config.toml", mount.join("config.toml")).unwrap();
    let file = mount.join("config.toml");
    let (puller, mut client) = replica_with_config(&file, &dirs[1].path().join("db")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(client.head().await.unwrap().entry_count, 0);

    // What the kubelet does: a new directory, then an atomic swap of `..data`.
    version("..v2", format!("\"{}\"", source.addr));
    symlink("..v2", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    holds_within(&mut client, 40, "the changed file did not add the peer").await;
    assert!(puller.stop().await.unwrap().success());
    source.stop().await.unwrap();
}
