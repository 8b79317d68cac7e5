//! Tooling of the `mindoo-replica` command, outside the library proper:
//! benchmarks, the local mesh demo, child replica processes, the `status`,
//! `check` and `keys` commands. Behind the `tools` feature (on by default); a
//! library user that wants only the replica or the client turns it off.

pub mod bench;
pub mod check;
pub mod child;
pub mod h2frames;
pub mod inspect;
pub mod keys;
pub mod mesh;
