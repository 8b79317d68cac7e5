//! Exponential backoff with full jitter: the n-th retry waits a uniformly
//! random time in `[0, min(max, initial × 2^n))`, so peers that failed
//! together do not retry together.

use std::time::Duration;

use super::env::Env;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next attempt, drawn from `env`.
    pub fn next_delay(&mut self, env: &Env) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        env.jitter(ceiling)
    }

    /// Call after a success: the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use super::*;
    use crate::sync::env::SystemClock;

    const INITIAL: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_millis(100);
    /// The ceiling of each attempt: doubling from `INITIAL`, then held at
    /// `MAX`, also long after the doubling would overflow.
    const CEILINGS: [(u32, u64); 9] = [
        (0, 10),
        (1, 20),
        (2, 40),
        (3, 80),
        (4, 100),
        (5, 100),
        (20, 100),
        (40, 100),
        (200, 100),
    ];
    /// Backoffs drawn from per property checked.
    const DRAWS: usize = 2_000;

    fn env(seed: u64) -> Env {
        Env::new(Arc::new(SystemClock), seed)
    }

    /// The delay of attempt `n`: `n` delays drawn before it.
    fn delay_at(b: &mut Backoff, env: &Env, n: u32) -> Duration {
        for _ in 0..n {
            b.next_delay(env);
        }
        b.next_delay(env)
    }

    #[test]
    fn delays_are_spread_over_the_whole_doubling_ceiling() {
        let env = env(7);
        for (n, ceiling_ms) in CEILINGS {
            let ceiling = Duration::from_millis(ceiling_ms);
            let delays: Vec<Duration> = (0..DRAWS)
                .map(|_| delay_at(&mut Backoff::new(INITIAL, MAX), &env, n))
                .collect();
            let (low, high) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
            let mean = delays.iter().sum::<Duration>() / DRAWS as u32;
            assert!(*high < ceiling, "attempt {n}: {high:?} ≥ {ceiling:?}");
            // The ceiling is reached, not a lower one; the floor is zero, not
            // a share of the ceiling (full jitter); uniform in between.
            assert!(*high > ceiling * 98 / 100, "attempt {n}: at most {high:?}");
            assert!(*low < ceiling * 2 / 100, "attempt {n}: at least {low:?}");
            assert!(
                mean > ceiling * 45 / 100 && mean < ceiling * 55 / 100,
                "attempt {n}: mean {mean:?} of [0, {ceiling:?})"
            );
            let distinct = delays.iter().collect::<BTreeSet<_>>().len();
            assert!(
                distinct > DRAWS * 99 / 100,
                "attempt {n}: {distinct} distinct"
            );
        }
    }

    #[test]
    fn reset_starts_again_from_initial() {
        let env = env(11);
        let mut b = Backoff::new(INITIAL, MAX);
        let (mut after_reset, mut grown) = (Vec::new(), Vec::new());
        for _ in 0..DRAWS {
            b.reset();
            after_reset.push((b.next_delay(&env), b.next_delay(&env)));
            // Grown to MAX: the next delay is drawn from [0, MAX).
            for _ in 0..4 {
                b.next_delay(&env);
            }
            grown.push(b.next_delay(&env));
        }
        // Had reset kept the ceiling, nine in ten first delays would be at
        // least INITIAL, as nine in ten grown ones are.
        for (n, (first, second)) in after_reset.iter().enumerate() {
            assert!(*first < INITIAL, "draw {n}: {first:?} after a reset");
            assert!(
                *second < 2 * INITIAL,
                "draw {n}: {second:?} second after a reset"
            );
        }
        let above = grown.iter().filter(|d| **d >= INITIAL).count();
        assert!(
            above > DRAWS * 85 / 100,
            "{above} of {DRAWS} above {INITIAL:?}"
        );
    }

    #[test]
    fn a_seed_replays_the_same_delays_and_another_seed_draws_others() {
        // Attempts 0..6, a reset, attempts 0..3: under their ceilings.
        let ceilings_ms = [10, 20, 40, 80, 100, 100, 10, 20, 40];
        let delays = |seed| {
            let env = env(seed);
            let mut b = Backoff::new(INITIAL, MAX);
            let mut out: Vec<Duration> = (0..6).map(|_| b.next_delay(&env)).collect();
            b.reset();
            out.extend((0..3).map(|_| b.next_delay(&env)));
            out
        };
        let runs: Vec<Vec<Duration>> = (1..=4).map(delays).collect();
        for (seed, run) in (1..).zip(&runs) {
            assert_eq!(*run, delays(seed), "seed {seed} replayed");
            for (d, ceiling) in run.iter().zip(ceilings_ms) {
                assert!(*d < Duration::from_millis(ceiling), "seed {seed}: {run:?}");
            }
        }
        // Every seed draws its own delays, at every attempt.
        for (i, a) in runs.iter().enumerate() {
            for b in &runs[i + 1..] {
                assert!(a.iter().zip(b).all(|(x, y)| x != y), "{a:?} and {b:?}");
            }
        }
    }
}
