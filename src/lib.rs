//! mindoo-replica: stores and replicates end-to-end-encrypted,
//! content-addressed change entries without ever holding the keys to read them.
//!
//! Layers, from the wire inwards:
//! - `service`: the `mindoo.replica.v1.Store` gRPC handlers ([`proto`] types stop there);
//! - `replica`: the core every entry passes through (policy, limits, metrics, live head);
//! - [`sync`]: the engine that syncs a local side with a peer, both ways;
//! - [`policy`] and [`entry`]: what a valid entry is;
//! - [`store`]: the storage trait, with RocksDB and in-memory backends.
//!
//! `server` wires them into a process; [`client`] is the client library,
//! with a device's [`home`] and [`keys`], sealed entries ([`seal`]), Automerge
//! documents ([`docs`]) edited by path ([`edit`]), and the databases that keep them ([`database`]);
//! [`tls`] secures the gRPC port (mutual TLS between replicas).
//!
//! Features: `client` (the client library and the sync engine, over the
//! shared vocabulary of entries, logs and stores); `server` (the replica
//! process: service, core, replication, connection limits, the metrics and
//! health listener, layered config and logs); `tools` (the command's
//! benchmarks, local mesh and child processes). All are on by default; an
//! app that only syncs turns the defaults off and asks for `client`.

#[cfg(feature = "server")]
pub mod access;
#[cfg(feature = "client")]
pub mod auth;
pub mod blocking;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod connections;
#[cfg(feature = "client")]
pub mod database;
#[cfg(feature = "client")]
pub mod discover;
#[cfg(feature = "client")]
pub mod docs;
#[cfg(feature = "client")]
pub mod edit;
pub mod entry;
pub mod error;
#[cfg(feature = "client")]
pub mod exchange;
#[cfg(feature = "server")]
pub mod fair;
#[cfg(any(test, feature = "tools"))]
pub mod fixtures;
#[cfg(feature = "client")]
pub mod home;
#[cfg(feature = "server")]
pub mod identity;
#[cfg(feature = "client")]
pub mod keys;
pub mod limits;
pub mod log;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod pace;
pub mod policy;
pub mod proto;
pub mod quota;
#[cfg(feature = "server")]
pub mod replica;
#[cfg(feature = "server")]
pub mod replication;
#[cfg(feature = "client")]
pub mod seal;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "tools")]
pub mod sim;
pub mod store;
#[cfg(feature = "client")]
pub mod sync;
#[cfg(feature = "server")]
pub mod telemetry;
#[cfg(feature = "client")]
pub mod tls;
#[cfg(feature = "tools")]
pub mod tools;
