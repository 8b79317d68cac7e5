//! Accepting gRPC connections within limits, so that no client, however it
//! behaves, can keep others out or take the memory and descriptors the
//! replica needs:
//!
//! - at most `max_connections` open at once, and `max_per_address` from one
//!   source address; at a cap, the connection with no call open that has
//!   been idle longest is closed to make room, and only when none is idle
//!   is the new one refused (accepted and closed at once);
//! - TLS, when the port takes it ([`transport`]), its handshake under the
//!   same deadline as the HTTP/2 preface;
//! - deadlines on each connection ([`guarded`]): the HTTP/2 preface, a
//!   frame or request header block once begun, idleness, and taking the
//!   response data its streams hold;
//! - each connection's and each address's streams draw response data from
//!   pools of their own ([`crate::replica::outgoing`]);
//! - [`calls`] counts the calls each connection has open, and [`slices`]
//!   hands response data to HTTP/2 a frame at a time.
//!
//! Health probes need not wait behind any of this: the metrics listener
//! answers `grpc.health.v1` too (see [`crate::server`]).

pub mod calls;
mod files;
mod frames;
mod guarded;
mod registry;
pub mod slices;
pub mod transport;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::net::TcpListener;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::tls::CertRole;

pub use calls::CallsLayer;
pub use files::{SPARE_FILES, connections_that_fit, open_files_limit, raise_open_files_limit};
pub use guarded::Guarded;
pub use registry::Refusal;
pub use transport::Acceptor;

use crate::metrics::Metrics;
use crate::replica::outgoing::BytePool;
use registry::{Conn, Registry};

/// What a connection must do to be kept, and how many are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// Connections from one source address.
    pub max_per_address: usize,
    /// The HTTP/2 preface must arrive within this long of connecting.
    pub handshake_timeout: Duration,
    /// A frame or a request's header block, once begun, must end within
    /// this long.
    pub header_timeout: Duration,
    /// A connection with no call open for this long is closed.
    pub idle_timeout: Duration,
    /// A connection whose streams hold response data and that takes no
    /// DATA for this long is closed.
    pub send_timeout: Duration,
    /// Response data one connection's streams may hold.
    pub send_per_connection: usize,
    /// Response data the connections from one address may hold together.
    pub send_per_address: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_per_address: 128,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            send_timeout: Duration::from_secs(30),
            send_per_connection: 8 << 20,
            send_per_address: 16 << 20,
        }
    }
}

/// Connections the kernel may hold for the accept loop (capped by
/// `net.core.somaxconn`): a burst of new connections, an attacker's
/// included, waits there rather than having its handshakes dropped, which
/// would cost every other new client a one-second SYN retry.
pub const BACKLOG: i32 = 4096;

/// Sets `listener`'s backlog to [`BACKLOG`], whoever bound it (Linux
/// takes a second `listen` on a listening socket as a new backlog).
pub fn deepen_backlog(listener: &TcpListener) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: listen(2) on a socket this listener owns.
    match unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Connections accepted from `listener` within `limits`, over TLS when
/// `tls` is given.
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<Acceptor>,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = io::Result<Guarded>> + Send + 'static {
    let registry = Registry::new(limits, metrics.clone());
    futures::stream::unfold(
        (listener, registry, metrics),
        move |(listener, registry, metrics)| {
            let tls = tls.clone();
            async move {
                let conn = loop {
                    let (stream, peer) = match listener.accept().await {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Out of descriptors or a client gone before accept:
                            // pause rather than spin, then go on.
                            tracing::warn!(error = %e, "accepting a connection failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    match registry.admit(peer.ip().to_canonical()) {
                        Ok(member) => {
                            let _ = stream.set_nodelay(true);
                            break Guarded::new(
                                stream,
                                tls.as_ref(),
                                member,
                                limits,
                                metrics.clone(),
                            );
                        }
                        Err(refusal) => {
                            metrics
                                .connections_refused
                                .with_label_values(&[refusal.label()])
                                .inc();
                            drop(stream);
                        }
                    }
                };
                metrics.connections_open.inc();
                Some((Ok(conn), (listener, registry, metrics)))
            }
        },
    )
}

/// What each call learns about its connection (a request extension).
#[derive(Clone)]
pub struct ConnectionInfo {
    pub tcp: TcpConnectInfo,
    conn: Arc<Conn>,
    cert: transport::CertSlot,
    /// Client credentials this connection has proven.
    pub proven: Arc<crate::auth::Proven>,
}

impl ConnectionInfo {
    /// The pools the call's response data is granted from, narrowest
    /// first: its connection's, then its address's.
    pub fn send_pools(&self) -> Vec<BytePool> {
        vec![self.conn.send.clone(), self.conn.address_send.clone()]
    }

    /// Whose certificate the other side presented over TLS, if any: known
    /// once the handshake is done, which it is before any call arrives.
    pub fn certificate(&self) -> Option<&CertRole> {
        self.cert.get().and_then(Option::as_ref)
    }
}

impl Connected for Guarded {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnectionInfo {
            tcp: self.tcp.clone(),
            conn: self.member.conn.clone(),
            cert: self.cert.clone(),
            proven: self.proven.clone(),
        }
    }
}
