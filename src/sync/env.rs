//! Where the engine gets wall-clock time and randomness. Monotonic time is
//! tokio's (pausable in tests); wall-clock time and jitter come from an
//! [`Env`], so a simulation can replay a run exactly from a seed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Wall-clock time.
pub trait Clock: Send + Sync + 'static {
    fn unix_ms(&self) -> u64;
}

/// The system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// Wall-clock time that runs with tokio's clock (paused in a test or a
/// simulation): a fixed epoch plus tokio's time since `.0`.
#[cfg(any(test, feature = "tools"))]
pub struct TokioClock(pub tokio::time::Instant);

#[cfg(any(test, feature = "tools"))]
impl Clock for TokioClock {
    fn unix_ms(&self) -> u64 {
        1_800_000_000_000 + self.0.elapsed().as_millis() as u64
    }
}

/// The clock and random source every worker of the engine shares.
#[derive(Clone)]
pub struct Env {
    clock: Arc<dyn Clock>,
    rng: Arc<Mutex<StdRng>>,
}

impl Env {
    /// The system clock and a randomly seeded generator.
    pub fn system() -> Self {
        Self::new(Arc::new(SystemClock), rand::random())
    }

    /// `clock`, and a generator seeded with `seed`.
    pub fn new(clock: Arc<dyn Clock>, seed: u64) -> Self {
        Self {
            clock,
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
        }
    }

    pub fn unix_ms(&self) -> u64 {
        self.clock.unix_ms()
    }

    /// The wall-clock time as a `SystemTime`.
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.unix_ms())
    }

    /// A uniformly random duration in `[0, ceiling)`.
    pub fn jitter(&self, ceiling: Duration) -> Duration {
        let f: f64 = self.rng.lock().unwrap_or_else(|e| e.into_inner()).random();
        ceiling.mul_f64(f)
    }
}
