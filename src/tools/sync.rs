//! The client's sync commands, on the sync engine through
//! [`crate::exchange`]:
//! - `sync`: keeps this device's store in step with replicas (or devices
//!   serving their stores), in rounds (`--every`) or live (`--live`),
//!   offline-first: a peer that is away is backed off from and caught up
//!   with when it returns; one status line per round or change. With
//!   `--discover`, each round also syncs with the devices that announce
//!   their store on the local network ([`crate::discover`]).
//! - `discover`: lists those devices.
//! - `sync-local`: two stores on this machine, both ways, through the
//!   in-process adapter.
//!
//! In rounds, the home is held only during a round, so `doc` commands run
//! between rounds; live, it is held throughout.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::entry::Namespace;
use crate::exchange::{Exchange, Following};
use crate::home::{DEFAULT_WAIT, Home};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::replica::in_process::LocalPeer;
use crate::replica::{NodeIdentity, Replica};
use crate::store::Store;
use crate::sync::backoff::Backoff;
use crate::sync::device::DeviceStore;
use crate::sync::env::Env;
use crate::sync::local::Local;
use crate::tools::device::WriteConcernArgs;

/// `sync`.
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// The client's home directory.
    #[arg(long, env = "MINDOO_CLIENT_HOME", default_value = ".mindoo-client")]
    pub home: PathBuf,
    /// A database to sync, as `tenant/db`; repeatable. Default: every
    /// database this device holds keys for.
    #[arg(long = "namespace", short)]
    pub namespaces: Vec<String>,
    /// A replica's (or a serving device's) gRPC address; repeatable.
    #[arg(long = "replica", required_unless_present = "discover")]
    pub replicas: Vec<String>,
    /// Also sync, each round, with every device that announces its store
    /// on the local network (`serve --client-home … --advertise`).
    #[arg(long, conflicts_with = "live")]
    pub discover: bool,
    /// How long each round listens for devices (`3s`).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub discover_wait: Duration,
    /// Time between rounds (`30s`, `5m`, `500ms`).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, conflicts_with = "live")]
    pub every: Duration,
    /// Follow each peer live instead of in rounds: what either side stores
    /// reaches the other at once.
    #[arg(long)]
    pub live: bool,
    /// Stop after this many rounds (in rounds) or seconds (live).
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Seconds one push or pull of a round may take.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
    /// What pushes to the `--replica` addresses ask for (devices found on
    /// the network hold what they get alone).
    #[command(flatten)]
    pub concern: WriteConcernArgs,
}

/// `sync-local`.
#[derive(Debug, clap::Args)]
pub struct SyncLocalArgs {
    /// One client home.
    pub a: PathBuf,
    /// The other.
    pub b: PathBuf,
    /// Only this database, as `tenant/db`; repeatable. Default: every one
    /// in either store.
    #[arg(long = "namespace", short)]
    pub namespaces: Vec<String>,
    /// Seconds each direction may take.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

fn namespaces(given: &[String]) -> anyhow::Result<Vec<Namespace>> {
    given.iter().map(|n| Ok(Namespace::from_path(n)?)).collect()
}

/// `exchange` limited to `namespaces`.
fn filtered(mut exchange: Exchange, namespaces: &[Namespace]) -> Exchange {
    for ns in namespaces {
        exchange = exchange.only(ns.clone());
    }
    exchange
}

/// A device's store as a replica core in this process: what another store
/// in this process syncs with through the in-process adapter, known by the
/// device's name.
pub fn device_core(home: &Home, store: Arc<dyn Store>) -> Arc<Replica> {
    Arc::new(Replica::new(
        store,
        NodeIdentity::new(home.device_name()),
        Policy::default(),
        Limits::default(),
        0,
        Arc::new(Metrics::new()),
        CancellationToken::new(),
    ))
}

/// `sync-local A B`: pushes what B lacks of A, then pulls what A lacks of B.
pub async fn sync_local(args: SyncLocalArgs) -> anyhow::Result<()> {
    let only = namespaces(&args.namespaces)?;
    let (_home_a, store_a) = Home::open_with_store(&args.a, DEFAULT_WAIT).await?;
    let (home_b, store_b) = Home::open_with_store(&args.b, DEFAULT_WAIT).await?;
    let a: Arc<dyn Local> = Arc::new(DeviceStore::new(store_a, Policy::default()));
    let b = Arc::new(LocalPeer::new(device_core(&home_b, store_b)));
    let exchange = filtered(
        Exchange::new(b, Duration::from_secs(args.timeout_secs)),
        &only,
    );
    let pushed = exchange.push(a.clone()).await?;
    let pulled = exchange.pull(a).await?;
    println!(
        "{} -> {}: {} sent, {} new there; {} -> {}: {} new here",
        args.a.display(),
        args.b.display(),
        pushed.sent,
        pushed.stored,
        args.b.display(),
        args.a.display(),
        pulled.stored
    );
    Ok(())
}

/// `sync`: in rounds, or live.
pub async fn sync(
    args: SyncArgs,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut only = namespaces(&args.namespaces)?;
    if only.is_empty() {
        only = crate::keys::keyed_namespaces(&args.home)?;
        anyhow::ensure!(
            !only.is_empty(),
            "{} holds no database keys: `keys init` or `keys import` one, or name one with -n",
            args.home.display()
        );
    }
    let timeout = Duration::from_secs(args.timeout_secs);
    let concern = args.concern.concern()?;
    let exchanges = args
        .replicas
        .iter()
        .map(|a| {
            let exchange = Exchange::grpc(a, timeout)?.with_write_concern(concern);
            Ok(filtered(exchange, &only))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let names: Vec<String> = only.iter().map(|n| n.to_string()).collect();
    println!(
        "syncing {} with {} {}",
        names.join(", "),
        match (args.replicas.is_empty(), args.discover) {
            (false, true) => format!(
                "{} and devices found on the local network",
                args.replicas.join(", ")
            ),
            (true, _) => "devices found on the local network".to_owned(),
            (false, false) => args.replicas.join(", "),
        },
        match args.live {
            true => "live".to_owned(),
            false => format!("every {}", humantime::format_duration(args.every)),
        }
    );
    tokio::pin!(stop);
    match args.live {
        true => live(&args, exchanges, stop).await,
        false => rounds(&args, &only, exchanges, stop).await,
    }
}

/// What one round did with one peer.
fn round_line(address: &str, result: &anyhow::Result<(u64, u64)>) -> String {
    match result {
        Ok((sent, got)) => format!("{address} sent {sent} got {got}"),
        Err(e) => format!("{address} unreachable ({})", first_line(e)),
    }
}

fn first_line(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    text.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(160)
        .collect()
}

async fn rounds(
    args: &SyncArgs,
    only: &[Namespace],
    exchanges: Vec<Exchange>,
    mut stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<()> {
    let env = Env::system();
    let timeout = Duration::from_secs(args.timeout_secs);
    // Peers by the given address, or by the name of a device found.
    let mut peers: BTreeMap<String, Exchange> = exchanges
        .into_iter()
        .map(|e| (e.address().to_owned(), e))
        .collect();
    // Per peer: its backoff, and when it is next tried.
    let mut away: HashMap<String, (Backoff, Instant)> = HashMap::new();
    // This device's name, so that it does not sync with itself.
    let me = {
        let path = args.home.clone();
        tokio::task::spawn_blocking(move || Home::open(&path, DEFAULT_WAIT))
            .await??
            .device_name()
    };
    let mut round = 0u64;
    loop {
        round += 1;
        let started = Instant::now();
        let mut parts = Vec::new();
        // Devices are looked for before the home is taken, so `doc`
        // commands are not kept waiting while the round listens.
        let found = match args.discover {
            true => Some(crate::discover::browse(args.discover_wait, Some(&me)).await?),
            false => None,
        };
        let (home, store) = Home::open_with_store(&args.home, args.every.max(DEFAULT_WAIT)).await?;
        let local: Arc<dyn Local> = Arc::new(DeviceStore::new(store, Policy::default()));
        if let Some(found) = found {
            parts.push(format!("{} device(s) found", found.len()));
            for device in found {
                let Some(addr) = reachable(&device.addresses) else {
                    continue;
                };
                let addr = addr.to_string();
                if peers.get(&device.node).is_none_or(|e| e.address() != addr) {
                    let exchange = filtered(Exchange::grpc(&addr, timeout)?, only);
                    peers.insert(device.node, exchange);
                }
            }
        }
        for (key, exchange) in &peers {
            let label = match key == exchange.address() {
                true => key.clone(),
                false => format!("{key} ({})", exchange.address()),
            };
            if let Some((_, next)) = away.get(key)
                && Instant::now() < *next
            {
                let wait = next.saturating_duration_since(Instant::now());
                parts.push(format!(
                    "{label} away, next try in {}",
                    humantime::format_duration(Duration::from_secs(wait.as_secs().max(1)))
                ));
                continue;
            }
            let result = async {
                let pushed = exchange.push(local.clone()).await?;
                let pulled = exchange.pull(local.clone()).await?;
                anyhow::Ok((pushed.stored, pulled.stored))
            }
            .await;
            parts.push(round_line(&label, &result));
            match result {
                Ok(_) => {
                    away.remove(key);
                }
                Err(_) => {
                    let ceiling = args.every.max(Duration::from_secs(1)) * 10;
                    let (backoff, next) = away.entry(key.clone()).or_insert_with(|| {
                        (
                            Backoff::new(Duration::from_secs(1), ceiling),
                            Instant::now(),
                        )
                    });
                    *next = Instant::now() + backoff.next_delay(&env);
                }
            }
        }
        drop((local, home));
        println!(
            "round {round}: {} ({} ms)",
            parts.join("; "),
            started.elapsed().as_millis()
        );
        if args.stop_after.is_some_and(|n| round >= n) {
            return Ok(());
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(args.every) => {}
        }
    }
}

/// The address to reach a found device at: IPv4 first, then IPv6 that
/// needs no interface scope.
fn reachable(addresses: &[std::net::SocketAddr]) -> Option<std::net::SocketAddr> {
    addresses
        .iter()
        .find(|a| match a {
            std::net::SocketAddr::V4(_) => true,
            std::net::SocketAddr::V6(v6) => v6.scope_id() == 0,
        })
        .copied()
}

/// `discover`: the devices announcing their store, one line each.
pub async fn discover(wait_secs: u64) -> anyhow::Result<()> {
    let found = crate::discover::browse(Duration::from_secs(wait_secs), None).await?;
    for device in &found {
        let addrs: Vec<String> = device.addresses.iter().map(|a| a.to_string()).collect();
        println!("found {} {}", addrs.join(","), device.node);
    }
    if found.is_empty() {
        eprintln!("no device announced its store in {wait_secs} s");
    }
    Ok(())
}

/// One line for a followed peer.
fn live_line(address: &str, f: &Following) -> String {
    let pull = f.pull_status();
    let push = f.pushed.borrow().clone();
    let state = match (&pull.last_error, pull.connected) {
        (_, true) => "up".to_owned(),
        (Some(e), false) => format!("away ({})", e.lines().next().unwrap_or_default()),
        (None, false) => "connecting".to_owned(),
    };
    format!(
        "{address} {state}: sent {} (through {} of {}), got {} (through its {})",
        push.stored, push.through, push.head, pull.entries_pulled, pull.cursor_seq
    )
}

async fn live(
    args: &SyncArgs,
    exchanges: Vec<Exchange>,
    mut stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<()> {
    let (_home, store) = Home::open_with_store(&args.home, DEFAULT_WAIT).await?;
    let local: Arc<dyn Local> = Arc::new(DeviceStore::new(store, Policy::default()));
    let following: Vec<Following> = exchanges.iter().map(|e| e.follow(local.clone())).collect();
    let started = Instant::now();
    let mut last = String::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        let line = exchanges
            .iter()
            .zip(&following)
            .map(|(e, f)| live_line(e.address(), f))
            .collect::<Vec<_>>()
            .join("; ");
        if line != last {
            println!("{line}");
            last = line;
        }
        if args
            .stop_after
            .is_some_and(|s| started.elapsed() >= Duration::from_secs(s))
        {
            break;
        }
    }
    for f in following {
        f.stop().await;
    }
    Ok(())
}
