//! `sim`: runs the deterministic simulation of a mesh (see `crate::sim`)
//! for many seeds, or replays one with its trace.

use std::time::Instant;

use crate::sim::{Options, Plant, run};

/// `sim`.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Seeds to run, from `--first`.
    #[arg(long, default_value_t = 1000)]
    pub seeds: u64,
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// Run this one seed alone (a replay).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print each run's trace, not only a failing one's.
    #[arg(long)]
    pub trace: bool,
    /// Put a known bug in, to see the simulation find it:
    /// `cursor-before-data`.
    #[arg(long)]
    pub plant: Option<String>,
    /// Driver steps of each run's faulty phase.
    #[arg(long, default_value_t = Options::STEPS)]
    pub steps: usize,
}

pub fn sim(args: SimArgs) -> anyhow::Result<()> {
    let plant = match args.plant.as_deref() {
        None => None,
        Some(name) => Some(
            Plant::ALL
                .into_iter()
                .find(|p| p.name() == name)
                .ok_or_else(|| {
                    let known: Vec<_> = Plant::ALL.iter().map(|p| p.name()).collect();
                    anyhow::anyhow!("--plant {name}: the bugs known are {}", known.join(", "))
                })?,
        ),
    };
    let seeds = match args.seed {
        Some(seed) => seed..seed + 1,
        None => args.first..args.first + args.seeds,
    };
    #[cfg(not(tokio_unstable))]
    eprintln!(
        "warning: built without `--cfg tokio_unstable` (.cargo/config.toml sets it on x86-64 Linux; \
         a RUSTFLAGS of your own replaces it): a seed's faults and writes replay, the order of \
         what the replicas log may not"
    );
    let started = Instant::now();
    let mut failed = Vec::new();
    let count = seeds.end - seeds.start;
    for seed in seeds {
        let options = Options {
            seed,
            steps: args.steps,
            plant,
        };
        let outcome = run(&options);
        if args.trace || outcome.failure.is_some() {
            println!("{}", outcome.trace.join("\n"));
        }
        if let Some(failure) = &outcome.failure {
            println!(
                "seed {seed} FAILED: {failure}\nreplay: {}",
                options.replay()
            );
            failed.push(seed);
        }
    }
    println!(
        "sim: {count} seeds in {:.1} s, {} failed{}",
        started.elapsed().as_secs_f64(),
        failed.len(),
        match failed.is_empty() {
            true => String::new(),
            false => format!(": {failed:?}"),
        }
    );
    anyhow::ensure!(failed.is_empty(), "{} seeds failed", failed.len());
    Ok(())
}
