//! Range-based set reconciliation (layer B of the sync engine): two sides
//! find what each holds that the other lacks by comparing fingerprints of
//! key ranges, splitting only the ranges that differ.
//!
//! - [`message`]: the ranges and parts of a round, in domain types.
//! - [`session`]: one side's state and its answer to a round.
//!
//! Identical sets finish in one round trip of one fingerprint; scattered
//! differences in a few round trips, each carrying little more than the
//! ranges that still differ.

pub mod message;
pub mod session;

pub use message::{Cell, Part, Range};
pub use session::{LEAF_ITEMS, MAX_ROUNDS, Role, Session, SessionLimits};

use std::sync::Arc;

use crate::error::Result;
use crate::store::Store;

/// Opens a session (`incoming: None`, the initiator's first round) or
/// answers a round, on the blocking pool.
pub async fn step(
    store: Arc<dyn Store>,
    mut session: Session,
    incoming: Option<Vec<Part>>,
) -> Result<(Session, Vec<Part>)> {
    crate::blocking::run(move || {
        let out = match incoming {
            None => session.open(&*store)?,
            Some(parts) => session.answer(&*store, parts)?,
        };
        Ok((session, out))
    })
    .await?
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::entry::{EntryId, Namespace, VerifiedEntry};
    use crate::store::Store;
    use crate::store::memory::MemoryStore;
    use crate::store::ranges::{FingerprintKey, Scope};

    type Set = BTreeSet<(Namespace, EntryId)>;

    fn store(key: &FingerprintKey, set: &Set) -> MemoryStore {
        let s = MemoryStore::with_fingerprints(key.clone());
        let entries: Vec<VerifiedEntry> = set
            .iter()
            .map(|(ns, id)| VerifiedEntry {
                id: *id,
                namespace: ns.clone(),
                data: bytes::Bytes::from_static(b"x"),
            })
            .collect();
        s.append(&entries, None).unwrap();
        s
    }

    /// Runs a whole session; the initiator's session and the round trips.
    fn reconcile(a: &MemoryStore, b: &MemoryStore, scope: Scope) -> (Session, u32) {
        let limits = SessionLimits::default();
        let mut init = Session::new(Role::Initiator, scope.clone(), limits);
        let mut resp = Session::new(Role::Responder, scope, limits);
        let mut round = init.open(a).unwrap();
        let mut trips = 0;
        while !round.is_empty() {
            trips += 1;
            assert!(trips < 40, "no end in sight");
            let reply = resp.answer(b, round).unwrap();
            if reply.is_empty() {
                break;
            }
            round = init.answer(a, reply).unwrap();
        }
        (init, trips)
    }

    fn random_sets(rng: &mut StdRng, spaces: &[Namespace]) -> (Set, Set) {
        let n = rng.random_range(0..10_000usize);
        let overlap = rng.random_range(0.0..=1.0f64);
        let (mut a, mut b) = (Set::new(), Set::new());
        for _ in 0..n {
            let ns = spaces[rng.random_range(0..spaces.len())].clone();
            let item = (ns, EntryId(rng.random()));
            match rng.random_bool(overlap) {
                true => {
                    a.insert(item.clone());
                    b.insert(item);
                }
                false if rng.random_bool(0.5) => _ = a.insert(item),
                false => _ = b.insert(item),
            }
        }
        (a, b)
    }

    #[test]
    fn one_session_finds_every_difference_both_ways() {
        let key = FingerprintKey::random();
        let spaces: Vec<Namespace> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|d| Namespace::new("t", *d).unwrap())
            .collect();
        for seed in 0..24 {
            let mut rng = StdRng::seed_from_u64(seed);
            let used = rng.random_range(1..=5);
            let (a, b) = random_sets(&mut rng, &spaces[..used]);
            let (sa, sb) = (store(&key, &a), store(&key, &b));
            let (session, trips) = reconcile(&sa, &sb, Scope::all());
            let need: Set = session.need.iter().cloned().collect();
            let give: Set = session.give.iter().cloned().collect();
            let (want_need, want_give): (Set, Set) = (
                b.difference(&a).cloned().collect(),
                a.difference(&b).cloned().collect(),
            );
            let report = |what: &str, got: &Set, want: &Set| {
                format!(
                    "seed {seed}: {what}: {} right, {} missed, {} wrong",
                    got.intersection(want).count(),
                    want.difference(got).count(),
                    got.difference(want).count()
                )
            };
            assert!(need == want_need, "{}", report("need", &need, &want_need));
            assert!(give == want_give, "{}", report("give", &give, &want_give));
            assert_eq!(session.need.len(), need.len(), "seed {seed}: need repeats");
            assert_eq!(session.give.len(), give.len(), "seed {seed}: give repeats");
            assert!(!session.truncated);
            if a == b {
                assert!(
                    trips <= 1,
                    "seed {seed}: equal sets took {trips} round trips"
                );
            }
        }
    }

    #[test]
    fn identical_sets_finish_in_one_round_trip() {
        let key = FingerprintKey::random();
        let ns = Namespace::new("t", "d").unwrap();
        let set: Set = (0..5000)
            .map(|_| (ns.clone(), EntryId(rand::random())))
            .collect();
        let (a, b) = (store(&key, &set), store(&key, &set));
        let (session, trips) = reconcile(&a, &b, Scope::all());
        assert_eq!(trips, 1);
        assert!(session.need.is_empty() && session.give.is_empty());
    }

    #[test]
    fn a_scope_leaves_other_namespaces_alone() {
        let key = FingerprintKey::random();
        let (x, y) = (
            Namespace::new("t", "x").unwrap(),
            Namespace::new("t", "y").unwrap(),
        );
        let a: Set = (0..300)
            .map(|_| (x.clone(), EntryId(rand::random())))
            .collect();
        let b: Set = (0..300)
            .map(|_| (y.clone(), EntryId(rand::random())))
            .collect();
        let (sa, sb) = (store(&key, &a), store(&key, &b));
        let (session, _) = reconcile(&sa, &sb, Scope::only([&y]));
        assert_eq!(session.need.len(), 300);
        assert!(session.give.is_empty());
    }

    #[test]
    fn malformed_rounds_are_refused() {
        let key = FingerprintKey::random();
        let ns = Namespace::new("t", "d").unwrap();
        let set: Set = (0..100)
            .map(|_| (ns.clone(), EntryId(rand::random())))
            .collect();
        let s = store(&key, &set);
        let mut resp = Session::new(Role::Responder, Scope::all(), SessionLimits::default());
        let bad = [
            Part::Split {
                cell: Cell::whole(ns.clone()),
                bits: 4,
                fps: vec![Default::default(); 3],
            },
            Part::Items {
                range: Range::all(),
                keys: vec![1; 1000],
            },
            Part::Have {
                ns: ns.clone(),
                ids: vec![],
            },
            Part::Fingerprint {
                range: Range::Span {
                    lo: [crate::store::ranges::ns_key(&ns), vec![7]].concat(),
                    hi: None,
                },
                fp: Default::default(),
            },
        ];
        for part in bad {
            let err = resp.answer(&s, vec![part.clone()]).unwrap_err();
            assert!(
                err.to_string().contains("malformed reconcile round"),
                "{part:?}: {err}"
            );
        }
    }
}
