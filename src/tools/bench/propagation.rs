//! `bench propagation`: in a full mesh of replica processes, the time from a
//! PutEntries acknowledged by replica-1 to the entry being stored on every
//! other replica, observed through live Watch streams. Prints p50/p99/max:
//! first for single entries at a fixed interval, then under load at each
//! offered rate (entries/s, written in 1 ms batches), with the CPU all
//! replicas used, and finally the rate at which the mesh saturates (writes
//! as fast as replica-1 takes them). Then, in plaintext, the time from
//! request to acknowledgement for batches that ask for one replica and for
//! two (write concern), at each offered rate up to 5,000/s. All but the
//! last in plaintext, then again over mutual TLS between the replicas and
//! to the clients.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{cpu_seconds, unsigned_entries};
use crate::client::{Dial, StoreClient};
use crate::entry::{EntryId, Namespace};
use crate::log::WriteConcern;
use crate::proto;
use crate::proto::replication_client::ReplicationClient;
use crate::tools::mesh::{MeshCerts, spawn_mesh};

#[derive(Debug, Clone)]
pub struct PropagationOptions {
    pub replicas: usize,
    pub entries: usize,
    pub interval_ms: u64,
    /// Offered rates (entries/s) for the load phases.
    pub rates: Vec<u64>,
    /// Seconds each load phase lasts.
    pub seconds: u64,
    pub exe: PathBuf,
}

type Arrivals = Arc<Mutex<HashMap<EntryId, Vec<Instant>>>>;

/// The mesh in plaintext, then the same over mutual TLS, in one run.
pub async fn propagation(opts: PropagationOptions) -> anyhow::Result<()> {
    anyhow::ensure!(opts.replicas >= 2, "needs at least 2 replicas");
    run(&opts, false).await?;
    run(&opts, true).await
}

async fn run(opts: &PropagationOptions, tls: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let label = match tls {
        false => "propagation",
        true => "propagation over mutual TLS",
    };
    let certs = match tls {
        true => Some(MeshCerts::make(&dir.path().join("tls"), opts.replicas)?),
        false => None,
    };
    // Unsigned entries, as in the runs before signatures were required;
    // clients unauthenticated, so that TLS alone is what differs.
    let members = spawn_mesh(&opts.exe, dir.path(), opts.replicas, false, |i, c| {
        if let Some(certs) = &certs {
            certs.configure(i, c);
        }
        c.auth.clients = "off".into();
        c.policy.require_signatures = false;
        // The writer calls once per entry, up to saturation: its per-client
        // rate would be what is measured.
        c.limits.client_requests_per_second = 10_000_000;
        c.limits.client_request_burst = 10_000_000;
    })
    .await?;
    let n = members.len();
    // The operator's certificate, for PeerStatus.
    let dial = Dial {
        tls: certs.as_ref().map(|c| c.client(true)).transpose()?,
        key: None,
    };

    // Wait until every replica streams from each of its peers.
    let deadline = Instant::now() + Duration::from_secs(60);
    for m in &members {
        let channel = crate::client::channel(&m.process.grpc.to_string(), dial.tls.clone()).await?;
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
        let mut client = StoreClient::connect_with(&m.process.grpc.to_string(), &dial).await?;
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
    let mut writer = StoreClient::connect_with(&members[0].process.grpc.to_string(), &dial).await?;
    let mut next_id = 0u64;
    let mut entries = |count: usize| {
        next_id += count as u64;
        unsigned_entries(&ns, next_id, count, 1024)
    };
    let mut acks = Vec::with_capacity(opts.entries);
    for _ in 0..opts.entries {
        let entry = entries(1);
        writer.put(&entry).await?;
        acks.push((entry[0].id, Instant::now()));
        tokio::time::sleep(Duration::from_millis(opts.interval_ms)).await;
    }
    let latencies = wait_all(&arrivals, &acks, n).await?;
    println!(
        "{label}: {n} replicas in a full mesh, {} entries of 1 KiB written to replica-1 every {} ms",
        acks.len(),
        opts.interval_ms
    );
    println!(
        "{label}: acknowledged -> stored on all {} others: {} (target p99 <= 100 ms)",
        n - 1,
        summary(&latencies)
    );

    let pids: Vec<u32> = members.iter().filter_map(|m| m.process.pid()).collect();
    let cpu = || pids.iter().filter_map(|&p| cpu_seconds(p)).sum::<f64>();
    for &rate in opts.rates.iter() {
        let per_ms = (rate / 1000).max(1) as usize;
        let ticks = opts.seconds * 1000;
        let mut acks = Vec::with_capacity(ticks as usize * per_ms);
        let (cpu0, start) = (cpu(), Instant::now());
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for _ in 0..ticks {
            tick.tick().await;
            let batch = entries(per_ms);
            writer.put(&batch).await?;
            let now = Instant::now();
            acks.extend(batch.iter().map(|e| (e.id, now)));
        }
        let offered = acks.len() as f64 / start.elapsed().as_secs_f64();
        let latencies = wait_all(&arrivals, &acks, n).await?;
        let cores = (cpu() - cpu0) / start.elapsed().as_secs_f64();
        println!(
            "{label}: offered {rate}/s (achieved {offered:.0}/s, {} entries): {} (target p99 <= 10 ms at 5000/s); replicas used {cores:.2} cores",
            acks.len(),
            summary(&latencies)
        );
    }

    // Saturation: write as fast as replica-1 acknowledges, and count how
    // fast entries become stored everywhere.
    if !opts.rates.is_empty() {
        let mut acks = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(opts.seconds) {
            let batch = entries(100);
            writer.put(&batch).await?;
            let now = Instant::now();
            acks.extend(batch.iter().map(|e| (e.id, now)));
        }
        wait_all(&arrivals, &acks, n).await?;
        let everywhere = start.elapsed().as_secs_f64();
        println!(
            "{label}: saturation: {} entries written as fast as replica-1 took them reached all replicas at {:.0} entries/s",
            acks.len(),
            acks.len() as f64 / everywhere
        );
    }
    // Write concern: request -> acknowledgement with k = 1 and k = 2, in
    // alternating phases at each rate, so that a noisy moment costs both.
    if !tls {
        for &rate in opts.rates.iter().filter(|&&r| r <= 5_000) {
            let mut phases = [(1, Vec::new()), (2, Vec::new())];
            for _ in 0..4 {
                for (k, latencies) in phases.iter_mut() {
                    let concern = WriteConcern::replicas(*k, Duration::from_secs(10));
                    let seconds = opts.seconds.div_ceil(4).max(1);
                    latencies.extend(
                        ack_latencies(&mut writer, &mut entries, rate, seconds, concern).await?,
                    );
                }
            }
            for (_, latencies) in phases.iter_mut() {
                latencies.sort_by(f64::total_cmp);
            }
            let (one, two) = (&phases[0].1, &phases[1].1);
            println!(
                "{label}: write concern at {rate}/s offered, request -> acknowledgement per batch: k = 1 {}; k = 2 {}; k = 2 adds p50 {:.2} ms, p99 {:.2} ms (target p99 <= 5 ms at 1000/s)",
                summary(one),
                summary(two),
                percentile(two, 0.5) - percentile(one, 0.5),
                percentile(two, 0.99) - percentile(one, 0.99),
            );
        }
    }
    watchers.abort_all();
    for m in &members {
        m.process.terminate();
    }
    for m in members {
        m.process.stop().await?;
    }
    Ok(())
}

/// Writes `rate` entries/s for `seconds` in 1 ms batches, each asking for
/// `concern`; returns each batch's request -> acknowledgement time in ms.
async fn ack_latencies(
    writer: &mut StoreClient,
    entries: &mut impl FnMut(usize) -> Vec<crate::entry::Entry>,
    rate: u64,
    seconds: u64,
    concern: WriteConcern,
) -> anyhow::Result<Vec<f64>> {
    let per_ms = (rate / 1000).max(1) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut latencies = Vec::with_capacity(seconds as usize * 1000);
    for _ in 0..seconds * 1000 {
        tick.tick().await;
        let batch = entries(per_ms);
        let sent = Instant::now();
        let (_, replicas) = writer.put_with(&batch, concern).await?;
        latencies.push(sent.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(
            replicas >= concern.replicas,
            "acknowledged by {replicas} replicas"
        );
    }
    Ok(latencies)
}

/// Waits until every acknowledged entry has reached the other `n - 1`
/// replicas; returns each entry's latency in ms, sorted. Forgets the
/// arrivals it used.
async fn wait_all(
    arrivals: &Arrivals,
    acks: &[(EntryId, Instant)],
    n: usize,
) -> anyhow::Result<Vec<f64>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = {
            let map = arrivals.lock().unwrap_or_else(|e| e.into_inner());
            acks.iter()
                .filter(|(id, _)| map.get(id).is_some_and(|v| v.len() >= n - 1))
                .count()
        };
        if done == acks.len() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {done} of {} entries reached every replica",
            acks.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut map = arrivals.lock().unwrap_or_else(|e| e.into_inner());
    let mut latencies: Vec<f64> = acks
        .iter()
        .map(|(id, acked)| {
            let times = map.remove(id).unwrap_or_default();
            let last = times.into_iter().max().unwrap_or(*acked);
            last.saturating_duration_since(*acked).as_secs_f64() * 1e3
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

fn summary(sorted: &[f64]) -> String {
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(sorted, 0.5),
        percentile(sorted, 0.99),
        sorted[sorted.len() - 1]
    )
}

/// The value at fraction `p` of `sorted` (nearest rank).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
