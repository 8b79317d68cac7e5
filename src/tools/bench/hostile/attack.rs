//! The attacks, all from 127.0.0.1. Each runs as many connection loops as
//! it has connections; a loop reconnects [`RECONNECT_PAUSE`] after the
//! replica closes its connection (an attacker that reconnected at once
//! would be a connect flood, which on two cores measures the machine).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use ed25519_dalek::SigningKey;

use super::{flood, mixed};
use crate::tools::h2frames as frames;

const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
const SLOWLORIS_CONNECTIONS: usize = 1_100;
/// Seconds between two bytes of a slowloris HEADERS frame.
const SLOWLORIS_DRIP: Duration = Duration::from_secs(2);
const IDLE_CONNECTIONS: usize = 3_000;
const SLOW_READ_CONNECTIONS: usize = 31;
const SLOW_READ_WATCHES: u32 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// Today's six hostile clients together (see [`mixed`]).
    Mixed,
    /// Connections that send the preface and SETTINGS, then one byte of a
    /// HEADERS frame every two seconds.
    Slowloris,
    /// Plain TCP connections that send nothing.
    Idle,
    /// HTTP/2 connections that open Watches with data, announce a window
    /// of zero, answer PINGs and never take a byte.
    SlowRead,
    /// A client with a valid key calling as much as it can (see [`flood`]).
    Flood,
}

/// The attackers' credentials: one valid client key, which raw-frame
/// attacks sign with anew on each connection; none with client
/// authentication off.
#[derive(Clone, Default)]
pub struct Signer(pub Option<SigningKey>);

impl Signer {
    /// Credentials for one connection's requests.
    pub fn credentials(&self) -> Option<String> {
        self.0.as_ref().map(crate::auth::credentials)
    }
}

impl Attack {
    pub fn name(self) -> &'static str {
        match self {
            Attack::Mixed => "mixed",
            Attack::Slowloris => "slowloris",
            Attack::Idle => "idle",
            Attack::SlowRead => "slow-read",
            Attack::Flood => "flood",
        }
    }

    /// Connection loops (for `mixed`, one that runs all six kinds).
    fn loops(self) -> usize {
        match self {
            Attack::Mixed => 1,
            Attack::Slowloris => SLOWLORIS_CONNECTIONS,
            Attack::Idle => IDLE_CONNECTIONS,
            Attack::SlowRead => SLOW_READ_CONNECTIONS,
            Attack::Flood => 1,
        }
    }

    /// Starts the attack on `addr`; dropping the set stops it and closes
    /// its connections.
    pub fn start(self, addr: SocketAddr, stats: &Arc<AttackStats>, signer: &Signer) -> JoinSet<()> {
        let mut set = JoinSet::new();
        for _ in 0..self.loops() {
            set.spawn(self.run(addr, stats.clone(), signer.clone()));
        }
        set
    }

    /// One connection loop, until aborted.
    async fn run(self, addr: SocketAddr, stats: Arc<AttackStats>, signer: Signer) {
        match (self, &signer.0) {
            (Attack::Mixed, _) => return mixed::run(addr, stats, signer).await,
            (Attack::Flood, Some(key)) => return flood::run(addr, stats, key.clone()).await,
            // Without client authentication, anyone may flood: no key.
            (Attack::Flood, None) => {
                return flood::run(addr, stats, SigningKey::from_bytes(&[1; 32])).await;
            }
            _ => {}
        }
        loop {
            if let Ok(conn) = TcpStream::connect(addr).await {
                let _open = stats.opened();
                let _ = match self {
                    Attack::Slowloris => slowloris(conn).await,
                    Attack::Idle => until_closed(conn).await,
                    Attack::SlowRead => slow_read(conn, signer.credentials()).await,
                    Attack::Mixed | Attack::Flood => unreachable!("handled above"),
                };
            }
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    }
}

impl std::str::FromStr for Attack {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [
            Attack::Slowloris,
            Attack::Idle,
            Attack::SlowRead,
            Attack::Mixed,
            Attack::Flood,
        ]
        .into_iter()
        .find(|a| a.name() == s)
        .ok_or_else(|| format!("unknown attack {s:?} (slowloris, idle, slow-read, mixed, flood)"))
    }
}

/// Preface and SETTINGS, then a HEADERS frame one byte at a time, until
/// the replica closes the connection.
async fn slowloris(mut conn: TcpStream) -> std::io::Result<()> {
    let mut start = frames::PREFACE.to_vec();
    start.extend(frames::settings());
    conn.write_all(&start).await?;
    let (rx, tx) = conn.into_split();
    tokio::select! {
        r = until_closed(rx) => r,
        r = drip(tx) => r,
    }
}

async fn drip(mut tx: impl AsyncWrite + Unpin) -> std::io::Result<()> {
    let request = frames::request("/mindoo.replica.v1.Store/Head");
    for stream in (1..).step_by(2) {
        for byte in frames::headers(stream, frames::END_HEADERS, &request) {
            tx.write_all(&[byte]).await?;
            tokio::time::sleep(SLOWLORIS_DRIP).await;
        }
    }
    Ok(())
}

/// Reads and discards until the replica closes the connection.
async fn until_closed(mut rx: impl AsyncRead + Unpin) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    while rx.read(&mut buf).await? > 0 {}
    Ok(())
}

/// Watches with data behind a window of zero; PINGs answered, no
/// WINDOW_UPDATE ever.
async fn slow_read(mut conn: TcpStream, credentials: Option<String>) -> std::io::Result<()> {
    let watches = frames::unread_watches_with(SLOW_READ_WATCHES, credentials.as_deref());
    conn.write_all(&watches).await?;
    frames::answer_pings_until_closed(&mut conn).await;
    Ok(())
}

/// Connections an attack made, and how many it held open at once.
#[derive(Debug, Default)]
pub struct AttackStats {
    connects: AtomicU64,
    open: AtomicUsize,
    peak_open: AtomicUsize,
}

impl AttackStats {
    /// Counts a new connection, open until the guard is dropped.
    pub fn opened(self: &Arc<Self>) -> OpenConnection {
        self.connects.fetch_add(1, Ordering::Relaxed);
        let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_open.fetch_max(now, Ordering::Relaxed);
        OpenConnection(self.clone())
    }

    /// Connections made, and the most open at once.
    pub fn snapshot(&self) -> (u64, usize) {
        (
            self.connects.load(Ordering::Relaxed),
            self.peak_open.load(Ordering::Relaxed),
        )
    }
}

pub struct OpenConnection(Arc<AttackStats>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}
