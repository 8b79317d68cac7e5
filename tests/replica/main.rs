//! End-to-end tests of one replica over real gRPC and real RocksDB.

mod auth;
mod availability;
mod backup;
mod bad_input;
mod client;
mod crash;
mod fairness;
mod filtered;
mod harness;
mod hostile;
mod keys;
mod lifecycle;
mod log;
mod mesh;
mod ops;
mod p2p;
mod powerloss;
mod reconcile;
mod scrub;
mod secrets;
mod store_api;
mod sync;
mod tls;
mod write_concern;
