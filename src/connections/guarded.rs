//! An accepted connection with its deadlines. It ends (its reads and
//! writes fail, and the HTTP/2 server closes it) when:
//!
//! - it has not finished the TLS handshake (when the port takes TLS) and
//!   sent the HTTP/2 preface within the handshake timeout;
//! - a frame, or a request's header block, has begun and not ended within
//!   the header timeout (a client that sends headers a byte at a time);
//! - no call has been open for the idle timeout;
//! - its streams hold response data and it has taken no DATA for the send
//!   timeout (a reader that never opens its window, or stops reading);
//! - the registry evicted it to make room.
//!
//! Deadlines are checked whenever a read or a write has to wait, with one
//! timer: it is moved earlier when a nearer deadline appears, and when it
//! fires every deadline is looked at again.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::ConnectionLimits;
use super::frames::FrameTracker;
use super::registry::Member;
use super::transport::{Acceptor, CertSlot, Transport};
use crate::metrics::Metrics;

/// The HTTP/2 client preface every gRPC connection starts with.
const PREFACE_BYTES: usize = 24;

/// An accepted connection, counted in the registry until dropped.
pub struct Guarded {
    stream: Transport,
    pub(super) tcp: TcpConnectInfo,
    /// Who the TLS handshake proved the other side to be.
    pub(super) cert: CertSlot,
    pub(super) proven: std::sync::Arc<crate::auth::Proven>,
    pub(super) member: Member,
    limits: ConnectionLimits,
    metrics: std::sync::Arc<Metrics>,
    accepted: Instant,
    /// Preface bytes still to come; 0 once the handshake is done.
    preface_left: usize,
    inbound: FrameTracker,
    outbound: FrameTracker,
    /// When the frame being received began.
    frame_since: Option<Instant>,
    /// When the header block being received began.
    header_block_since: Option<Instant>,
    /// When DATA was last written.
    data_written: Instant,
    /// Since when the connection's streams have held response data, as
    /// first seen.
    holding_since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
}

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    Handshake,
    Header,
    Idle,
    Send,
}

impl Guarded {
    pub(super) fn new(
        stream: TcpStream,
        tls: Option<&Acceptor>,
        member: Member,
        limits: ConnectionLimits,
        metrics: std::sync::Arc<Metrics>,
    ) -> Self {
        let now = Instant::now();
        let tcp = stream.connect_info();
        let cert = CertSlot::default();
        Self {
            stream: Transport::new(stream, tls, cert.clone()),
            tcp,
            cert,
            proven: Default::default(),
            member,
            limits,
            metrics,
            accepted: now,
            preface_left: PREFACE_BYTES,
            inbound: FrameTracker::default(),
            outbound: FrameTracker::default(),
            frame_since: None,
            header_block_since: None,
            data_written: now,
            holding_since: None,
            timer: Box::pin(tokio::time::sleep_until(now + limits.handshake_timeout)),
        }
    }

    fn evicted(&self) -> io::Result<()> {
        match self.member.conn.is_evicted() {
            true => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed to make room for a new connection",
            )),
            false => Ok(()),
        }
    }

    /// Follows what was read: the preface, then frames.
    fn received(&mut self, mut bytes: &[u8]) {
        if self.preface_left > 0 {
            let preface = self.preface_left.min(bytes.len());
            self.preface_left -= preface;
            bytes = &bytes[preface..];
        }
        if bytes.is_empty() {
            return;
        }
        let now = Instant::now();
        let fed = self.inbound.feed(bytes);
        self.frame_since = match self.inbound.mid_frame() {
            true if fed.frames_ended > 0 => Some(now),
            true => self.frame_since.or(Some(now)),
            false => None,
        };
        self.header_block_since = match self.inbound.in_header_block() {
            true => self.header_block_since.or(Some(now)),
            false => None,
        };
    }

    /// Follows what was written: DATA is progress for the send timeout.
    fn sent(&mut self, bytes: &[u8]) {
        if self.outbound.feed(bytes).data_bytes > 0 {
            self.data_written = Instant::now();
        }
    }

    /// The nearest deadline, or the reason the connection must end.
    fn next_deadline(&mut self, now: Instant) -> Result<Instant, Expired> {
        let l = &self.limits;
        if self.preface_left > 0 {
            return Self::check(self.accepted + l.handshake_timeout, now, Expired::Handshake);
        }
        let conn = &self.member.conn;
        // While calls are open, look again every quarter send timeout:
        // that is how a connection starting to hold data is noticed.
        let mut next = now + l.send_timeout / 4;
        let receiving = [self.frame_since, self.header_block_since];
        if let Some(since) = receiving.into_iter().flatten().min() {
            next = next.min(Self::check(since + l.header_timeout, now, Expired::Header)?);
        }
        if let Some(since) = conn.idle_since() {
            next = next.min(Self::check(since + l.idle_timeout, now, Expired::Idle)?);
        }
        self.holding_since = match conn.send.held() > 0 {
            true => Some(self.holding_since.unwrap_or(now)),
            false => None,
        };
        if let Some(since) = self.holding_since {
            let progress = since.max(self.data_written);
            next = next.min(Self::check(progress + l.send_timeout, now, Expired::Send)?);
        }
        Ok(next)
    }

    fn check(deadline: Instant, now: Instant, why: Expired) -> Result<Instant, Expired> {
        match deadline <= now {
            true => Err(why),
            false => Ok(deadline),
        }
    }

    /// Called whenever a read or write has to wait: ends the connection
    /// once a deadline has passed, else arms the timer for the nearest.
    fn poll_deadlines(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        self.member.conn.register(cx.waker());
        if let Err(e) = self.evicted() {
            return Poll::Ready(e);
        }
        loop {
            let now = Instant::now();
            let next = match self.next_deadline(now) {
                Ok(next) => next,
                Err(why) => return Poll::Ready(self.expired(why)),
            };
            if next < self.timer.deadline() || self.timer.deadline() <= now {
                self.timer.as_mut().reset(next);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }

    /// Counts a TLS handshake that failed.
    fn failed(&self, handshaking: bool, e: io::Error) -> io::Error {
        if handshaking {
            self.metrics.tls_handshake_failures.inc();
        }
        e
    }

    fn expired(&self, why: Expired) -> io::Error {
        let m = &self.metrics;
        let (counter, message) = match why {
            Expired::Handshake if self.stream.handshaking() => (
                &m.handshake_timeouts,
                "no TLS handshake within the handshake timeout",
            ),
            Expired::Handshake => (
                &m.handshake_timeouts,
                "no HTTP/2 preface within the handshake timeout",
            ),
            Expired::Header => (
                &m.header_timeouts,
                "a frame or header block not completed within the header timeout",
            ),
            Expired::Idle => (&m.idle_closed, "no call within the idle timeout"),
            Expired::Send => (
                &m.send_timeouts,
                "response data not taken within the send timeout",
            ),
        };
        counter.inc();
        io::Error::new(io::ErrorKind::TimedOut, message)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.metrics.connections_open.dec();
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.evicted()?;
        let before = buf.filled().len();
        let handshaking = this.stream.handshaking();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.received(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(this.failed(handshaking, e))),
            Poll::Pending => this.poll_deadlines(cx).map(Err),
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.evicted()?;
        let handshaking = this.stream.handshaking();
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.sent(&buf[..n]);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(this.failed(handshaking, e))),
            Poll::Pending => this.poll_deadlines(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.evicted()?;
        let handshaking = this.stream.handshaking();
        match Pin::new(&mut this.stream).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                let mut left = n;
                for buf in bufs {
                    let take = left.min(buf.len());
                    this.sent(&buf[..take]);
                    left -= take;
                    if left == 0 {
                        break;
                    }
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(this.failed(handshaking, e))),
            Poll::Pending => this.poll_deadlines(cx).map(Err),
        }
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
