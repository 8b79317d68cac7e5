//! Replication: the supervisor that keeps one pull worker
//! ([`crate::sync::puller`]) running per peer address.
//!
//! The peer set is the configured peers plus those found by DNS discovery,
//! filtered by the topology ([`settings::ReplicationSettings::select`]). It is
//! recomputed when the settings change (a config reload) and on every
//! discovery tick; workers for new peers start, workers for peers that left
//! are cancelled and awaited. Settings that workers follow (namespace
//! filters, timeouts) reach running workers through a watch channel. A
//! worker that panics is restarted. Every worker is a child of the
//! supervisor's cancellation token, so shutdown stops them all, and the
//! supervisor awaits them before returning.
//!
//! Cursors into peers that left are removed once they have not moved for
//! `replication.cursor_retention_ms`.

pub mod settings;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::replica::Replica;
use crate::sync::budget::ByteBudget;
use crate::sync::env::Env;
use crate::sync::peer::{ConnectOptions, Connector};
use crate::sync::puller::Puller;
use crate::sync::status::StatusBoard;
use crate::sync::{Claims, Shared, SyncSettings};
use settings::ReplicationSettings;

pub struct Replicator {
    replica: Arc<Replica>,
    connect: Connector,
    settings: watch::Receiver<ReplicationSettings>,
    board: StatusBoard,
    env: Env,
    cancel: CancellationToken,
    shared: Shared,
}

struct Running {
    cancel: CancellationToken,
    id: tokio::task::Id,
}

impl Replicator {
    /// A supervisor that reaches peers through `connect`.
    pub fn new(
        replica: Arc<Replica>,
        connect: Connector,
        settings: watch::Receiver<ReplicationSettings>,
        board: StatusBoard,
        env: Env,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            replica,
            connect,
            settings,
            board,
            env,
            cancel,
            shared: Shared::default(),
        }
    }

    /// Where repairs are requested of this replica's pull workers.
    pub fn repairs(&self) -> crate::sync::repair::Repairs {
        self.shared.repairs.clone()
    }

    /// Runs until cancelled; returns once every worker has stopped.
    pub async fn run(mut self) {
        let first = self.settings.borrow().clone();
        let budget = ByteBudget::new(first.max_inflight_bytes);
        let (pull_tx, pull_rx) = watch::channel::<SyncSettings>(first.pull.clone());
        let shared = self.shared.clone();
        let mut workers: HashMap<String, Running> = HashMap::new();
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut discovered: BTreeSet<String> = BTreeSet::new();
        let mut next_discovery = tokio::time::Instant::now();
        let cleanup_every = (first.cursor_retention / 4)
            .clamp(Duration::from_millis(250), Duration::from_secs(3600));
        let mut next_cleanup = tokio::time::Instant::now() + cleanup_every;
        loop {
            // Workers end when stopping; none is started again.
            if self.cancel.is_cancelled() {
                break;
            }
            let settings = Arc::new(self.settings.borrow_and_update().clone());
            pull_tx.send_if_modified(|pull| {
                let changed = *pull != settings.pull;
                *pull = settings.pull.clone();
                changed
            });
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
                }
                keep
            });
            for address in &wanted {
                if workers.contains_key(address) {
                    continue;
                }
                tracing::info!(peer = %address, "starting pull worker");
                let cancel = self.cancel.child_token();
                let status = self.board.slot(address);
                let options = ConnectOptions {
                    connect_timeout: settings.pull.connect_timeout,
                    keepalive_interval: settings.keepalive_interval,
                };
                let id = match (self.connect)(address, options) {
                    Ok(peer) => {
                        let puller = Puller {
                            local: self.replica.clone(),
                            peer,
                            settings: pull_rx.clone(),
                            budget: budget.for_peer(settings.max_peer_inflight_bytes),
                            shared: shared.clone(),
                            metrics: self.replica.metrics().sync.clone(),
                            status,
                            env: self.env.clone(),
                            cancel: cancel.clone(),
                        };
                        tasks.spawn(puller.run()).id()
                    }
                    Err(e) => {
                        // Stay idle rather than exit, so the supervisor does not
                        // restart this worker in a loop; a reload can replace it.
                        tracing::error!(peer = %address, error = %e, "not pulling from this peer");
                        status.lock().unwrap_or_else(|e| e.into_inner()).last_error =
                            Some(e.to_string());
                        tasks.spawn(cancel.clone().cancelled_owned()).id()
                    }
                };
                workers.insert(address.clone(), Running { cancel, id });
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
                _ = tokio::time::sleep_until(next_cleanup) => {
                    next_cleanup = tokio::time::Instant::now() + cleanup_every;
                    self.remove_stale_cursors(&shared.claims, &settings).await;
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

    /// Removes cursors into peers that nobody pulls now and that have not
    /// moved for the retention period (a peer that left for good, or a name
    /// from before peers were known by node identity).
    async fn remove_stale_cursors(&self, claims: &Claims, settings: &ReplicationSettings) {
        let cursors = match self.replica.peer_cursors().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list cursors for clean-up");
                return;
            }
        };
        let active = claims.nodes();
        let now = self.env.unix_ms();
        let retention = settings.cursor_retention.as_millis() as u64;
        let mut kept = 0;
        for (peer, record) in cursors {
            if active.contains(&peer) || now.saturating_sub(record.updated_ms) < retention {
                kept += 1;
                continue;
            }
            match self.replica.forget_peer_cursor(&peer).await {
                Ok(()) => tracing::info!(
                    %peer,
                    seq = record.cursor.seq,
                    "removed the cursor of a peer not pulled for the retention period"
                ),
                Err(e) => {
                    kept += 1;
                    tracing::warn!(%peer, error = %e, "cannot remove a stale cursor")
                }
            }
        }
        self.replica.metrics().peer_cursors.set(kept);
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
