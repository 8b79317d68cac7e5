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
const RESUME_WITHIN: Duration = Duration::from_secs(60);

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
        self.scrub_span(0, end, bytes_per_second, cancel, &Env::system(), None)
            .await
    }

    /// Checks the log from `after` through `end`. With `mark`, keeps where
    /// the pass stands in the store as it goes and when it is stopped.
    async fn scrub_span(
        &self,
        mut after: Seq,
        end: Seq,
        bytes_per_second: u64,
        cancel: &CancellationToken,
        env: &Env,
        mark: Option<ScrubMark>,
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
            let page = self
                .blocking(move |s| scrub_page(s, after, end, limit))
                .await?;
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
            if let Some(mark) = mark
                && kept_at.elapsed() >= KEEP_MARK_EVERY
            {
                kept_at = Instant::now();
                self.keep_mark(ScrubMark { after, end, ..mark }).await;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {}
                _ = pace.read(page.bytes) => {}
            }
        }
        report.took = started.elapsed();
        match (report.stopped, mark) {
            (true, Some(mark)) => self.keep_mark(ScrubMark { after, end, ..mark }).await,
            (true, None) => {}
            (false, _) => {
                self.metrics.scrub_passes.inc();
                let secs = env.unix_ms() / 1000;
                self.metrics.scrub_last_pass.set(secs as i64);
            }
        }
        Ok(report)
    }

    /// Keeps `mark` in the store; a write that fails costs only a pass
    /// done again, so it is logged and the scrub carries on.
    async fn keep_mark(&self, mark: ScrubMark) {
        if let Err(e) = self.blocking(move |s| s.set_scrub_mark(mark)).await {
            tracing::warn!(error = %e, "could not keep where the scrub stands");
        }
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
/// pass that took entries out of service (or failed), calls `repair` so
/// the peers are asked for good copies. The schedule and a pass under way
/// are kept in the store: after a restart, a pass under way resumes where
/// it stood within a minute, and otherwise the next pass is due when it
/// was, however often the replica restarts.
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
    // Jittered, so a mesh's replicas do not scrub in step.
    let next_due = |env: &Env| env.unix_ms() + (every / 2 + env.jitter(every)).as_millis() as u64;
    let mut resume = mark.under_way();
    loop {
        let wait = match resume {
            true => env.jitter(every.min(RESUME_WITHIN)),
            false => {
                if mark.due_ms == 0 {
                    mark.due_ms = next_due(&env);
                    replica.keep_mark(mark).await;
                }
                Duration::from_millis(mark.due_ms.saturating_sub(env.unix_ms()))
            }
        };
        resume = false;
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
        let rate = settings.bytes_per_second;
        let pass = replica
            .scrub_span(after, end, rate, &cancel, &env, Some(mark))
            .await;
        match pass {
            Ok(report) if report.stopped => return,
            Ok(report) => {
                let log = format!(
                    "{} entries, {:.1} MB in {:.1} s",
                    report.checked,
                    report.bytes as f64 / 1e6,
                    report.took.as_secs_f64()
                );
                match report.corrupt.len() {
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
                    due_ms: next_due(&env),
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, "scrub pass failed; it resumes at the next interval");
                // It may have taken entries out of service before it failed.
                repair();
                let kept = replica.blocking(|s| s.scrub_mark()).await.unwrap_or(mark);
                mark = ScrubMark {
                    due_ms: next_due(&env),
                    ..kept
                };
            }
        }
        replica.keep_mark(mark).await;
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
    use crate::sync::env::TokioClock;

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
        let env = Env::new(Arc::new(TokioClock(tokio::time::Instant::now())), 7);

        // Restarted before its first pass, a replica keeps when it is due.
        let mut due = 0;
        for _ in 0..2 {
            let (_, cancel, task) = start(&store, &env);
            tokio::time::sleep(Duration::from_secs(60)).await;
            cancel.cancel();
            task.await.unwrap();
            let mark = store.scrub_mark().unwrap();
            assert!(mark.due_ms > env.unix_ms(), "{mark:?}");
            assert!(due == 0 || mark.due_ms == due, "due {due}, then {mark:?}");
            due = mark.due_ms;
        }

        // The first pass starts when due and is stopped halfway.
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
