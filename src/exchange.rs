//! This device's store exchanging entries with a peer: a replica, another
//! device serving its store, or another store in this process. Push sends
//! what the peer lacks; pull fetches what this side lacks. Both run the
//! sync engine ([`crate::sync`]) with the exchange's namespaces as the
//! filter: the same resumable cursors, batching and verification as
//! replica-to-replica replication, and no body this side already holds is
//! downloaded.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::entry::Namespace;
use crate::log::WriteConcern;
use crate::sync::budget::ByteBudget;
use crate::sync::env::Env;
use crate::sync::error::SyncError;
use crate::sync::grpc::GrpcPeer;
use crate::sync::local::Local;
use crate::sync::metrics::SyncMetrics;
use crate::sync::peer::{ConnectOptions, Peer, PeerError};
use crate::sync::puller::Puller;
use crate::sync::pusher::{PushProgress, Pusher};
use crate::sync::status::{PeerStatus, StatusBoard};
use crate::sync::{Shared, SyncSettings};

/// Entry data a pull holds in memory at once, at most.
const PULL_BUDGET_BYTES: usize = 64 << 20;

/// A peer to exchange entries with, and what to exchange.
#[derive(Clone)]
pub struct Exchange {
    peer: Arc<dyn Peer>,
    /// Only these namespaces; empty: every one.
    namespaces: Vec<Namespace>,
    /// How long a push or pull may take in all.
    timeout: Duration,
    /// What every push and pull of this exchange records (in a registry
    /// of its own: a device exports no metrics).
    metrics: Arc<SyncMetrics>,
    /// What a push asks of the replica before each batch is acknowledged.
    write_concern: WriteConcern,
}

/// What a pull did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pulled {
    /// Entries newly stored on this side.
    pub stored: u64,
    /// The peer's log position reached.
    pub through: u64,
}

impl Exchange {
    /// An exchange with `peer`, of every namespace.
    pub fn new(peer: Arc<dyn Peer>, timeout: Duration) -> Self {
        Self {
            peer,
            namespaces: Vec::new(),
            timeout,
            metrics: Arc::new(SyncMetrics::new(&prometheus::Registry::new())),
            write_concern: WriteConcern::default(),
        }
    }

    /// Each batch a push sends is acknowledged only once `concern` is met:
    /// held durably by that many replicas. A push whose batch was not
    /// confirmed in time fails with [`PeerError::NotConfirmed`] (what it
    /// sent is stored and still replicates; pushing again waits again).
    pub fn with_write_concern(mut self, concern: WriteConcern) -> Self {
        self.write_concern = concern;
        self
    }

    /// An exchange with the replica (or device) at a gRPC `address`,
    /// connected when first used.
    /// Over TLS when the environment asks for it (see
    /// [`crate::client::TLS_CA_ENV`]).
    pub fn grpc(address: &str, timeout: Duration) -> Result<Self, SyncError> {
        let peer: Arc<dyn Peer> = Arc::new(GrpcPeer::lazy(address, Self::options(timeout))?);
        Ok(Self::new(peer, timeout))
    }

    /// As [`Exchange::grpc`], reaching the replica as `dial` says.
    pub fn grpc_with(
        address: &str,
        timeout: Duration,
        dial: &crate::client::Dial,
    ) -> Result<Self, SyncError> {
        let tls = dial
            .tls
            .clone()
            .map(|config| Arc::new(move || config.clone()) as crate::sync::grpc::TlsSource);
        let peer = GrpcPeer::lazy_over(address, Self::options(timeout), tls, dial.key.clone())?;
        Ok(Self::new(Arc::new(peer), timeout))
    }

    fn options(timeout: Duration) -> ConnectOptions {
        ConnectOptions {
            connect_timeout: timeout.min(Duration::from_secs(10)),
            keepalive_interval: Duration::from_secs(30),
        }
    }

    /// Only `namespace` is exchanged (the call adds to the filter).
    pub fn only(mut self, namespace: Namespace) -> Self {
        self.namespaces.push(namespace);
        self
    }

    /// Where the peer is reached.
    pub fn address(&self) -> &str {
        self.peer.address()
    }

    fn settings(&self) -> SyncSettings {
        SyncSettings {
            namespaces: self.namespaces.clone(),
            connect_timeout: self.timeout.min(Duration::from_secs(10)),
            write_concern: self.write_concern,
            ..SyncSettings::default()
        }
    }

    fn pusher(&self, local: Arc<dyn Local>, cancel: CancellationToken) -> Pusher {
        Pusher {
            local,
            peer: self.peer.clone(),
            settings: watch::channel(self.settings()).1,
            metrics: self.metrics.clone(),
            env: Env::system(),
            cancel,
            progress: watch::channel(PushProgress::default()).0,
        }
    }

    fn puller(
        &self,
        local: Arc<dyn Local>,
        status: Arc<Mutex<PeerStatus>>,
        cancel: CancellationToken,
    ) -> Puller {
        Puller {
            local,
            peer: self.peer.clone(),
            settings: watch::channel(self.settings()).1,
            budget: ByteBudget::new(PULL_BUDGET_BYTES).for_peer(PULL_BUDGET_BYTES),
            shared: Shared::default(),
            metrics: self.metrics.clone(),
            status,
            env: Env::system(),
            cancel,
        }
    }

    /// Keeps `local` and the peer in step, both ways, until the returned
    /// [`Following`] is stopped or dropped: what either stores reaches the
    /// other as it is stored. Errors back off and reconnect; a peer that
    /// is away is caught up with when it returns.
    pub fn follow(&self, local: Arc<dyn Local>) -> Following {
        let cancel = CancellationToken::new();
        let status = StatusBoard::default().slot(self.peer.address());
        let pusher = self.pusher(local.clone(), cancel.clone());
        let pushed = pusher.progress.subscribe();
        let puller = self.puller(local, status.clone(), cancel.clone());
        Following {
            pulled: status,
            pushed,
            tasks: vec![
                AbortOnDropHandle::new(tokio::spawn(pusher.run())),
                AbortOnDropHandle::new(tokio::spawn(puller.run())),
            ],
            cancel,
        }
    }

    /// Pushes every entry of `local` the peer lacks; resumes where an
    /// interrupted push stopped.
    pub async fn push(&self, local: Arc<dyn Local>) -> Result<PushProgress, SyncError> {
        let pusher = self.pusher(local, CancellationToken::new());
        tokio::time::timeout(self.timeout, pusher.push_to_head())
            .await
            .map_err(|_| PeerError::Timeout("the push"))?
    }

    /// Pulls the entries `local` lacks, up to the peer's head as it was
    /// when the pull started.
    pub async fn pull(&self, local: Arc<dyn Local>) -> Result<Pulled, SyncError> {
        let target = tokio::time::timeout(self.timeout, self.peer.head())
            .await
            .map_err(|_| PeerError::Timeout("Head"))??
            .head_seq;
        let status = StatusBoard::default().slot(self.peer.address());
        let cancel = CancellationToken::new();
        let puller = self.puller(local, status.clone(), cancel.clone());
        let task = AbortOnDropHandle::new(tokio::spawn(puller.run()));
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
                    self.peer.address(),
                    now.cursor_seq,
                    self.timeout
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

/// An exchange that follows both ways (see [`Exchange::follow`]).
pub struct Following {
    /// How the pull from the peer goes.
    pub pulled: Arc<Mutex<PeerStatus>>,
    /// How the push to the peer goes.
    pub pushed: watch::Receiver<PushProgress>,
    tasks: Vec<AbortOnDropHandle<()>>,
    cancel: CancellationToken,
}

impl Following {
    /// A copy of the pull's status.
    pub fn pull_status(&self) -> PeerStatus {
        self.pulled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops both directions and waits for them to end.
    pub async fn stop(self) {
        self.cancel.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
