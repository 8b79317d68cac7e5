//! Entries some pull worker of this replica is fetching right now. In a
//! mesh the same new entry shows up in several peers' logs at once; the
//! first worker to see it fetches it, the others wait for that fetch to be
//! stored before their cursors pass the entry, and fetch it themselves only
//! if it failed. So a body crosses to each replica about once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::entry::{EntryId, Namespace};

type Key = (Namespace, EntryId);

/// The outcome of a fetch: `Some(true)` once stored, `Some(false)` if it
/// failed; a closed channel means failed too.
pub type Outcome = watch::Receiver<Option<bool>>;

#[derive(Clone, Default)]
pub struct InFlight(Arc<Mutex<HashMap<Key, Outcome>>>);

/// Entries this worker fetches; reports the outcome to waiting workers
/// when stored ([`Fetching::stored`]) or dropped (failed).
pub struct Fetching {
    set: InFlight,
    keys: Vec<Key>,
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
            let key = (ns.clone(), *id);
            match map.get(&key) {
                Some(other) => theirs.push((*id, other.clone())),
                None => {
                    map.insert(key.clone(), outcome.clone());
                    mine.push(key);
                }
            }
        }
        let fetching = Fetching {
            set: self.clone(),
            keys: mine,
            done,
        };
        (fetching, theirs)
    }

    fn release(&self, keys: &[Key]) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            map.remove(key);
        }
    }
}

impl Fetching {
    /// Whether this worker claimed `id`.
    pub fn owns(&self, ns: &Namespace, id: &EntryId) -> bool {
        self.keys.iter().any(|(n, i)| i == id && n == ns)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Everything claimed is stored.
    pub fn stored(self) {
        let _ = self.done.send(Some(true));
    }
}

impl Drop for Fetching {
    fn drop(&mut self) {
        self.set.release(&self.keys);
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
        assert!(waits.is_empty() && first.owns(&ns, &a));
        let (second, waits) = set.claim(&ns, &[a, b]);
        assert!(second.owns(&ns, &b) && !second.owns(&ns, &a));
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
        assert!(waits.is_empty() && fourth.owns(&ns, &a) && fourth.owns(&ns, &b));
    }
}
