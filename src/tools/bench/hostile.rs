//! `bench hostile`: a well-behaved client beside hostile ones. First the
//! rate one replica process sustains for the client alone (closed loop),
//! then the client at half that rate, alone and then beside hostile
//! clients (half-open handshakes, rapid resets, CONTINUATION floods,
//! unread Watch streams with data, made-up methods, GetEntries naming one
//! id thousands of times): its throughput and p99 in both phases, and the
//! replica's RSS and open files at the start, at the peak and after the
//! attack.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{memory_mb, sample_entries};
use crate::client::StoreClient;
use crate::entry::Namespace;
use crate::tools::child::{ReplicaProcess, open_files_of};
use crate::tools::h2frames as frames;

#[derive(Debug, Clone)]
pub struct HostileOptions {
    /// Seconds each phase lasts.
    pub seconds: u64,
    /// Seconds to wait after the attack before the final RSS and fds.
    pub settle_secs: u64,
    pub exe: PathBuf,
}

/// Entries per write of the well-behaved client; each write is read back.
const BATCH: usize = 10;

pub async fn hostile(opts: HostileOptions) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let replica = ReplicaProcess::spawn(&opts.exe, dir.path(), false, &[]).await?;
    let addr = replica.grpc.to_string();
    let ns = Namespace::new("bench", "hostile")?;
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let phase = Duration::from_secs(opts.seconds);

    let mut client = StoreClient::connect(&addr).await?;
    // What the replica sustains for this client alone.
    let sustained = well_behaved(&mut client, &ns, &key, phase, None)
        .await?
        .rate;
    let target = sustained / 2.0;
    println!(
        "hostile: the replica sustains {sustained:.0} writes/s (each {BATCH} entries of 1 KiB, read back) for one client alone; the client now offers {target:.0}/s"
    );
    let alone = well_behaved(&mut client, &ns, &key, phase, Some(target)).await?;
    println!(
        "hostile: alone: {:.0} writes/s, p99 {:.2} ms",
        alone.rate, alone.p99_ms
    );

    // The baseline: the replica as the well-behaved client left it.
    let (base_rss, _) = memory_mb(&replica);
    let base_fds = replica.open_files();
    let stop = Arc::new(AtomicBool::new(false));
    let mut attackers = tokio::task::JoinSet::new();
    for kind in Attack::ALL {
        for _ in 0..kind.workers() {
            let (stop, grpc) = (stop.clone(), replica.grpc);
            attackers.spawn(async move { kind.run(grpc, &stop).await });
        }
    }
    // Peaks are sampled while the attack runs.
    let sampler = {
        let stop = stop.clone();
        let pid = replica.pid();
        tokio::spawn(async move {
            let mut peak_fds = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Some(pid) = pid {
                    peak_fds = peak_fds.max(open_files_of(pid));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            peak_fds
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut client = StoreClient::connect(&addr).await?;
    let beside = well_behaved(&mut client, &ns, &key, phase, Some(target)).await?;
    stop.store(true, Ordering::Relaxed);
    let peak_fds = sampler.await.unwrap_or(0);
    let (_, peak_rss) = memory_mb(&replica);
    attackers.abort_all();
    while attackers.join_next().await.is_some() {}
    println!(
        "hostile: beside hostile clients: {:.0} writes/s ({:.0} % of alone), p99 {:.2} ms (target >= 80 %, p99 <= 50 ms)",
        beside.rate,
        100.0 * beside.rate / alone.rate.max(1e-9),
        beside.p99_ms
    );

    tokio::time::sleep(Duration::from_secs(opts.settle_secs)).await;
    let (final_rss, _) = memory_mb(&replica);
    let final_fds = replica.open_files();
    println!(
        "hostile: replica RSS {base_rss:.0} MB before the attack, {peak_rss:.0} MB at the peak, {final_rss:.0} MB {} s after it (target <= 1.5x before); open files {base_fds} before, {peak_fds} at the peak, {final_fds} after (target <= before + 10)",
        opts.settle_secs
    );
    let status = replica.stop().await?;
    anyhow::ensure!(status.success(), "the replica exited with {status}");
    Ok(())
}

struct Phase {
    rate: f64,
    p99_ms: f64,
}

/// Writes `BATCH` entries and reads them back, again and again for
/// `length`: as fast as answered, or paced at `rate` writes/s.
async fn well_behaved(
    client: &mut StoreClient,
    ns: &Namespace,
    key: &ed25519_dalek::SigningKey,
    length: Duration,
    rate: Option<f64>,
) -> anyhow::Result<Phase> {
    let mut latencies = Vec::new();
    let start = Instant::now();
    let mut next = tokio::time::Instant::now();
    while start.elapsed() < length {
        if let Some(rate) = rate {
            tokio::time::sleep_until(next).await;
            next += Duration::from_secs_f64(1.0 / rate);
        }
        let batch = sample_entries(ns, key, BATCH, 1024);
        let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
        let t = Instant::now();
        client.put(&batch).await?;
        let back = client.get(ns, &ids).await?;
        anyhow::ensure!(back.len() == BATCH, "read back {} of {BATCH}", back.len());
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let rate = latencies.len() as f64 / start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let p99_ms = latencies
        .get(((latencies.len().max(1) - 1) as f64 * 0.99) as usize)
        .copied()
        .unwrap_or(0.0);
    Ok(Phase { rate, p99_ms })
}

#[derive(Debug, Clone, Copy)]
enum Attack {
    /// Connect and send nothing.
    HalfOpen,
    /// Open streams and reset them at once, thousands at a time.
    RapidReset,
    /// A header block that never ends.
    Continuation,
    /// Watch with data, never read.
    UnreadWatch,
    /// Calls to methods that do not exist.
    MadeUpMethods,
    /// GetEntries naming one id ten thousand times.
    RepeatedIds,
}

impl Attack {
    const ALL: [Attack; 6] = [
        Attack::HalfOpen,
        Attack::RapidReset,
        Attack::Continuation,
        Attack::UnreadWatch,
        Attack::MadeUpMethods,
        Attack::RepeatedIds,
    ];

    fn workers(self) -> usize {
        match self {
            Attack::HalfOpen => 8,
            Attack::UnreadWatch => 4,
            _ => 1,
        }
    }

    async fn run(self, addr: std::net::SocketAddr, stop: &AtomicBool) {
        let mut held = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut conn) = TcpStream::connect(addr).await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let sent = match self {
                // Connections kept open, the oldest let go past a number.
                Attack::HalfOpen | Attack::UnreadWatch => {
                    let (keep, pause_ms) = match self {
                        Attack::HalfOpen => (50, 20),
                        _ => {
                            let _ = conn.write_all(&frames::unread_watch()).await;
                            (25, 100)
                        }
                    };
                    held.push(conn);
                    if held.len() > keep {
                        held.remove(0);
                    }
                    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                    continue;
                }
                Attack::RapidReset => {
                    let request = frames::request("/mindoo.replica.v1.Store/Head");
                    let mut burst = frames::PREFACE.to_vec();
                    burst.extend(frames::settings());
                    for i in 0..2_000u32 {
                        burst.extend(frames::headers(2 * i + 1, frames::END_HEADERS, &request));
                        burst.extend(frames::rst(2 * i + 1));
                    }
                    conn.write_all(&burst).await
                }
                Attack::Continuation => {
                    let mut flood = frames::PREFACE.to_vec();
                    flood.extend(frames::settings());
                    let request = frames::request("/mindoo.replica.v1.Store/Head");
                    flood.extend(frames::headers(1, frames::END_STREAM, &request));
                    let filler = frames::block(&[("x-filler", &"y".repeat(100))]);
                    for _ in 0..2_000 {
                        flood.extend(frames::continuation(1, 0, &filler));
                    }
                    conn.write_all(&flood).await
                }
                Attack::MadeUpMethods => {
                    let mut calls = frames::PREFACE.to_vec();
                    calls.extend(frames::settings());
                    for i in 0..50u32 {
                        let path =
                            format!("/mindoo.replica.v1.Store/Made{}", rand::random::<u32>());
                        calls.extend(frames::headers(
                            2 * i + 1,
                            frames::END_HEADERS | frames::END_STREAM,
                            &frames::request(&path),
                        ));
                    }
                    conn.write_all(&calls).await
                }
                Attack::RepeatedIds => {
                    // GetEntries { namespace: bench/hostile, ids: [one id] × 10,000 }.
                    let mut message = vec![0x0a, 16, 0x0a, 5];
                    message.extend_from_slice(b"bench");
                    message.extend_from_slice(&[0x12, 7]);
                    message.extend_from_slice(b"hostile");
                    for _ in 0..10_000 {
                        message.extend_from_slice(&[0x12, 32]);
                        message.extend_from_slice(&[7; 32]);
                    }
                    let mut body = vec![0];
                    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
                    body.extend(message);
                    let mut call = frames::PREFACE.to_vec();
                    call.extend(frames::settings());
                    call.extend(frames::headers(
                        1,
                        frames::END_HEADERS,
                        &frames::request("/mindoo.replica.v1.Store/GetEntries"),
                    ));
                    for (i, chunk) in body.chunks(16_000).enumerate() {
                        let last = (i + 1) * 16_000 >= body.len();
                        let flags = if last { frames::END_STREAM } else { 0 };
                        call.extend(frames::frame(0x0, flags, 1, chunk));
                    }
                    conn.write_all(&call).await
                }
            };
            if sent.is_ok() {
                // Read whatever comes back until the server closes or a
                // moment passes, then start over.
                let mut buf = vec![0u8; 16 << 10];
                let _ = tokio::time::timeout(Duration::from_millis(200), async {
                    while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
                })
                .await;
            }
        }
    }
}
