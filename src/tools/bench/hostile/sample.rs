//! What the bench reads off the replica process while it runs: memory,
//! open files, CPU time and its own metrics.

use std::net::SocketAddr;
use std::time::Duration;

use crate::tools::bench::{cpu_seconds, memory_mb, metric_sum};
use crate::tools::child::{ReplicaProcess, http_get};

/// The replica's resources at one moment (or their peaks over a phase).
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub rss_mb: f64,
    pub open_files: usize,
    pub send_data_held_mb: Option<f64>,
    pub connections_open: Option<f64>,
}

impl Usage {
    pub async fn now(replica: &ReplicaProcess, metrics: SocketAddr) -> Self {
        let text = metrics_text(metrics).await;
        Self {
            rss_mb: memory_mb(replica).0,
            open_files: replica.open_files(),
            send_data_held_mb: metric_sum(&text, "mindoo_replica_send_data_held_bytes")
                .map(|b| b / 1e6),
            connections_open: metric_sum(&text, "mindoo_replica_connections_open"),
        }
    }

    pub fn max(self, other: Self) -> Self {
        let max = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Self {
            rss_mb: self.rss_mb.max(other.rss_mb),
            open_files: self.open_files.max(other.open_files),
            send_data_held_mb: max(self.send_data_held_mb, other.send_data_held_mb),
            connections_open: max(self.connections_open, other.connections_open),
        }
    }
}

/// The replica's /metrics (empty if it does not answer within a second).
pub async fn metrics_text(metrics: SocketAddr) -> String {
    let get = tokio::time::timeout(Duration::from_secs(1), http_get(metrics, "/metrics"));
    get.await.ok().and_then(Result::ok).unwrap_or_default()
}

/// CPU seconds used so far by the replica and by this process.
pub struct Cpu {
    at: std::time::Instant,
    replica: f64,
    bench: f64,
}

impl Cpu {
    pub fn now(replica: &ReplicaProcess) -> Self {
        let used = |pid: Option<u32>| pid.and_then(cpu_seconds).unwrap_or(0.0);
        Self {
            at: std::time::Instant::now(),
            replica: used(replica.pid()),
            bench: used(Some(std::process::id())),
        }
    }

    /// Cores each used on average since `self`.
    pub fn cores_since(&self, replica: &ReplicaProcess) -> (f64, f64) {
        let now = Self::now(replica);
        let secs = now.at.duration_since(self.at).as_secs_f64().max(1e-9);
        (
            (now.replica - self.replica) / secs,
            (now.bench - self.bench) / secs,
        )
    }
}
