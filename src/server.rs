//! The replica process: opens the store, serves gRPC (store, health,
//! reflection) and `/metrics` on listeners the caller has already bound, and
//! shuts down in order when the shutdown future resolves:
//!
//! 1. health reports NOT_SERVING (and waits `shutdown_delay` for load balancers);
//! 2. the replication workers stop;
//! 3. new calls are refused, live streams end with UNAVAILABLE, PutEntries
//!    stops after the batch in hand;
//! 4. in-flight calls get `drain_timeout` to finish;
//! 5. the store is flushed, and `run` returns.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tonic::transport::Server;

use tonic_health::ServingStatus;

use tokio::sync::watch;

use crate::access::{AccessPolicy, AdminAccess};
use crate::auth::Verifier;
use crate::config::{ServerSettings, Settings, StorageSettings};
use crate::connections;
use crate::fair::{FairLayer, Shares};
use crate::identity::IdentifyLayer;
use crate::metrics::Metrics;
use crate::metrics::layer::GrpcMetricsLayer;
use crate::proto;
use crate::replica::{NodeIdentity, Replica};
use crate::replication::Replicator;
use crate::replication::settings::ReplicationSettings;
use crate::service::replication::{Operations, ReplicationService};
use crate::service::{Mesh, StoreService};
use crate::store::memory::MemoryStore;
use crate::store::rocks::RocksStore;
use crate::store::{Store, StoreError};
use crate::sync::env::Env;
use crate::sync::grpc::GrpcPeer;
use crate::sync::peer::Connector;
use crate::sync::status::StatusBoard;
use crate::tls::NameSource;

/// The sockets a replica serves on, bound before it starts.
pub struct Listeners {
    pub grpc: TcpListener,
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses from the settings.
    pub async fn bind(settings: &ServerSettings) -> anyhow::Result<Self> {
        let grpc = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding server.listen {}", settings.listen))?;
        let metrics = match settings.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding server.metrics_listen {addr}"))?,
            ),
            None => None,
        };
        Ok(Self { grpc, metrics })
    }

    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// The line `serve` prints once its listeners are bound.
pub const READY_PREFIX: &str = "mindoo-replica listening";

/// Environment variable naming inherited listening sockets: `grpc_fd,metrics_fd`
/// (`-` for no metrics). A parent binds the sockets, so their addresses are
/// known, and race-free, before any child starts.
pub const LISTEN_FDS_ENV: &str = "MINDOO_REPLICA_LISTEN_FDS";

/// The listeners a parent passed down through [`LISTEN_FDS_ENV`], if any.
pub fn inherited_listeners() -> anyhow::Result<Option<Listeners>> {
    use std::os::fd::FromRawFd;
    let Ok(spec) = std::env::var(LISTEN_FDS_ENV) else {
        return Ok(None);
    };
    let (grpc, metrics) = spec
        .split_once(',')
        .with_context(|| format!("{LISTEN_FDS_ENV}={spec:?} is not grpc_fd,metrics_fd"))?;
    let take = |fd: &str| -> anyhow::Result<tokio::net::TcpListener> {
        let fd: i32 = fd
            .parse()
            .with_context(|| format!("{LISTEN_FDS_ENV}: {fd:?} is not a file descriptor"))?;
        // SAFETY: the parent passed this descriptor for us to own; nothing
        // else in this process refers to it.
        let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        listener.set_nonblocking(true)?;
        Ok(tokio::net::TcpListener::from_std(listener)?)
    };
    Ok(Some(Listeners {
        grpc: take(grpc)?,
        metrics: match metrics {
            "-" => None,
            fd => Some(take(fd)?),
        },
    }))
}

/// Formats the ready line for the given addresses.
pub fn ready_line(grpc: SocketAddr, metrics: Option<SocketAddr>) -> String {
    let metrics = metrics.map_or_else(|| "off".to_owned(), |a| a.to_string());
    format!("{READY_PREFIX} grpc={grpc} metrics={metrics}")
}

/// Opens the configured store for the replica known as `node`. A RocksDB
/// directory last opened by another node takes a new incarnation.
pub async fn open_store(
    settings: &StorageSettings,
    node: &str,
) -> Result<Arc<dyn Store>, StoreError> {
    match settings {
        StorageSettings::Memory(key) => Ok(Arc::new(match key {
            Some(key) => MemoryStore::with_fingerprints(key.clone()),
            None => MemoryStore::new(),
        })),
        StorageSettings::Rocks(config) => {
            let mut config = config.clone();
            config.node = Some(node.to_owned());
            tokio::task::spawn_blocking(move || RocksStore::open(&config))
                .await
                .map_err(|e| StoreError::Backend(format!("open task failed: {e}")))?
                .map(|s| Arc::new(s) as Arc<dyn Store>)
        }
    }
}

/// Opens the store and serves until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let node = settings.node_name(listeners.grpc_addr()?);
    let store = open_store(&settings.storage, &node).await?;
    serve(settings, store, listeners, shutdown).await
}

/// Serves `store` until `shutdown` resolves, with the replication settings
/// fixed at start.
pub async fn serve(
    settings: Settings,
    store: Arc<dyn Store>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (_keep, peers) = watch::channel(settings.replication.clone());
    let (_keep_access, access) = watch::channel(settings.auth.access.clone());
    serve_with(settings, store, listeners, shutdown, peers, access).await
}

/// Says at start-up what an acknowledgement means on this replica.
fn log_durability(storage: &StorageSettings) {
    match storage {
        StorageSettings::Rocks(rocks) if rocks.sync_writes => tracing::info!(
            "durability: writes are acknowledged once fsynced (storage.sync_writes; commits \
             waiting together share one fsync)"
        ),
        StorageSettings::Rocks(_) => tracing::warn!(
            "durability: writes are acknowledged BEFORE they are fsynced \
             (storage.sync_writes = false): a power cut loses what was acknowledged since \
             the last fsync; a process crash loses nothing"
        ),
        StorageSettings::Memory(_) => tracing::warn!(
            "durability: NONE, the store is in memory (storage.backend = memory): everything \
             is lost when the process stops"
        ),
    }
}

/// Serves `store` until `shutdown` resolves; replication follows `peers`
/// and calls are checked against `access`, so a config reload can add and
/// remove peers and change who may do what. See the module docs for the
/// shutdown order.
pub async fn serve_with(
    settings: Settings,
    store: Arc<dyn Store>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
    peers: watch::Receiver<ReplicationSettings>,
    access: watch::Receiver<AccessPolicy>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let stopping = CancellationToken::new();
    let identity = NodeIdentity::new(settings.node_name(listeners.grpc_addr()?));
    match settings.policy.require_signatures {
        true => tracing::info!(
            "signatures: entries clients write must be signed by their author \
             (policy.require_signatures)"
        ),
        false => tracing::warn!(
            "signatures: NOT required of what clients write (policy.require_signatures = \
             false): unsigned or forged entries are stored and forwarded unless a namespace \
             requires signatures"
        ),
    }
    log_access(&settings);
    log_durability(&settings.storage);
    let verifier = Arc::new(Verifier::new(
        settings.auth.max_clock_skew,
        settings.auth.max_recent_requests,
    ));
    let replica = Arc::new(Replica::new(
        store,
        identity,
        settings.policy.clone(),
        settings.limits,
        settings.log_tail_bytes,
        metrics.clone(),
        stopping.clone(),
    ));

    let (acceptor, connector) = secure(&settings, &peers)?;
    let admin = match acceptor.is_none() && !settings.auth.access.clients_required {
        true => AdminAccess::Open,
        false => AdminAccess::PeersAndOperators,
    };
    let board = StatusBoard::default();
    let mesh = Mesh {
        board: board.clone(),
        settings: peers.clone(),
    };
    let stop_replication = CancellationToken::new();
    let replicator = Replicator::new(
        replica.clone(),
        connector,
        peers,
        board.clone(),
        Env::system(),
        stop_replication.clone(),
    );
    let repairs = replicator.repairs();
    let mut replicator = AbortOnDropHandle::new(tokio::spawn(replicator.run()));
    let mut scrub = AbortOnDropHandle::new(tokio::spawn({
        let repairs = repairs.clone();
        crate::replica::scrub::run_periodic(
            replica.clone(),
            settings.scrub,
            Env::system(),
            move || {
                repairs.request(None);
            },
            stopping.clone(),
        )
    }));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<proto::store_server::StoreServer<StoreService>>()
        .await;
    health.set_service_status("", ServingStatus::Serving).await;
    let readiness =
        AbortOnDropHandle::new(tokio::spawn(follow_writes(replica.clone(), health.clone())));
    let _trim = AbortOnDropHandle::new(tokio::spawn(return_free_memory()));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let grpc_addr = listeners.grpc_addr()?;
    let mut limits = settings.server.connections;
    let backups = match &settings.storage {
        StorageSettings::Rocks(rocks) => Some(crate::service::backup::Backups {
            dir: rocks.path.join(crate::store::rocks::backup::BACKUPS_DIR),
        }),
        StorageSettings::Memory(_) => None,
    };
    let store_files = match &settings.storage {
        StorageSettings::Rocks(rocks) => rocks.max_open_files,
        StorageSettings::Memory(_) => 0,
    };
    let open_files = connections::open_files_limit();
    limits.max_connections =
        connections::connections_that_fit(limits.max_connections, store_files, open_files);
    limits.max_per_address = limits.max_per_address.min(limits.max_connections);
    if limits.max_connections < settings.server.connections.max_connections {
        tracing::warn!(
            open_files,
            store_files,
            max_connections = limits.max_connections,
            "the open-files limit is too low for server.max_connections beside the store: \
             accepting fewer connections"
        );
    }
    if let Err(e) = connections::deepen_backlog(&listeners.grpc) {
        tracing::warn!(error = %e, "could not lengthen the listen backlog");
    }
    let incoming = connections::incoming(listeners.grpc, limits, acceptor, metrics.clone());
    let grpc = Server::builder()
        // HTTP/2 settings chosen for a server facing clients it does not
        // control: bounded streams, headers and windows; resets and errors
        // beyond a handful end the connection; dead peers are noticed.
        .max_concurrent_streams(Some(settings.server.max_streams_per_connection))
        .http2_max_header_list_size(Some(16 << 10))
        .initial_stream_window_size(Some(1 << 20))
        .initial_connection_window_size(Some(2 << 20))
        .http2_max_pending_accept_reset_streams(Some(64))
        .http2_max_local_error_reset_streams(Some(256))
        .tcp_keepalive(Some(std::time::Duration::from_secs(60)))
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        // The caller is known first: metrics label calls by it, and the
        // fair shares charge it.
        .layer(IdentifyLayer { verifier })
        .layer(GrpcMetricsLayer::new(metrics.clone(), served_methods()?))
        .layer(connections::CallsLayer)
        .layer(FairLayer {
            shares: Arc::new(Shares::new(settings.clients, metrics.clone())),
        })
        .layer(tower::util::MapResponseLayer::new(
            connections::slices::sliced,
        ))
        .add_service(health_service.clone())
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(StoreService::server(replica.clone(), access.clone(), mesh))
        .add_service(ReplicationService::server(
            replica.clone(),
            Operations {
                board: board.clone(),
                repairs: repairs.clone(),
                backups,
            },
            admin,
            access.clone(),
        ))
        .serve_with_incoming_shutdown(incoming, stopping.clone().cancelled_owned());
    tokio::pin!(grpc);

    let metrics_server = listeners.metrics.map(|listener| {
        let addr = listener.local_addr().ok();
        tracing::info!(?addr, "serving /metrics");
        let task = tokio::spawn(serve_metrics(
            listener,
            replica.clone(),
            health_service.clone(),
        ));
        AbortOnDropHandle::new(task)
    });
    let stats = replica.stats();
    tracing::info!(
        %grpc_addr,
        node = %replica.identity().node,
        incarnation = %replica.incarnation(),
        head_seq = stats.head_seq,
        entries = stats.entries,
        "replica serving"
    );

    serve_until(grpc.as_mut(), shutdown).await?;

    tracing::info!("shutting down: health NOT_SERVING");
    drop(readiness);
    health
        .set_not_serving::<proto::store_server::StoreServer<StoreService>>()
        .await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    // Keep accepting through the delay: a load balancer's or kubelet's
    // probe opens a new connection each time and must read NOT_SERVING.
    serve_until(
        grpc.as_mut(),
        tokio::time::sleep(settings.server.shutdown_delay),
    )
    .await?;
    stop_replication.cancel();
    if tokio::time::timeout(settings.server.drain_timeout, &mut replicator)
        .await
        .is_err()
    {
        tracing::warn!("replication workers did not stop within the drain timeout");
    }
    stopping.cancel();
    match tokio::time::timeout(settings.server.drain_timeout, &mut grpc).await {
        Ok(result) => result.context("gRPC server failed while draining")?,
        Err(_) => tracing::warn!(
            timeout = ?settings.server.drain_timeout,
            "drain deadline passed; closing the remaining calls"
        ),
    }
    // A scrub pass under way keeps where it stood.
    if tokio::time::timeout(std::time::Duration::from_secs(5), &mut scrub)
        .await
        .is_err()
    {
        tracing::warn!("the scrub did not stop within 5 s");
    }
    drop(metrics_server);
    replica.flush().await.context("flushing the store")?;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Says at start who may reach what.
fn log_access(settings: &Settings) {
    let access = &settings.auth.access;
    if !access.clients_required {
        tracing::warn!(
            "client auth: OFF (auth.clients = \"off\"): anyone who reaches the gRPC port may \
             read and write every namespace"
        );
        return;
    }
    let listed = access.namespaces.len();
    let default = &access.default;
    tracing::info!(
        namespaces_with_rules = listed,
        default_readers = default.readers.keys.len() + default.readers.any as usize,
        default_writers = default.writers.keys.len() + default.writers.any as usize,
        "client auth: required: clients sign requests with their key; auth.readers, \
         auth.writers and auth.namespaces say what each key may do"
    );
}

/// TLS for the gRPC port and for dialing peers, when `[tls]` is on; the
/// names of peers follow the topology as it is reloaded.
fn secure(
    settings: &Settings,
    peers: &watch::Receiver<ReplicationSettings>,
) -> anyhow::Result<(Option<connections::Acceptor>, Connector)> {
    let Some(tls) = settings.tls.clone() else {
        tracing::warn!(
            "tls: OFF: the gRPC port takes plaintext, and peers are not authenticated \
             (set tls.enabled with the mesh's certificates in production)"
        );
        return Ok((None, GrpcPeer::connector()));
    };
    let peers = peers.clone();
    let files = tls.files.clone();
    let names: NameSource = Arc::new(move || tls.names(peers.borrow().peer_name_patterns()));
    let server = crate::tls::server(files.clone(), names.clone()).context("tls")?;
    let client = crate::tls::peer_client(files.clone(), names.clone()).context("tls")?;
    tracing::info!(
        cert = %files.cert.display(),
        "tls: on: the gRPC port takes TLS only, and peers present certificates from the mesh CA"
    );
    let acceptor = connections::Acceptor {
        tls: Arc::new(server),
        names,
    };
    Ok((Some(acceptor), GrpcPeer::tls_connector(Arc::new(client))))
}

/// Drives the gRPC server (its accept loop included) until `until` is
/// done; the server ending first is an error.
async fn serve_until<E: std::error::Error + Send + Sync + 'static>(
    mut grpc: std::pin::Pin<&mut impl Future<Output = Result<(), E>>>,
    until: impl Future,
) -> anyhow::Result<()> {
    tokio::select! {
        result = &mut grpc => {
            result.context("gRPC server failed")?;
            anyhow::bail!("gRPC server stopped unexpectedly");
        }
        _ = until => Ok(()),
    }
}

/// Hands memory freed inside the allocator back to the system every few
/// seconds. glibc keeps what a burst freed (many clients, large messages)
/// in its arenas, so RSS would stay near its peak long after the load;
/// this brings it back down.
async fn return_free_memory() {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only returns free memory to the system.
        let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
    }
}

/// Readiness follows the store: the Store service reports NOT_SERVING while
/// the store refuses writes, SERVING once it takes them again. Reads go on
/// meanwhile, and the overall status (liveness) stays SERVING, so an
/// orchestrator stops sending writes but does not restart a replica that
/// recovers by itself. While writes fail, a write that means nothing is
/// tried every second, so recovery is noticed without a client's write.
async fn follow_writes(replica: Arc<Replica>, health: tonic_health::server::HealthReporter) {
    let mut state = replica.write_state();
    let mut serving = true;
    loop {
        let failing = state.borrow_and_update().is_some();
        if failing == serving {
            serving = !failing;
            match serving {
                true => {
                    health
                        .set_serving::<proto::store_server::StoreServer<StoreService>>()
                        .await
                }
                false => {
                    health
                        .set_not_serving::<proto::store_server::StoreServer<StoreService>>()
                        .await
                }
            }
        }
        if failing {
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                    replica.probe_writes().await;
                }
            }
        } else if state.changed().await.is_err() {
            return;
        }
    }
}

/// Every method this server answers, as `package.Service/Method`, read from
/// the descriptor sets of the services it mounts.
fn served_methods() -> anyhow::Result<Vec<String>> {
    use prost::Message;
    let sets = [
        proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut methods = Vec::new();
    for set in sets {
        let set = prost_types::FileDescriptorSet::decode(set)?;
        for file in set.file {
            for service in &file.service {
                for method in &service.method {
                    methods.push(format!(
                        "{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    Ok(methods)
}

/// The operations listener: `/metrics` over HTTP/1.1, and `grpc.health.v1`
/// over HTTP/2, so probes reach the replica however busy its gRPC listener
/// is (its connection caps and deadlines are for clients).
async fn serve_metrics<H>(listener: TcpListener, replica: Arc<Replica>, health: H)
where
    H: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    H::Future: Send + 'static,
{
    let health = tonic::service::Routes::new(health).into_axum_router();
    let app = health.route(
        "/metrics",
        axum::routing::get(move || {
            let replica = replica.clone();
            async move {
                let body = replica.render_metrics().await;
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    // Metrics stay up through the drain; the owner aborts this task after it.
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics server failed");
    }
}
