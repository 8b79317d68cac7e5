//! A database on this device exchanging entries with a replica (or another
//! device serving its store): push what it wrote, pull what others wrote.
//! Both run the sync engine ([`crate::sync`]) over its gRPC adapter, with
//! the database's namespace as the filter: the same resumable cursors,
//! batching and verification as replica-to-replica replication, and no
//! body the device already holds is downloaded.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::database::Database;
use crate::sync::budget::ByteBudget;
use crate::sync::env::Env;
use crate::sync::error::SyncError;
use crate::sync::grpc::GrpcPeer;
use crate::sync::metrics::SyncMetrics;
use crate::sync::peer::{ConnectOptions, Peer, PeerError};
use crate::sync::puller::Puller;
use crate::sync::pusher::{PushProgress, Pusher};
use crate::sync::status::StatusBoard;
use crate::sync::{Shared, SyncSettings};

/// Entry data a pull holds in memory at once, at most.
const PULL_BUDGET_BYTES: usize = 64 << 20;

/// How an exchange reaches its replica.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The replica's gRPC address.
    pub address: String,
    /// How long a push or pull may take in all.
    pub timeout: Duration,
}

/// What a pull did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pulled {
    /// Entries newly stored on this device.
    pub stored: u64,
    /// The replica's log position reached.
    pub through: u64,
}

impl Exchange {
    fn settings(&self, db: &Database) -> SyncSettings {
        SyncSettings {
            namespaces: vec![db.namespace().clone()],
            connect_timeout: self.timeout.min(Duration::from_secs(10)),
            ..SyncSettings::default()
        }
    }

    fn peer(&self) -> Result<Arc<GrpcPeer>, SyncError> {
        let options = ConnectOptions {
            connect_timeout: self.timeout.min(Duration::from_secs(10)),
            keepalive_interval: Duration::from_secs(30),
        };
        Ok(Arc::new(GrpcPeer::lazy(&self.address, options)?))
    }

    /// Pushes every entry of the database the replica lacks; resumes where
    /// an interrupted push stopped.
    pub async fn push(&self, db: &Database) -> Result<PushProgress, SyncError> {
        let pusher = Pusher {
            local: db.store(),
            peer: self.peer()?,
            settings: watch::channel(self.settings(db)).1,
            metrics: Arc::new(SyncMetrics::new(&prometheus::Registry::new())),
            env: Env::system(),
            cancel: CancellationToken::new(),
            progress: watch::channel(PushProgress::default()).0,
        };
        tokio::time::timeout(self.timeout, pusher.push_to_head())
            .await
            .map_err(|_| PeerError::Timeout("the push"))?
    }

    /// Pulls the database's entries the device lacks, up to the replica's
    /// head as it was when the pull started.
    pub async fn pull(&self, db: &Database) -> Result<Pulled, SyncError> {
        let peer = self.peer()?;
        let target = tokio::time::timeout(self.timeout, peer.head())
            .await
            .map_err(|_| PeerError::Timeout("Head"))??
            .head_seq;
        let board = StatusBoard::default();
        let status = board.slot(&self.address);
        let cancel = CancellationToken::new();
        let budget = ByteBudget::new(PULL_BUDGET_BYTES);
        let puller = Puller {
            local: db.store(),
            peer,
            settings: watch::channel(self.settings(db)).1,
            budget: budget.for_peer(PULL_BUDGET_BYTES),
            shared: Shared::default(),
            metrics: Arc::new(SyncMetrics::new(&prometheus::Registry::new())),
            status: status.clone(),
            env: Env::system(),
            cancel: cancel.clone(),
        };
        let task = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(puller.run()));
        let deadline = tokio::time::Instant::now() + self.timeout;
        let result = loop {
            let now = status.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if now.is_self {
                break Err(PeerError::Refused {
                    code: "self".into(),
                    message: "the address leads back to this store".into(),
                }
                .into());
            }
            if now.cursor_seq >= target {
                break Ok(Pulled {
                    stored: now.entries_pulled,
                    through: now.cursor_seq,
                });
            }
            if tokio::time::Instant::now() >= deadline {
                let why = now.last_error.unwrap_or_else(|| "no error reported".into());
                break Err(PeerError::Unavailable(format!(
                    "the pull from {} reached {} of {target} in {:?}: {why}",
                    self.address, now.cursor_seq, self.timeout
                ))
                .into());
            }
            // The worker reports progress through its status slot.
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        cancel.cancel();
        let _ = task.await;
        result
    }
}
