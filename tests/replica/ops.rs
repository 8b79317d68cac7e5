//! Operations: metrics (checked by promtool), reflection, and the demo command.

use std::io::Write;
use std::process::{Command, Stdio};

use mindoo_replica::proto;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::harness::*;

#[tokio::test]
async fn metrics_pass_promtool_and_record_calls_by_method_and_code() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |_| {}).await;
    let mut client = replica.client().await;
    client.put(&entries(10)).await.unwrap();
    client.head().await.unwrap();
    let _ = client
        .raw()
        .missing_ids(proto::MissingIdsRequest {
            namespace: None,
            ids: vec![],
        })
        .await;
    // Made-up methods under a real service name: answered UNIMPLEMENTED and
    // counted under one `unknown` label, not one series each.
    let channel = replica.channel().await;
    for i in 0..20 {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let path = format!("/mindoo.replica.v1.Store/Made{i}").parse().unwrap();
        let err = grpc
            .unary::<_, proto::HeadResponse, _>(
                tonic::Request::new(proto::HeadRequest {}),
                path,
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented);
    }
    let text = replica.metrics_text().await;
    assert!(!text.contains("Made"), "no series per made-up method");
    assert_eq!(
        metric(
            &text,
            "mindoo_replica_grpc_requests_total{caller=\"anonymous\",code=\"Unimplemented\",method=\"unknown\"}"
        ),
        20.0
    );

    let head = "mindoo_replica_grpc_requests_total{caller=\"anonymous\",code=\"OK\",method=\"mindoo.replica.v1.Store/Head\"}";
    assert_eq!(metric(&text, head), 1.0);
    let bad = "mindoo_replica_grpc_requests_total{caller=\"anonymous\",code=\"InvalidArgument\",method=\"mindoo.replica.v1.Store/MissingIds\"}";
    assert_eq!(metric(&text, bad), 1.0);
    assert_eq!(metric(&text, "mindoo_replica_store_entries"), 10.0);
    assert!(metric(&text, "mindoo_replica_store_disk_bytes") > 0.0);
    // Ten entries sit in a memtable.
    assert!(
        metric(
            &text,
            "mindoo_replica_store_memory_bytes{part=\"memtables\"}"
        ) > 0.0
    );
    assert!(text.contains("mindoo_replica_store_memory_bytes{part=\"block_cache\"}"));
    assert!(text.contains("mindoo_replica_grpc_request_duration_seconds_bucket"));
    assert!(text.contains("mindoo_replica_process_resident_memory_bytes"));

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is on PATH (make test installs it via .ci/deps)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    replica.stop().await.unwrap();
}

#[tokio::test]
async fn reflection_lists_the_services() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |_| {}).await;
    let channel = replica.channel().await;
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let resp = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in ["mindoo.replica.v1.Store", "grpc.health.v1.Health"] {
        assert!(names.contains(&expected), "{names:?}");
    }
    replica.stop().await.unwrap();
}

/// The README's run command starts this mesh demo; it must keep working.
#[test]
fn mesh_demo_shows_entries_flowing_between_replica_processes() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mindoo-replica"))
        .args(["mesh", "--exit", "--entries", "300", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "replica-3  pid",
        "300 stored",
        "replica-2 holds them",
        "replica-3 holds them",
        "read back from replica-3; every id re-hashed and matched",
        "forgery    refused by replica-2",
        "signature  refused by replica-2: the signature does not verify against the author key (signature_invalid)",
        "appeared on replica-1's live Watch",
        "mindoo_replica_store_entries 301",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }
    let config = std::fs::read_to_string(dir.path().join("replica-2.toml")).unwrap();
    assert!(config.contains("advertise = "), "{config}");
}

/// A real Prometheus server scrapes a replica and answers queries about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_replica() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(&dir.path().join("db"), |_| {}).await;
    replica.client().await.put(&entries(5)).await.unwrap();

    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: mindoo-replica\n    static_configs:\n      - targets: ['{}']\n",
            replica.metrics
        ),
    )
    .unwrap();
    // Prometheus cannot report an ephemeral port back, so pick a free one.
    let web = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut prometheus = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus is on PATH (make test installs it via .ci/deps)");

    let query = "/api/v1/query?query=mindoo_replica_store_entries";
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Ok(body) = mindoo_replica::tools::child::http_get(web, query).await
            && body.contains("\"job\":\"mindoo-replica\"")
        {
            assert!(body.contains(",\"5\"]"), "{body}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "prometheus never scraped the replica"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let up = mindoo_replica::tools::child::http_get(web, "/api/v1/query?query=up")
        .await
        .unwrap();
    assert!(up.contains(",\"1\"]"), "{up}");
    prometheus.kill().await.unwrap();
    replica.stop().await.unwrap();
}

/// `check` (the chart's test pod) passes on a mesh and fails, naming the
/// replica, when one does not replicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_on_a_mesh_and_names_a_replica_that_does_not_replicate() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let replicas = mesh(&dirs[..2]).await;
    let alone = TestReplica::start(dirs[2].path(), |_| {}).await;
    let run = |addrs: Vec<String>| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mindoo-replica"));
        cmd.args(["check", "--timeout-secs", "3"]);
        for a in addrs {
            cmd.args(["--addr", &a]);
        }
        cmd.output()
    };
    let meshed: Vec<String> = replicas.iter().map(|r| r.addr.to_string()).collect();
    let out = run(meshed.clone()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("check: {} serves it after", meshed[1])),
        "{stdout}"
    );

    let out = run(vec![meshed[0].clone(), alone.addr.to_string()])
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{} does not serve", alone.addr)),
        "{stderr}"
    );
    for r in replicas {
        r.stop().await.unwrap();
    }
    alone.stop().await.unwrap();
}

/// SIGTERM to the mesh (as a process supervisor sends) stops its replicas
/// too, rather than leaving them running.
#[test]
fn sigterm_to_the_mesh_stops_every_replica() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut mesh = Command::new(env!("CARGO_BIN_EXE_mindoo-replica"))
        .args(["mesh", "--replicas", "2", "--entries", "10", "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut pids = Vec::new();
    let stdout = std::io::BufReader::new(mesh.stdout.take().unwrap());
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("replica-")
            && let Some(pid) = rest.split_whitespace().nth(2)
        {
            pids.push(pid.parse::<u32>().unwrap());
        }
        if line.contains("stops every replica") {
            break;
        }
    }
    assert_eq!(pids.len(), 2, "replica pids printed: {pids:?}");
    let status = Command::new("kill")
        .args(["-TERM", &mesh.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = mesh.wait().unwrap();
    assert!(exit.success(), "the mesh exits cleanly on SIGTERM: {exit}");
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "replica pid {pid} still runs after the mesh got SIGTERM"
        );
    }
}
