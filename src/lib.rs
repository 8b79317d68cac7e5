//! mindoo-replica: stores and replicates end-to-end-encrypted,
//! content-addressed change entries without ever holding the keys to read them.
//!
//! Layers, from the wire inwards:
//! - [`service`]: the `mindoo.replica.v1.Store` gRPC handlers ([`proto`] types stop there);
//! - [`replica`]: the core every entry passes through (policy, limits, metrics, live head);
//! - [`policy`] and [`entry`]: what a valid entry is;
//! - [`store`]: the storage trait, with RocksDB and in-memory backends.
//!
//! [`server`] wires them into a process; [`client`] is the client library.

pub mod client;
pub mod config;
pub mod connections;
pub mod entry;
pub mod error;
pub mod head;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod proto;
pub mod replica;
pub mod replication;
pub mod server;
pub mod service;
pub mod store;
pub mod sync;
pub mod telemetry;
#[cfg(feature = "tools")]
pub mod tools;
