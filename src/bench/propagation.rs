//! `bench propagation`: in a full mesh of replica processes, the time from a
//! PutEntries acknowledged by replica-1 to the entry being stored on every
//! other replica, observed through live Watch streams. Prints p50/p99/max.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;

use super::sample_entries;
use crate::client::{StoreClient, endpoint};
use crate::entry::{EntryId, Namespace};
use crate::mesh::spawn_mesh;
use crate::proto;
use crate::proto::replication_client::ReplicationClient;

#[derive(Debug, Clone)]
pub struct PropagationOptions {
    pub replicas: usize,
    pub entries: usize,
    pub interval_ms: u64,
    pub exe: PathBuf,
}

type Arrivals = Arc<Mutex<HashMap<EntryId, Vec<Instant>>>>;

pub async fn propagation(opts: PropagationOptions) -> anyhow::Result<()> {
    anyhow::ensure!(opts.replicas >= 2, "needs at least 2 replicas");
    let dir = tempfile::tempdir()?;
    let members = spawn_mesh(&opts.exe, dir.path(), opts.replicas, false, |_| {}).await?;
    let n = members.len();

    // Wait until every replica streams from each of its peers.
    let deadline = Instant::now() + Duration::from_secs(60);
    for m in &members {
        let channel = endpoint(&m.process.grpc.to_string())?.connect().await?;
        let mut client = ReplicationClient::new(channel);
        loop {
            let status = client
                .peer_status(proto::PeerStatusRequest {})
                .await?
                .into_inner();
            if status.peers.iter().filter(|p| p.connected).count() == n - 1 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} never connected to all peers",
                m.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let arrivals: Arrivals = Arc::default();
    let mut watchers = tokio::task::JoinSet::new();
    for m in &members[1..] {
        let mut client = StoreClient::connect(&m.process.grpc.to_string()).await?;
        let mut stream = client.watch_from_head(false).await?;
        let arrivals = arrivals.clone();
        watchers.spawn(async move {
            while let Ok(Some(batch)) = stream.message().await {
                let now = Instant::now();
                let mut map = arrivals.lock().unwrap_or_else(|e| e.into_inner());
                for r in batch.records {
                    if let Ok(id) = EntryId::from_slice(&r.id) {
                        map.entry(id).or_default().push(now);
                    }
                }
            }
        });
    }

    let ns = Namespace::new("bench", "propagation")?;
    let key = SigningKey::from_bytes(&rand::random());
    let mut writer = StoreClient::connect(&members[0].process.grpc.to_string()).await?;
    let mut acks = Vec::with_capacity(opts.entries);
    for _ in 0..opts.entries {
        let entry = sample_entries(&ns, &key, 1, 1024);
        writer.put(&entry).await?;
        acks.push((entry[0].id, Instant::now()));
        tokio::time::sleep(Duration::from_millis(opts.interval_ms)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let complete = |map: &HashMap<EntryId, Vec<Instant>>| {
        acks.iter()
            .filter(|(id, _)| map.get(id).is_some_and(|v| v.len() >= n - 1))
            .count()
    };
    loop {
        let done = complete(&arrivals.lock().unwrap_or_else(|e| e.into_inner()));
        if done == acks.len() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {done} of {} entries reached every replica",
            acks.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watchers.abort_all();

    let map = std::mem::take(&mut *arrivals.lock().unwrap_or_else(|e| e.into_inner()));
    let mut latencies: Vec<f64> = acks
        .iter()
        .map(|(id, acked)| {
            let last = map[id].iter().max().copied().unwrap_or(*acked);
            last.saturating_duration_since(*acked).as_secs_f64() * 1e3
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!(
        "propagation: {n} replicas in a full mesh, {} entries of 1 KiB written to replica-1 every {} ms",
        acks.len(),
        opts.interval_ms
    );
    println!(
        "propagation: acknowledged -> stored on all {} others: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 <= 100 ms)",
        n - 1,
        pct(0.5),
        pct(0.99),
        latencies[latencies.len() - 1]
    );
    for m in &members {
        m.process.terminate();
    }
    for m in members {
        m.process.stop().await?;
    }
    Ok(())
}
