//! The simulation in the test suite: a few hundred seeds, a replay, and
//! the planted bug found. `mindoo-replica sim` runs thousands.

use super::*;

/// Seeds the suite runs: `MINDOO_SIM_SEEDS` or 300.
fn seeds() -> u64 {
    std::env::var("MINDOO_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

fn explain(outcome: &Outcome) -> String {
    format!(
        "seed {} failed: {}\n{}\nreplay: {}",
        outcome.options.seed,
        outcome.failure.as_deref().unwrap_or(""),
        outcome.trace.join("\n"),
        outcome.options.replay()
    )
}

#[test]
fn every_seed_converges_with_nothing_acknowledged_lost() {
    for seed in 0..seeds() {
        let outcome = run(&Options::new(seed));
        assert!(outcome.failure.is_none(), "{}", explain(&outcome));
    }
}

#[test]
fn seeds_replay_exactly() {
    #[cfg(not(tokio_unstable))]
    panic!(
        "built without `--cfg tokio_unstable` (set in .cargo/config.toml; a RUSTFLAGS in the \
         environment replaces it): tokio's random choices would not replay"
    );
    for seed in 4242..4252 {
        let first = run(&Options::new(seed));
        let again = run(&Options::new(seed));
        assert!(first.trace.len() > 20, "{:?}", first.trace);
        assert_eq!(first.trace, again.trace, "seed {seed}");
    }
}

#[test]
fn the_planted_bug_is_found() {
    let found = (0..200).find_map(|seed| {
        let outcome = run(&Options {
            plant: Some(Plant::CursorBeforeData),
            ..Options::new(seed)
        });
        outcome.failure.is_some().then_some(outcome)
    });
    let outcome = found.expect("a cursor committed before its data is found within 200 seeds");
    let failure = outcome.failure.as_deref().unwrap_or("");
    assert!(failure.contains("cursor into"), "{}", explain(&outcome));
    // The same seed without the bug passes.
    assert!(run(&Options::new(outcome.options.seed)).failure.is_none());
}
