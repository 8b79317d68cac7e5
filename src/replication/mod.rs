//! Replication: the supervisor that keeps one pull worker running per peer.
//!
//! The peer set is the configured peers plus those found by DNS discovery,
//! filtered by the topology ([`settings::ReplicationSettings::select`]). It is
//! recomputed when the settings change (a config reload) and on every
//! discovery tick; workers for new peers start, workers for peers that left
//! are cancelled and awaited. A worker that panics is restarted. Every worker
//! is a child of the supervisor's cancellation token, so shutdown stops them
//! all, and the supervisor awaits them before returning.

pub mod backoff;
pub mod settings;
pub mod status;
pub mod worker;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::replica::Replica;
use settings::ReplicationSettings;
use status::StatusBoard;
use worker::PeerWorker;

pub struct Replicator {
    replica: Arc<Replica>,
    settings: watch::Receiver<ReplicationSettings>,
    board: StatusBoard,
    cancel: CancellationToken,
}

struct Running {
    cancel: CancellationToken,
    id: tokio::task::Id,
}

impl Replicator {
    pub fn new(
        replica: Arc<Replica>,
        settings: watch::Receiver<ReplicationSettings>,
        board: StatusBoard,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            replica,
            settings,
            board,
            cancel,
        }
    }

    /// Runs until cancelled; returns once every worker has stopped.
    pub async fn run(mut self) {
        let mut workers: HashMap<String, Running> = HashMap::new();
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut discovered: BTreeSet<String> = BTreeSet::new();
        let mut next_discovery = tokio::time::Instant::now();
        loop {
            let settings = Arc::new(self.settings.borrow_and_update().clone());
            let wanted: BTreeSet<String> = settings
                .select(
                    settings
                        .peers
                        .iter()
                        .cloned()
                        .chain(discovered.iter().cloned()),
                )
                .into_iter()
                .collect();
            workers.retain(|peer, running| {
                let keep = wanted.contains(peer);
                if !keep {
                    tracing::info!(%peer, "peer left the topology; stopping its worker");
                    running.cancel.cancel();
                    self.board.remove(peer);
                    self.replica.metrics().peers.remove(peer);
                }
                keep
            });
            for peer in &wanted {
                if workers.contains_key(peer) {
                    continue;
                }
                tracing::info!(%peer, "starting pull worker");
                let cancel = self.cancel.child_token();
                let worker = PeerWorker {
                    peer: peer.clone(),
                    replica: self.replica.clone(),
                    settings: settings.clone(),
                    metrics: self.replica.metrics().peers.peer(peer),
                    status: self.board.slot(peer),
                    cancel: cancel.clone(),
                };
                let id = tasks.spawn(worker.run()).id();
                workers.insert(peer.clone(), Running { cancel, id });
            }

            let discovery = settings.discovery.clone();
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                changed = self.settings.changed() => {
                    if changed.is_err() {
                        // The settings' owner is gone: keep the current peers.
                        self.cancel.cancelled().await;
                        break;
                    }
                    tracing::info!("replication settings reloaded");
                }
                _ = tokio::time::sleep_until(next_discovery), if discovery.is_some() => {
                    next_discovery = tokio::time::Instant::now() + settings.discovery_interval;
                    if let Some(name) = discovery
                        && let Some(found) = resolve(&name).await
                    {
                        discovered = found;
                    }
                }
                Some(joined) = tasks.join_next_with_id() => {
                    let id = match &joined {
                        Ok((id, ())) => *id,
                        Err(e) => e.id(),
                    };
                    if let Err(e) = joined
                        && e.is_panic()
                    {
                        tracing::error!(error = %e, "pull worker panicked; restarting it");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    // Forget the finished worker; the next pass restarts it if still wanted.
                    workers.retain(|_, running| running.id != id);
                }
            }
        }
        for running in workers.values() {
            running.cancel.cancel();
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// Every address behind a DNS name, as `ip:port`; `None` (keep the old set)
/// when resolution fails.
async fn resolve(name: &str) -> Option<BTreeSet<String>> {
    let lookup = tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host(name));
    match lookup.await {
        Ok(Ok(addrs)) => Some(addrs.map(|a| a.to_string()).collect()),
        Ok(Err(e)) => {
            tracing::warn!(name, error = %e, "peer discovery failed; keeping the previous peers");
            None
        }
        Err(_) => {
            tracing::warn!(name, "peer discovery timed out; keeping the previous peers");
            None
        }
    }
}
