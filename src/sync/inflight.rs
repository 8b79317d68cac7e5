//! Entries some pull worker of this replica is fetching right now. In a
//! mesh the same new entry shows up in several peers' logs at once; the
//! first worker to see it fetches it, the others wait for that fetch to be
//! stored before their cursors pass the entry, and fetch it themselves only
//! if it failed. So a body crosses to each replica about once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::entry::{EntryId, Namespace};

/// The outcome of a fetch: `Some(true)` once stored, `Some(false)` if it
/// failed; a closed channel means failed too.
pub type Outcome = watch::Receiver<Option<bool>>;

/// Fetches by entry id, each with the namespace it is fetched into. Keyed
/// by id alone (the namespace is compared, not hashed or cloned per id): an
/// id fetched into two namespaces at once is rare, and the second fetch
/// then simply runs unclaimed.
type Claims = HashMap<EntryId, (Namespace, Outcome), foldhash::fast::RandomState>;

#[derive(Clone, Default)]
pub struct InFlight(Arc<Mutex<Claims>>);

/// Entries this worker fetches; reports the outcome to waiting workers
/// when stored ([`Fetching::stored`]) or dropped (failed).
pub struct Fetching {
    set: InFlight,
    /// The ids to fetch, and whether each is registered here (so released
    /// when this fetch ends).
    ids: Vec<(EntryId, bool)>,
    done: watch::Sender<Option<bool>>,
}

impl InFlight {
    /// Takes the ids no other worker is fetching, and returns the outcome
    /// to wait for of each one that another worker is fetching.
    pub fn claim(&self, ns: &Namespace, ids: &[EntryId]) -> (Fetching, Vec<(EntryId, Outcome)>) {
        let (done, outcome) = watch::channel(None);
        let mut mine = Vec::new();
        let mut theirs = Vec::new();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            match map.get(id) {
                Some((other_ns, other)) if other_ns == ns => theirs.push((*id, other.clone())),
                // Fetched into another namespace: fetch it here too.
                Some(_) => mine.push((*id, false)),
                None => {
                    map.insert(*id, (ns.clone(), outcome.clone()));
                    mine.push((*id, true));
                }
            }
        }
        let fetching = Fetching {
            set: self.clone(),
            ids: mine,
            done,
        };
        (fetching, theirs)
    }

    fn release(&self, ids: &[(EntryId, bool)]) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (id, _) in ids.iter().filter(|(_, registered)| *registered) {
            map.remove(id);
        }
    }
}

impl Fetching {
    /// Whether this worker claimed `id`.
    #[cfg(test)]
    pub fn owns(&self, id: &EntryId) -> bool {
        self.ids.iter().any(|(i, _)| i == id)
    }

    /// The ids this worker claimed, in the order asked for.
    pub fn ids(&self) -> impl Iterator<Item = EntryId> + '_ {
        self.ids.iter().map(|(id, _)| *id)
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Everything claimed is stored.
    pub fn stored(self) {
        let _ = self.done.send(Some(true));
    }
}

impl Drop for Fetching {
    fn drop(&mut self) {
        self.set.release(&self.ids);
        self.done.send_if_modified(|v| {
            let unset = v.is_none();
            if unset {
                *v = Some(false);
            }
            unset
        });
    }
}

/// Waits for another worker's fetch; true when it was stored.
pub async fn stored(mut outcome: Outcome) -> bool {
    matches!(
        outcome.wait_for(|v| v.is_some()).await.map(|v| *v),
        Ok(Some(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_claim_fetches_and_the_others_wait_for_it() {
        let set = InFlight::default();
        let ns = Namespace::new("t", "d").unwrap();
        let (a, b) = (EntryId([1; 32]), EntryId([2; 32]));
        let (first, waits) = set.claim(&ns, &[a]);
        assert!(waits.is_empty() && first.owns(&a));
        let (second, waits) = set.claim(&ns, &[a, b]);
        assert!(second.owns(&b) && !second.owns(&a));
        assert_eq!(waits.len(), 1);
        first.stored();
        assert!(stored(waits[0].1.clone()).await);
        // A failed fetch (dropped) tells the waiters to fetch themselves.
        let (third, waits) = set.claim(&ns, &[b]);
        assert!(third.is_empty());
        drop(second);
        assert!(!stored(waits[0].1.clone()).await);
        // Released: the next claim fetches.
        let (fourth, waits) = set.claim(&ns, &[a, b]);
        assert!(waits.is_empty() && fourth.owns(&a) && fourth.owns(&b));
        // The same id fetched into another namespace is fetched there too,
        // and ending that fetch releases nothing of this one's.
        let other = Namespace::new("t", "other").unwrap();
        let (fifth, waits) = set.claim(&other, &[a]);
        assert!(waits.is_empty() && fifth.owns(&a));
        drop(fifth);
        let (_, waits) = set.claim(&ns, &[a]);
        assert_eq!(waits.len(), 1, "a is still fetched by the fourth claim");
    }
}
