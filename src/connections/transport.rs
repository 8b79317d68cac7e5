//! An accepted connection's byte stream: plain TCP, or TLS over it. The TLS
//! handshake runs inside the first reads and writes HTTP/2 makes, so it is
//! under the connection's handshake deadline like the HTTP/2 preface, and a
//! slow handshake holds up no other connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::tls::{CertRole, MeshNames, NameSource, ServerTls};

/// TLS on the accepting side: the reloading config, and who the names in
/// a certificate belong to.
#[derive(Clone)]
pub struct Acceptor {
    pub tls: Arc<ServerTls>,
    pub names: NameSource,
}

/// Who the other side proved to be in the TLS handshake, once it is done.
pub type CertSlot = Arc<OnceLock<Option<CertRole>>>;

pub(super) enum Transport {
    Plain(TcpStream),
    Handshaking {
        accept: Box<tokio_rustls::Accept<TcpStream>>,
        names: NameSource,
        slot: CertSlot,
    },
    Tls(Box<TlsStream<TcpStream>>),
    Failed,
}

impl Transport {
    pub(super) fn new(stream: TcpStream, acceptor: Option<&Acceptor>, slot: CertSlot) -> Self {
        match acceptor {
            None => Self::Plain(stream),
            Some(a) => Self::Handshaking {
                accept: Box::new(tokio_rustls::TlsAcceptor::from(a.tls.current()).accept(stream)),
                names: a.names.clone(),
                slot,
            },
        }
    }

    /// Drives the handshake, if one is under way; ready once the stream
    /// carries application data.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Self::Handshaking {
            accept,
            names,
            slot,
        } = self
        else {
            return match self {
                Self::Failed => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the TLS handshake failed",
                ))),
                _ => Poll::Ready(Ok(())),
            };
        };
        match Pin::new(accept.as_mut()).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(stream)) => {
                let role = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|cert| MeshNames::role(&names(), cert));
                let _ = slot.set(role);
                *self = Self::Tls(Box::new(stream));
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                *self = Self::Failed;
                Poll::Ready(Err(e))
            }
        }
    }

    pub(super) fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
            _ => false,
        }
    }

    /// Whether the TLS handshake is still under way.
    pub(super) fn handshaking(&self) -> bool {
        matches!(self, Self::Handshaking { .. })
    }
}

macro_rules! ready_then {
    ($self:ident, $cx:ident, $method:ident($($arg:expr),*)) => {{
        match $self.poll_ready($cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        match $self {
            Transport::Plain(s) => Pin::new(s).$method($($arg),*),
            Transport::Tls(s) => Pin::new(s.as_mut()).$method($($arg),*),
            _ => unreachable!("ready means plain or TLS"),
        }
    }};
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready_then!(this, cx, poll_read(cx, buf))
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready_then!(this, cx, poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready_then!(this, cx, poll_write_vectored(cx, bufs))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready_then!(this, cx, poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            _ => Poll::Ready(Ok(())),
        }
    }
}
