//! No secret leaks: a replica process with TLS and client authentication,
//! logging at debug, is called with good, replayed and stale credentials;
//! neither `config print`, nor its log, nor the errors its callers get
//! carry the TLS key or any credentials a client sent.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use mindoo_replica::auth::{AUTH_HEADER, credentials, credentials_at};
use mindoo_replica::client::{Dial, StoreClient};
use mindoo_replica::proto;
use mindoo_replica::tools::certs::MeshCa;

use super::harness::*;

const EXE: &str = env!("CARGO_BIN_EXE_mindoo-replica");

/// The longest base64 line of a PEM file: a piece of its secret.
fn pem_body(pem: &str) -> String {
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .max_by_key(|l| l.len())
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_config_print_logs_or_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::new("mesh").unwrap();
    let files = ca
        .write(&dir.path().join("tls"), "replica", &["127.0.0.1"])
        .unwrap();
    let tls_key = pem_body(&std::fs::read_to_string(&files.key).unwrap());
    let client = SigningKey::from_bytes(&[21; 32]);
    let config = dir.path().join("replica.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"\"\n\
             [storage]\npath = \"{}\"\n\
             [tls]\nenabled = true\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n\
             [auth]\nclients = \"required\"\nreaders = [\"{key}\"]\nwriters = [\"{key}\"]\n\
             [log]\nfilter = \"debug,h2=debug,rustls=debug\"\nformat = \"json\"\n",
            dir.path().join("db").display(),
            files.cert.display(),
            files.key.display(),
            files.ca.display(),
            key = hex::encode(client.verifying_key().as_bytes()),
        ),
    )
    .unwrap();

    let printed = Command::new(EXE)
        .args(["config", "print", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(printed.status.success());
    let printed = String::from_utf8_lossy(&printed.stdout).into_owned();
    assert!(printed.contains("key_file"), "{printed}");

    let log_path = dir.path().join("replica.log");
    let mut replica = Stopped(
        Command::new(EXE)
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    // Its address, from its log.
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        let log = std::fs::File::open(&log_path).unwrap();
        let serving = BufReader::new(log)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.contains("replica serving"))
            .find_map(|l| {
                let line: serde_json::Value = serde_json::from_str(&l).ok()?;
                Some(line["fields"]["grpc_addr"].as_str()?.to_owned())
            });
        if let Some(addr) = serving {
            break addr;
        }
        assert!(Instant::now() < deadline, "the replica did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Good credentials, then every kind of bad one.
    let dial = Dial {
        tls: Some(mindoo_replica::tls::client(&files.ca, None).unwrap()),
        key: Some(client.clone()),
    };
    let mut good = StoreClient::connect_with(&addr, &dial).await.unwrap();
    good.put(&sample(&client)).await.unwrap();
    let mut sent = Vec::new();
    let mut errors = Vec::new();
    let replayed = credentials(&client);
    let stale = credentials_at(&client, 1_000, [3; 16]);
    let stranger = credentials(&SigningKey::from_bytes(&[22; 32]));
    let mut forged = credentials(&client);
    forged.replace_range(forged.len() - 4.., "0000");
    for value in [&replayed, &replayed, &stale, &stranger, &forged] {
        let tls = mindoo_replica::tls::client(&files.ca, None).unwrap();
        let channel = mindoo_replica::client::channel(&addr, Some(tls))
            .await
            .unwrap();
        let mut raw = proto::store_client::StoreClient::new(channel);
        let mut request = tonic::Request::new(proto::HeadRequest {});
        request
            .metadata_mut()
            .insert(AUTH_HEADER, value.parse().unwrap());
        if let Err(e) = raw.head(request).await {
            errors.push(format!("{e:?}"));
        }
        sent.push(value.clone());
    }
    // Refused: the replay, the stale and the forged; a key the lists do
    // not name may still ask for the head.
    assert_eq!(errors.len(), 3, "{errors:?}");

    let _ = Command::new("kill")
        .args(["-TERM", &replica.0.id().to_string()])
        .status();
    let _ = replica.0.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("replica serving"), "{log}");
    for (what, text) in [
        ("config print", &printed),
        ("the log", &log),
        ("the errors", &errors.join("\n")),
    ] {
        assert!(!text.contains(&tls_key), "{what} shows the TLS key");
        for value in &sent {
            let signature = value.rsplit('.').next().unwrap();
            assert!(
                !text.contains(signature),
                "{what} shows credentials: {value}"
            );
        }
    }
}

/// The replica process, killed if the test ends before it stops it.
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sample(key: &SigningKey) -> Vec<mindoo_replica::entry::Entry> {
    mindoo_replica::fixtures::sample_entries(&ns(), key, 3, 64)
}
