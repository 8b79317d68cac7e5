//! The ids this replica stored most recently, in memory. In a mesh every
//! new entry is announced by several peers within milliseconds; most
//! "do I have it?" questions are about ids stored a moment ago, and are
//! answered here without a trip to the store.
//!
//! Only ever says "held" for ids that are stored (an id names its
//! namespace: the namespace is part of the bytes it hashes).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use crate::entry::EntryId;

pub struct RecentIds {
    capacity: usize,
    /// (Ids are hashes chosen by writers: a keyed hash, but a fast one.)
    inner: Mutex<(
        HashSet<EntryId, foldhash::fast::RandomState>,
        VecDeque<EntryId>,
    )>,
}

impl RecentIds {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new((
                HashSet::with_capacity_and_hasher(capacity, Default::default()),
                VecDeque::with_capacity(capacity),
            )),
        }
    }

    /// Remembers ids now held, forgetting the oldest beyond the capacity.
    pub fn insert(&self, ids: impl IntoIterator<Item = EntryId>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (set, order) = &mut *inner;
        for id in ids {
            if set.insert(id) {
                order.push_back(id);
            }
            while order.len() > self.capacity {
                if let Some(old) = order.pop_front() {
                    set.remove(&old);
                }
            }
        }
    }

    /// The ids of `ids` not known here to be held.
    /// Forgets `ids` (taken out of the store).
    pub fn forget(&self, ids: impl IntoIterator<Item = EntryId>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            inner.0.remove(&id);
        }
    }

    pub fn unknown(&self, ids: Vec<EntryId>) -> Vec<EntryId> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        ids.into_iter().filter(|id| !inner.0.contains(id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_newest_up_to_its_capacity() {
        let recent = RecentIds::new(2);
        let id = |n: u8| EntryId([n; 32]);
        recent.insert([id(1), id(2), id(2), id(3)]);
        assert_eq!(
            recent.unknown(vec![id(1), id(2), id(3), id(4)]),
            [id(1), id(4)]
        );
    }
}
