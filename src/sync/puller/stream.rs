//! A pull session's streaming phase: the peer's log read in one mode
//! (bootstrap, follow, rescan), entries fetched where only ids came, and
//! everything handed to the sink with the cursor that passed it.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::StreamExt;
use tracing::Instrument;

use super::{End, Link, Mode, Worker};
use crate::entry::{EntryId, Namespace};
use crate::error::Error;
use crate::store::{PeerCursor, Seq};
use crate::sync::error::SyncError;
use crate::sync::inflight;
use crate::sync::peer::{FollowRequest, PeerError};
use crate::sync::sink::{Report, Sink};

impl Worker {
    /// Where a sink of this worker reports.
    pub(super) fn report(&self) -> Report {
        Report {
            handles: self.handles.clone(),
            inflight_gauge: self.p.metrics.pull_inflight_bytes.clone(),
            status: self.p.status.clone(),
            caught_up_at: self.caught_up_at.clone(),
            env: self.p.env.clone(),
        }
    }

    /// Streams the peer's log in one mode until it ends or fails.
    pub(super) async fn stream(
        &mut self,
        link: &Link,
        from: Option<PeerCursor>,
        mode: Mode,
    ) -> Result<End, SyncError> {
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
    ) -> Result<End, SyncError> {
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
        let mut sink = Sink::new(
            self.p.local.clone(),
            self.p.budget.clone(),
            self.report(),
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
        // A periodic reconciliation ends a follow session when it is due.
        let reconcile_at = link.reconcile_at.filter(|_| matches!(mode, Mode::Follow));
        // So does a repair request.
        let mut repairs = self.repairs.clone();
        let mut repairs_open = matches!(mode, Mode::Follow);
        let result = loop {
            let idle = settings.borrow().session_idle_timeout;
            let wait_until = last_heard + if silent { idle } else { idle / 2 };
            let next = tokio::select! {
                biased;
                _ = tokio::time::sleep_until(persist_at), if unsaved.is_some() => {
                    let (cursor, head_seq) = unsaved.take().expect("checked");
                    if let Err(e) = sink.seal(Some(cursor), head_seq).await {
                        break Err(e);
                    }
                    continue;
                }
                _ = sleep_until_some(reconcile_at), if reconcile_at.is_some() => {
                    break sink.close(unsaved.take()).await.map(|_| End::ReconcileDue);
                }
                changed = repairs.changed(), if repairs_open => {
                    if changed.is_err() {
                        repairs_open = false;
                        continue;
                    }
                    if self.repair_due(link).is_none() {
                        continue;
                    }
                    break sink.close(unsaved.take()).await.map(|_| End::RepairDue);
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
                if batch.confirm
                    && until.is_none()
                    && let Some(at) = last
                    && let Err(e) = self.confirm(link, at).await
                {
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
            if at_head || reached || batch.confirm {
                // Nothing to overlap with, or a writer there waits: finish
                // now.
                if let Err(e) = sink.drain().await {
                    break Err(e);
                }
            }
            if batch.confirm
                && let Some(at) = cursor
                && let Err(e) = self.confirm(link, at).await
            {
                break Err(e);
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
    pub(super) async fn fetch_and_store(
        &self,
        link: &Link,
        sink: &mut Sink,
        records: Vec<crate::store::LogRecord>,
    ) -> Result<(), SyncError> {
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
                let to_fetch: Vec<EntryId> = mine.ids().collect();
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
    ) -> Result<(), SyncError> {
        let per_request = link
            .head
            .max_ids_per_request
            .min(self.p.local.max_ids_per_request())
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

impl Worker {
    /// Tells the peer this side holds its log, durably, up to `at` (all
    /// that passed it is stored: the caller drained the sink).
    async fn confirm(&self, link: &Link, at: PeerCursor) -> Result<(), SyncError> {
        let Some(node) = self.p.local.identity().node else {
            return Ok(());
        };
        let confirm = self.p.peer.confirm(&node, at, &link.settings.namespaces);
        tokio::time::timeout(link.settings.connect_timeout, confirm)
            .await
            .map_err(|_| PeerError::Timeout("Confirm"))??;
        Ok(())
    }
}

/// How long a cursor moved by batches that stored nothing may go unsaved.
const CURSOR_PERSIST_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
