//! Write concern: which peers hold this replica's log, durably, up to
//! where, so that a writer that asked for k replicas waits for k - 1 peers.
//!
//! A peer confirms its cursor into this replica's log (`Replication/Confirm`)
//! after it has stored, and fsynced, what it pulled. It does so only while
//! a writer waits: a writer registers ([`Confirmations::expect`]) before it
//! commits, and every log batch served meanwhile asks its reader to confirm
//! (`LogBatch::confirm`), so no batch that carries the writer's entries
//! goes out without the request.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::entry::Namespace;
use crate::store::{Incarnation, Seq};

/// What one peer has confirmed.
#[derive(Debug, Clone)]
struct Confirmed {
    seq: Seq,
    /// The namespaces it pulls; empty: all.
    namespaces: Vec<Namespace>,
}

impl Confirmed {
    fn covers(&self, seq: Seq, namespaces: &[Namespace]) -> bool {
        self.seq >= seq
            && (self.namespaces.is_empty()
                || namespaces.iter().all(|ns| self.namespaces.contains(ns)))
    }
}

pub struct Confirmations {
    incarnation: Incarnation,
    held: watch::Sender<HashMap<String, Confirmed>>,
    /// Writers waiting now.
    waiting: Arc<AtomicUsize>,
}

/// A writer waiting for confirmations, until dropped.
pub struct Expecting(Arc<AtomicUsize>);

impl Drop for Expecting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The peers that confirmed, each with how long after the wait began.
pub type Confirmers = Vec<(String, Duration)>;

impl Confirmations {
    pub fn new(incarnation: Incarnation) -> Self {
        Self {
            incarnation,
            held: watch::Sender::new(HashMap::new()),
            waiting: Arc::default(),
        }
    }

    /// `node` holds this replica's log durably up to `seq`, in
    /// `namespaces` (all when empty). A cursor into another incarnation
    /// (a log this replica no longer has) confirms nothing: `false`.
    pub fn confirm(
        &self,
        node: &str,
        incarnation: Incarnation,
        seq: Seq,
        namespaces: Vec<Namespace>,
    ) -> bool {
        if incarnation != self.incarnation {
            return false;
        }
        self.held.send_modify(|held| {
            let entry = held.entry(node.to_owned()).or_insert(Confirmed {
                seq: 0,
                namespaces: Vec::new(),
            });
            entry.seq = entry.seq.max(seq);
            entry.namespaces = namespaces;
        });
        true
    }

    /// Registers a writer that will wait: until the guard drops, log
    /// batches ask their readers to confirm.
    pub fn expect(&self) -> Expecting {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Expecting(self.waiting.clone())
    }

    /// Whether a writer waits, so readers of the log should confirm.
    pub fn wanted(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// Waits until `needed` peers hold the log up to `seq` in every one of
    /// `namespaces`, or `timeout` passes: `Ok` with the peers that did, or
    /// `Err` with those that did in time.
    pub async fn wait(
        &self,
        seq: Seq,
        namespaces: &[Namespace],
        needed: usize,
        timeout: Duration,
    ) -> Result<Confirmers, Confirmers> {
        let started = Instant::now();
        let mut held = self.held.subscribe();
        let mut confirmed: Confirmers = Vec::new();
        loop {
            for (node, c) in held.borrow_and_update().iter() {
                if c.covers(seq, namespaces) && !confirmed.iter().any(|(n, _)| n == node) {
                    confirmed.push((node.clone(), started.elapsed()));
                }
            }
            if confirmed.len() >= needed {
                return Ok(confirmed);
            }
            match tokio::time::timeout_at(started + timeout, held.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Err(confirmed),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(db: &str) -> Namespace {
        Namespace::new("t", db).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_when_enough_peers_cover_the_seq_and_namespaces() {
        let inc = Incarnation([7; 16]);
        let c = Arc::new(Confirmations::new(inc));
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.wait(10, &[ns("a")], 2, Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        // Below the seq, another incarnation, a filter without the
        // namespace: none counts.
        assert!(c.confirm("p1", inc, 9, vec![]));
        assert!(!c.confirm("p2", Incarnation([8; 16]), 10, vec![]));
        assert!(c.confirm("p3", inc, 12, vec![ns("b")]));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        c.confirm("p1", inc, 10, vec![]);
        c.confirm("p3", inc, 12, vec![ns("a"), ns("b")]);
        let confirmed = waiter.await.unwrap().unwrap();
        let mut nodes: Vec<_> = confirmed.into_iter().map(|(n, _)| n).collect();
        nodes.sort();
        assert_eq!(nodes, ["p1", "p3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_its_timeout_says_who_confirmed() {
        let inc = Incarnation([7; 16]);
        let c = Confirmations::new(inc);
        c.confirm("p1", inc, 5, vec![]);
        let late = c.wait(5, &[], 2, Duration::from_millis(100)).await;
        assert_eq!(late.unwrap_err().len(), 1);
        assert!(!c.wanted());
        let guard = c.expect();
        assert!(c.wanted());
        drop(guard);
        assert!(!c.wanted());
    }
}
