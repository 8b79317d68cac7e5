//! Accepting gRPC connections within limits. At most `max_connections` are
//! open at once: at the cap the listener stops accepting (new clients wait
//! in the kernel's backlog), so connections can never take the file
//! descriptors the store needs. A client that has not sent the HTTP/2
//! preface within `handshake_timeout` of connecting is disconnected, so
//! half-open handshakes cannot hold those slots either, and one with no
//! call open for `idle_timeout` is closed too ([`CallsLayer`] counts the
//! calls each connection has open).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tower::{Layer, Service};

use crate::metrics::Metrics;

/// What a connection must do to be kept, and how many are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    /// A connection with no call open for this long is closed.
    pub idle_timeout: Duration,
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
                calls: Arc::new(OpenCalls::new()),
                idle_timeout: limits.idle_timeout,
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
    /// The handshake deadline, then the next time to check for idleness.
    deadline: Pin<Box<Sleep>>,
    calls: Arc<OpenCalls>,
    idle_timeout: Duration,
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

/// What each call learns about its connection (a request extension).
#[derive(Clone)]
pub struct ConnectionInfo {
    pub tcp: TcpConnectInfo,
    calls: Arc<OpenCalls>,
}

impl Connected for Guarded {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnectionInfo {
            tcp: self.stream.connect_info(),
            calls: self.calls.clone(),
        }
    }
}

/// The calls open on one connection, and when the last one ended.
struct OpenCalls {
    open: AtomicUsize,
    last_end: Mutex<Instant>,
}

impl OpenCalls {
    fn new() -> Self {
        Self {
            open: AtomicUsize::new(0),
            last_end: Mutex::new(Instant::now()),
        }
    }

    fn last_end(&self) -> Instant {
        *self.last_end.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the connection will have been idle for `timeout`, if no call is
    /// open now; `None` while one is.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        (self.open.load(Ordering::Acquire) == 0).then(|| self.last_end() + timeout)
    }
}

/// A call counted as open on its connection until dropped.
struct OpenCall(Arc<OpenCalls>);

impl OpenCall {
    fn begin(calls: &Arc<OpenCalls>) -> Self {
        calls.open.fetch_add(1, Ordering::AcqRel);
        Self(calls.clone())
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        *self.0.last_end.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
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
                if this.preface_left > 0 && read >= this.preface_left {
                    // Handshake done: from now on the deadline is idleness.
                    let idle_at = Instant::now() + this.idle_timeout;
                    this.deadline.as_mut().reset(idle_at);
                }
                this.preface_left = this.preface_left.saturating_sub(read);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx),
        }
    }
}

impl Guarded {
    /// While the socket has nothing to read: the connection ends once the
    /// handshake deadline passes without a preface, or once it has been
    /// idle for the idle timeout. The deadline is re-armed until then.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.preface_left > 0 {
                self.metrics().handshake_timeouts.inc();
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within the handshake timeout",
                )));
            }
            let now = Instant::now();
            let next = match self.calls.idle_deadline(self.idle_timeout) {
                Some(at) if at <= now => {
                    self.metrics().idle_closed.inc();
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no call within the idle timeout",
                    )));
                }
                Some(at) => at,
                // A call is open: look again a timeout after it ends at
                // the earliest.
                None => now + self.idle_timeout,
            };
            self.deadline.as_mut().reset(next);
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

/// Counts each call as open on its connection from its start until its
/// response body is done or dropped.
#[derive(Clone, Copy, Default)]
pub struct CallsLayer;

impl<S> Layer<S> for CallsLayer {
    type Service = CountCalls<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountCalls { inner }
    }
}

#[derive(Clone)]
pub struct CountCalls<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for CountCalls<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<WithCall<ResBody>>;
    type Error = S::Error;
    type Future = CallFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let call = req
            .extensions()
            .get::<ConnectionInfo>()
            .map(|info| OpenCall::begin(&info.calls));
        CallFuture {
            inner: self.inner.call(req),
            call,
        }
    }
}

pin_project_lite::pin_project! {
    pub struct CallFuture<F> {
        #[pin]
        inner: F,
        call: Option<OpenCall>,
    }
}

impl<F, ResBody, E> Future for CallFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<WithCall<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let call = this.call.take();
        Poll::Ready(Ok(response.map(|body| WithCall { body, _call: call })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call open.
    pub struct WithCall<B> {
        #[pin]
        body: B,
        _call: Option<OpenCall>,
    }
}

impl<B: http_body::Body> http_body::Body for WithCall<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
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
