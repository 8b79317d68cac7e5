//! `mindoo-replica mesh`: a local full mesh of N replica processes, each on
//! its own RocksDB with metrics on, configured the way the Helm chart
//! configures pods (one peer list for all, `advertise` set per replica).
//! Then a short demo: entries written through replica-1 are read back from
//! replica-3, a forgery and an entry its author did not sign are refused, a
//! write to replica-3 shows up live on a Watch stream of replica-1, and two
//! client devices edit one Automerge document offline, sync through
//! different replicas and converge.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ed25519_dalek::SigningKey;

use crate::client::{Dial, StoreClient};
use crate::config::RawConfig;
use crate::entry::PutOutcome;
use crate::entry::{Entry, EntryId, Namespace};
use crate::fixtures::sample_entries;
use crate::proto;
use crate::tls::TlsFiles;
use crate::tools::certs::MeshCa;
use crate::tools::child::{ChildListeners, ReplicaProcess, http_get};

#[derive(Debug, Clone)]
pub struct MeshOptions {
    pub replicas: usize,
    pub data_dir: PathBuf,
    pub entries: usize,
    /// Stop after the demo instead of serving until Ctrl-C.
    pub exit: bool,
    /// Mutual TLS between the replicas, with certificates made here.
    pub tls: bool,
    pub exe: PathBuf,
}

/// The certificates of a local mesh over TLS.
pub struct MeshCerts {
    dir: PathBuf,
    replicas: Vec<TlsFiles>,
    /// An operator's, for the admin calls (`status`, `peers`).
    pub operator: TlsFiles,
}

/// The key the demo's entries are written and signed with.
fn demo_author() -> SigningKey {
    SigningKey::from_bytes(blake3::hash(b"mindoo demo author").as_bytes())
}

/// The name an operator's certificate carries in a local mesh.
pub const OPERATOR_NAME: &str = "operator.mesh.local";

impl MeshCerts {
    /// A CA, a certificate per replica (`replica-N.mesh.local`, and
    /// 127.0.0.1, the address peers dial) and an operator's, under `dir`.
    pub fn make(dir: &Path, n: usize) -> anyhow::Result<Self> {
        let ca = MeshCa::new("mindoo-replica local mesh CA")?;
        let replicas = (1..=n)
            .map(|i| {
                let name = format!("replica-{i}.mesh.local");
                ca.write(
                    dir,
                    &format!("replica-{i}"),
                    &[&name, "127.0.0.1", "localhost"],
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let operator = ca.write(dir, "operator", &[OPERATOR_NAME])?;
        Ok(Self {
            dir: dir.to_owned(),
            replicas,
            operator,
        })
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Sets replica `i`'s `[tls]`, and its `[auth]`: clients sign their
    /// requests; only the demo's author may read and write `demo/notes`,
    /// any key the other namespaces.
    pub fn configure(&self, i: usize, config: &mut RawConfig) {
        let files = &self.replicas[i];
        config.tls.enabled = true;
        config.tls.cert_file = files.cert.display().to_string();
        config.tls.key_file = files.key.display().to_string();
        config.tls.ca_file = files.ca.display().to_string();
        config.tls.operator_names = vec![OPERATOR_NAME.into()];
        let author = hex::encode(demo_author().verifying_key().as_bytes());
        config.auth.clients = "required".into();
        config.auth.readers = vec!["*".into()];
        config.auth.writers = vec!["*".into()];
        config.auth.namespaces = vec![crate::config::RawAccess {
            tenant: "demo".into(),
            db: "notes".into(),
            readers: vec![author.clone()],
            writers: vec![author],
        }];
    }

    /// Replica `i`'s `[tls]` as environment overrides (client
    /// authentication as the process has it).
    pub fn env_of(&self, i: usize) -> Vec<(String, String)> {
        let files = &self.replicas[i];
        [
            ("ENABLED", "true".to_owned()),
            ("CERT_FILE", files.cert.display().to_string()),
            ("KEY_FILE", files.key.display().to_string()),
            ("CA_FILE", files.ca.display().to_string()),
            // Every replica of the mesh is a peer, whether or not this one
            // pulls from it.
            ("PEER_NAMES", "*.mesh.local".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("MINDOO_REPLICA__TLS__{k}"), v))
        .collect()
    }

    /// What a client presents: nothing (`None`), or the operator's
    /// certificate.
    pub fn client(&self, operator: bool) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let identity =
            operator.then_some((self.operator.cert.as_path(), self.operator.key.as_path()));
        Ok(crate::tls::client(&self.ca(), identity)?)
    }

    /// The environment the command's clients reach the mesh with.
    pub fn env(&self, operator: bool) -> String {
        let mut env = format!("{}={}", crate::client::TLS_CA_ENV, self.ca().display());
        if operator {
            env += &format!(
                " {}={} {}={}",
                crate::client::TLS_CERT_ENV,
                self.operator.cert.display(),
                crate::client::TLS_KEY_ENV,
                self.operator.key.display()
            );
        }
        env
    }
}

/// Binds the preferred ports (when given), or ephemeral ones.
fn bind(i: usize, preferred: bool) -> anyhow::Result<ChildListeners> {
    let grpc = format!("127.0.0.1:{}", 7701 + i);
    let metrics = format!("127.0.0.1:{}", 9701 + i);
    preferred
        .then(|| ChildListeners::bind(&grpc, Some(&metrics)).ok())
        .flatten()
        .map_or_else(ChildListeners::bind_loopback, Ok)
        .context("binding loopback ports")
}

/// One replica of a local mesh.
pub struct MeshMember {
    pub name: String,
    pub process: ReplicaProcess,
    pub config: PathBuf,
}

/// Starts `n` replica processes in a full mesh under `data_dir`: every
/// socket is bound first, then each replica gets the complete peer list and
/// its own `advertise` address, in a config file beside its database.
pub async fn spawn_mesh(
    exe: &std::path::Path,
    data_dir: &std::path::Path,
    n: usize,
    preferred_ports: bool,
    tweak: impl Fn(usize, &mut RawConfig),
) -> anyhow::Result<Vec<MeshMember>> {
    std::fs::create_dir_all(data_dir)?;
    let listeners = (0..n)
        .map(|i| bind(i, preferred_ports))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.grpc_addr().map(|a| a.to_string()))
        .collect::<Result<_, _>>()?;
    let mut members = Vec::new();
    // The secret the mesh's replicas key their range fingerprints with.
    let fingerprint_key = hex::encode(rand::random::<[u8; 32]>());
    for (i, l) in listeners.into_iter().enumerate() {
        let name = format!("replica-{}", i + 1);
        let mut config = RawConfig::default();
        config.storage.path = data_dir.join(&name).display().to_string();
        config.replication.peers = addrs.clone();
        config.replication.advertise = addrs[i].clone();
        config.replication.backoff_max_ms = 2_000;
        config.replication.fingerprint_key = fingerprint_key.clone();
        // No load balancer in front of a local mesh: stop at once.
        config.server.shutdown_delay_ms = 0;
        tweak(i, &mut config);
        let file = data_dir.join(format!("{name}.toml"));
        std::fs::write(&file, config.to_toml())?;
        let env = [(
            "MINDOO_REPLICA_CONFIG",
            file.to_str().context("utf-8 path")?,
        )];
        let db = PathBuf::from(&config.storage.path);
        let process = ReplicaProcess::spawn_on(exe, &db, l, &env).await?;
        members.push(MeshMember {
            name,
            process,
            config: file,
        });
    }
    Ok(members)
}

pub async fn run(opts: MeshOptions) -> anyhow::Result<()> {
    anyhow::ensure!(opts.replicas >= 2, "a mesh needs at least 2 replicas");
    // SIGTERM is caught from the start: its default action would end this
    // process at once and leave the replicas running. One that arrives
    // during the demo stops the mesh when the demo ends.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let certs = match opts.tls {
        true => Some(MeshCerts::make(&opts.data_dir.join("tls"), opts.replicas)?),
        false => None,
    };
    let members = spawn_mesh(&opts.exe, &opts.data_dir, opts.replicas, true, |i, c| {
        match &certs {
            Some(certs) => certs.configure(i, c),
            // Said explicitly: without TLS, replicas cannot tell peers from
            // clients, so anyone who reaches the port may read and write.
            None => c.auth.clients = "off".into(),
        }
    })
    .await?;
    for m in &members {
        let p = &m.process;
        println!(
            "{}  pid {:>6}  gRPC {}  metrics http://{}/metrics  config {}",
            m.name,
            p.pid().unwrap_or(0),
            p.grpc,
            p.metrics.map_or_else(|| "-".into(), |m| m.to_string()),
            m.config.display()
        );
    }
    let replicas: Vec<ReplicaProcess> = members.into_iter().map(|m| m.process).collect();

    let dial = Dial {
        tls: certs.as_ref().map(|c| c.client(false)).transpose()?,
        key: None,
    };
    let mut result = demo(&replicas, opts.entries, &dial).await;
    if result.is_ok()
        && let Some(certs) = &certs
    {
        result = secured(&replicas[0], certs, &dial).await;
    }
    if result.is_ok() {
        result = clients(&replicas, &opts.data_dir.join("clients"), &dial).await;
    }
    if result.is_ok() && !opts.exit {
        let first = &replicas[0];
        println!("\nThe mesh keeps running. Try:");
        match &certs {
            None => {
                println!("  mindoo-replica status --addr {}", first.grpc);
                println!(
                    "  grpcurl -plaintext {} mindoo.replica.v1.Replication/PeerStatus",
                    first.grpc
                );
            }
            Some(certs) => {
                println!(
                    "  {} mindoo-replica status --addr {}",
                    certs.env(true),
                    first.grpc
                );
                println!(
                    "  grpcurl -cacert {} -cert {} -key {} -authority localhost {} mindoo.replica.v1.Replication/PeerStatus",
                    certs.ca().display(),
                    certs.operator.cert.display(),
                    certs.operator.key.display(),
                    first.grpc
                );
            }
        }
        println!(
            "  curl -s http://{}/metrics | grep mindoo_replica_peer_",
            first.metrics.context("metrics")?
        );
        println!("Ctrl-C (or SIGTERM) stops every replica.");
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
    }
    for r in &replicas {
        r.terminate();
    }
    for r in replicas {
        let status = r.stop().await?;
        anyhow::ensure!(status.success(), "a replica exited with {status}");
    }
    result
}

async fn demo(replicas: &[ReplicaProcess], count: usize, dial: &Dial) -> anyhow::Result<()> {
    let last = &replicas[replicas.len() - 1];
    let author = demo_author();
    let dial = dial.clone().signed_by(author.clone());
    let mut clients = Vec::new();
    for r in replicas {
        clients.push(StoreClient::connect_with(&r.grpc.to_string(), &dial).await?);
    }
    let ns = Namespace::new("demo", "notes")?;
    let entries = sample_entries(&ns, &author, count, 1024);
    let before: Vec<u64> = {
        let mut v = Vec::new();
        for c in &mut clients {
            v.push(c.head().await?.entry_count);
        }
        v
    };

    let start = Instant::now();
    let batches: Vec<_> = entries.chunks(250).map(<[_]>::to_vec).collect();
    let summary = clients[0]
        .put_stream(futures::stream::iter(batches))
        .await?;
    let acked = start.elapsed();
    println!(
        "\nput        {count} signed entries (1 KiB ciphertext) into replica-1 in {:.0} ms: {} stored, {} duplicate",
        acked.as_secs_f64() * 1e3,
        summary.stored,
        summary.duplicate
    );
    let target = before[0] + summary.stored;
    for (i, c) in clients.iter_mut().enumerate().skip(1) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.head().await?.entry_count < before[i].max(target) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "replica-{} did not catch up",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        println!(
            "replicate  replica-{} holds them {:.0} ms after the put was acknowledged",
            i + 1,
            (start.elapsed() - acked).as_secs_f64() * 1e3
        );
    }

    let ids: Vec<_> = entries.iter().take(5).map(|e| e.id).collect();
    let n = replicas.len();
    let back = clients[n - 1].get(&ns, &ids).await?;
    println!(
        "get        {} entries written to replica-1 read back from replica-{n}; every id re-hashed and matched",
        back.len()
    );

    let mut forged = entries[0].data().to_vec();
    let at = forged.len() - 100;
    forged[at] ^= 1;
    let resp = clients[1]
        .raw()
        .put_entries(futures::stream::iter([proto::PutEntriesRequest {
            entries: vec![proto::Entry {
                id: bytes::Bytes::copy_from_slice(&entries[0].id.0),
                data: forged.into(),
            }],
            ..Default::default()
        }]))
        .await?
        .into_inner()
        .message()
        .await?
        .context("no response")?;
    if let Some(r) = resp.rejections.first() {
        println!("forgery    refused by replica-2: {}", r.detail);
    }
    // A fresh entry whose signature was tampered with: its id matches its
    // bytes, but its author never signed it.
    let mut unsigned_by_author = sample_entries(&ns, &author, 1, 64)
        .remove(0)
        .data()
        .to_vec();
    let signature_end = unsigned_by_author.len() - 1;
    unsigned_by_author[signature_end] ^= 1;
    let tampered = Entry::parse(unsigned_by_author.into())?;
    let outcome = clients[1].put(std::slice::from_ref(&tampered)).await?;
    if let Some(PutOutcome::Rejected(r)) = outcome.first() {
        println!(
            "signature  refused by replica-2: {} ({})",
            r.detail, r.reason
        );
    }

    let mut watch = clients[0].watch_from_head(false).await?;
    let fresh = sample_entries(&ns, &author, 1, 1024);
    let sent = Instant::now();
    let outcome = clients[n - 1].put(&fresh).await?;
    anyhow::ensure!(outcome == [PutOutcome::Stored], "{outcome:?}");
    let batch = watch.message().await?.context("watch ended")?;
    println!(
        "watch      entry {} written to replica-{n} appeared on replica-1's live Watch {:.1} ms later",
        &EntryId::from_slice(&batch.records[0].id)?.to_hex()[..16],
        sent.elapsed().as_secs_f64() * 1e3
    );

    let metrics = last.metrics.context("metrics")?;
    let text = http_get(metrics, "/metrics").await?;
    println!("metrics    replica-{n} (http://{metrics}/metrics):");
    for line in text.lines().filter(|l| {
        l.starts_with("mindoo_replica_peer_entries_pulled_total")
            || l.starts_with("mindoo_replica_peer_lag_entries")
            || l.starts_with("mindoo_replica_store_entries")
    }) {
        println!("  {line}");
    }
    Ok(())
}

/// What TLS and client keys keep out: a plaintext client, a client that
/// signs nothing or signs with a key the namespace does not list, a
/// replayed request, and admin calls without a peer's or an operator's
/// certificate.
async fn secured(replica: &ReplicaProcess, certs: &MeshCerts, dial: &Dial) -> anyhow::Result<()> {
    use crate::proto::replication_client::ReplicationClient;
    let addr = replica.grpc.to_string();
    let plain = async {
        let mut client = StoreClient::connect_with(&addr, &Dial::default()).await?;
        anyhow::Ok(client.head().await?)
    };
    match tokio::time::timeout(Duration::from_secs(5), plain).await {
        Ok(Ok(_)) => anyhow::bail!("a plaintext client was served by a TLS replica"),
        Ok(Err(_)) => println!(
            "tls        a plaintext client is refused by replica-1: the port takes TLS only and closes the connection"
        ),
        Err(_) => anyhow::bail!("a plaintext client got no answer within 5 s"),
    }
    let ns = Namespace::new("demo", "notes")?;
    let mut anonymous = StoreClient::connect_with(&addr, dial).await?;
    let refused = anonymous
        .head()
        .await
        .expect_err("an unsigned request is refused");
    println!(
        "auth       a request signed by no key: {:?} ({})",
        refused.code(),
        refused.message()
    );
    let stranger = SigningKey::from_bytes(&[7; 32]);
    let mut other = StoreClient::connect_with(&addr, &dial.clone().signed_by(stranger)).await?;
    let refused = other
        .put(&sample_entries(&ns, &demo_author(), 1, 64))
        .await
        .expect_err("a key demo/notes does not list is refused");
    println!(
        "auth       a key demo/notes does not list writes there: {:?} ({})",
        refused.code(),
        refused.message()
    );
    // The same credentials on a second connection (captured, and sent by
    // someone else): refused.
    let credentials: tonic::metadata::MetadataValue<_> =
        crate::auth::credentials(&demo_author()).parse()?;
    for attempt in ["first", "again"] {
        let channel = crate::client::channel(&addr, dial.tls.clone()).await?;
        let mut raw = proto::store_client::StoreClient::new(channel);
        let mut request = tonic::Request::new(proto::HeadRequest {});
        request
            .metadata_mut()
            .insert(crate::auth::AUTH_HEADER, credentials.clone());
        match raw.head(request).await {
            Ok(_) => {
                println!("auth       signed credentials, {attempt} on a new connection: served")
            }
            Err(e) => println!(
                "auth       signed credentials, {attempt} on a new connection: {:?} ({})",
                e.code(),
                e.message()
            ),
        }
    }
    let status = |operator: bool| {
        let addr = addr.clone();
        let tls = certs.client(operator);
        async move {
            let channel = crate::client::channel(&addr, Some(tls?)).await?;
            let status = ReplicationClient::new(channel)
                .peer_status(proto::PeerStatusRequest {})
                .await;
            anyhow::Ok(status)
        }
    };
    match status(false).await? {
        Err(e) if e.code() == tonic::Code::PermissionDenied => println!(
            "tls        PeerStatus without a certificate: {:?} ({})",
            e.code(),
            e.message()
        ),
        other => anyhow::bail!("PeerStatus without a certificate answered {other:?}"),
    }
    let peers = status(true).await??.into_inner().peers;
    println!(
        "tls        PeerStatus with the operator's certificate: {} peers, each paired over mutual TLS",
        peers.len()
    );
    Ok(())
}

/// Two devices, homes under `dir`, share a database's keys, edit one
/// document offline, push through the first and the last replica, and pull
/// until each holds the other's edits.
async fn clients(
    replicas: &[ReplicaProcess],
    dir: &std::path::Path,
    dial: &Dial,
) -> anyhow::Result<()> {
    use serde_json::json;

    use crate::database::Database;
    use crate::edit::{Edit, set_path};
    use crate::exchange::Exchange;
    use crate::keys::{KeyRing, key_path};

    let _ = std::fs::remove_dir_all(dir);
    let ns = Namespace::new("demo", "groceries")?;
    let (home_a, home_b) = (dir.join("a"), dir.join("b"));
    let keys = KeyRing::generate(1);
    keys.create(&key_path(&home_a, &ns))?;
    keys.for_another_device().create(&key_path(&home_b, &ns))?;
    let (a, b) = (
        Database::open(&home_a, ns.clone())?,
        Database::open(&home_b, ns.clone())?,
    );
    // Each device signs its requests with its own author key.
    let through = |r: &ReplicaProcess, db: &Database| -> anyhow::Result<Exchange> {
        let timeout = Duration::from_secs(10);
        let dial = dial.clone().signed_by(db.keys().author().clone());
        Ok(Exchange::grpc_with(&r.grpc.to_string(), timeout, &dial)?.only(ns.clone()))
    };
    let (first, last) = (
        through(&replicas[0], &a)?,
        through(&replicas[replicas.len() - 1], &b)?,
    );

    let mut doc_a = a
        .create(&json!({"title": "groceries", "items": []}))
        .await?;
    first.push(a.store()).await?;
    last.pull(b.store()).await?;
    let mut doc_b = b.load(doc_a.id()).await?;
    // Offline on both devices.
    for edit in [
        Edit::Set("owner".into(), json!("ann")),
        Edit::Insert("items.0".into(), json!("milk")),
    ] {
        edit.apply(&mut doc_a)?;
    }
    a.save(&mut doc_a).await?;
    set_path(&mut doc_b, "due", &json!("friday"))?;
    Edit::Insert("items.0".into(), json!("eggs")).apply(&mut doc_b)?;
    b.save(&mut doc_b).await?;
    let n = replicas.len();
    println!(
        "clients    devices A and B edit document {} offline; A pushes to replica-1, B to replica-{n}",
        doc_a.id()
    );
    first.push(a.store()).await?;
    last.push(b.store()).await?;
    // The mesh carries each device's change to the other replica.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (json_a, json_b) = loop {
        first.pull(a.store()).await?;
        last.pull(b.store()).await?;
        let (ja, jb) = (
            a.load(doc_a.id()).await?.to_json(),
            b.load(doc_a.id()).await?.to_json(),
        );
        if ja == jb {
            break (ja, jb);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the devices did not converge: {ja} / {jb}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("clients    both pulled and show the same document: {json_a}");
    anyhow::ensure!(json_a == json_b);
    println!(
        "clients    no replica can read it: each holds only sealed entries; try\n             mindoo-replica doc show --home {} -n demo/groceries {}",
        home_a.display(),
        doc_a.id()
    );
    Ok(())
}
