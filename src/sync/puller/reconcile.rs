//! A pull worker's reconcile state: one session of set reconciliation with
//! the peer, then the entries each side lacks moved through the engine's
//! transfer: what this side lacks is fetched into the sink (verified,
//! within the byte budget, committed crash-safe), what the peer lacks is
//! put to it in batches it accepts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Link, Worker};
use crate::entry::{EntryId, Namespace};
use crate::log::{Head, WriteConcern};
use crate::store::LogRecord;
use crate::store::ranges::Scope;
use crate::sync::error::SyncError;
use crate::sync::peer::PeerError;
use crate::sync::reconcile::{Role, Session, SessionLimits};
use crate::sync::sink::Sink;

/// How long the rounds of one session may take, all together.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(300);

/// What a reconciliation found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub round_trips: u32,
    /// Bytes of reconcile frames, both ways.
    pub bytes: u64,
    /// Entries this side lacked, now pulled.
    pub pulled: usize,
    /// Entries the peer lacked, now pushed.
    pub pushed: usize,
    /// More differences than one session records: another follows.
    pub truncated: bool,
    pub took: Duration,
}

impl std::fmt::Display for Reconciled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} round trip(s), {} bytes; pulled {}, pushed {} in {} ms{}",
            self.round_trips,
            self.bytes,
            self.pulled,
            self.pushed,
            self.took.as_millis(),
            if self.truncated { " (more to do)" } else { "" }
        )
    }
}

impl Worker {
    /// Whether this pair can reconcile: both sides keep fingerprints,
    /// under the same key.
    pub(super) fn can_reconcile(&self, head: &Head) -> bool {
        head.reconcile_key.is_some() && head.reconcile_key == self.p.local.reconcile_key()
    }

    /// Runs sessions until one ends with nothing left unrecorded.
    pub(super) async fn reconcile(&self, link: &Link, why: &str) -> Result<Reconciled, SyncError> {
        let mut total = Reconciled::default();
        loop {
            let one = self.reconcile_once(link).await?;
            total.round_trips += one.round_trips;
            total.bytes += one.bytes;
            total.pulled += one.pulled;
            total.pushed += one.pushed;
            total.took += one.took;
            if !one.truncated {
                break;
            }
        }
        let h = &self.handles;
        h.reconciles.inc();
        h.last_reconcile.set(self.p.env.unix_ms() as f64 / 1000.0);
        let summary = total.to_string();
        tracing::info!(parent: &link.span, why, result = %summary, "reconciled");
        self.update(|s| {
            s.last_reconcile = Some(self.p.env.now());
            s.last_reconcile_result = Some(summary);
        });
        Ok(total)
    }

    async fn reconcile_once(&self, link: &Link) -> Result<Reconciled, SyncError> {
        let started = Instant::now();
        let Some(namespaces) = shared_namespaces(&link.settings.namespaces, &link.head.pulls)
        else {
            // The two pull no namespace in common: nothing to compare.
            return Ok(Reconciled::default());
        };
        let scope = match namespaces.is_empty() {
            true => Scope::all(),
            false => Scope::only(&namespaces),
        };
        let session = Session::new(Role::Initiator, scope, SessionLimits::default());
        let rounds = tokio::time::timeout(SESSION_TIMEOUT, self.rounds(link, session, &namespaces))
            .await
            .map_err(|_| PeerError::Timeout("Reconcile"))?;
        let (session, round_trips, bytes) = rounds?;
        let h = &self.handles;
        h.reconcile_rounds.inc_by(u64::from(round_trips));
        h.reconcile_bytes.inc_by(bytes);
        let pulled = session.need.len();
        let pushed = session.give.len();
        self.pull_missing(link, session.need).await?;
        h.reconcile_pulled.inc_by(pulled as u64);
        self.push_missing(link, session.give).await?;
        h.reconcile_pushed.inc_by(pushed as u64);
        Ok(Reconciled {
            round_trips,
            bytes,
            pulled,
            pushed,
            truncated: session.truncated,
            took: started.elapsed(),
        })
    }

    /// The rounds of one session: the initiator's session at the end, the
    /// round trips and the bytes they took.
    async fn rounds(
        &self,
        link: &Link,
        session: Session,
        namespaces: &[Namespace],
    ) -> Result<(Session, u32, u64), SyncError> {
        let idle = link.settings.session_idle_timeout;
        let open = self.p.peer.reconcile(namespaces);
        let mut channel = tokio::time::timeout(link.settings.connect_timeout, open)
            .await
            .map_err(|_| PeerError::Timeout("Reconcile"))??;
        let (mut session, mut round) = self.p.local.reconcile(session, None).await?;
        let mut trips = 0;
        while !round.is_empty() {
            trips += 1;
            let answer = tokio::time::timeout(idle, channel.round(round))
                .await
                .map_err(|_| PeerError::Timeout("Reconcile"))??;
            if answer.is_empty() {
                break;
            }
            (session, round) = self.p.local.reconcile(session, Some(answer)).await?;
        }
        let (sent, received) = channel.bytes();
        Ok((session, trips, sent + received))
    }

    /// Fetches what this side lacks, as a pull does.
    async fn pull_missing(
        &self,
        link: &Link,
        need: Vec<(Namespace, EntryId)>,
    ) -> Result<(), SyncError> {
        if need.is_empty() {
            return Ok(());
        }
        let records = need
            .into_iter()
            .map(|(namespace, id)| LogRecord {
                seq: 0,
                namespace,
                id,
                data: None,
            })
            .collect();
        let mut sink = Sink::new(
            self.p.local.clone(),
            self.p.budget.clone(),
            self.report(),
            link.node.clone(),
            self.scope(link),
            0,
        );
        self.fetch_and_store(link, &mut sink, records).await?;
        sink.seal(None, 0).await?;
        sink.drain().await
    }

    /// Puts what the peer lacks to it, in batches it accepts.
    async fn push_missing(
        &self,
        link: &Link,
        give: Vec<(Namespace, EntryId)>,
    ) -> Result<(), SyncError> {
        let mut by_ns: BTreeMap<Namespace, Vec<EntryId>> = BTreeMap::new();
        for (ns, id) in give {
            by_ns.entry(ns).or_default().push(id);
        }
        let per_request = link
            .head
            .max_ids_per_request
            .min(self.p.local.max_ids_per_request())
            .clamp(1, 4096);
        // Room for the request's framing and each entry's id.
        let max_bytes = link.head.max_message_bytes.saturating_sub(64 << 10).max(1);
        let timeout = link.settings.session_idle_timeout;
        for (ns, ids) in by_ns {
            for chunk in ids.chunks(per_request) {
                let bodies = self.p.local.get(ns.clone(), chunk.to_vec()).await?;
                let mut batch: Vec<(EntryId, Bytes)> = Vec::new();
                let mut size = 0;
                for (id, body) in chunk.iter().zip(bodies) {
                    // Gone since the session (quarantined): nothing to give.
                    let Some(body) = body else { continue };
                    if size + body.len() + 64 > max_bytes && !batch.is_empty() {
                        self.put(std::mem::take(&mut batch), timeout).await?;
                        size = 0;
                    }
                    size += body.len() + 64;
                    batch.push((*id, body));
                }
                if !batch.is_empty() {
                    self.put(batch, timeout).await?;
                }
            }
        }
        Ok(())
    }

    async fn put(&self, batch: Vec<(EntryId, Bytes)>, timeout: Duration) -> Result<(), SyncError> {
        let put = self.p.peer.put(batch, WriteConcern::default());
        let outcomes = tokio::time::timeout(timeout, put)
            .await
            .map_err(|_| PeerError::Timeout("PutEntries"))??;
        self.handles.pushed.inc_by(
            outcomes
                .iter()
                .filter(|o| matches!(o, crate::entry::PutOutcome::Stored))
                .count() as u64,
        );
        Ok(())
    }
}

/// The namespaces both sides of a pair pull (empty: all); `None` when
/// they pull none in common.
fn shared_namespaces(mine: &[Namespace], theirs: &[Namespace]) -> Option<Vec<Namespace>> {
    match (mine.is_empty(), theirs.is_empty()) {
        (true, _) => Some(theirs.to_vec()),
        (false, true) => Some(mine.to_vec()),
        (false, false) => {
            let both: Vec<Namespace> = mine
                .iter()
                .filter(|n| theirs.contains(n))
                .cloned()
                .collect();
            (!both.is_empty()).then_some(both)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_compares_the_namespaces_both_pull() {
        let ns = |db: &str| Namespace::new("t", db).unwrap();
        let (a, b, c) = (ns("a"), ns("b"), ns("c"));
        assert_eq!(shared_namespaces(&[], &[]), Some(vec![]));
        assert_eq!(
            shared_namespaces(&[], std::slice::from_ref(&a)),
            Some(vec![a.clone()])
        );
        assert_eq!(
            shared_namespaces(std::slice::from_ref(&b), &[]),
            Some(vec![b.clone()])
        );
        assert_eq!(
            shared_namespaces(&[a.clone(), b.clone()], &[b.clone(), c.clone()]),
            Some(vec![b.clone()])
        );
        assert_eq!(shared_namespaces(&[a], &[c]), None);
    }
}
