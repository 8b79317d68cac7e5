//! The replica's scrub while it serves: every stored entry read back a
//! page at a time (see [`crate::store::scrub`]), no faster than a byte
//! rate, so clients and peers keep the disk. What is not as stored is
//! taken out of service at once (see [`crate::store::Store::quarantine`]):
//! no client or peer is handed its bytes again, and the entry is missing,
//! so the pull workers' repair brings a good copy back from a peer.
//!
//! A pass runs on request (`Replication/Scrub`) and every
//! `storage.scrub_interval_ms`, jittered so a mesh's replicas do not scrub
//! in step.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Replica;
use crate::error::Result;
use crate::store::scrub::{Finding, scrub_page};

/// Log records read per page.
const PAGE: usize = 500;

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
    /// One pass over the log as far as it reached when the pass began (what
    /// is written meanwhile waits for the next pass), at `bytes_per_second`
    /// at most (0: no limit), until done or `cancel`.
    pub async fn scrub(
        &self,
        bytes_per_second: u64,
        cancel: &CancellationToken,
    ) -> Result<ScrubReport> {
        let started = Instant::now();
        let mut report = ScrubReport::default();
        let mut after = 0;
        let end = self.stats().head_seq;
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
            if bytes_per_second > 0 {
                let due = Duration::from_secs_f64(report.bytes as f64 / bytes_per_second as f64);
                let wait = due.saturating_sub(started.elapsed());
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => {}
                }
            }
        }
        report.took = started.elapsed();
        if !report.stopped {
            self.metrics.scrub_passes.inc();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            self.metrics.scrub_last_pass.set(now.as_secs() as i64);
        }
        Ok(report)
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

/// Runs a pass every `settings.interval` (the first about one interval
/// after start), until `cancel`; after a pass that took entries out of
/// service, calls `repair` so the peers are asked for good copies.
pub async fn run_periodic(
    replica: Arc<Replica>,
    settings: ScrubSettings,
    jitter: impl Fn(Duration) -> Duration,
    repair: impl Fn(),
    cancel: CancellationToken,
) {
    let Some(every) = settings.interval else {
        return;
    };
    loop {
        let wait = every / 2 + jitter(every);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => return,
        }
        match replica.scrub(settings.bytes_per_second, &cancel).await {
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
            }
            Err(e) => {
                tracing::warn!(error = %e, "scrub pass failed; next one at the next interval")
            }
        }
    }
}
