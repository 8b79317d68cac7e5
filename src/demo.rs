//! `mindoo-replica demo`: starts a replica on embedded RocksDB with metrics on,
//! then acts as a client: writes signed entries, shows a rejected forgery,
//! reads entries back and verifies them, and watches a new entry arrive live.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use ed25519_dalek::SigningKey;
use tokio_util::sync::CancellationToken;

use crate::bench::sample_entries;
use crate::client::StoreClient;
use crate::config::RawConfig;
use crate::entry::Namespace;
use crate::local::http_get;
use crate::proto;
use crate::replica::PutOutcome;
use crate::server::{self, Listeners};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub data_dir: PathBuf,
    pub entries: usize,
    /// Stop after the demo instead of serving until Ctrl-C.
    pub exit: bool,
}

/// Binds `preferred`, or an ephemeral port when it is taken.
async fn bind(preferred: &str) -> anyhow::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(preferred).await {
        Ok(l) => Ok(l),
        Err(_) => Ok(tokio::net::TcpListener::bind("127.0.0.1:0").await?),
    }
}

pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let mut raw = RawConfig::default();
    let db_path = opts.data_dir.join("replica-1");
    raw.storage.path = db_path.display().to_string();
    let settings = raw.validate()?;
    let listeners = Listeners {
        grpc: bind("127.0.0.1:7700").await?,
        metrics: Some(bind("127.0.0.1:9700").await?),
    };
    let grpc = listeners.grpc_addr()?;
    let metrics = listeners.metrics_addr().context("metrics listener")?;
    let stop = CancellationToken::new();
    let server = tokio::spawn(server::run(
        settings,
        listeners,
        stop.clone().cancelled_owned(),
    ));
    println!(
        "replica-1  gRPC {grpc}  metrics http://{metrics}/metrics  RocksDB {}",
        db_path.display()
    );

    let result = show(grpc, metrics, opts.entries).await;
    if result.is_ok() && !opts.exit {
        println!("\nThe replica keeps serving. Try:");
        println!("  grpcurl -plaintext {grpc} list");
        println!("  grpcurl -plaintext {grpc} mindoo.replica.v1.Store/Head");
        println!("  curl -s http://{metrics}/metrics | grep mindoo_replica_entries");
        println!("Ctrl-C stops it.");
        tokio::signal::ctrl_c().await?;
    }
    stop.cancel();
    server.await.context("replica task")??;
    result
}

async fn show(grpc: SocketAddr, metrics: SocketAddr, count: usize) -> anyhow::Result<()> {
    let mut client = StoreClient::connect(&grpc.to_string()).await?;
    let ns = Namespace::new("demo", "notes")?;
    let author = SigningKey::from_bytes(blake3::hash(b"mindoo demo author").as_bytes());
    let entries = sample_entries(&ns, &author, count, 1024);

    let start = Instant::now();
    let mut stored = 0;
    let mut duplicate = 0;
    for batch in entries.chunks(250) {
        for outcome in client.put(batch).await? {
            match outcome {
                PutOutcome::Stored => stored += 1,
                PutOutcome::Duplicate => duplicate += 1,
                PutOutcome::Rejected(r) => anyhow::bail!("demo entry rejected: {r}"),
            }
        }
    }
    println!(
        "put        {count} signed entries (1 KiB ciphertext each) in {:.0} ms: {stored} stored, {duplicate} duplicate",
        start.elapsed().as_secs_f64() * 1e3
    );
    let again = client.put(&entries[..10]).await?;
    let dups = again
        .iter()
        .filter(|o| **o == PutOutcome::Duplicate)
        .count();
    println!("put again  10 of them: {dups} reported as duplicates, nothing stored twice");

    // A forged entry: the bytes were changed after the id was computed.
    let mut forged = entries[0].data().to_vec();
    let at = forged.len() - 100;
    forged[at] ^= 1;
    let resp = client
        .raw()
        .put_entries(futures::stream::iter([proto::PutEntriesRequest {
            entries: vec![proto::Entry {
                id: bytes::Bytes::copy_from_slice(&entries[0].id.0),
                data: forged.into(),
            }],
        }]))
        .await?
        .into_inner()
        .message()
        .await?
        .context("no response")?;
    if let Some(r) = resp.rejections.first() {
        println!("forgery    rejected: {}", r.detail);
    }

    let ids: Vec<_> = entries.iter().take(5).map(|e| e.id).collect();
    let back = client.get(&ns, &ids).await?;
    println!(
        "get        {} entries read back; every id re-hashed and matched (e.g. {} kind={} doc={} ciphertext={} B)",
        back.len(),
        &back[0].id.to_hex()[..16],
        back[0].envelope.kind,
        String::from_utf8_lossy(&back[0].envelope.doc_id),
        back[0].ciphertext().len()
    );
    let unknown = sample_entries(&ns, &author, 1, 16)[0].id;
    let missing = client.missing(&ns, &[ids[0], unknown]).await?;
    println!(
        "missing    asked for 2 ids, the replica lacks {}",
        missing.len()
    );

    // Watch from the head, then write one entry and time its arrival.
    let head = client.raw().head(proto::HeadRequest {}).await?.into_inner();
    let mut watch = client
        .raw()
        .watch(proto::WatchRequest {
            cursor: head.cursor,
            include_data: true,
            namespaces: vec![],
        })
        .await?
        .into_inner();
    let fresh = sample_entries(&ns, &author, 1, 1024);
    let sent = Instant::now();
    client.put(&fresh).await?;
    let batch = watch.message().await?.context("watch ended")?;
    println!(
        "watch      new entry {} arrived on a live Watch stream {:.1} ms after the put was sent",
        &crate::entry::EntryId::from_slice(&batch.records[0].id)?.to_hex()[..16],
        sent.elapsed().as_secs_f64() * 1e3
    );

    let h = client.head().await?;
    println!(
        "head       incarnation {} head_seq {} entries {}",
        h.incarnation, h.head_seq, h.entry_count
    );
    let text = http_get(metrics, "/metrics").await?;
    println!("metrics    (from http://{metrics}/metrics)");
    for line in text.lines().filter(|l| {
        l.starts_with("mindoo_replica_entries_stored_total")
            || l.starts_with("mindoo_replica_entries_duplicate_total")
            || l.starts_with("mindoo_replica_entries_rejected_total{reason=\"id_mismatch\"}")
            || l.starts_with("mindoo_replica_store_entries")
            || (l.starts_with("mindoo_replica_grpc_requests_total") && l.contains("PutEntries"))
    }) {
        println!("  {line}");
    }
    Ok(())
}
