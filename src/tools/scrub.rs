//! `scrub`: reads every entry of a stopped replica's store back and checks
//! it (see `crate::store::scrub`); prints each entry that is not as stored
//! and exits non-zero when there is one.

use std::path::PathBuf;
use std::time::Instant;

use crate::store::rocks::{RocksConfig, RocksStore};
use crate::store::scrub::scrub_all;

/// Log records checked per page.
const PAGE: usize = 1000;

/// `scrub`.
#[derive(Debug, clap::Args)]
pub struct ScrubArgs {
    /// The stopped replica's `storage.path`.
    #[arg(long)]
    pub data: PathBuf,
}

pub fn scrub(args: ScrubArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.data.join("CURRENT").is_file(),
        "{} holds no database",
        args.data.display()
    );
    let store = RocksStore::open(&RocksConfig::new(&args.data))?;
    let started = Instant::now();
    let totals = scrub_all(&store, PAGE, |f| {
        println!(
            "corrupt: seq {} in {} id {}: {}",
            f.seq, f.namespace, f.id, f.problem
        )
    })?;
    let (checked, bytes, found) = (totals.checked, totals.bytes, totals.findings.len());
    let secs = started.elapsed().as_secs_f64();
    println!(
        "scrub of {}: {checked} entries, {:.1} MB checked in {secs:.1} s ({:.0} entries/s); {found} corrupt",
        args.data.display(),
        bytes as f64 / 1e6,
        checked as f64 / secs.max(1e-9)
    );
    anyhow::ensure!(
        found == 0,
        "{found} entries are not as stored; copies are on the replica's peers"
    );
    Ok(())
}
