//! The well-behaved client and the prober, each from a loopback address
//! of its own, so a cap on connections per address that the attackers hit
//! is not theirs.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::client::{StoreClient, endpoint};
use crate::entry::Namespace;
use crate::tools::bench::sample_entries;

/// Entries per write of the well-behaved client; each write is read back.
pub const BATCH: usize = 10;
/// Longest the well-behaved client waits for a connection or a write and
/// its read-back before it counts a failure and reconnects.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_EVERY: Duration = Duration::from_millis(50);
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Writes `BATCH` entries of 1 KiB and reads them back, again and again,
/// on one connection (a new one after a failure).
#[derive(Clone)]
pub struct GoodClient {
    pub addr: String,
    pub source: IpAddr,
    pub ns: Namespace,
    pub key: ed25519_dalek::SigningKey,
    /// Sign each request with `key` (client authentication on).
    pub signs: bool,
}

/// What the well-behaved client got done.
#[derive(Debug, Clone, Default)]
pub struct Load {
    /// Writes (each read back) per second.
    pub rate: f64,
    pub p99_ms: f64,
    pub failures: u64,
    pub first_failure: Option<String>,
}

impl GoodClient {
    /// For `length`: as fast as answered, or paced at `rate` writes/s.
    pub async fn run(self, length: Duration, rate: Option<f64>) -> Load {
        let mut load = Load::default();
        let mut latencies = Vec::new();
        let mut client = None;
        let start = Instant::now();
        let mut next = tokio::time::Instant::now();
        while start.elapsed() < length {
            if let Some(rate) = rate {
                tokio::time::sleep_until(next).await;
                next += Duration::from_secs_f64(1.0 / rate);
            }
            let t = Instant::now();
            let done = tokio::time::timeout(CALL_TIMEOUT, self.write_and_read(&mut client)).await;
            match done.map_err(anyhow::Error::from).and_then(|r| r) {
                Ok(()) => latencies.push(t.elapsed().as_secs_f64() * 1e3),
                Err(e) => {
                    load.failures += 1;
                    load.first_failure.get_or_insert_with(|| format!("{e:#}"));
                    client = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        load.rate = latencies.len() as f64 / start.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        load.p99_ms = percentile(&latencies, 0.99);
        load
    }

    async fn write_and_read(&self, client: &mut Option<StoreClient>) -> anyhow::Result<()> {
        let client = match client {
            Some(c) => c,
            None => client.insert(self.connect().await?),
        };
        let batch = sample_entries(&self.ns, &self.key, BATCH, 1024);
        let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
        client.put(&batch).await?;
        let back = client.get(&self.ns, &ids).await?;
        anyhow::ensure!(back.len() == BATCH, "read back {} of {BATCH}", back.len());
        Ok(())
    }

    async fn connect(&self) -> anyhow::Result<StoreClient> {
        let channel = endpoint(&self.addr)?
            .local_address(Some(self.source))
            .connect()
            .await?;
        Ok(StoreClient::signed(
            channel,
            self.signs.then(|| self.key.clone()),
        ))
    }
}

/// A new client every [`PROBE_EVERY`]: connects, asks Health/Check and
/// Store/Head, and hangs up, all within [`PROBE_TIMEOUT`].
#[derive(Clone)]
pub struct Prober {
    pub addr: String,
    pub source: IpAddr,
    /// Signs its Head calls with this key, when given.
    pub key: Option<ed25519_dalek::SigningKey>,
}

/// What the prober saw. The percentiles are over every attempt, a failed
/// one counting as [`PROBE_TIMEOUT`].
#[derive(Debug, Clone, Default)]
pub struct Probes {
    pub attempts: usize,
    pub answered: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub first_failure: Option<String>,
}

impl Prober {
    pub async fn run(self, length: Duration) -> Probes {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut attempts = tokio::task::JoinSet::new();
        let start = Instant::now();
        while start.elapsed() < length {
            tick.tick().await;
            let prober = self.clone();
            attempts.spawn(async move {
                let t = Instant::now();
                match tokio::time::timeout(PROBE_TIMEOUT, prober.probe()).await {
                    Ok(Ok(())) => Ok(t.elapsed()),
                    Ok(Err(e)) => Err(format!("{e:#}")),
                    Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
                }
            });
        }
        let mut probes = Probes::default();
        let mut times = Vec::new();
        while let Some(joined) = attempts.join_next().await {
            probes.attempts += 1;
            match joined.map_err(|e| e.to_string()).and_then(|r| r) {
                Ok(t) => {
                    probes.answered += 1;
                    times.push(t.as_secs_f64() * 1e3);
                }
                Err(e) => {
                    probes.first_failure.get_or_insert(e);
                    times.push(PROBE_TIMEOUT.as_secs_f64() * 1e3);
                }
            }
        }
        times.sort_by(f64::total_cmp);
        probes.p50_ms = percentile(&times, 0.5);
        probes.p99_ms = percentile(&times, 0.99);
        probes
    }

    async fn probe(&self) -> anyhow::Result<()> {
        let channel = endpoint(&self.addr)?
            .local_address(Some(self.source))
            .connect()
            .await?;
        let health = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner();
        anyhow::ensure!(
            health.status == ServingStatus::Serving as i32,
            "health status {}",
            health.status
        );
        StoreClient::signed(channel, self.key.clone())
            .head()
            .await?;
        Ok(())
    }
}

/// The `q` quantile of sorted values (0 when there are none).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len().max(1) - 1) as f64 * q).round() as usize)
        .copied()
        .unwrap_or(0.0)
}
