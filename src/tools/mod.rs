//! Tooling of the `mindoo-replica` command, outside the library proper:
//! benchmarks, the local mesh demo, child replica processes, the `status`
//! and `check` commands, `backup`, `restore` and `scrub`, and the client's `keys`, `doc`, `push`, `pull`,
//! `sync` and `sync-local`. Behind the `tools` feature (on by default); a
//! library user that wants only the replica or the client turns it off.

pub mod backup;
pub mod bench;
pub mod certs;
pub mod check;
pub mod child;
pub mod device;
pub mod h2frames;
pub mod inspect;
pub mod keys;
pub mod mesh;
pub mod scrub;
pub mod sim;
pub mod sync;
