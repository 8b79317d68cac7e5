//! Accepting gRPC connections within limits. At most `max_connections` are
//! open at once: at the cap the listener stops accepting (new clients wait
//! in the kernel's backlog), so connections can never take the file
//! descriptors the store needs. A client that has not sent the HTTP/2
//! preface within `handshake_timeout` of connecting is disconnected, so
//! half-open handshakes cannot hold those slots either.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::metrics::Metrics;

/// What a connection must do to be kept, and how many are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
}

/// The HTTP/2 client preface every gRPC connection starts with.
const PREFACE_BYTES: usize = 24;

/// Connections accepted from `listener` within `limits`.
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = io::Result<Guarded>> + Send + 'static {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    futures::stream::unfold(
        (listener, slots, metrics),
        move |(listener, slots, metrics)| async move {
            let slot = slots
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let accepted = loop {
                match listener.accept().await {
                    Ok((stream, _)) => break stream,
                    Err(e) => {
                        // Out of descriptors or a client gone before accept:
                        // pause rather than spin, then go on.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            };
            let _ = accepted.set_nodelay(true);
            metrics.connections_open.inc();
            let conn = Guarded {
                stream: accepted,
                preface_left: PREFACE_BYTES,
                deadline: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
                _slot: Slot {
                    _permit: slot,
                    metrics: metrics.clone(),
                },
            };
            Some((Ok(conn), (listener, slots, metrics)))
        },
    )
}

/// An accepted connection holding one of the slots.
pub struct Guarded {
    stream: TcpStream,
    /// Preface bytes still to come; 0 once the handshake is done.
    preface_left: usize,
    deadline: Pin<Box<Sleep>>,
    _slot: Slot,
}

struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.connections_open.dec();
    }
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                this.preface_left = this.preface_left.saturating_sub(read);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if this.preface_left == 0 => Poll::Pending,
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.metrics().handshake_timeouts.inc();
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no HTTP/2 preface within the handshake timeout",
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl Guarded {
    fn metrics(&self) -> &Metrics {
        &self._slot.metrics
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Raises this process's soft limit of open files to its hard limit.
/// Returns the limit before and after.
pub fn raise_open_files_limit() -> io::Result<(u64, u64)> {
    let mut limit = files_rlimit()?;
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads `limit`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur))
}

/// This process's soft limit of open files (`u64::MAX` when unknown).
pub fn open_files_limit() -> u64 {
    files_rlimit().map_or(u64::MAX, |limit| limit.rlim_cur)
}

fn files_rlimit() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes `limit`.
    match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
        0 => Ok(limit),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Descriptors kept free beyond the store and the connections: the
/// listeners, peer connections, logs, the metrics endpoint.
pub const SPARE_FILES: u64 = 256;

/// The connections that fit in `open_files` beside `store_files` and the
/// spare; at least 16.
pub fn connections_that_fit(wanted: usize, store_files: usize, open_files: u64) -> usize {
    let room = open_files.saturating_sub(store_files as u64 + SPARE_FILES);
    (wanted as u64).min(room).max(16) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_give_way_to_the_store() {
        assert_eq!(connections_that_fit(1024, 1024, 1 << 20), 1024);
        assert_eq!(connections_that_fit(1024, 1024, 2048), 768);
        assert_eq!(connections_that_fit(1024, 1024, 1024), 16);
    }
}
