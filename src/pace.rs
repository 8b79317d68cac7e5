//! Paces a long read (a scrub pass, a streamed backup) to a byte rate, so
//! that it leaves the disk to the writes a replica serves meanwhile.

use std::time::Duration;

use tokio::time::Instant;

/// Bytes read since a start, against a rate.
#[derive(Debug)]
pub struct Pace {
    started: Instant,
    bytes: u64,
    /// 0: no limit.
    per_second: u64,
}

impl Pace {
    /// Starts now, at `per_second` bytes a second at most (0: no limit).
    pub fn new(per_second: u64) -> Self {
        Self {
            started: Instant::now(),
            bytes: 0,
            per_second,
        }
    }

    /// Counts `bytes` as read, and waits until reading them was due.
    pub async fn read(&mut self, bytes: u64) {
        self.bytes += bytes;
        if self.per_second == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / self.per_second as f64);
        tokio::time::sleep_until(self.started + due).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reads_take_as_long_as_the_rate_says() {
        let started = Instant::now();
        let mut pace = Pace::new(1000);
        for _ in 0..10 {
            pace.read(500).await;
        }
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        let mut free = Pace::new(0);
        free.read(1 << 30).await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
