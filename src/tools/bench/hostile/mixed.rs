//! The `mixed` attack: six kinds of misbehaviour at once, each from its own
//! task(s) on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::attack::{AttackStats, Signer};
use crate::tools::h2frames as frames;

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Connect and send nothing.
    HalfOpen,
    /// Open streams and reset them at once, thousands at a time.
    RapidReset,
    /// A header block that never ends.
    Continuation,
    /// Watch with data, never read.
    UnreadWatch,
    /// Calls to methods that do not exist.
    MadeUpMethods,
    /// GetEntries naming one id ten thousand times.
    RepeatedIds,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::HalfOpen,
        Kind::RapidReset,
        Kind::Continuation,
        Kind::UnreadWatch,
        Kind::MadeUpMethods,
        Kind::RepeatedIds,
    ];

    fn workers(self) -> usize {
        match self {
            Kind::HalfOpen => 8,
            Kind::UnreadWatch => 4,
            _ => 1,
        }
    }

    /// Connections this kind keeps open (the oldest let go past it), and
    /// the pause between two of them; `None` for one-shot kinds.
    fn holds(self) -> Option<(usize, Duration)> {
        match self {
            Kind::HalfOpen => Some((50, Duration::from_millis(20))),
            Kind::UnreadWatch => Some((25, Duration::from_millis(100))),
            _ => None,
        }
    }
}

/// Runs every kind's workers until aborted.
pub async fn run(addr: SocketAddr, stats: Arc<AttackStats>, signer: Signer) {
    let mut workers = tokio::task::JoinSet::new();
    for kind in Kind::ALL {
        for _ in 0..kind.workers() {
            workers.spawn(worker(kind, addr, stats.clone(), signer.clone()));
        }
    }
    while workers.join_next().await.is_some() {}
}

async fn worker(kind: Kind, addr: SocketAddr, stats: Arc<AttackStats>, signer: Signer) {
    let mut held = std::collections::VecDeque::new();
    loop {
        let Ok(mut conn) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let open = stats.opened();
        if let Some((keep, pause)) = kind.holds() {
            if matches!(kind, Kind::UnreadWatch) {
                let credentials = signer.credentials();
                let watch = frames::unread_watches_with(1, credentials.as_deref());
                let _ = conn.write_all(&watch).await;
            }
            held.push_back((conn, open));
            if held.len() > keep {
                held.pop_front();
            }
            tokio::time::sleep(pause).await;
            continue;
        }
        if conn
            .write_all(&one_shot(kind, signer.credentials().as_deref()))
            .await
            .is_ok()
        {
            // Read whatever comes back until the server closes or a
            // moment passes, then start over.
            let mut buf = vec![0u8; 16 << 10];
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
            })
            .await;
        }
    }
}

/// What a one-shot kind sends on each new connection.
fn one_shot(kind: Kind, credentials: Option<&str>) -> Vec<u8> {
    let mut out = frames::PREFACE.to_vec();
    out.extend(frames::settings());
    let request = |path: &str| frames::request_with(path, credentials);
    let head = request("/mindoo.replica.v1.Store/Head");
    match kind {
        Kind::HalfOpen | Kind::UnreadWatch => unreachable!("these hold their connections"),
        Kind::RapidReset => {
            for i in 0..2_000u32 {
                out.extend(frames::headers(2 * i + 1, frames::END_HEADERS, &head));
                out.extend(frames::rst(2 * i + 1));
            }
        }
        Kind::Continuation => {
            out.extend(frames::headers(1, frames::END_STREAM, &head));
            let filler = frames::block(&[("x-filler", &"y".repeat(100))]);
            for _ in 0..2_000 {
                out.extend(frames::continuation(1, 0, &filler));
            }
        }
        Kind::MadeUpMethods => {
            for i in 0..50u32 {
                let path = format!("/mindoo.replica.v1.Store/Made{}", rand::random::<u32>());
                out.extend(frames::headers(
                    2 * i + 1,
                    frames::END_HEADERS | frames::END_STREAM,
                    &request(&path),
                ));
            }
        }
        Kind::RepeatedIds => {
            // GetEntries { namespace: bench/hostile, ids: [one id] × 10,000 }.
            let mut message = vec![0x0a, 16, 0x0a, 5];
            message.extend_from_slice(b"bench");
            message.extend_from_slice(&[0x12, 7]);
            message.extend_from_slice(b"hostile");
            for _ in 0..10_000 {
                message.extend_from_slice(&[0x12, 32]);
                message.extend_from_slice(&[7; 32]);
            }
            let mut body = vec![0];
            body.extend_from_slice(&(message.len() as u32).to_be_bytes());
            body.extend(message);
            out.extend(frames::headers(
                1,
                frames::END_HEADERS,
                &request("/mindoo.replica.v1.Store/GetEntries"),
            ));
            for (i, chunk) in body.chunks(16_000).enumerate() {
                let last = (i + 1) * 16_000 >= body.len();
                let flags = if last { frames::END_STREAM } else { 0 };
                out.extend(frames::frame(0x0, flags, 1, chunk));
            }
        }
    }
    out
}
