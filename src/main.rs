//! The `mindoo-replica` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mindoo_replica::config::{ConfigError, RawConfig, Settings};
use mindoo_replica::server::{self, Listeners};
use mindoo_replica::telemetry;
use mindoo_replica::tools::{backup, bench, check, device, inspect, keys, mesh, scrub, sim, sync};

#[derive(Parser)]
#[command(name = "mindoo-replica", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a replica until SIGTERM or SIGINT.
    Serve {
        /// TOML config file; MINDOO_REPLICA__SECTION__KEY variables override it.
        #[arg(long, short, env = "MINDOO_REPLICA_CONFIG")]
        config: Option<PathBuf>,
        /// Serve a device's own store (its client home) rather than the
        /// configured storage, under the device's name: other devices sync
        /// with it directly. The home is held while it serves.
        #[arg(long, value_name = "HOME")]
        client_home: Option<PathBuf>,
        /// With --client-home: announce the device on the local network
        /// (mDNS), so `sync --discover` on other devices finds it.
        #[arg(long, requires = "client_home")]
        advertise: bool,
    },
    /// List the devices that announce their store on the local network.
    Discover {
        /// Seconds to listen.
        #[arg(long, default_value_t = 3)]
        wait_secs: u64,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Start a local full mesh of replica processes and show entries flowing between them.
    Mesh {
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// Where the replicas keep their databases and config files.
        #[arg(long, default_value = ".mindoo-mesh")]
        data_dir: PathBuf,
        /// How many entries the demo writes.
        #[arg(long, default_value_t = 1000)]
        entries: usize,
        /// Stop after the demo instead of running until Ctrl-C.
        #[arg(long)]
        exit: bool,
        /// Mutual TLS between the replicas, TLS from clients: makes a CA
        /// and certificates under the data dir.
        #[arg(long)]
        tls: bool,
    },
    /// Take an online backup of a running replica: kept on its volume, or
    /// streamed here into one file (`--out`).
    Backup(backup::BackupArgs),
    /// Put a backup in place of a stopped replica's database, keeping what
    /// it replaces; the restored replica takes a new incarnation.
    Restore(backup::RestoreArgs),
    /// Read every entry back and check it: a running replica's (`--addr`;
    /// what is not as stored is taken out of service and fetched again from
    /// its peers), or a stopped one's store (`--data`; nothing changed).
    /// Prints each entry that is not as stored.
    Scrub(scrub::ScrubArgs),
    /// Compare a running replica's set with its peers' now (or one peer's,
    /// `--peer`) and move what either lacks; prints what each found and
    /// moved.
    Repair(scrub::RepairArgs),
    /// Run the deterministic simulation of a mesh under faults for many
    /// seeds, or replay one (`--seed N --trace`).
    Sim(sim::SimArgs),
    /// Show a running replica's head and how its pulls from each peer are going.
    Status {
        /// The replica's gRPC address.
        #[arg(long, default_value = "127.0.0.1:7700")]
        addr: String,
    },
    /// Write one new entry through the first replica and wait until every
    /// other one serves it; exits non-zero if one does not in time.
    Check {
        /// A replica's gRPC address; repeat for each replica to check.
        #[arg(long = "addr", required = true)]
        addrs: Vec<String>,
        /// The `tenant/db` namespace the entry goes to.
        #[arg(long, default_value = "mindoo-check/probe")]
        namespace: String,
        /// Seconds for all of it, waiting for replicas to come up included.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
        /// Replicas, the first included, that must hold the entry durably
        /// before the first acknowledges it (write concern).
        #[arg(long, default_value_t = 1)]
        replicas: u32,
    },
    /// List a running replica's peers, one line each.
    Peers {
        #[arg(long, default_value = "127.0.0.1:7700")]
        addr: String,
    },
    /// A database's keys on this device: the author key and the database
    /// keys entries are encrypted with (never sent to a replica).
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Documents of a database on this device, offline in its own store.
    Doc {
        #[command(subcommand)]
        command: device::DocCommand,
    },
    /// Send a database's entries a replica lacks, through the sync engine.
    Push(device::PushArgs),
    /// Fetch a database's entries this device lacks from a replica.
    Pull(device::ExchangeArgs),
    /// Keep this device's databases in step with replicas or serving
    /// devices, in rounds or live; a line per round.
    Sync(sync::SyncArgs),
    /// Sync two client homes on this machine directly, both ways.
    SyncLocal(sync::SyncLocalArgs),
    /// Benchmarks that print their figures.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (defaults, file, environment) as TOML.
    Print {
        #[arg(long, short, env = "MINDOO_REPLICA_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Clients stream entries into one replica process over loopback gRPC,
    /// fsynced before each acknowledgement and not, in the same run.
    Append(bench::AppendOptions),
    /// A device store pushes its entries through the sync engine to a
    /// replica, beside the append path measured in the same run.
    Push(bench::PushOptions),
    /// Automerge changes made, sealed and pushed by one device, pulled and
    /// materialized by another, beside Automerge alone in the same run.
    Client(bench::ClientOptions),
    /// A pull of one namespace from a replica holding many, beside the
    /// same pull from a replica holding only it: time and records read.
    Filtered(bench::FilteredOptions),
    /// A replica holding N entries backed up while a client writes: kept on
    /// its volume and streamed into a file, beside a plain copy; a restore
    /// of the file and a scrub of the restored store.
    Backup(bench::BackupOptions),
    /// Two sides holding N entries each reconcile d random differences over
    /// loopback gRPC, beside negentropy on the same sets; the fingerprint
    /// index's memory and rebuild time.
    Reconcile(bench::ReconcileOptions),
    /// An empty replica pulls every entry from one peer; then the idle pair's keepalive bytes.
    Bootstrap {
        #[arg(long, default_value_t = 1_000_000)]
        entries: usize,
        /// Ciphertext bytes per entry.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Seconds to measure the idle pair.
        #[arg(long, default_value_t = 10)]
        idle_secs: u64,
    },
    /// MissingIds over held ids (bodies in blob files): time and bytes read.
    MissingIds {
        #[arg(long, default_value_t = 10_000)]
        entries: usize,
        /// Ciphertext bytes per entry.
        #[arg(long, default_value_t = 65_536)]
        size: usize,
    },
    /// A well-behaved client alone and beside each attack in turn: its
    /// throughput and p99, whether new clients get answered, the replica's
    /// RSS and open files during and after.
    Hostile {
        /// Seconds each phase lasts.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Seconds to wait after each attack before the final RSS and files.
        #[arg(long, default_value_t = 30)]
        settle_secs: u64,
        /// The attacks to run, in this order.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "slowloris,idle,slow-read,mixed,flood"
        )]
        attacks: Vec<bench::Attack>,
        /// A config override for the replica, `section.key=value`
        /// (as MINDOO_REPLICA__SECTION__KEY); repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Time for a new entry to reach every replica of a full mesh.
    Propagation {
        #[arg(long, default_value_t = 5)]
        replicas: usize,
        #[arg(long, default_value_t = 1000)]
        entries: usize,
        /// Pause between writes.
        #[arg(long, default_value_t = 5)]
        interval_ms: u64,
        /// Offered rates (entries/s) for the load phases; empty skips them.
        #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
        rates: Vec<u64>,
        /// Seconds each load phase lasts.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
}

fn load(config: Option<&std::path::Path>) -> Result<(RawConfig, Settings), ConfigError> {
    let raw = RawConfig::load(config)?;
    let settings = raw.validate()?;
    Ok((raw, settings))
}

/// glibc gives each thread that allocates its own arena, up to eight per
/// core, and memory freed in one arena stays there: a replica's RSS ends
/// up well above what it uses. Four arenas keep it close, at no cost
/// `bench bootstrap` can measure (two cost about a sixth of the rate).
/// `MALLOC_ARENA_MAX` in the environment wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called before any other thread exists; mallopt only
        // changes allocator tuning.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 4);
        }
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve {
            config,
            client_home,
            advertise,
        } => {
            let settings = match load(config.as_deref()) {
                Ok((_, settings)) => settings,
                Err(e) => return config_error(e),
            };
            runtime.block_on(serve(settings, config, client_home, advertise))
        }
        Command::Config {
            command: ConfigCommand::Print { config },
        } => match load(config.as_deref()) {
            Ok((raw, _)) => {
                print!("{}", raw.to_toml());
                Ok(())
            }
            Err(e) => return config_error(e),
        },
        Command::Mesh {
            replicas,
            data_dir,
            entries,
            exit,
            tls,
        } => std::env::current_exe()
            .map_err(anyhow::Error::from)
            .and_then(|exe| {
                runtime.block_on(mesh::run(mesh::MeshOptions {
                    replicas,
                    data_dir,
                    entries,
                    exit,
                    tls,
                    exe,
                }))
            }),
        Command::Keys { command } => keys::run(command),
        Command::Doc { command } => runtime.block_on(device::doc(command)),
        Command::Push(args) => runtime.block_on(device::push(args)),
        Command::Pull(args) => runtime.block_on(device::pull(args)),
        Command::Sync(args) => runtime.block_on(async {
            let stop = shutdown_signal()?;
            sync::sync(args, stop).await
        }),
        Command::Discover { wait_secs } => runtime.block_on(sync::discover(wait_secs)),
        Command::SyncLocal(args) => runtime.block_on(sync::sync_local(args)),
        Command::Backup(args) => runtime.block_on(backup::backup(args)),
        Command::Restore(args) => backup::restore(args),
        Command::Scrub(args) => runtime.block_on(scrub::scrub(args)),
        Command::Repair(args) => runtime.block_on(scrub::repair(args)),
        Command::Sim(args) => sim::sim(args),
        Command::Status { addr } => runtime.block_on(inspect::status(&addr, true)),
        Command::Peers { addr } => runtime.block_on(inspect::status(&addr, false)),
        Command::Check {
            addrs,
            namespace,
            timeout_secs,
            replicas,
        } => runtime.block_on(async {
            let namespace = mindoo_replica::entry::Namespace::from_path(&namespace)?;
            check::check(check::CheckOptions {
                addrs,
                namespace,
                timeout: std::time::Duration::from_secs(timeout_secs),
                replicas,
            })
            .await
        }),
        Command::Bench { command } => std::env::current_exe()
            .map_err(anyhow::Error::from)
            .and_then(|exe| runtime.block_on(run_bench(command, exe))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_bench(command: BenchCommand, exe: PathBuf) -> anyhow::Result<()> {
    match command {
        BenchCommand::Append(opts) => bench::append(opts, exe).await,
        BenchCommand::Push(opts) => bench::push(opts, exe).await,
        BenchCommand::Client(opts) => bench::client(opts, exe).await,
        BenchCommand::Filtered(opts) => bench::filtered(opts, exe).await,
        BenchCommand::Backup(opts) => bench::backup(opts, exe).await,
        BenchCommand::Reconcile(opts) => bench::reconcile(opts, exe).await,
        BenchCommand::Bootstrap {
            entries,
            size,
            idle_secs,
        } => {
            bench::bootstrap(bench::BootstrapOptions {
                entries,
                ciphertext_bytes: size,
                idle_secs: idle_secs.max(1),
                exe,
            })
            .await
        }
        BenchCommand::MissingIds { entries, size } => {
            bench::missing_ids(bench::MissingOptions {
                entries,
                ciphertext_bytes: size,
                exe,
            })
            .await
        }
        BenchCommand::Hostile {
            seconds,
            settle_secs,
            attacks,
            overrides,
        } => {
            bench::hostile(bench::HostileOptions {
                seconds: seconds.max(1),
                settle_secs,
                attacks,
                overrides,
                exe,
            })
            .await
        }
        BenchCommand::Propagation {
            replicas,
            entries,
            interval_ms,
            rates,
            seconds,
        } => {
            bench::propagation(bench::PropagationOptions {
                replicas,
                entries: entries.max(1),
                interval_ms,
                rates,
                seconds: seconds.max(1),
                exe,
            })
            .await
        }
    }
}

fn config_error(e: ConfigError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

async fn serve(
    mut settings: Settings,
    config: Option<PathBuf>,
    client_home: Option<PathBuf>,
    advertise: bool,
) -> anyhow::Result<()> {
    telemetry::init(&settings.log);
    match mindoo_replica::connections::raise_open_files_limit() {
        Ok((before, after)) => tracing::info!(before, after, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-files limit"),
    }
    if client_home.is_some() {
        // The user's other devices sync with this one; what it serves is
        // sealed for holders of the database keys.
        tracing::info!(
            "client auth: off for a device serving its store to the user's other devices"
        );
        settings.auth.access = mindoo_replica::access::AccessPolicy::open();
    }
    let (peers, peers_rx) = tokio::sync::watch::channel(settings.replication.clone());
    let (access, access_rx) = tokio::sync::watch::channel(settings.auth.access.clone());
    // A device's access stays as set above whatever a reload reads.
    let access = match client_home {
        Some(_) => tokio::sync::watch::channel(settings.auth.access.clone()).0,
        None => access,
    };
    let reload = tokio::spawn(mindoo_replica::config::reload::follow(
        config, peers, access,
    ));
    let shutdown = shutdown_signal()?;
    let listeners = match server::inherited_listeners()? {
        Some(listeners) => listeners,
        None => Listeners::bind(&settings.server).await?,
    };
    let (store, home) = match client_home {
        Some(path) => {
            let (home, store) = mindoo_replica::home::Home::open_with_store(
                &path,
                mindoo_replica::home::DEFAULT_WAIT,
            )
            .await?;
            settings.replication.advertise = Some(home.device_name());
            // A device has no load balancer to wait for when it stops.
            settings.server.shutdown_delay = std::time::Duration::ZERO;
            (store, Some(home))
        }
        None => {
            let node = settings.node_name(listeners.grpc_addr()?);
            (server::open_store(&settings.storage, &node).await?, None)
        }
    };
    let announced = match (&home, advertise) {
        (Some(home), true) => {
            let port = listeners.grpc_addr()?.port();
            let name = home.device_name();
            let announced = mindoo_replica::discover::advertise(&name, port)?;
            tracing::info!(device = %name, port, "announced on the local network");
            Some(announced)
        }
        _ => None,
    };
    // Ready: the store is open and the sockets accept connections.
    println!(
        "{}",
        server::ready_line(listeners.grpc_addr()?, listeners.metrics_addr())
    );
    std::io::stdout().flush()?;
    let result =
        server::serve_with(settings, store, listeners, shutdown, peers_rx, access_rx).await;
    // The goodbye waits for the mDNS daemon.
    tokio::task::spawn_blocking(move || drop(announced)).await?;
    reload.abort();
    result
}

/// Installs the SIGTERM and SIGINT handlers now; the future resolves on either.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
