//! `bench hostile`: whether a replica keeps serving well-behaved clients,
//! old and new, while hostile ones attack it, and whether it gives back
//! what the attack took.
//!
//! One replica process (metrics on) goes through every phase in turn:
//!
//! 1. **Baseline.** The well-behaved client, from 127.0.0.2, writes
//!    [`clients::BATCH`] entries of 1 KiB and reads them back, again and
//!    again: first closed loop (the rate the replica sustains for it), then
//!    paced at half that rate: its `alone` throughput and p99, measured
//!    again just before each attack.
//! 2. **Each attack** of `--attacks`, from 127.0.0.1 ([`Attack`]):
//!    `slowloris`, `idle`, `slow-read`, `mixed` (half-open handshakes,
//!    rapid resets, CONTINUATION floods, unread Watches, made-up methods,
//!    GetEntries naming one id thousands of times) and `flood` (a client
//!    with a valid key calling as much as it can). Once it has ramped up,
//!    for `--seconds`:
//!    - the well-behaved client offers the same paced rate on a new
//!      connection of its own: throughput as % of alone, and p99;
//!    - a prober from 127.0.0.3 connects anew every 50 ms and asks
//!      Health/Check and Store/Head, within 1 s: the share answered, and
//!      p50/p99 of connect + both calls (a failure counting as 1 s);
//!    - the replica's RSS, open files, `send_data_held_bytes` and
//!      `connections_open` are sampled every 200 ms for their peaks.
//!
//!    Then the attack stops (its connections close) and, `--settle-secs`
//!    later, RSS and open files are read again. Before `slow-read` the
//!    bench writes 64 entries of 1 MiB - 4 KiB, so its Watches (from the
//!    start of the log, with data) ask for big data: the replica should
//!    hold no more than its send budget for them, so RSS should grow by at
//!    most that budget + 128 MB.
//!
//! Client authentication is on, as it is by default: the well-behaved
//! client and the prober sign with keys of their own, and the attackers
//! with one valid key they share, so their calls get as far as any
//! client's (`--set auth.clients=off` runs them all unsigned).
//!
//! The well-behaved client and the prober each run on a thread and
//! runtime of their own, as clients on other machines would: their calls
//! wait for the replica (and the two cores everything shares), never behind
//! the attackers' tasks in this process.
//!
//! Each attack prints one line starting `hostile: <attack>:` with the
//! targets, the replica's own count of connections it refused, evicted or
//! closed on a timeout during the phase, and how many connections the
//! attacker made and held open at most. The phases share the process: each
//! attack's "before" is what the previous one left after settling.
//! `--set section.key=value` passes config overrides to the replica (for
//! example a shorter `server.send_timeout_ms`, to see it act within a phase).

mod attack;
mod clients;
mod flood;
mod mixed;
mod sample;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

pub use attack::Attack;
use attack::{AttackStats, Signer};
use clients::{GoodClient, Load, Prober, Probes};
use sample::{Cpu, Usage, metrics_text};

use super::{metric_sum, sample_entries, wait_quiet};
use crate::client::StoreClient;
use crate::entry::Namespace;
use crate::tools::child::ReplicaProcess;

#[derive(Debug, Clone)]
pub struct HostileOptions {
    /// Seconds each measurement lasts.
    pub seconds: u64,
    /// Seconds to wait after each attack before the final RSS and files.
    pub settle_secs: u64,
    /// The attacks, in the order they run.
    pub attacks: Vec<Attack>,
    /// Replica config overrides, `section.key=value`.
    pub overrides: Vec<String>,
    pub exe: PathBuf,
}

const GOOD_CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
const PROBER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));
/// Time an attack gets to open its connections before measuring.
const RAMP: Duration = Duration::from_secs(2);
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// `limits.max_send_data_mb` unless overridden.
const DEFAULT_SEND_BUDGET_MB: f64 = 64.0;
/// RSS growth allowed beside the send budget under `slow-read`.
const SLOW_READ_HEADROOM_MB: f64 = 128.0;

/// The replica counters of connections it closed, as printed.
const CLOSED: [(&str, &str); 6] = [
    ("refused", "mindoo_replica_connections_refused_total"),
    ("evicted", "mindoo_replica_connections_evicted_total"),
    (
        "handshake timeouts",
        "mindoo_replica_connection_handshake_timeouts_total",
    ),
    ("idle", "mindoo_replica_connection_idle_closed_total"),
    (
        "header timeouts",
        "mindoo_replica_connection_header_timeouts_total",
    ),
    (
        "send timeouts",
        "mindoo_replica_connection_send_timeouts_total",
    ),
];

pub async fn hostile(opts: HostileOptions) -> anyhow::Result<()> {
    // Thousands of attacking connections live in this process.
    if let Err(e) = crate::connections::raise_open_files_limit() {
        eprintln!("hostile: cannot raise the open-files limit: {e}");
    }
    let env = replica_env(&opts.overrides)?;
    // Client authentication is on (the default), and the attackers hold
    // a valid key of their own; `--set auth.clients=off` lets anyone in.
    let signs = !opts
        .overrides
        .iter()
        .any(|o| o.replace(' ', "") == "auth.clients=off");
    let signer = Signer(signs.then(|| ed25519_dalek::SigningKey::from_bytes(&[66; 32])));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let send_budget_mb = opts
        .overrides
        .iter()
        .find_map(|o| o.strip_prefix("limits.max_send_data_mb="))
        .map_or(Ok(DEFAULT_SEND_BUDGET_MB), str::parse)
        .context("limits.max_send_data_mb")?;
    let dir = tempfile::tempdir()?;
    let replica = ReplicaProcess::spawn(&opts.exe, dir.path(), true, &env).await?;
    let metrics = replica.metrics.context("the replica serves no metrics")?;
    let addr = replica.grpc.to_string();
    let length = Duration::from_secs(opts.seconds);
    let good = GoodClient {
        addr: addr.clone(),
        source: GOOD_CLIENT,
        ns: Namespace::new("bench", "hostile")?,
        key: ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
        signs,
    };
    let prober = Prober {
        addr: addr.clone(),
        source: PROBER,
        key: signs.then(|| ed25519_dalek::SigningKey::from_bytes(&[10; 32])),
    };
    println!(
        "hostile: client authentication {}",
        match signs {
            true => "on: the attackers sign with one valid key of their own",
            false => "off: anyone may call",
        }
    );

    let sustained = apart(good.clone().run(length, None)).await?;
    let target = sustained.rate / 2.0;
    anyhow::ensure!(
        target > 0.0,
        "the well-behaved client got nothing done alone: {}",
        sustained.first_failure.unwrap_or_default()
    );
    println!(
        "hostile: the replica sustains {:.0} writes/s (each {} entries of 1 KiB, read back) for one client alone; the client now offers {target:.0}/s",
        sustained.rate,
        clients::BATCH
    );
    let alone = apart(good.clone().run(length, Some(target))).await?;
    println!(
        "hostile: alone: {:.0} writes/s, p99 {:.2} ms, {} failed (measured again before each attack)",
        alone.rate, alone.p99_ms, alone.failures
    );

    for &attack in &opts.attacks {
        if attack == Attack::SlowRead {
            write_big_entries(&good).await?;
        }
        wait_quiet(&replica, Duration::from_secs(10)).await;
        // The client alone again, just before the attack: the share
        // compares like with like on a machine whose speed drifts.
        let alone = apart(good.clone().run(length, Some(target))).await?;
        let callers = (&good, &prober, &signer);
        let phase = Phase::run(attack, &replica, metrics, callers, target, &opts).await;
        println!("{}", phase.report(&alone, send_budget_mb));
        for (who, failure) in [
            ("good client", &phase.load.first_failure),
            ("prober", &phase.probes.first_failure),
        ] {
            if let Some(failure) = failure {
                println!("hostile: {}: first {who} failure: {failure}", attack.name());
            }
        }
    }
    let status = replica.stop().await?;
    anyhow::ensure!(status.success(), "the replica exited with {status}");
    Ok(())
}

/// `section.key=value` overrides as `MINDOO_REPLICA__SECTION__KEY`
/// variables. Unless `log.filter` is among them, h2's warnings are left
/// out: it logs one for every rapid-reset connection `mixed` makes.
fn replica_env(overrides: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut env: Vec<(String, String)> = [
        ("MINDOO_REPLICA__LOG__FILTER", "warn,h2=error"),
        ("MINDOO_REPLICA__AUTH__CLIENTS", "required"),
        ("MINDOO_REPLICA__AUTH__READERS", "*"),
        ("MINDOO_REPLICA__AUTH__WRITERS", "*"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .into();
    for o in overrides {
        let (key, value) = o
            .split_once('=')
            .with_context(|| format!("--set {o:?}: expected section.key=value"))?;
        let key = key.trim().to_uppercase().replace('.', "__");
        env.push((format!("MINDOO_REPLICA__{key}"), value.trim().to_owned()));
    }
    Ok(env)
}

/// 64 entries of 1 MiB - 4 KiB, for `slow-read`'s Watches to ask for.
async fn write_big_entries(good: &GoodClient) -> anyhow::Result<()> {
    let dial = crate::client::Dial {
        tls: None,
        key: good.signs.then(|| good.key.clone()),
    };
    let mut client = StoreClient::connect_with(&good.addr, &dial).await?;
    for _ in 0..64 {
        let entry = sample_entries(&good.ns, &good.key, 1, (1 << 20) - 4096);
        client.put(&entry).await?;
    }
    Ok(())
}

/// One attack's figures.
struct Phase {
    attack: Attack,
    load: Load,
    probes: Probes,
    before: Usage,
    peak: Usage,
    after: Usage,
    /// [`CLOSED`] counters' growth over the phase.
    closed: [Option<f64>; CLOSED.len()],
    /// Connections the attacker made, and the most it held at once.
    attacker: (u64, usize),
    /// Cores the replica and this process (attacker, clients) used while
    /// measuring.
    cores: (f64, f64),
}

/// Runs a client on a thread and runtime of its own, as a client on
/// another machine would be: its calls never wait behind the attackers'
/// tasks in this process, only for the replica (and the shared cores).
fn apart<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a client runtime starts")
            .block_on(work)
    })
}

impl Phase {
    async fn run(
        attack: Attack,
        replica: &ReplicaProcess,
        metrics: SocketAddr,
        (good, prober, signer): (&GoodClient, &Prober, &Signer),
        rate: f64,
        opts: &HostileOptions,
    ) -> Phase {
        let counters = |text: String| CLOSED.map(|(_, name)| metric_sum(&text, name));
        let closed_before = counters(metrics_text(metrics).await);
        let before = Usage::now(replica, metrics).await;
        let mut peak = before;
        let stats = Arc::new(AttackStats::default());
        let attackers = attack.start(replica.grpc, &stats, signer);
        let ramp = tokio::time::Instant::now() + RAMP;
        while tokio::time::Instant::now() < ramp {
            peak = peak.max(Usage::now(replica, metrics).await);
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        let length = Duration::from_secs(opts.seconds);
        let cpu = Cpu::now(replica);
        let load = apart(good.clone().run(length, Some(rate)));
        let probes = apart(prober.clone().run(length));
        while !(load.is_finished() && probes.is_finished()) {
            peak = peak.max(Usage::now(replica, metrics).await);
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        let cores = cpu.cores_since(replica);
        drop(attackers);
        let (load, probes) = (load.await, probes.await);
        tokio::time::sleep(Duration::from_secs(opts.settle_secs)).await;
        let after = Usage::now(replica, metrics).await;
        let closed_after = counters(metrics_text(metrics).await);
        let closed =
            std::array::from_fn(|i| Some(closed_after[i]? - closed_before[i].unwrap_or(0.0)));
        Phase {
            attack,
            load: load.unwrap_or_default(),
            probes: probes.unwrap_or_default(),
            before,
            peak,
            after,
            closed,
            attacker: stats.snapshot(),
            cores,
        }
    }

    fn report(&self, alone: &Load, send_budget_mb: f64) -> String {
        let (p, l) = (&self.probes, &self.load);
        let mut line = format!(
            "hostile: {}: new clients {:.1} % answered (Health+Head p50 {:.1} ms, p99 {:.1} ms; target >= 99 %, p99 <= 100 ms); good client {:.0} % of alone ({:.0} of {:.0} writes/s), p99 {:.1} ms, {} failed (target >= 80 %, p99 <= 50 ms); RSS {:.0} -> {:.0} -> {:.0} MB, open files {} -> {} -> {}",
            self.attack.name(),
            100.0 * p.answered as f64 / p.attempts.max(1) as f64,
            p.p50_ms,
            p.p99_ms,
            100.0 * l.rate / alone.rate.max(1e-9),
            l.rate,
            alone.rate,
            l.p99_ms,
            l.failures,
            self.before.rss_mb,
            self.peak.rss_mb,
            self.after.rss_mb,
            self.before.open_files,
            self.peak.open_files,
            self.after.open_files,
        );
        let or_dash = |v: Option<f64>, precision: usize| {
            v.map_or_else(|| "-".to_owned(), |v| format!("{v:.precision$}"))
        };
        if self.attack == Attack::SlowRead {
            line += &format!(
                "; send data held peak {} MB, RSS growth {:.0} MB (target <= {send_budget_mb:.0} + {SLOW_READ_HEADROOM_MB:.0} MB)",
                or_dash(self.peak.send_data_held_mb, 1),
                self.peak.rss_mb - self.before.rss_mb,
            );
        }
        let closed: Vec<String> = CLOSED
            .iter()
            .zip(self.closed)
            .map(|((what, _), n)| format!("{what} {}", or_dash(n, 0)))
            .collect();
        let (connects, held) = self.attacker;
        line += &format!(
            "; replica closed: {}; connections open peak {}; attacker made {connects} connections, held {held} at most; CPU replica {:.1} cores, bench {:.1}",
            closed.join(", "),
            or_dash(self.peak.connections_open, 0),
            self.cores.0,
            self.cores.1,
        );
        line
    }
}
