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
    use super::*;

    #[test]
    fn grows_to_the_ceiling_and_resets() {
        let (initial, max) = (Duration::from_millis(10), Duration::from_millis(100));
        let env = Env::new(std::sync::Arc::new(super::super::env::SystemClock), 7);
        let mut b = Backoff::new(initial, max);
        for n in 0..10 {
            let ceiling = (initial * 2u32.pow(n)).min(max);
            assert!(b.next_delay(&env) <= ceiling);
        }
        b.reset();
        assert!(b.next_delay(&env) <= initial);
    }
}

#[cfg(test)]
mod replay {
    use super::*;
    use crate::sync::env::SystemClock;
    use std::sync::Arc;

    #[test]
    fn the_same_seed_gives_the_same_delays() {
        let delays = |seed| {
            let env = Env::new(Arc::new(SystemClock), seed);
            let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
            (0..8).map(|_| b.next_delay(&env)).collect::<Vec<_>>()
        };
        assert_eq!(delays(1), delays(1));
        assert_ne!(delays(1), delays(2));
    }
}
