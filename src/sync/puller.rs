//! One pull worker per peer: an explicit state machine that moves the
//! peer's entries into the local side, each batch committed together with
//! the advanced cursor.
//!
//! ```text
//!            ┌──────────── backoff ◄──────────── any error ──┐
//!            ▼                                                │
//!         connect ──► check cursor ──► bootstrap ──► follow ──┤
//!            │             │  │  └──────► rescan ──► follow   │
//!            ▼             │  └─────────► reset ──► bootstrap │ or follow
//!         paused (self)    └────────────► follow ─────────────┘
//! ```
//!
//! - **connect** asks the peer's head: who it is (its node identity, which
//!   keys the cursor, metrics and status), and whether the address leads back
//!   to this very process (its instance), which pauses the worker.
//! - **check cursor** compares the persisted cursor with the head.
//! - **bootstrap** streams the log with data while this replica lacks most
//!   of it; **follow** streams ids only and fetches just the missing bodies,
//!   so in a mesh each body crosses to each replica about once.
//! - **rescan** walks the log again (ids only) when the namespace filter
//!   changed, so entries the cursor passed under the old filter arrive.
//! - **reset** starts over when the peer refuses the cursor (restored or
//!   rebuilt); nothing held is fetched again.
//!
//! Entry data held by a pull is bounded by a [`PeerBudget`]; the sink
//! (`super::sink`) verifies and commits it in log order.

mod reconcile;
mod stream;

use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::backoff::Backoff;
use super::budget::PeerBudget;
use super::env::Env;
use super::error::SyncError;
use super::local::Local;
use super::metrics::{PeerHandles, SyncMetrics};
use super::peer::{Peer, PeerError};
use super::status::PeerStatus;
use super::{Claim, Shared, SyncSettings};
use crate::entry::EntryId;
use crate::log::Head;
use crate::store::{CursorRecord, CursorUpdate, PeerCursor};

/// Everything a worker needs; the supervisor builds one per peer address.
pub struct Puller {
    pub local: Arc<dyn Local>,
    pub peer: Arc<dyn Peer>,
    pub settings: watch::Receiver<SyncSettings>,
    pub budget: PeerBudget,
    pub shared: Shared,
    pub metrics: Arc<SyncMetrics>,
    pub status: Arc<Mutex<PeerStatus>>,
    pub env: Env,
    pub cancel: CancellationToken,
}

/// A session with one peer node, from its head onwards.
struct Link {
    head: Head,
    /// Held while bootstrapping with data (see [`Shared::try_bootstrap`]).
    bootstrap: Option<tokio::sync::OwnedSemaphorePermit>,
    node: String,
    settings: SyncSettings,
    _claim: Claim,
    span: tracing::Span,
    /// When the next periodic reconciliation is due, if this pair
    /// reconciles periodically.
    reconcile_at: Option<Instant>,
    /// The repair request being answered (see [`super::repair`]), and the
    /// entries pulled from the peer before it.
    repairing: Option<(u64, u64)>,
}

/// Where a worker goes after a reconciliation.
enum After {
    /// Follow the peer's log from this position (its head before the
    /// session), persisted first.
    Follow(Option<PeerCursor>),
    /// Back to the cursor it had.
    CheckCursor,
}

enum State {
    Connect,
    CheckCursor(Link),
    Bootstrap(Link, Option<PeerCursor>),
    Follow(Link, Option<PeerCursor>),
    Rescan(Link, PeerCursor),
    Reset(Link, String),
    Reconcile(Link, After),
    Backoff(SyncError),
    Paused(String),
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::CheckCursor(_) => "check_cursor",
            Self::Bootstrap(..) => "bootstrap",
            Self::Follow(..) => "follow",
            Self::Rescan(..) => "rescan",
            Self::Reset(..) => "reset",
            Self::Reconcile(..) => "reconcile",
            Self::Backoff(_) => "backoff",
            Self::Paused(_) => "paused",
        }
    }
}

/// How a streaming phase ended without error.
enum End {
    /// Bootstrap reached the peer's head at this position.
    CaughtUp(Option<PeerCursor>),
    /// A rescan reached the position it was to reach.
    Reached,
    /// The namespace filter changed: check the cursor again.
    Refiltered(SyncSettings),
    /// A periodic reconciliation is due.
    ReconcileDue,
    /// A repair was requested.
    RepairDue,
}

enum Mode {
    Bootstrap,
    Follow,
    Rescan(PeerCursor),
}

impl Puller {
    /// Runs until cancelled.
    pub async fn run(self) {
        let worker = Worker {
            label: self.peer.address().to_owned(),
            handles: self.metrics.peer(self.peer.address()),
            progressed: false,
            caught_up_at: Arc::new(Mutex::new(Instant::now())),
            repairs: self.shared.repairs.subscribe(),
            backoff: {
                let s = self.settings.borrow();
                Backoff::new(s.backoff_initial, s.backoff_max)
            },
            p: self,
        };
        worker.run().await;
    }
}

struct Worker {
    p: Puller,
    /// The `peer` label of this worker's metrics: the address until the
    /// peer has said who it is, then its node identity.
    label: String,
    handles: PeerHandles,
    progressed: bool,
    caught_up_at: Arc<Mutex<Instant>>,
    backoff: Backoff,
    /// Requests to compare sets now.
    repairs: watch::Receiver<super::repair::Requested>,
}

impl Worker {
    async fn run(mut self) {
        let cancel = self.p.cancel.clone();
        // Until the peer answers, status shows what was persisted, under the
        // address (a peer's node identity is usually the address it is
        // reached by).
        let address = self.p.peer.address().to_owned();
        if let Ok(Some(record)) = self.p.local.cursor(&address).await {
            self.show_persisted(&record);
        }
        let mut state = State::Connect;
        loop {
            let name = state.name();
            self.update(|s| s.state = name);
            state = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                next = self.step(state) => next,
            };
        }
        self.update(|s| s.connected = false);
        self.p.metrics.remove(&self.label);
        tracing::debug!(peer = %self.p.peer.address(), "pull worker stopped");
    }

    /// The peer missed its heartbeat: disconnected and lagging, as far as
    /// anyone watching can tell, though the session still waits for it.
    fn show_silent(&self) {
        tracing::info!(peer = %self.label, "no message or heartbeat from the peer in time");
        self.show_disconnected();
    }

    /// Disconnected, and lagging since this replica last had everything
    /// up to the peer's head.
    fn show_disconnected(&self) {
        self.handles.connected.set(0);
        self.update(|s| s.connected = false);
        let lag = self
            .caught_up_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed();
        self.handles.lag_seconds.set(lag.as_secs_f64());
    }

    /// Status from a persisted cursor: where the pull got to, and when.
    fn show_persisted(&self, record: &CursorRecord) {
        self.update(|s| {
            s.cursor_seq = record.cursor.seq;
            s.peer_incarnation.get_or_insert(record.cursor.incarnation);
            if s.last_success.is_none() && record.updated_ms > 0 {
                s.last_success = Some(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(record.updated_ms),
                );
            }
        });
    }

    fn update(&self, f: impl FnOnce(&mut PeerStatus)) {
        f(&mut self.p.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn settings(&self) -> SyncSettings {
        self.p.settings.borrow().clone()
    }

    async fn step(&mut self, state: State) -> State {
        match state {
            State::Connect => match self.connect().await {
                Ok(Ok(link)) => State::CheckCursor(link),
                Ok(Err(reason)) => State::Paused(reason),
                Err(e) => State::Backoff(e),
            },
            State::CheckCursor(link) => {
                let span = link.span.clone();
                span.record("state", "check_cursor");
                self.check_cursor(link)
                    .instrument(span)
                    .await
                    .unwrap_or_else(State::Backoff)
            }
            State::Bootstrap(mut link, from) => {
                match self.stream(&link, from, Mode::Bootstrap).await {
                    Ok(End::CaughtUp(at)) => {
                        // Another worker may bootstrap now.
                        link.bootstrap = None;
                        State::Follow(link, at)
                    }
                    Ok(End::Refiltered(s)) => self.refilter(link, s),
                    Ok(End::Reached | End::ReconcileDue | End::RepairDue) => {
                        State::Follow(link, from)
                    }
                    Err(e) => self.on_error(link, e),
                }
            }
            State::Follow(link, from) => {
                if let Some(request) = self.repair_due(&link) {
                    return self.repair(link, request).await;
                }
                match self.stream(&link, from, Mode::Follow).await {
                    Ok(End::Refiltered(s)) => self.refilter(link, s),
                    Ok(End::ReconcileDue) => State::Reconcile(link, After::CheckCursor),
                    Ok(End::RepairDue) => State::CheckCursor(link),
                    Ok(_) => State::CheckCursor(link),
                    Err(e) => self.on_error(link, e),
                }
            }
            State::Rescan(mut link, until) => {
                match self.stream(&link, None, Mode::Rescan(until)).await {
                    Ok(End::Refiltered(s)) => self.refilter(link, s),
                    Ok(_) => match self.finish_rescan(&mut link, until).await {
                        Ok(()) => State::Follow(link, Some(until)),
                        Err(e) => State::Backoff(e),
                    },
                    Err(e) => self.on_error(link, e),
                }
            }
            State::Reset(link, reason) => {
                let span = link.span.clone();
                span.record("state", "reset");
                self.reset(link, &reason)
                    .instrument(span)
                    .await
                    .unwrap_or_else(State::Backoff)
            }
            State::Reconcile(mut link, after) => {
                let span = link.span.clone();
                span.record("state", "reconcile");
                let why = match (&after, link.repairing) {
                    (_, Some(_)) => "requested",
                    (After::Follow(_), None) => "no usable cursor into the peer",
                    (After::CheckCursor, None) => "periodic",
                };
                match self.reconcile(&link, why).instrument(span).await {
                    Err(e) => State::Backoff(e),
                    Ok(done) => {
                        self.progressed = true;
                        self.repaired(&mut link, || done.to_string());
                        link.reconcile_at = self.next_reconcile(&link.settings);
                        match after {
                            After::CheckCursor => State::CheckCursor(link),
                            After::Follow(at) => match at {
                                Some(at) => match self.persist_cursor(&link, at).await {
                                    Ok(()) => State::Follow(link, Some(at)),
                                    Err(e) => State::Backoff(e),
                                },
                                None => State::Follow(link, None),
                            },
                        }
                    }
                }
            }
            State::Backoff(e) => {
                self.back_off(e).await;
                State::Connect
            }
            State::Paused(reason) => {
                tracing::info!(peer = %self.p.peer.address(), %reason, "not pulling from this peer");
                self.update(|s| s.is_self = true);
                self.p.cancel.cancelled().await;
                State::Paused(reason)
            }
        }
    }

    fn on_error(&self, link: Link, e: SyncError) -> State {
        match e {
            SyncError::Peer(PeerError::CursorRefused(why)) => State::Reset(link, why),
            e => State::Backoff(e),
        }
    }

    fn refilter(&self, mut link: Link, settings: SyncSettings) -> State {
        tracing::info!(parent: &link.span, namespaces = ?settings.namespaces, "namespace filter changed");
        link.settings = settings;
        State::CheckCursor(link)
    }

    /// Connect: asks the head. `Ok(Err(reason))` pauses the worker.
    async fn connect(&mut self) -> Result<Result<Link, String>, SyncError> {
        let settings = self.settings();
        self.handles.sessions.inc();
        let head = tokio::time::timeout(settings.connect_timeout, self.p.peer.head())
            .await
            .map_err(|_| PeerError::Timeout("Head"))??;
        let me = self.p.local.identity();
        if head.instance == me.instance {
            return Ok(Err("the address leads back to this replica".into()));
        }
        let address = self.p.peer.address().to_owned();
        let node = match head.node.is_empty() {
            true => address.clone(),
            false => head.node.clone(),
        };
        let claim = self
            .p
            .shared
            .claims
            .claim(&node, &address)
            .map_err(|holder| SyncError::Duplicate {
                node: node.clone(),
                holder,
            })?;
        if node != self.label {
            self.p.metrics.remove(&self.label);
            self.label = node.clone();
            self.handles = self.p.metrics.peer(&node);
        }
        let span = tracing::info_span!(
            "pull",
            peer = %node,
            address = %address,
            state = tracing::field::Empty
        );
        let shares = head.incarnation == me.incarnation;
        if shares {
            tracing::error!(
                parent: &span,
                incarnation = %head.incarnation,
                "this peer is another process with this replica's incarnation: one data \
                 directory was copied to both. Replicating anyway; restart one of them on a \
                 fresh or properly restored directory"
            );
        }
        self.update(|s| {
            s.peer = node.clone();
            s.peer_incarnation = Some(head.incarnation);
            s.peer_head_seq = head.head_seq;
            s.shares_incarnation = shares;
            s.is_self = false;
        });
        let mine = self.p.local.reconcile_key();
        if mine.is_some() && head.reconcile_key.is_some() && head.reconcile_key != mine {
            tracing::error!(
                parent: &span,
                "this peer keys its range fingerprints with another replication.fingerprint_key: \
                 reconciling would move every entry, so this pair pairs by cursor pull alone; \
                 give every replica of the mesh the same key"
            );
        }
        let reconcile_at = match self.can_reconcile(&head) {
            true => self.next_reconcile(&settings),
            false => None,
        };
        Ok(Ok(Link {
            head,
            bootstrap: None,
            node,
            reconcile_at,
            repairing: None,
            settings,
            _claim: claim,
            span,
        }))
    }

    /// Bootstrap with data while this replica lacks most of the peer's log
    /// (one worker at a time: a worker that would bootstrap first waits for
    /// a running one to end); otherwise ids only, fetching just what is
    /// missing.
    async fn start_over(&self, mut link: Link) -> State {
        let lacks_most =
            |l: &dyn Local| l.stats().entries.saturating_mul(2) < link.head.entry_count;
        if lacks_most(&*self.p.local) {
            let permit = self.p.shared.bootstrap().await;
            if lacks_most(&*self.p.local) {
                link.bootstrap = Some(permit);
                return State::Bootstrap(link, None);
            }
        }
        // Compare the two sets instead of reading the peer's whole log.
        if self.can_reconcile(&link.head) {
            let at = link.head.cursor();
            return State::Reconcile(link, After::Follow(at));
        }
        State::Follow(link, None)
    }

    /// When the next periodic reconciliation is due: about one interval
    /// from now, jittered so pairs do not run in step.
    fn next_reconcile(&self, settings: &SyncSettings) -> Option<Instant> {
        let every = settings.reconcile_interval?;
        Some(Instant::now() + every / 2 + self.p.env.jitter(every))
    }

    async fn check_cursor(&self, link: Link) -> Result<State, SyncError> {
        let stored = self.p.local.cursor(&link.node).await?;
        if let Some(record) = &stored {
            self.show_persisted(record);
        }
        Ok(match stored {
            Some(r) if r.cursor.incarnation != link.head.incarnation => {
                State::Reset(link, "the peer's incarnation changed".into())
            }
            Some(r) if r.cursor.seq > 0 && r.scope != self.scope(&link) => {
                State::Rescan(link, r.cursor)
            }
            Some(r) if r.cursor.seq > 0 => State::Follow(link, Some(r.cursor)),
            _ => self.start_over(link).await,
        })
    }

    /// Persists a cursor at the start of the peer's log, then starts over.
    async fn reset(&self, link: Link, reason: &str) -> Result<State, SyncError> {
        tracing::warn!(
            reason,
            "cursor refused; starting over with this peer: a reconciliation where the pair can, \
             else its log from the start"
        );
        self.handles.cursor_resets.inc();
        let start = PeerCursor {
            incarnation: link.head.incarnation,
            seq: 0,
            id_at_seq: EntryId([0; 32]),
        };
        self.persist_cursor(&link, start).await?;
        Ok(self.start_over(link).await)
    }

    /// A rescan is done: the cursor is where it was, now under the
    /// current filter.
    async fn finish_rescan(&self, link: &mut Link, at: PeerCursor) -> Result<(), SyncError> {
        self.persist_cursor(link, at).await?;
        tracing::info!(parent: &link.span, seq = at.seq, "rescan of the peer's log done");
        let pulled_before = link.repairing.map_or(0, |(_, before)| before);
        let pulled = self
            .p
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries_pulled;
        self.repaired(link, || {
            format!(
                "rescanned the peer's log up to seq {} (this pair does not reconcile: no \
                 shared replication.fingerprint_key); pulled {}",
                at.seq,
                pulled.saturating_sub(pulled_before)
            )
        });
        Ok(())
    }

    /// The newest repair request made of this link's peer and not yet
    /// answered.
    fn repair_due(&self, link: &Link) -> Option<u64> {
        let requested = self.repairs.borrow().of(&link.node);
        let answered = self
            .p
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .repaired;
        (requested > answered).then_some(requested)
    }

    /// Answers repair request `request`: a reconciliation where the pair
    /// can reconcile, else a rescan of the peer's log up to the cursor
    /// (ids only: what is missing is fetched).
    async fn repair(&mut self, mut link: Link, request: u64) -> State {
        let pulled = self
            .p
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries_pulled;
        link.repairing = Some((request, pulled));
        if self.can_reconcile(&link.head) {
            return State::Reconcile(link, After::CheckCursor);
        }
        match self.p.local.cursor(&link.node).await {
            Ok(Some(r)) if r.cursor.seq > 0 && r.cursor.incarnation == link.head.incarnation => {
                State::Rescan(link, r.cursor)
            }
            Ok(_) => {
                self.repaired(&mut link, || {
                    "nothing to compare yet: the peer's log is being read from the start".into()
                });
                State::CheckCursor(link)
            }
            Err(e) => State::Backoff(e.into()),
        }
    }

    /// Reports the link's repair request, if any, answered with `result`.
    fn repaired(&self, link: &mut Link, result: impl FnOnce() -> String) {
        if let Some((request, _)) = link.repairing.take() {
            let result = result();
            tracing::info!(parent: &link.span, request, %result, "repair done");
            self.update(|s| {
                s.repaired = s.repaired.max(request);
                s.last_repair_result = Some(result);
            });
        }
    }

    /// What a cursor into this peer is valid for: the namespace filter and
    /// the policy that decided what was stored as it moved. When either
    /// changes, records it passed may now be wanted.
    fn scope(&self, link: &Link) -> u64 {
        link.settings.scope() ^ self.p.local.policy_digest()
    }

    /// Stores `cursor` for the link's peer, under the link's filter.
    async fn persist_cursor(&self, link: &Link, cursor: PeerCursor) -> Result<(), SyncError> {
        let update = CursorUpdate {
            peer: link.node.clone(),
            record: CursorRecord {
                cursor,
                scope: self.scope(link),
                updated_ms: self.p.env.unix_ms(),
            },
        };
        self.p.local.ingest(Vec::new(), Some(update)).await?;
        Ok(())
    }

    async fn back_off(&mut self, e: SyncError) {
        self.show_disconnected();
        if std::mem::take(&mut self.progressed) {
            self.backoff.reset();
        }
        self.handles.error(e.kind());
        let delay = self.backoff.next_delay(&self.p.env);
        // An unreachable peer is routine (restarts, rollouts): the error
        // metrics and PeerStatus carry it; logs stay quiet.
        match e.kind() {
            "connect" => {
                tracing::info!(peer = %self.p.peer.address(), error = %e, retry_in = ?delay, "peer unavailable")
            }
            _ => {
                tracing::warn!(peer = %self.p.peer.address(), error = %e, retry_in = ?delay, "replication session ended")
            }
        }
        self.update(|s| s.last_error = Some(e.to_string()));
        tokio::time::sleep(delay).await;
    }
}
