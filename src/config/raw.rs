//! The configuration file's schema as written, with the built-in defaults:
//! what `config print` shows and what [`RawConfig::validate`] checks.

use serde::{Deserialize, Serialize};

use crate::limits::Limits;

/// The configuration as written, before validation. `config print` shows it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub storage: RawStorage,
    pub limits: RawLimits,
    pub policy: RawPolicy,
    pub replication: RawReplication,
    pub tls: RawTls,
    pub auth: RawAuth,
    pub quotas: RawQuotas,
    pub log: RawLog,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// gRPC listen address.
    pub listen: String,
    /// Prometheus `/metrics` listen address; empty disables the endpoint.
    pub metrics_listen: String,
    /// How long to wait, once health reports NOT_SERVING, before draining.
    pub shutdown_delay_ms: u64,
    /// How long in-flight calls may take to finish on shutdown.
    pub drain_timeout_ms: u64,
    /// gRPC connections open at once; at the cap the connection idle
    /// longest is closed to make room, and a new one is refused when none
    /// is idle.
    pub max_connections: u64,
    /// Connections from one source address (raise it for many clients
    /// behind one NAT or proxy address); capped at `max_connections`.
    pub max_connections_per_address: u64,
    /// A connection that has not started HTTP/2 within this long is closed.
    pub handshake_timeout_ms: u64,
    /// A request's header block, or any HTTP/2 frame, once begun must end
    /// within this long, or the connection is closed.
    pub header_timeout_ms: u64,
    /// A connection whose calls hold response data and that takes none of
    /// it for this long is closed.
    pub send_timeout_ms: u64,
    /// A connection with no call open for this long is closed (clients
    /// reconnect when they next call).
    pub idle_connection_timeout_ms: u64,
    /// Concurrent calls (HTTP/2 streams) one connection may open.
    pub max_streams_per_connection: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStorage {
    /// `rocksdb` or `memory`.
    pub backend: String,
    pub path: String,
    pub block_cache_mb: u64,
    pub write_buffer_mb: u64,
    /// Acknowledge a write only once it is fsynced (group commit); off,
    /// acknowledged writes since the last fsync are lost on a power cut.
    pub sync_writes: bool,
    /// Files RocksDB keeps open at most.
    pub max_open_files: u64,
    /// The newest log records kept in memory with their data (0: none).
    pub log_tail_mb: u64,
    /// How often a background scrub reads every entry back and checks it
    /// (jittered; 0: only when asked, `mindoo-replica scrub --addr`).
    pub scrub_interval_ms: u64,
    /// Entry bytes a scrub reads per second at most (0: no limit).
    pub scrub_mb_per_second: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub max_entry_bytes: u64,
    pub max_message_bytes: u64,
    pub max_ids_per_request: u64,
    pub max_batch_entries: u64,
    pub max_page: u64,
    /// A PutEntries stream with no batch for this long is closed.
    pub stream_idle_timeout_ms: u64,
    /// Entry data (MiB) that responses on their way out may hold in memory,
    /// all streams together; beyond it streams wait.
    pub max_send_data_mb: u64,
    /// ... the streams of one connection.
    pub max_send_data_per_connection_mb: u64,
    /// ... the streams of all connections from one source address.
    pub max_send_data_per_address_mb: u64,
    /// ... the streams of one client (its key, or its address when its
    /// calls are not signed), whichever connections they are on.
    pub max_send_data_per_client_mb: u64,
    /// Calls a second one client may start, on average (PutEntries: each
    /// batch); beyond it calls are refused with RESOURCE_EXHAUSTED and a
    /// stream's batches wait. Peers and operators are not limited.
    pub client_requests_per_second: u64,
    /// ... at once, after a quiet spell.
    pub client_request_burst: u64,
    /// Calls one client may have open at once (a Watch counts while open).
    pub max_calls_per_client: u64,
    /// Client batches checked and stored at once, all clients together,
    /// taken in rotation between the clients waiting (0: one per core).
    pub client_write_turns: u64,
    /// Clients whose limits are tracked at once (about 300 bytes each);
    /// beyond it, clients with nothing open are forgotten, and new ones
    /// share one set of limits while none can be.
    pub max_tracked_clients: u64,
}

/// What clients may store per tenant (entries from peers are never
/// refused). 0: no limit.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawQuotas {
    /// Entries each tenant may store, unless it has a quota of its own.
    pub max_entries_per_tenant: u64,
    /// MiB of entry data each tenant may store, unless ...
    pub max_mb_per_tenant: u64,
    pub tenants: Vec<RawTenantQuota>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTenantQuota {
    pub tenant: String,
    pub max_entries: u64,
    pub max_mb: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPolicy {
    pub allow_unlisted: bool,
    /// Entries clients write must be signed by their author, unless their
    /// namespace sets `require_signature = false`.
    pub require_signatures: bool,
    pub namespaces: Vec<RawNamespace>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNamespace {
    pub tenant: String,
    pub db: String,
    /// Hex ed25519 public keys; non-empty means signatures are required.
    pub trusted_authors: Vec<String>,
    /// `true`: signatures are checked on entries from peers too; `false`:
    /// not checked here at all (unless authors are listed); unset:
    /// `policy.require_signatures`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_signature: Option<bool>,
}

/// Who this replica pulls from. Every replica pulls from its peers, so a
/// full mesh is every replica listing every other one (or all, itself included:
/// the entry equal to `advertise` is dropped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawReplication {
    /// This replica's own address as peers reach it; removed from `peers`.
    pub advertise: String,
    /// `host:port` of every replica to pull from.
    pub peers: Vec<String>,
    /// Hub-and-spoke when non-empty: a hub pulls from every peer, any other
    /// replica pulls only from the hubs.
    pub hubs: Vec<String>,
    /// A `host:port` DNS name whose every address is a peer (a headless
    /// Service), re-resolved every `discovery_interval_ms`.
    pub discovery: String,
    pub discovery_interval_ms: u64,
    /// `tenant/db` namespaces to pull; empty pulls all.
    pub namespaces: Vec<String>,
    pub connect_timeout_ms: u64,
    /// HTTP/2 keepalive PING interval on peer connections: the only traffic
    /// of an idle pair, and how a dead peer is noticed.
    pub keepalive_interval_ms: u64,
    /// A session with no message for this long is ended and restarted; the
    /// peer sends a heartbeat every third of it while its log is idle.
    pub session_idle_timeout_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Peers hold back entries they pulled from others up to this long
    /// before announcing them here, to announce them together (0: at once).
    /// Ignored on a spoke, which learns everything through its hubs.
    pub relay_delay_ms: u64,
    /// Entry data (MiB) all pulls together may hold in memory.
    pub max_inflight_mb: u64,
    /// Entry data (MiB) one peer's pull may hold in memory.
    pub max_peer_inflight_mb: u64,
    /// A cursor into a peer that left the topology is removed once it has
    /// not moved for this long.
    pub cursor_retention_ms: u64,
    /// The config file is read again this often and, when it changed, its
    /// replication settings applied, as on SIGHUP (0: only on SIGHUP).
    pub config_poll_ms: u64,
    /// The secret the replicas of a mesh share to key their range
    /// fingerprints (64 hex digits); set it here or in a file. Without
    /// one, pairs reconcile only by cursor pull.
    pub fingerprint_key: String,
    /// A file holding `fingerprint_key` (what the chart mounts).
    pub fingerprint_key_file: String,
    /// Each pair compares its whole sets this often, jittered (0: only when
    /// a cursor is refused, after a bootstrap, or on `repair`).
    pub reconcile_interval_ms: u64,
}

impl Default for RawReplication {
    fn default() -> Self {
        Self {
            advertise: String::new(),
            peers: Vec::new(),
            hubs: Vec::new(),
            discovery: String::new(),
            discovery_interval_ms: 30_000,
            namespaces: Vec::new(),
            connect_timeout_ms: 5_000,
            keepalive_interval_ms: 5_000,
            session_idle_timeout_ms: 30_000,
            backoff_initial_ms: 100,
            backoff_max_ms: 5_000,
            relay_delay_ms: 10,
            max_inflight_mb: 48,
            max_peer_inflight_mb: 16,
            cursor_retention_ms: 7 * 24 * 3600 * 1000,
            config_poll_ms: 5_000,
            fingerprint_key: String::new(),
            fingerprint_key_file: String::new(),
            reconcile_interval_ms: 5 * 60 * 1000,
        }
    }
}

/// TLS on the gRPC port: mutual TLS between replicas, TLS from clients.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    /// The gRPC port takes TLS only, and peers are dialed over mutual TLS.
    pub enabled: bool,
    /// PEM certificate chain of this replica; its DNS names name the node.
    pub cert_file: String,
    /// PEM private key of that certificate.
    pub key_file: String,
    /// PEM certificate of the mesh CA, which peers' and operators'
    /// certificates must chain to.
    pub ca_file: String,
    /// More certificate names (or `*.suffix` patterns) of peers, beyond the
    /// hosts of `replication.peers`, `replication.hubs` and any name under
    /// `replication.discovery`.
    pub peer_names: Vec<String>,
    /// Certificate names (or `*.suffix` patterns) of operators, who may
    /// make the admin calls (`PeerStatus`).
    pub operator_names: Vec<String>,
}

/// Client authentication and who may read and write which namespace.
/// Peers and operators (by their TLS certificates) may do everything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    /// `required`: clients sign each request with their ed25519 key, and
    /// the lists below say what each key may do. `off`: anyone who reaches
    /// the port may read and write every namespace (warned at start).
    pub clients: String,
    /// How far a client's clock may be from this replica's.
    pub max_clock_skew_ms: u64,
    /// Signed requests remembered at once, to refuse any sent again (the
    /// memory this takes: about 60 bytes each).
    pub max_recent_requests: u64,
    /// Hex ed25519 keys that may read namespaces without lists of their
    /// own; `*`: any key.
    pub readers: Vec<String>,
    /// ... that may write them.
    pub writers: Vec<String>,
    /// Hex ed25519 keys of operators, who may make the admin calls
    /// (`PeerStatus`) as a certificate from `tls.operator_names` may.
    pub operators: Vec<String>,
    pub namespaces: Vec<RawAccess>,
}

/// One namespace's readers and writers, in place of `auth.readers` and
/// `auth.writers`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAccess {
    pub tenant: String,
    pub db: String,
    pub readers: Vec<String>,
    pub writers: Vec<String>,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            clients: "required".into(),
            max_clock_skew_ms: 30_000,
            max_recent_requests: 500_000,
            readers: Vec::new(),
            writers: Vec::new(),
            operators: Vec::new(),
            namespaces: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// An env-filter directive such as `info` or `mindoo_replica=debug`.
    pub filter: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for RawServer {
    fn default() -> Self {
        let c = crate::connections::ConnectionLimits::default();
        Self {
            listen: "127.0.0.1:7700".into(),
            metrics_listen: "127.0.0.1:9700".into(),
            // Long enough for Kubernetes to take a terminating pod out of
            // its Service endpoints before the listener closes.
            shutdown_delay_ms: 5_000,
            drain_timeout_ms: 10_000,
            max_connections: c.max_connections as u64,
            max_connections_per_address: c.max_per_address as u64,
            handshake_timeout_ms: c.handshake_timeout.as_millis() as u64,
            header_timeout_ms: c.header_timeout.as_millis() as u64,
            send_timeout_ms: c.send_timeout.as_millis() as u64,
            idle_connection_timeout_ms: c.idle_timeout.as_millis() as u64,
            max_streams_per_connection: 128,
        }
    }
}

impl Default for RawStorage {
    fn default() -> Self {
        Self {
            backend: "rocksdb".into(),
            path: "./data".into(),
            block_cache_mb: 64,
            write_buffer_mb: 32,
            sync_writes: true,
            max_open_files: 1024,
            log_tail_mb: 8,
            scrub_interval_ms: 7 * 24 * 3600 * 1000,
            scrub_mb_per_second: 16,
        }
    }
}

impl Default for RawLimits {
    fn default() -> Self {
        let l = Limits::default();
        let c = crate::connections::ConnectionLimits::default();
        let f = crate::fair::FairLimits::default();
        Self {
            max_entry_bytes: l.max_entry_bytes as u64,
            max_message_bytes: l.max_message_bytes as u64,
            max_ids_per_request: l.max_ids_per_request as u64,
            max_batch_entries: l.max_batch_entries as u64,
            max_page: l.max_page as u64,
            stream_idle_timeout_ms: l.stream_idle_timeout.as_millis() as u64,
            max_send_data_mb: (l.max_send_data_bytes >> 20) as u64,
            max_send_data_per_connection_mb: (c.send_per_connection >> 20) as u64,
            max_send_data_per_address_mb: (c.send_per_address >> 20) as u64,
            max_send_data_per_client_mb: (f.send_bytes >> 20) as u64,
            client_requests_per_second: f.requests_per_second as u64,
            client_request_burst: f.burst as u64,
            max_calls_per_client: f.max_calls as u64,
            max_tracked_clients: f.max_tracked as u64,
            client_write_turns: 0,
        }
    }
}

impl Default for RawPolicy {
    fn default() -> Self {
        Self {
            allow_unlisted: true,
            require_signatures: true,
            namespaces: Vec::new(),
        }
    }
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            // h2 warns once per misbehaving frame: a flood of them under
            // attack. Those connections are closed and counted anyway.
            filter: "info,h2=error".into(),
            format: "text".into(),
        }
    }
}
