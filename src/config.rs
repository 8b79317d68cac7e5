//! Configuration: built-in defaults, then a TOML file, then environment
//! variables (`MINDOO_REPLICA__SECTION__KEY=value`), then validation into typed
//! [`Settings`]. Unknown keys are errors, and every error names the key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::limits::Limits;
use crate::policy::Policy;
use crate::replication::settings::ReplicationSettings;
use crate::store::ranges::FingerprintKey;
use crate::store::rocks::RocksConfig;

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

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub storage: StorageSettings,
    /// Bytes of the newest log records kept in memory (see `replica::tail`).
    pub log_tail_bytes: usize,
    /// The background scrub (see `replica::scrub`).
    pub scrub: crate::replica::scrub::ScrubSettings,
    pub limits: Limits,
    /// Each client's fair share (see [`crate::fair`]).
    pub clients: crate::fair::FairLimits,
    pub policy: Policy,
    pub replication: ReplicationSettings,
    /// TLS on the gRPC port, when on.
    pub tls: Option<crate::tls::MeshTls>,
    /// Client authentication and the access policy.
    pub auth: crate::access::AuthSettings,
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
    /// Nothing on disk; range fingerprints under this key, when given.
    Memory(Option<FingerprintKey>),
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
        if let Some(path) = file {
            if !path.is_file() {
                return Err(invalid(
                    "--config",
                    format!("{} does not exist or is not a file", path.display()),
                ));
            }
            let text = std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    "--config",
                    format!("{} cannot be read: {e}", path.display()),
                )
            })?;
            // A parse error names the file, as the file's own source would.
            return Self::parse_with_env(&text, env).map_err(|e| match e {
                ConfigError::Load(config::ConfigError::FileParse { uri: None, cause }) => {
                    ConfigError::Load(config::ConfigError::FileParse {
                        uri: Some(path.display().to_string()),
                        cause,
                    })
                }
                e => e,
            });
        }
        Self::parse_with_env("", env)
    }

    /// Defaults, then the TOML `text`, then `env` (the process environment
    /// when `None`).
    pub fn parse_with_env(
        text: &str,
        env: Option<HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let builder = config::Config::builder()
            .add_source(config::Config::try_from(&RawConfig::default())?)
            .add_source(config::File::from_str(text, config::FileFormat::Toml));
        let env_source = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("replication.peers")
            .with_list_parse_key("replication.hubs")
            .with_list_parse_key("replication.namespaces")
            .with_list_parse_key("tls.peer_names")
            .with_list_parse_key("tls.operator_names")
            .with_list_parse_key("auth.readers")
            .with_list_parse_key("auth.writers")
            .with_list_parse_key("auth.operators")
            .source(env.map(|e| e.into_iter().collect()));
        Ok(builder.add_source(env_source).build()?.try_deserialize()?)
    }

    /// The `[auth]` and `[quotas]` sections checked alone (the access
    /// policy a reload applies).
    pub fn auth_settings(&self) -> Result<crate::access::AuthSettings, ConfigError> {
        let mut auth = self.auth.validate()?;
        auth.access.quotas = std::sync::Arc::new(self.quotas.validate()?);
        Ok(auth)
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
                    // Where the filesystem takes it (probed on open).
                    direct_io: true,
                    max_open_files: count(
                        "storage.max_open_files",
                        st.max_open_files,
                        64,
                        1 << 20,
                    )?,
                    // Known once the listener is bound (see `Settings::node_name`).
                    node: None,
                    index_documents: false,
                    // From `replication` (see below).
                    fingerprint_key: None,
                })
            }
            "memory" => StorageSettings::Memory(None),
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
        let mut storage = storage;
        match &mut storage {
            StorageSettings::Rocks(rocks) => {
                rocks.fingerprint_key = replication.fingerprint_key.clone()
            }
            StorageSettings::Memory(key) => *key = replication.fingerprint_key.clone(),
        }
        let tls = self.tls.validate()?;
        let auth = self.auth_settings()?;
        let clients = self.limits.clients(max_entry_bytes)?;
        let has_peers = !replication.peers.is_empty()
            || replication.spoke_of.is_some()
            || replication.discovery.is_some();
        if auth.access.clients_required && tls.is_none() && has_peers {
            return Err(invalid(
                "auth.clients",
                "\"required\" with peers needs tls.enabled: replicas prove who they are to \
                 each other with TLS certificates (or set auth.clients = \"off\" to let anyone \
                 who reaches the port in)",
            ));
        }
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
            scrub: crate::replica::scrub::ScrubSettings {
                interval: match st.scrub_interval_ms {
                    0 => None,
                    v => Some(Duration::from_millis(in_range(
                        "storage.scrub_interval_ms",
                        v,
                        1_000,
                        u64::MAX,
                        " ms",
                    )? as u64)),
                },
                bytes_per_second: mib(
                    "storage.scrub_mb_per_second",
                    st.scrub_mb_per_second,
                    0,
                    1 << 20,
                )? as u64,
            },
            limits,
            clients,
            policy,
            replication,
            tls,
            auth,
            log,
        })
    }
}

mod raw;
pub mod reload;
mod validate;

pub use raw::*;
use validate::{count, in_range, mib, validate_replication};
#[cfg(test)]
mod tests;
