//! The replica's scrub while it serves: every stored entry read back a
//! page at a time (see [`crate::store::scrub`]), no faster than a byte
//! rate, so clients and peers keep the disk. What is not as stored is
//! taken out of service at once (see [`crate::store::Store::quarantine`]):
//! no client or peer is handed its bytes again, and the entry is missing,
//! so the pull workers' repair brings a good copy back from a peer.
//!
//! A pass runs on request (`Replication/Scrub`) and every
//! `storage.scrub_interval_ms`, jittered so a mesh's replicas do not scrub
//! in step; where the periodic scrub stands is kept in the store (see
//! [`ScrubMark`]), so restarts neither start a pass over nor put the next
//! one off.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Replica;
use crate::error::Result;
use crate::pace::Pace;
use crate::store::Seq;
use crate::store::scrub::{Finding, ScrubMark, scrub_page};
use crate::sync::env::Env;

/// Log records read per page.
const PAGE: usize = 500;
/// A pass keeps where it stands this often.
const KEEP_MARK_EVERY: Duration = Duration::from_secs(10);
/// A pass under way when the replica stopped resumes within this long of
/// its start.
const RESUME_AFTER: Duration = Duration::from_secs(60);

/// How the background scrub runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubSettings {
    /// How often a pass starts; `None`: only on request.
    pub interval: Option<Duration>,
    /// Entry bytes read per second at most (0: as fast as the disk goes).
    pub bytes_per_second: u64,
}

impl Default for ScrubSettings {
    fn default() -> Self {
        Self {
            interval: Some(Duration::from_secs(7 * 24 * 3600)),
            bytes_per_second: 16 << 20,
        }
    }
}

/// What one pass found and did.
#[derive(Debug, Clone, Default)]
pub struct ScrubReport {
    pub checked: u64,
    pub bytes: u64,
    /// Entries not as stored, each now out of service.
    pub corrupt: Vec<Finding>,
    pub took: Duration,
    /// The pass was stopped before the end of the log.
    pub stopped: bool,
}

impl Replica {
    /// A pass on request: the log as far as it reached when the pass began
    /// (what is written meanwhile waits for the next pass), at
    /// `bytes_per_second` at most (0: no limit), until done or `cancel`.
    /// The periodic scrub's schedule is not changed by it.
    pub async fn scrub(
        &self,
        bytes_per_second: u64,
        cancel: &CancellationToken,
    ) -> Result<ScrubReport> {
        let end = self.stats().head_seq;
        self.scrub_span(0, end, bytes_per_second, cancel, None)
            .await
    }

    /// Checks the log from `after` through `end`. With `mark`, keeps where
    /// the pass stands in the store as it goes, when it is stopped, and
    /// when it is done (with the time it finished).
    async fn scrub_span(
        &self,
        mut after: Seq,
        end: Seq,
        bytes_per_second: u64,
        cancel: &CancellationToken,
        mut mark: Option<(ScrubMark, &Env)>,
    ) -> Result<ScrubReport> {
        let started = Instant::now();
        let mut pace = Pace::new(bytes_per_second);
        let mut report = ScrubReport::default();
        let mut kept_at = Instant::now();
        while after < end {
            if cancel.is_cancelled() {
                report.stopped = true;
                break;
            }
            let limit = PAGE.min((end - after) as usize);
            let page = self.blocking(move |s| scrub_page(s, after, limit)).await?;
            report.checked += page.checked;
            report.bytes += page.bytes;
            self.metrics.scrub_entries.inc_by(page.checked);
            self.metrics.scrub_bytes.inc_by(page.bytes);
            if !page.findings.is_empty() {
                self.quarantine(page.findings.clone()).await?;
                report.corrupt.extend(page.findings);
            }
            let Some(next) = page.next else { break };
            after = next;
            if let Some((m, _)) = &mut mark
                && kept_at.elapsed() >= KEEP_MARK_EVERY
            {
                kept_at = Instant::now();
                *m = ScrubMark { after, end, ..*m };
                self.keep_mark(*m).await?;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {}
                _ = pace.read(page.bytes) => {}
            }
        }
        report.took = started.elapsed();
        if let Some((m, env)) = mark {
            let kept = match report.stopped {
                true => ScrubMark { after, end, ..m },
                false => ScrubMark {
                    after: end,
                    end,
                    last_pass_ms: env.unix_ms(),
                },
            };
            self.keep_mark(kept).await?;
        }
        if !report.stopped {
            self.metrics.scrub_passes.inc();
            let now_ms = match mark {
                Some((_, env)) => env.unix_ms(),
                None => Env::system().unix_ms(),
            };
            self.metrics.scrub_last_pass.set((now_ms / 1000) as i64);
        }
        Ok(report)
    }

    async fn keep_mark(&self, mark: ScrubMark) -> Result<()> {
        self.blocking(move |s| s.set_scrub_mark(mark)).await
    }

    /// Takes `found` out of service, in one durable commit.
    pub async fn quarantine(&self, found: Vec<Finding>) -> Result<usize> {
        for f in &found {
            tracing::error!(
                seq = f.seq,
                namespace = %f.namespace,
                id = %f.id,
                problem = %f.problem,
                "an entry is not as stored: taken out of service; a good copy is fetched from a peer"
            );
        }
        let ids: Vec<_> = found.iter().map(|f| f.id).collect();
        let removed = self.blocking(move |s| s.quarantine(&found)).await?;
        self.commit.recent.forget(ids);
        self.metrics.scrub_corrupt.inc_by(removed as u64);
        Ok(removed)
    }
}

/// Runs a pass every `settings.interval`, jittered, until `cancel`; after a
/// pass that took entries out of service, calls `repair` so the peers are
/// asked for good copies. The schedule and a pass under way are kept in
/// the store: after a restart, a pass under way resumes where it stood
/// (within a minute), and the next one is due an interval after the last
/// one finished, however often the replica restarts.
pub async fn run_periodic(
    replica: Arc<Replica>,
    settings: ScrubSettings,
    env: Env,
    repair: impl Fn(),
    cancel: CancellationToken,
) {
    let Some(every) = settings.interval else {
        return;
    };
    let mut mark = match replica.blocking(|s| s.scrub_mark()).await {
        Ok(mark) => mark,
        Err(e) => {
            tracing::warn!(error = %e, "could not read where the scrub stands; starting its schedule over");
            ScrubMark::default()
        }
    };
    if mark.last_pass_ms > 0 {
        let secs = (mark.last_pass_ms / 1000) as i64;
        replica.metrics.scrub_last_pass.set(secs);
    }
    loop {
        let wait = next_pass_in(&mark, every, &env);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let (after, end) = match mark.under_way() {
            true => {
                tracing::info!(after = mark.after, end = mark.end, "scrub pass resumes");
                (mark.after, mark.end)
            }
            false => (0, replica.stats().head_seq),
        };
        let pass = replica
            .scrub_span(
                after,
                end,
                settings.bytes_per_second,
                &cancel,
                Some((mark, &env)),
            )
            .await;
        match pass {
            Ok(report) if report.stopped => return,
            Ok(report) => {
                let corrupt = report.corrupt.len();
                let log = format!(
                    "{} entries, {:.1} MB in {:.1} s",
                    report.checked,
                    report.bytes as f64 / 1e6,
                    report.took.as_secs_f64()
                );
                match corrupt {
                    0 => tracing::info!(result = %log, "scrub pass: every entry as stored"),
                    n => {
                        tracing::error!(result = %log, corrupt = n, "scrub pass: entries not as stored were taken out of service; asking peers for good copies");
                        repair();
                    }
                }
                mark = ScrubMark {
                    after: end,
                    end,
                    last_pass_ms: env.unix_ms(),
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, "scrub pass failed; the next one in an interval");
                mark = ScrubMark {
                    after: end,
                    end,
                    last_pass_ms: env.unix_ms(),
                };
            }
        }
    }
}

/// How long until the next pass: soon when one is under way, else about
/// an interval (half to one and a half, so a mesh's replicas do not scrub
/// in step) after the last one finished, or after now when none has.
fn next_pass_in(mark: &ScrubMark, every: Duration, env: &Env) -> Duration {
    if mark.under_way() {
        let soon = every.min(RESUME_AFTER);
        return soon / 2 + env.jitter(soon);
    }
    let wait = every / 2 + env.jitter(every);
    match mark.last_pass_ms {
        0 => wait,
        last => {
            let since = Duration::from_millis(env.unix_ms().saturating_sub(last));
            wait.saturating_sub(since)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;
    use crate::metrics::Metrics;
    use crate::policy::Policy;
    use crate::replica::NodeIdentity;
    use crate::store::Store;
    use crate::store::conformance::entry_with;
    use crate::store::memory::MemoryStore;
    use crate::sync::env::Clock;

    /// The wall clock of a test on tokio's paused time.
    struct Paused(tokio::time::Instant);

    impl Clock for Paused {
        fn unix_ms(&self) -> u64 {
            1_800_000_000_000 + self.0.elapsed().as_millis() as u64
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    /// A replica process on `store`, its periodic scrub started.
    fn start(
        store: &Arc<MemoryStore>,
        env: &Env,
    ) -> (Arc<Metrics>, CancellationToken, tokio::task::JoinHandle<()>) {
        let metrics = Arc::new(Metrics::new());
        let replica = Arc::new(Replica::new(
            store.clone(),
            NodeIdentity::new("r"),
            Policy::default(),
            Limits::default(),
            1 << 20,
            metrics.clone(),
            CancellationToken::new(),
        ));
        let settings = ScrubSettings {
            interval: Some(HOUR),
            // 1,000 entries of about 1 KB a minute.
            bytes_per_second: 20_000,
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_periodic(
            replica,
            settings,
            env.clone(),
            || {},
            cancel.clone(),
        ));
        (metrics, cancel, task)
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_resumes_a_pass_under_way_and_keeps_the_schedule() {
        let store = Arc::new(MemoryStore::new());
        let ns = crate::entry::Namespace::new("t", "a").unwrap();
        let batch: Vec<_> = (0..3000).map(|i| entry_with(&ns, i, &[7; 1000])).collect();
        store.append(&batch, None).unwrap();
        let env = Env::new(Arc::new(Paused(tokio::time::Instant::now())), 7);

        // The first pass starts within 1.5 hours and is stopped halfway.
        let (metrics, cancel, task) = start(&store, &env);
        let deadline = tokio::time::Instant::now() + 2 * HOUR;
        while metrics.scrub_entries.get() < 1500 {
            assert!(tokio::time::Instant::now() < deadline, "no pass started");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        cancel.cancel();
        task.await.unwrap();
        let checked = metrics.scrub_entries.get();
        let mark = store.scrub_mark().unwrap();
        assert!(mark.under_way(), "{mark:?}");
        assert_eq!((mark.after, mark.end), (checked, 3000));

        // After a restart, it resumes within a minute where it stood, and
        // finishes.
        let restarted_ms = env.unix_ms();
        let (metrics, cancel, task) = start(&store, &env);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(metrics.scrub_entries.get() > 0, "the pass did not resume");
        tokio::time::sleep(Duration::from_secs(240)).await;
        assert_eq!(metrics.scrub_passes.get(), 1);
        assert_eq!(metrics.scrub_entries.get(), 3000 - checked);
        cancel.cancel();
        task.await.unwrap();
        let mark = store.scrub_mark().unwrap();
        assert!(!mark.under_way(), "{mark:?}");
        assert!(
            (restarted_ms..=env.unix_ms()).contains(&mark.last_pass_ms),
            "{mark:?}"
        );

        // Restarted again, the next pass waits for its interval after the
        // last one finished.
        let (metrics, cancel, task) = start(&store, &env);
        tokio::time::sleep(HOUR / 2 - Duration::from_secs(300)).await;
        assert_eq!(metrics.scrub_entries.get(), 0, "a pass ran too soon");
        assert_eq!(
            metrics.scrub_last_pass.get() as u64,
            mark.last_pass_ms / 1000,
            "the last pass's time is shown from the start"
        );
        tokio::time::sleep(2 * HOUR).await;
        assert!(metrics.scrub_passes.get() >= 1, "no pass ran");
        cancel.cancel();
        task.await.unwrap();
    }
}
