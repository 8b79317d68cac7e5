//! The write path, run on the blocking pool: checking entries against the
//! policy and committing them to the store, then everything a commit makes
//! known (the log tail, the recent ids, counters, the head signal), in that
//! order and from the thread that committed, so a caller that goes away
//! mid-commit cannot lose a wakeup. A commit returns once its batch is
//! written and visible; [`Committer::sync`] then waits until it is durable,
//! outside the commit order and the caller's write turn, so the commits
//! made meanwhile share the fsync.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;

use super::recent::RecentIds;
use super::tail::LogTail;
use crate::entry::VerifiedEntry;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::quota::{OverQuota, Quota, Quotas};
use crate::store::{Appended, CursorUpdate, Seq, Store, StoreError, Usage};
use crate::sync::local::Checked;

pub use crate::policy::Origin;

pub(super) struct Committer {
    pub store: Arc<dyn Store>,
    pub policy: Policy,
    pub metrics: Arc<Metrics>,
    pub head: watch::Sender<Seq>,
    pub recent: RecentIds,
    pub tail: LogTail,
    /// Held by each commit from its store append until its records are in
    /// the tail, so the tail sees them in log order.
    pub order: Mutex<()>,
    /// `None` while the store takes writes; why it refused the last one
    /// while it does not.
    pub writes: watch::Sender<Option<String>>,
}

impl Committer {
    /// Tries a write that means nothing, to learn whether the store takes
    /// writes again.
    pub fn probe(&self) {
        match self.store.probe_write() {
            Ok(()) => self.writes_ok(),
            Err(e) => self.writes_failed(&e),
        }
    }

    fn writes_ok(&self) {
        // Every commit passes here: a shared read answers the usual case.
        if self.writes.borrow().is_none() {
            return;
        }
        self.writes.send_if_modified(|state| {
            let recovered = state.take().is_some();
            if recovered {
                self.metrics.store_writable.set(1);
                tracing::info!("the store takes writes again; Store health is SERVING");
            }
            recovered
        });
    }

    fn writes_failed(&self, e: &StoreError) {
        self.metrics.store_write_errors.inc();
        self.writes.send_if_modified(|state| {
            let new = state.is_none();
            if new {
                self.metrics.store_writable.set(0);
                tracing::error!(
                    error = %e,
                    "the store refuses writes: Store health is NOT_SERVING until it takes one \
                     again (reads go on; retried every second)"
                );
            }
            *state = Some(e.to_string());
            new
        });
    }

    /// Checks `(claimed id, data)` pairs from `origin` against the policy.
    pub fn verify(&self, origin: Origin, items: Vec<(Bytes, Bytes)>) -> Checked {
        self.policy.check_batch(items, origin)
    }

    /// Stores verified entries, and `cursor` with them, in one atomic
    /// batch: visible on return, durable after [`Self::sync`].
    pub fn commit(
        &self,
        origin: Origin,
        entries: &[VerifiedEntry],
        cursor: Option<&CursorUpdate>,
    ) -> Result<Vec<Appended>, StoreError> {
        let order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        self.commit_in_order(order, origin, entries, cursor)
    }

    /// Waits until every commit that returned before is durable, sharing
    /// the fsync with every commit waiting at the same time (see
    /// `Store::sync`).
    pub fn sync(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        match self.store.sync() {
            Ok(()) => {
                self.metrics
                    .store_sync_wait
                    .observe(started.elapsed().as_secs_f64());
                Ok(())
            }
            Err(e) => {
                self.writes_failed(&e);
                Err(e)
            }
        }
    }

    /// Stores a client's entries unless they would take a tenant past its
    /// quota, in which case nothing is stored. Checked in the commit order,
    /// so two batches cannot both pass on the same room.
    pub fn commit_within(
        &self,
        entries: &[VerifiedEntry],
        quotas: &Quotas,
    ) -> Result<Vec<Appended>, Error> {
        let order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(over) = self.within(entries, quotas)? {
            self.metrics
                .quota_refusals
                .with_label_values(&[over.what])
                .inc();
            return Err(over.into());
        }
        Ok(self.commit_in_order(order, Origin::Client, entries, None)?)
    }

    /// What `entries` add to each tenant with a quota (entries held
    /// already add nothing), against what the quota leaves.
    fn within(
        &self,
        entries: &[VerifiedEntry],
        quotas: &Quotas,
    ) -> Result<Result<(), OverQuota>, StoreError> {
        let mut adding: HashMap<&str, Usage> = HashMap::new();
        let mut seen = HashSet::new();
        let mut namespaces: Vec<_> = entries.iter().map(|e| &e.namespace).collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        for ns in namespaces {
            if quotas.of(ns.tenant()) == Quota::default() {
                continue;
            }
            let in_ns: Vec<&VerifiedEntry> =
                entries.iter().filter(|e| &e.namespace == ns).collect();
            let ids: Vec<_> = in_ns.iter().map(|e| e.id).collect();
            let held = self.store.contains(ns, &ids)?;
            for (e, held) in in_ns.into_iter().zip(held) {
                if !held && seen.insert((ns, e.id)) {
                    adding.entry(ns.tenant()).or_default().add(e.data.len());
                }
            }
        }
        for (tenant, adding) in adding {
            let used = self.store.usage(tenant);
            if let Err(over) = quotas.of(tenant).check(tenant, used, adding) {
                return Ok(Err(over));
            }
        }
        Ok(Ok(()))
    }

    fn commit_in_order(
        &self,
        order: std::sync::MutexGuard<'_, ()>,
        origin: Origin,
        entries: &[VerifiedEntry],
        cursor: Option<&CursorUpdate>,
    ) -> Result<Vec<Appended>, StoreError> {
        let out = match self.store.append(entries, cursor) {
            Ok(out) => out,
            Err(e) => {
                drop(order);
                self.writes_failed(&e);
                return Err(e);
            }
        };
        self.writes_ok();
        self.tail.push(
            origin == Origin::Peer,
            out.iter().zip(entries).filter_map(|(a, e)| match a {
                Appended::Stored(seq) => Some((*seq, e)),
                Appended::Duplicate => None,
            }),
        );
        drop(order);
        // Stored now, or already: either way held.
        self.recent.insert(entries.iter().map(|e| e.id));
        let stored = out
            .iter()
            .filter(|a| matches!(a, Appended::Stored(_)))
            .count() as u64;
        self.metrics.entries_stored.inc_by(stored);
        self.metrics
            .entries_duplicate
            .inc_by(out.len() as u64 - stored);
        if let Some(Appended::Stored(last)) =
            out.iter().rev().find(|a| matches!(a, Appended::Stored(_)))
        {
            self.head.send_if_modified(|head| {
                let newer = *last > *head;
                *head = (*head).max(*last);
                newer
            });
        }
        Ok(out)
    }
}
