//! Paces a long read (a scrub pass, a streamed backup) to a byte rate, so
//! that it leaves the disk to the writes a replica serves meanwhile.

use std::time::Duration;

use tokio::time::Instant;

/// After a stall (the reader waited on something else), reading may catch
/// up by this much at once, no more.
const SLACK: Duration = Duration::from_secs(1);

/// When the next bytes may be read, at a rate.
#[derive(Debug)]
pub struct Pace {
    next: Instant,
    /// 0: no limit.
    per_second: u64,
}

impl Pace {
    /// Starts now, at `per_second` bytes a second at most (0: no limit).
    pub fn new(per_second: u64) -> Self {
        Self {
            next: Instant::now(),
            per_second,
        }
    }

    /// Counts `bytes` as read, and waits until reading them was due: they
    /// take their time at the rate after the last bytes, or after now less
    /// the slack when reading stalled.
    pub async fn read(&mut self, bytes: u64) {
        if self.per_second == 0 {
            return;
        }
        let earliest = Instant::now().checked_sub(SLACK).unwrap_or(self.next);
        let takes = Duration::from_secs_f64(bytes as f64 / self.per_second as f64);
        self.next = self.next.max(earliest) + takes;
        tokio::time::sleep_until(self.next).await;
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

    #[tokio::test(start_paused = true)]
    async fn after_a_stall_reads_catch_up_by_the_slack_only() {
        let mut pace = Pace::new(1000);
        pace.read(1000).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let started = Instant::now();
        for _ in 0..5 {
            pace.read(1000).await;
        }
        assert_eq!(started.elapsed(), Duration::from_secs(4));
    }
}
