//! One pull worker per peer: an explicit state machine that moves the
//! peer's entries into the local replica core, each batch committed together
//! with the advanced cursor.
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

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::backoff::Backoff;
use super::budget::PeerBudget;
use super::env::Env;
use super::inflight;
use super::peer::{FollowRequest, Peer, PeerError};
use super::sink::{Report, Sink};
use super::status::PeerStatus;
use super::{Claim, PullSettings, Shared};
use crate::entry::{EntryId, Namespace};
use crate::error::Error;
use crate::head::Head;
use crate::metrics::Metrics;
use crate::metrics::peer::PeerHandles;
use crate::replica::{Origin, Replica};
use crate::store::{CursorRecord, CursorUpdate, PeerCursor, Seq};

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("storing pulled entries failed: {0}")]
    Store(#[from] Error),
    #[error("node {node} is already being pulled through {holder}")]
    Duplicate { node: String, holder: String },
}

impl PullError {
    /// The `kind` label of `peer_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Peer(e) => e.kind(),
            Self::Store(_) => "store",
            Self::Duplicate { .. } => "duplicate",
        }
    }
}

/// Everything a worker needs; the supervisor builds one per peer address.
pub struct Puller {
    pub local: Arc<Replica>,
    pub peer: Arc<dyn Peer>,
    pub settings: watch::Receiver<PullSettings>,
    pub budget: PeerBudget,
    pub shared: Shared,
    pub metrics: Arc<Metrics>,
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
    settings: PullSettings,
    _claim: Claim,
    span: tracing::Span,
}

enum State {
    Connect,
    CheckCursor(Link),
    Bootstrap(Link, Option<PeerCursor>),
    Follow(Link, Option<PeerCursor>),
    Rescan(Link, PeerCursor),
    Reset(Link, String),
    Backoff(PullError),
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
    Refiltered(PullSettings),
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
            handles: self.metrics.peers.peer(self.peer.address()),
            progressed: false,
            caught_up_at: Arc::new(Mutex::new(Instant::now())),
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
}

impl Worker {
    async fn run(mut self) {
        let cancel = self.p.cancel.clone();
        // Until the peer answers, status shows what was persisted, under the
        // address (a peer's node identity is usually the address it is
        // reached by).
        let address = self.p.peer.address().to_owned();
        if let Ok(Some(record)) = self.p.local.peer_cursor(&address).await {
            self.show_persisted(&record);
        }
        let mut state = State::Connect;
        loop {
            let name = state.name();
            self.update(|s| s.state = name);
            state = tokio::select! {
                _ = cancel.cancelled() => break,
                next = self.step(state) => next,
            };
        }
        self.update(|s| s.connected = false);
        self.p.metrics.peers.remove(&self.label);
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

    fn settings(&self) -> PullSettings {
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
                    Ok(End::Reached) => State::Follow(link, from),
                    Err(e) => self.on_error(link, e),
                }
            }
            State::Follow(link, from) => match self.stream(&link, from, Mode::Follow).await {
                Ok(End::Refiltered(s)) => self.refilter(link, s),
                Ok(_) => State::CheckCursor(link),
                Err(e) => self.on_error(link, e),
            },
            State::Rescan(link, until) => {
                match self.stream(&link, None, Mode::Rescan(until)).await {
                    Ok(End::Refiltered(s)) => self.refilter(link, s),
                    Ok(_) => match self.finish_rescan(&link, until).await {
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

    fn on_error(&self, link: Link, e: PullError) -> State {
        match e {
            PullError::Peer(PeerError::CursorRefused(why)) => State::Reset(link, why),
            e => State::Backoff(e),
        }
    }

    fn refilter(&self, mut link: Link, settings: PullSettings) -> State {
        tracing::info!(parent: &link.span, namespaces = ?settings.namespaces, "namespace filter changed");
        link.settings = settings;
        State::CheckCursor(link)
    }

    /// Connect: asks the head. `Ok(Err(reason))` pauses the worker.
    async fn connect(&mut self) -> Result<Result<Link, String>, PullError> {
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
            .map_err(|holder| PullError::Duplicate {
                node: node.clone(),
                holder,
            })?;
        if node != self.label {
            self.p.metrics.peers.remove(&self.label);
            self.label = node.clone();
            self.handles = self.p.metrics.peers.peer(&node);
        }
        let span = tracing::info_span!(
            "pull",
            peer = %node,
            address = %address,
            state = tracing::field::Empty
        );
        let shares = head.incarnation == self.p.local.incarnation();
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
        Ok(Ok(Link {
            head,
            bootstrap: None,
            node,
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
        let lacks_most = |r: &Replica| r.stats().entries.saturating_mul(2) < link.head.entry_count;
        if lacks_most(&self.p.local) {
            let permit = self.p.shared.bootstrap().await;
            if lacks_most(&self.p.local) {
                link.bootstrap = Some(permit);
                return State::Bootstrap(link, None);
            }
        }
        State::Follow(link, None)
    }

    async fn check_cursor(&self, link: Link) -> Result<State, PullError> {
        let stored = self.p.local.peer_cursor(&link.node).await?;
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
    async fn reset(&self, link: Link, reason: &str) -> Result<State, PullError> {
        tracing::warn!(
            reason,
            "cursor refused; pulling this peer's log from the start"
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

    /// A rescan is done: the cursor is where it was, now under the new filter.
    async fn finish_rescan(&self, link: &Link, at: PeerCursor) -> Result<(), PullError> {
        self.persist_cursor(link, at).await?;
        tracing::info!(parent: &link.span, seq = at.seq, "rescan under the new namespace filter done");
        Ok(())
    }

    /// What a cursor into this peer is valid for: the namespace filter and
    /// the policy that decided what was stored as it moved. When either
    /// changes, records it passed may now be wanted.
    fn scope(&self, link: &Link) -> u64 {
        link.settings.scope() ^ self.p.local.policy_digest()
    }

    /// Stores `cursor` for the link's peer, under the link's filter.
    async fn persist_cursor(&self, link: &Link, cursor: PeerCursor) -> Result<(), PullError> {
        let update = CursorUpdate {
            peer: link.node.clone(),
            record: CursorRecord {
                cursor,
                scope: self.scope(link),
                updated_ms: self.p.env.unix_ms(),
            },
        };
        self.p
            .local
            .ingest(Origin::Peer, Vec::new(), Some(update))
            .await?;
        Ok(())
    }

    async fn back_off(&mut self, e: PullError) {
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

    /// Streams the peer's log in one mode until it ends or fails.
    async fn stream(
        &mut self,
        link: &Link,
        from: Option<PeerCursor>,
        mode: Mode,
    ) -> Result<End, PullError> {
        let name = match mode {
            Mode::Bootstrap => "bootstrap",
            Mode::Follow => "follow",
            Mode::Rescan(_) => "rescan",
        };
        link.span.record("state", name);
        let span = link.span.clone();
        let result = self.stream_inner(link, from, mode).instrument(span).await;
        self.handles.connected.set(0);
        self.update(|s| s.connected = false);
        result
    }

    async fn stream_inner(
        &mut self,
        link: &Link,
        from: Option<PeerCursor>,
        mode: Mode,
    ) -> Result<End, PullError> {
        let request = FollowRequest {
            from,
            with_data: matches!(mode, Mode::Bootstrap),
            live_data: matches!(mode, Mode::Follow),
            namespaces: link.settings.namespaces.clone(),
            heartbeat: Some(link.settings.heartbeat()),
            relay_delay: match mode {
                Mode::Follow => Some(link.settings.relay_delay).filter(|d| !d.is_zero()),
                Mode::Bootstrap | Mode::Rescan(_) => None,
            },
        };
        let open = self.p.peer.follow(request);
        let mut stream = tokio::time::timeout(link.settings.connect_timeout, open)
            .await
            .map_err(|_| PeerError::Timeout("Watch"))??;
        self.handles.connected.set(1);
        self.update(|s| {
            s.connected = true;
            s.last_error = None;
        });
        let until = match mode {
            Mode::Rescan(until) => Some(until),
            _ => None,
        };
        let report = Report {
            handles: self.handles.clone(),
            inflight_gauge: self.p.metrics.pull_inflight_bytes.clone(),
            status: self.p.status.clone(),
            caught_up_at: self.caught_up_at.clone(),
            env: self.p.env.clone(),
        };
        let mut sink = Sink::new(
            self.p.local.clone(),
            self.p.budget.clone(),
            report,
            link.node.clone(),
            self.scope(link),
            until.or(from).map_or(0, |c| c.seq),
        );
        // Compared with the link's filter before the first record: a change
        // made since the link was set up (between two sessions) counts too.
        let mut settings = self.p.settings.clone();
        settings.mark_changed();
        let mut last = from;
        let mut settings_open = true;
        // A batch that stores nothing moves the cursor in memory only; it is
        // persisted with the next batch that stores something, or after
        // CURSOR_PERSIST_INTERVAL. (A crash then re-reads a second of ids.)
        let mut unsaved: Option<(PeerCursor, Seq)> = None;
        let mut persist_at = tokio::time::Instant::now();
        // A heartbeat is due every third of the idle timeout. Half a beat
        // late, the peer shows as disconnected (and lagging) while the
        // session waits out the rest of the idle timeout.
        let mut last_heard = tokio::time::Instant::now();
        let mut silent = false;
        let result = loop {
            let idle = settings.borrow().session_idle_timeout;
            let wait_until = last_heard + if silent { idle } else { idle / 2 };
            let next = tokio::select! {
                _ = tokio::time::sleep_until(persist_at), if unsaved.is_some() => {
                    let (cursor, head_seq) = unsaved.take().expect("checked");
                    if let Err(e) = sink.seal(Some(cursor), head_seq).await {
                        break Err(e);
                    }
                    continue;
                }
                changed = settings.changed(), if settings_open => {
                    if changed.is_err() {
                        settings_open = false;
                        continue;
                    }
                    let new = settings.borrow_and_update().clone();
                    if new.namespaces != link.settings.namespaces {
                        break sink.drain().await.map(|_| End::Refiltered(new));
                    }
                    continue;
                }
                next = tokio::time::timeout_at(wait_until, stream.next()) => next,
            };
            let batch = match next {
                Err(_) if !silent => {
                    silent = true;
                    self.show_silent();
                    continue;
                }
                Err(_) => break Err(PeerError::Timeout("a Watch message or heartbeat").into()),
                Ok(None) => break Err(PeerError::Closed.into()),
                Ok(Some(Err(e))) => break Err(e.into()),
                Ok(Some(Ok(batch))) => batch,
            };
            last_heard = tokio::time::Instant::now();
            if std::mem::take(&mut silent) {
                self.handles.connected.set(1);
                self.update(|s| s.connected = true);
            }
            if batch.is_heartbeat() {
                if let Some((cursor, head_seq)) = unsaved.take()
                    && let Err(e) = sink.seal(Some(cursor), head_seq).await
                {
                    break Err(e);
                }
                if let Err(e) = sink.drain().await {
                    break Err(e);
                }
                let caught_up = sink.heartbeat(batch.head_seq);
                if caught_up && matches!(mode, Mode::Bootstrap) {
                    break Ok(End::CaughtUp(last));
                }
                continue;
            }
            let Some(next) = batch.next else {
                break Err(PeerError::DataLoss("log batch without a cursor".into()).into());
            };
            let mut records = batch.records;
            let reached = until.is_some_and(|u| next.seq >= u.seq);
            if let Some(u) = until {
                records.retain(|r| r.seq <= u.seq);
            }
            let cursor = match until {
                Some(_) => None,
                None => Some(next),
            };
            let added = sink.added();
            if let Err(e) = self.fetch_and_store(link, &mut sink, records).await {
                break Err(e);
            }
            let at_head = next.seq >= batch.head_seq;
            let stores = sink.added() > added || sink.has_claims();
            match cursor {
                Some(c) if !stores && !reached => {
                    if unsaved.is_none() {
                        persist_at = tokio::time::Instant::now() + CURSOR_PERSIST_INTERVAL;
                    }
                    unsaved = Some((c, batch.head_seq));
                    sink.advance(c, batch.head_seq);
                }
                _ => {
                    unsaved = None;
                    if let Err(e) = sink.seal(cursor, batch.head_seq).await {
                        break Err(e);
                    }
                }
            }
            last = cursor.or(last);
            if at_head || reached {
                // Nothing to overlap with: finish now.
                if let Err(e) = sink.drain().await {
                    break Err(e);
                }
            }
            if reached {
                break Ok(End::Reached);
            }
            if at_head && matches!(mode, Mode::Bootstrap) {
                break Ok(End::CaughtUp(Some(next)));
            }
        };
        // Whatever ended the stream, what is stored so far stays, and so
        // does the cursor that passed it.
        let saved = match unsaved {
            Some((cursor, head_seq)) => sink.seal(Some(cursor), head_seq).await,
            None => Ok(()),
        };
        let drained = sink.drain().await.and(saved);
        self.progressed |= sink.progressed();
        let end = result?;
        drained?;
        Ok(end)
    }

    /// Adds a batch's entries to the sink. Data that came with the records
    /// (a bootstrap, one worker at a time, or entries just written at the
    /// peer) goes straight in, claimed so that workers hearing of the same
    /// ids wait for it; the store drops what it already holds. For ids
    /// alone, fetches those this
    /// replica lacks and no other worker is fetching, in requests the peer
    /// accepts; entries another worker is fetching are waited for (and
    /// fetched here only if that fails), so a body crosses once and the
    /// cursor never passes an entry that is not stored.
    async fn fetch_and_store(
        &self,
        link: &Link,
        sink: &mut Sink,
        records: Vec<crate::store::LogRecord>,
    ) -> Result<(), PullError> {
        let mut wanted: BTreeMap<Namespace, Vec<EntryId>> = BTreeMap::new();
        let mut carried: BTreeMap<Namespace, Vec<(EntryId, Bytes)>> = BTreeMap::new();
        for r in records {
            match r.data {
                Some(data) => carried.entry(r.namespace).or_default().push((r.id, data)),
                None => wanted.entry(r.namespace).or_default().push(r.id),
            }
        }
        for (ns, entries) in carried {
            let ids: Vec<EntryId> = entries.iter().map(|(id, _)| *id).collect();
            let (mine, _) = self.p.shared.in_flight.claim(&ns, &ids);
            for (id, data) in entries {
                sink.add(id, data).await?;
            }
            sink.claimed(mine);
        }
        for (ns, ids) in wanted {
            let mut missing = match self.p.local.missing(ns.clone(), ids).await {
                Ok(missing) => missing,
                // Not served here: the entries would be rejected anyway.
                Err(Error::NamespaceNotAllowed(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            while !missing.is_empty() {
                let (mine, theirs) = self.p.shared.in_flight.claim(&ns, &missing);
                let to_fetch: Vec<EntryId> = missing
                    .iter()
                    .filter(|id| mine.owns(&ns, id))
                    .copied()
                    .collect();
                self.fetch(link, sink, &ns, &to_fetch).await?;
                // Claims ride with the commit that stores their entries.
                sink.claimed(mine);
                if theirs.is_empty() {
                    break;
                }
                // Store (and so release) everything held before waiting on
                // another worker, which may be waiting for budget.
                sink.seal(None, 0).await?;
                sink.drain().await?;
                let idle = self.p.settings.borrow().session_idle_timeout;
                let mut failed = Vec::new();
                for (id, outcome) in theirs {
                    let stored = tokio::time::timeout(idle, inflight::stored(outcome)).await;
                    if !stored.unwrap_or(false) {
                        failed.push(id);
                    }
                }
                missing = match failed.is_empty() {
                    true => Vec::new(),
                    false => self.p.local.missing(ns.clone(), failed).await?,
                };
            }
        }
        Ok(())
    }

    /// Fetches bodies by id into the sink, in requests the peer accepts.
    async fn fetch(
        &self,
        link: &Link,
        sink: &mut Sink,
        ns: &Namespace,
        ids: &[EntryId],
    ) -> Result<(), PullError> {
        let per_request = link
            .head
            .max_ids_per_request
            .min(self.p.local.limits().max_ids_per_request)
            .clamp(1, 4096);
        let timeout = link.settings.connect_timeout;
        for chunk in ids.chunks(per_request) {
            let get = self.p.peer.get(ns, chunk.to_vec());
            let mut parts = tokio::time::timeout(timeout, get)
                .await
                .map_err(|_| PeerError::Timeout("GetEntries"))??;
            let mut got = 0;
            loop {
                let idle = self.p.settings.borrow().session_idle_timeout;
                let part = tokio::time::timeout(idle, parts.next())
                    .await
                    .map_err(|_| PeerError::Timeout("GetEntries"))?;
                let Some(part) = part else { break };
                let part = part?;
                if let Some(id) = part.missing.first() {
                    return Err(PeerError::DataLoss(format!(
                        "the peer logged {id} but cannot serve it"
                    ))
                    .into());
                }
                got += part.entries.len();
                for (id, data) in part.entries {
                    sink.add(id, data).await?;
                }
            }
            if got != chunk.len() {
                return Err(PeerError::DataLoss(format!(
                    "asked for {} entries, got {got}",
                    chunk.len()
                ))
                .into());
            }
        }
        Ok(())
    }
}

/// How long a cursor moved by batches that stored nothing may go unsaved.
const CURSOR_PERSIST_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
