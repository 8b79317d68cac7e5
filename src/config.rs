//! Configuration: built-in defaults, then a TOML file, then environment
//! variables (`MINDOO_REPLICA__SECTION__KEY=value`), then validation into typed
//! [`Settings`]. Unknown keys are errors, and every error names the key.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::entry::Namespace;
pub use crate::limits::Limits;
use crate::policy::{NamespaceRules, Policy};
use crate::replica::MAX_RELAY_DELAY;
use crate::replication::settings::ReplicationSettings;
use crate::store::rocks::RocksConfig;
use crate::sync::PullSettings;

/// Prefix of environment overrides; sections and keys are separated by `__`.
pub const ENV_PREFIX: &str = "MINDOO_REPLICA";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {key}: {why}")]
    Invalid { key: String, why: String },
}

pub(crate) fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        why: why.into(),
    }
}

/// The configuration as written, before validation. `config print` shows it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub storage: RawStorage,
    pub limits: RawLimits,
    pub policy: RawPolicy,
    pub replication: RawReplication,
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
    pub sync_writes: bool,
    /// Files RocksDB keeps open at most.
    pub max_open_files: u64,
    /// The newest log records kept in memory with their data (0: none).
    pub log_tail_mb: u64,
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPolicy {
    pub allow_unlisted: bool,
    pub namespaces: Vec<RawNamespace>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNamespace {
    pub tenant: String,
    pub db: String,
    /// Hex ed25519 public keys; non-empty means signatures are required.
    pub trusted_authors: Vec<String>,
    pub require_signature: bool,
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
            sync_writes: false,
            max_open_files: 1024,
            log_tail_mb: 8,
        }
    }
}

impl Default for RawLimits {
    fn default() -> Self {
        let l = Limits::default();
        let c = crate::connections::ConnectionLimits::default();
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
        }
    }
}

impl Default for RawPolicy {
    fn default() -> Self {
        Self {
            allow_unlisted: true,
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

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub storage: StorageSettings,
    /// Bytes of the newest log records kept in memory (see `replica::tail`).
    pub log_tail_bytes: usize,
    pub limits: Limits,
    pub policy: Policy,
    pub replication: ReplicationSettings,
    pub log: LogSettings,
}

impl Settings {
    /// This replica's node identity: `replication.advertise` when set (the
    /// name peers reach it by, stable across restarts), else this host's
    /// name and the bound gRPC port.
    pub fn node_name(&self, bound: SocketAddr) -> String {
        match &self.replication.advertise {
            Some(name) => name.clone(),
            None => format!("{}:{}", hostname(), bound.port()),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub shutdown_delay: Duration,
    pub drain_timeout: Duration,
    pub connections: crate::connections::ConnectionLimits,
    pub max_streams_per_connection: u32,
}

#[derive(Debug, Clone)]
pub enum StorageSettings {
    Rocks(RocksConfig),
    Memory,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub filter: String,
    pub json: bool,
}

impl RawConfig {
    /// Defaults, then `file` (if any), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, None)
    }

    /// As [`RawConfig::load`], with an explicit environment (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: Option<HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let mut builder =
            config::Config::builder().add_source(config::Config::try_from(&RawConfig::default())?);
        if let Some(path) = file {
            if !path.is_file() {
                return Err(invalid(
                    "--config",
                    format!("{} does not exist or is not a file", path.display()),
                ));
            }
            builder = builder.add_source(
                config::File::from(path.to_path_buf()).format(config::FileFormat::Toml),
            );
        }
        let env_source = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("replication.peers")
            .with_list_parse_key("replication.hubs")
            .with_list_parse_key("replication.namespaces")
            .source(env.map(|e| e.into_iter().collect()));
        builder = builder.add_source(env_source);
        Ok(builder.build()?.try_deserialize()?)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the raw config serialises")
    }

    /// Checks every value and produces typed settings.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let addr = |key: &str, value: &str| -> Result<SocketAddr, ConfigError> {
            value
                .parse()
                .map_err(|e| invalid(key, format!("{value:?} is not an ip:port address ({e})")))
        };
        let s = &self.server;
        let server = ServerSettings {
            listen: addr("server.listen", &s.listen)?,
            metrics_listen: match s.metrics_listen.as_str() {
                "" => None,
                v => Some(addr("server.metrics_listen", v)?),
            },
            shutdown_delay: Duration::from_millis(s.shutdown_delay_ms),
            drain_timeout: Duration::from_millis(s.drain_timeout_ms),
            max_streams_per_connection: count(
                "server.max_streams_per_connection",
                s.max_streams_per_connection,
                1,
                65_536,
            )? as u32,
            connections: crate::connections::ConnectionLimits {
                max_connections: count("server.max_connections", s.max_connections, 1, 1 << 20)?,
                max_per_address: count(
                    "server.max_connections_per_address",
                    s.max_connections_per_address,
                    1,
                    1 << 20,
                )?,
                handshake_timeout: Duration::from_millis(in_range(
                    "server.handshake_timeout_ms",
                    s.handshake_timeout_ms,
                    100,
                    600_000,
                    " ms",
                )? as u64),
                header_timeout: Duration::from_millis(in_range(
                    "server.header_timeout_ms",
                    s.header_timeout_ms,
                    100,
                    600_000,
                    " ms",
                )? as u64),
                idle_timeout: Duration::from_millis(in_range(
                    "server.idle_connection_timeout_ms",
                    s.idle_connection_timeout_ms,
                    100,
                    86_400_000,
                    " ms",
                )? as u64),
                send_timeout: Duration::from_millis(in_range(
                    "server.send_timeout_ms",
                    s.send_timeout_ms,
                    100,
                    3_600_000,
                    " ms",
                )? as u64),
                send_per_connection: mib(
                    "limits.max_send_data_per_connection_mb",
                    self.limits.max_send_data_per_connection_mb,
                    1,
                    4095,
                )?,
                send_per_address: mib(
                    "limits.max_send_data_per_address_mb",
                    self.limits.max_send_data_per_address_mb,
                    1,
                    4095,
                )?,
            },
        };
        let st = &self.storage;
        let storage = match st.backend.as_str() {
            "rocksdb" => {
                if st.path.is_empty() {
                    return Err(invalid("storage.path", "must not be empty"));
                }
                StorageSettings::Rocks(RocksConfig {
                    path: PathBuf::from(&st.path),
                    block_cache_bytes: mib("storage.block_cache_mb", st.block_cache_mb, 1, 65536)?,
                    write_buffer_bytes: mib(
                        "storage.write_buffer_mb",
                        st.write_buffer_mb,
                        1,
                        4096,
                    )?,
                    sync_writes: st.sync_writes,
                    max_open_files: count(
                        "storage.max_open_files",
                        st.max_open_files,
                        64,
                        1 << 20,
                    )?,
                    // Known once the listener is bound (see `Settings::node_name`).
                    node: None,
                })
            }
            "memory" => StorageSettings::Memory,
            other => {
                return Err(invalid(
                    "storage.backend",
                    format!("{other:?} is not one of \"rocksdb\", \"memory\""),
                ));
            }
        };
        let l = &self.limits;
        let range = |key: &str, v: u64, min: u64, max: u64| {
            if (min..=max).contains(&v) {
                Ok(v as usize)
            } else {
                Err(invalid(key, format!("{v} is outside {min}..={max}")))
            }
        };
        let max_entry_bytes = range("limits.max_entry_bytes", l.max_entry_bytes, 256, 16 << 20)?;
        let limits = Limits {
            max_entry_bytes,
            max_message_bytes: range(
                "limits.max_message_bytes",
                l.max_message_bytes,
                64 << 10,
                64 << 20,
            )?,
            max_ids_per_request: range(
                "limits.max_ids_per_request",
                l.max_ids_per_request,
                1,
                100_000,
            )?,
            max_batch_entries: range("limits.max_batch_entries", l.max_batch_entries, 1, 100_000)?,
            max_page: range("limits.max_page", l.max_page, 1, 100_000)?,
            stream_idle_timeout: Duration::from_millis(range(
                "limits.stream_idle_timeout_ms",
                l.stream_idle_timeout_ms,
                100,
                86_400_000,
            )? as u64),
            max_send_data_bytes: mib("limits.max_send_data_mb", l.max_send_data_mb, 1, 4095)?,
        };
        // The largest entry must fit in a connection's pool, and each pool
        // within the one around it.
        let c = &server.connections;
        for (key, pool, within, what) in [
            (
                "limits.max_send_data_per_connection_mb",
                c.send_per_connection,
                max_entry_bytes,
                "at least limits.max_entry_bytes",
            ),
            (
                "limits.max_send_data_per_address_mb",
                c.send_per_address,
                c.send_per_connection,
                "at least limits.max_send_data_per_connection_mb",
            ),
            (
                "limits.max_send_data_mb",
                limits.max_send_data_bytes,
                c.send_per_address,
                "at least limits.max_send_data_per_address_mb",
            ),
        ] {
            if pool < within {
                return Err(invalid(
                    key,
                    format!("{} MiB is too small: it must be {what}", pool >> 20),
                ));
            }
        }
        if limits.max_message_bytes < max_entry_bytes + 4096 {
            return Err(invalid(
                "limits.max_message_bytes",
                format!(
                    "{} must exceed limits.max_entry_bytes ({max_entry_bytes}) by at least 4096",
                    limits.max_message_bytes
                ),
            ));
        }
        // A list of ids costs at most 40 bytes per id on the wire; a full
        // request or page must fit in one message.
        for (key, count) in [
            ("limits.max_ids_per_request", limits.max_ids_per_request),
            ("limits.max_page", limits.max_page),
        ] {
            if count * 40 + 1024 > limits.max_message_bytes {
                return Err(invalid(
                    key,
                    format!(
                        "{count} ids do not fit in limits.max_message_bytes ({}); \
                         allow at most {}",
                        limits.max_message_bytes,
                        (limits.max_message_bytes - 1024) / 40
                    ),
                ));
            }
        }
        let policy = self.policy.validate(max_entry_bytes)?;
        let replication = validate_replication(&self.replication, server.listen)?;
        let log = LogSettings {
            filter: self.log.filter.clone(),
            json: match self.log.format.as_str() {
                "text" => false,
                "json" => true,
                other => {
                    return Err(invalid(
                        "log.format",
                        format!("{other:?} is not one of \"text\", \"json\""),
                    ));
                }
            },
        };
        tracing_subscriber::EnvFilter::try_new(&log.filter)
            .map_err(|e| invalid("log.filter", e.to_string()))?;
        Ok(Settings {
            server,
            storage,
            log_tail_bytes: mib("storage.log_tail_mb", st.log_tail_mb, 0, 1024)?,
            limits,
            policy,
            replication,
            log,
        })
    }
}

/// A size given in MiB, checked against its range, in bytes.
/// `v` if within `min..=max`, else an error naming `key` and the range.
fn in_range(key: &str, v: u64, min: u64, max: u64, unit: &str) -> Result<usize, ConfigError> {
    match (min..=max).contains(&v) {
        true => Ok(v as usize),
        false => Err(invalid(key, format!("{v} is outside {min}..={max}{unit}"))),
    }
}

fn count(key: &str, v: u64, min: u64, max: u64) -> Result<usize, ConfigError> {
    in_range(key, v, min, max, "")
}

fn mib(key: &str, v: u64, min: u64, max: u64) -> Result<usize, ConfigError> {
    in_range(key, v, min, max, " MiB").map(|v| v << 20)
}

fn validate_replication(
    raw: &RawReplication,
    listen: SocketAddr,
) -> Result<ReplicationSettings, ConfigError> {
    let advertise = match raw.advertise.as_str() {
        "" => None,
        a => Some(peer_address("replication.advertise", a)?),
    };
    let mut peers = Vec::new();
    for (i, p) in raw.peers.iter().enumerate() {
        let key = format!("replication.peers[{i}]");
        let p = peer_address(&key, p)?;
        if peers.contains(&p) {
            return Err(invalid(key, format!("{p} is listed twice")));
        }
        if advertise.is_none() && p.parse::<SocketAddr>().ok() == Some(listen) {
            return Err(invalid(
                key,
                format!(
                    "{p} is this replica's own server.listen address; set \
                     replication.advertise to list every replica in one peer list"
                ),
            ));
        }
        peers.push(p);
    }
    let mut hubs = Vec::new();
    for (i, h) in raw.hubs.iter().enumerate() {
        hubs.push(peer_address(&format!("replication.hubs[{i}]"), h)?);
    }
    let is_hub = advertise.as_ref().is_some_and(|a| hubs.contains(a));
    if !hubs.is_empty() && advertise.is_none() {
        return Err(invalid(
            "replication.advertise",
            "hub-and-spoke needs this replica's own address to know whether it is a hub",
        ));
    }
    let spoke_of = (!hubs.is_empty() && !is_hub).then_some(hubs);
    let discovery = match raw.discovery.as_str() {
        "" => None,
        d => Some(peer_address("replication.discovery", d)?),
    };
    let mut namespaces = Vec::new();
    for (i, n) in raw.namespaces.iter().enumerate() {
        let key = format!("replication.namespaces[{i}]");
        namespaces.push(Namespace::from_path(n).map_err(|e| invalid(&key, e.to_string()))?);
    }
    let ms = |key: &str, v: u64, min: u64| {
        if v >= min {
            Ok(Duration::from_millis(v))
        } else {
            Err(invalid(
                key,
                format!("{v} is below the minimum of {min} ms"),
            ))
        }
    };
    let backoff_initial = ms("replication.backoff_initial_ms", raw.backoff_initial_ms, 1)?;
    let backoff_max = ms("replication.backoff_max_ms", raw.backoff_max_ms, 1)?;
    if backoff_max < backoff_initial {
        return Err(invalid(
            "replication.backoff_max_ms",
            "must not be below replication.backoff_initial_ms",
        ));
    }
    let relay_delay = Duration::from_millis(raw.relay_delay_ms);
    if relay_delay > MAX_RELAY_DELAY {
        return Err(invalid(
            "replication.relay_delay_ms",
            format!(
                "{} is above the maximum of {} ms",
                raw.relay_delay_ms,
                MAX_RELAY_DELAY.as_millis()
            ),
        ));
    }
    let max_inflight_bytes = mib("replication.max_inflight_mb", raw.max_inflight_mb, 1, 4095)?;
    let max_peer_inflight_bytes = mib(
        "replication.max_peer_inflight_mb",
        raw.max_peer_inflight_mb,
        1,
        4095,
    )?;
    if max_peer_inflight_bytes > max_inflight_bytes {
        return Err(invalid(
            "replication.max_peer_inflight_mb",
            "must not exceed replication.max_inflight_mb",
        ));
    }
    let mut settings = ReplicationSettings {
        advertise,
        peers: Vec::new(),
        spoke_of: spoke_of.clone(),
        discovery,
        discovery_interval: ms(
            "replication.discovery_interval_ms",
            raw.discovery_interval_ms,
            100,
        )?,
        keepalive_interval: ms(
            "replication.keepalive_interval_ms",
            raw.keepalive_interval_ms,
            100,
        )?,
        pull: PullSettings {
            namespaces,
            connect_timeout: ms("replication.connect_timeout_ms", raw.connect_timeout_ms, 10)?,
            session_idle_timeout: ms(
                "replication.session_idle_timeout_ms",
                raw.session_idle_timeout_ms,
                300,
            )?,
            backoff_initial,
            backoff_max,
            // A spoke hears other spokes' entries only as its hubs relay them.
            relay_delay: match spoke_of.is_some() {
                true => Duration::ZERO,
                false => relay_delay,
            },
        },
        max_inflight_bytes,
        max_peer_inflight_bytes,
        cursor_retention: ms(
            "replication.cursor_retention_ms",
            raw.cursor_retention_ms,
            1_000,
        )?,
        config_poll: match raw.config_poll_ms {
            0 => None,
            v => Some(ms("replication.config_poll_ms", v, 100)?),
        },
    };
    settings.peers = settings.select(peers);
    Ok(settings)
}

/// Normalises `host:port` (an `http://` prefix is allowed) and checks its shape.
fn peer_address(key: &str, value: &str) -> Result<String, ConfigError> {
    let v = value
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let ok = v
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    match ok {
        true => Ok(v.to_owned()),
        false => Err(invalid(key, format!("{value:?} is not host:port"))),
    }
}

impl RawPolicy {
    fn validate(&self, max_entry_bytes: usize) -> Result<Policy, ConfigError> {
        let mut namespaces = HashMap::new();
        for (i, raw) in self.namespaces.iter().enumerate() {
            let key = format!("policy.namespaces[{i}]");
            let ns = Namespace::new(&raw.tenant, &raw.db)
                .map_err(|e| invalid(key.clone(), e.to_string()))?;
            let mut trusted_authors = HashSet::new();
            for hex_key in &raw.trusted_authors {
                let bytes: [u8; 32] = hex::decode(hex_key)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        invalid(
                            format!("{key}.trusted_authors"),
                            format!("{hex_key:?} is not a 64-digit hex ed25519 public key"),
                        )
                    })?;
                trusted_authors.insert(bytes);
            }
            let rules = NamespaceRules {
                trusted_authors,
                require_signature: raw.require_signature,
            };
            if namespaces.insert(ns.clone(), rules).is_some() {
                return Err(invalid(key, format!("namespace {ns} is listed twice")));
            }
        }
        Ok(Policy {
            allow_unlisted: self.allow_unlisted,
            namespaces,
            max_entry_bytes,
        })
    }
}

pub mod reload;
#[cfg(test)]
mod tests;
