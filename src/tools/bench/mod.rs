//! Benchmarks that print their figures. Each starts real replica processes on
//! loopback, so the numbers include gRPC, HTTP/2, RocksDB and verification.
//! Shared here: entry generators, wire-byte counting and a counting proxy.

mod append;
mod backup;
mod bootstrap;
mod client;
mod filtered;
mod hostile;
mod missing;
mod propagation;
mod push;
mod reconcile;

pub use append::{AppendOptions, append};
pub use backup::{BackupOptions, backup};
pub use bootstrap::{BootstrapOptions, bootstrap};
pub use client::{ClientOptions, client};
pub use filtered::{FilteredOptions, filtered};
pub use hostile::{Attack, HostileOptions, hostile};
pub use missing::{MissingOptions, missing_ids};
pub use propagation::{PropagationOptions, propagation};
pub use push::{PushOptions, push};
pub use reconcile::{ReconcileOptions, reconcile};

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::child::ReplicaProcess;
use crate::client::{StoreClient, endpoint};
pub use crate::fixtures::{sample_entries, unsigned_entries};

/// The setting of a replica a benchmark fills with unsigned entries (signing
/// millions would take longer than the run): its clients' entries need no
/// signature. What checking them costs is `bench append`'s to measure.
pub const UNSIGNED_FIXTURES: (&str, &str) = ("MINDOO_REPLICA__POLICY__REQUIRE_SIGNATURES", "false");

/// Resident and peak resident memory of a process, in MB, for reports.
pub fn memory_mb(p: &ReplicaProcess) -> (f64, f64) {
    let (rss, peak) = p.memory().unwrap_or_default();
    (rss as f64 / 1e6, peak as f64 / 1e6)
}

/// The sum of a metric's samples over all its label sets, in Prometheus
/// text; `None` when the text has none.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(None, |sum, v| Some(sum.unwrap_or(0.0) + v))
}

/// CPU seconds (user + system) a process has used so far.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks / hz)
}

/// Waits until a replica process is idle (its background flushes and
/// compactions done), so a measurement does not pay for earlier work.
pub async fn wait_quiet(p: &ReplicaProcess, limit: std::time::Duration) {
    let Some(pid) = p.pid() else { return };
    let start = std::time::Instant::now();
    let step = std::time::Duration::from_millis(500);
    let mut last = cpu_seconds(pid);
    let mut quiet = 0;
    while quiet < 2 && start.elapsed() < limit {
        tokio::time::sleep(step).await;
        let now = cpu_seconds(pid);
        let busy = match (last, now) {
            (Some(a), Some(b)) => (b - a) / step.as_secs_f64(),
            _ => 0.0,
        };
        quiet = if busy < 0.05 { quiet + 1 } else { 0 };
        last = now;
    }
}

/// Connects a client whose TCP bytes are counted in `wire`, signing its
/// requests with `key` when given.
pub async fn connect_counted(
    addr: &str,
    wire: Arc<WireCounters>,
    key: Option<ed25519_dalek::SigningKey>,
) -> anyhow::Result<StoreClient> {
    let target = addr.to_owned();
    let channel = endpoint(addr)?
        .connect_with_connector(tower::service_fn(move |_uri| {
            let (target, wire) = (target.clone(), wire.clone());
            async move {
                let stream = TcpStream::connect(target).await?;
                stream.set_nodelay(true)?;
                Ok::<_, std::io::Error>(TokioIo::new(CountingStream {
                    inner: stream,
                    wire,
                }))
            }
        }))
        .await?;
    Ok(StoreClient::signed(channel, key))
}

/// A loopback TCP proxy to `target` that counts the bytes each way: `sent`
/// is what clients sent to the target, `received` what the target sent back.
/// Dropping it closes the listener and every proxied connection.
pub struct CountingProxy {
    pub addr: std::net::SocketAddr,
    pub wire: Arc<WireCounters>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    pub async fn start(target: std::net::SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let wire = Arc::new(WireCounters::default());
        let counters = wire.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let mut outbound = CountingStream {
                    inner: outbound,
                    wire: counters.clone(),
                };
                connections.spawn(async move {
                    let _ = tokio::io::copy_bidirectional_with_sizes(
                        &mut inbound,
                        &mut outbound,
                        256 << 10,
                        256 << 10,
                    )
                    .await;
                });
            }
        });
        Ok(Self { addr, wire, task })
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bytes written and read on counted connections.
#[derive(Debug, Default)]
pub struct WireCounters {
    sent: AtomicU64,
    received: AtomicU64,
}

impl WireCounters {
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }

    pub fn since(&self, before: (u64, u64)) -> (u64, u64) {
        let now = self.snapshot();
        (now.0 - before.0, now.1 - before.1)
    }
}

pin_project_lite::pin_project! {
    struct CountingStream {
        #[pin]
        inner: TcpStream,
        wire: Arc<WireCounters>,
    }
}

impl AsyncRead for CountingStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        let n = buf.filled().len() - before;
        this.wire.received.fetch_add(n as u64, Ordering::Relaxed);
        result
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result {
            this.wire.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &result {
            this.wire.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
