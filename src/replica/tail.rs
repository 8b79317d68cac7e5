//! The newest records of the log, with their data, in memory. In a mesh
//! every stored entry is read back at once: each peer's live Watch reads
//! the new log records and then fetches the bodies it lacks. Answering
//! those reads from here spares a trip to the store (and a hop to the
//! blocking pool) per read. Bounded by bytes; the data kept is that of
//! entries clients wrote here, up to an eighth of the bound each.
//!
//! The tail covers every record after `before`, in log order; records are
//! pushed by the commit, in the order the store assigned their sequence
//! numbers, before the head signal announces them. So a read here that finds
//! nothing of a reader's namespaces has seen the log up to the announced head.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

use super::follow::WithData;
use crate::entry::{EntryId, Namespace, VerifiedEntry};
use crate::store::{LogRecord, Seq};

pub struct LogTail {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Every record after this sequence number is in `records`.
    before: Seq,
    records: VecDeque<Held>,
    /// The data of records held with it, and their sequence numbers.
    /// (Ids are hashes chosen by writers: a keyed hash, but a fast one.)
    data: HashMap<EntryId, (Seq, Bytes), foldhash::fast::RandomState>,
    bytes: usize,
    /// Data is copied into blocks (a copy: an entry may share a large
    /// request buffer); a block is freed once its last record is evicted,
    /// so the tail churns through few large allocations, not one per entry.
    block: BytesMut,
}

struct Held {
    seq: Seq,
    /// Shared by neighbouring records of one namespace.
    namespace: Arc<Namespace>,
    id: EntryId,
    /// Pulled from a peer, not written here by a client.
    relayed: bool,
}

/// What one record costs beyond its data (keys, map slots).
const RECORD_OVERHEAD: usize = 160;

impl LogTail {
    /// An empty tail after `head`, holding at most `max_bytes`.
    pub fn new(head: Seq, max_bytes: usize) -> Self {
        Self {
            max_bytes,
            inner: Mutex::new(Inner {
                before: head,
                ..Default::default()
            }),
        }
    }

    /// Adds records just committed, in log order; `relayed` when they were
    /// pulled from a peer. A gap (records stored some other way) starts the
    /// tail afresh.
    pub fn push<'a>(
        &self,
        relayed: bool,
        stored: impl IntoIterator<Item = (Seq, &'a VerifiedEntry)>,
    ) {
        if self.max_bytes == 0 {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for (seq, entry) in stored {
            let last = inner.records.back().map_or(inner.before, |r| r.seq);
            if seq != last + 1 {
                inner.clear(seq - 1);
            }
            // Data only of what clients wrote here: that is what peers
            // come for at once; what was pulled they mostly have already.
            let keep_data = !relayed && entry.data.len() <= self.max_bytes / 8;
            if keep_data {
                let data = inner.copy(&entry.data, self.max_bytes / 32);
                inner.bytes += data.len();
                inner.data.insert(entry.id, (seq, data));
            }
            inner.bytes += RECORD_OVERHEAD;
            let namespace = match inner.records.back() {
                Some(last) if *last.namespace == entry.namespace => last.namespace.clone(),
                _ => Arc::new(entry.namespace.clone()),
            };
            inner.records.push_back(Held {
                seq,
                namespace,
                id: entry.id,
                relayed,
            });
            while inner.bytes > self.max_bytes {
                inner.evict_oldest();
            }
        }
    }

    /// The records after `after` (up to `limit`, and with the data asked
    /// for within its budget, at least one record), or `None` when the tail
    /// does not reach back to `after` or lacks data asked for.
    ///
    /// With `only`, the records of those namespaces (up to `limit` of
    /// theirs); the others are passed over. Since what is passed over is not
    /// returned, the tail then answers only when it holds every record up to
    /// `head` (the store's, which a commit moves before it pushes here), so
    /// that a short answer means none of theirs up to `head`.
    pub fn since(
        &self,
        after: Seq,
        limit: usize,
        with: WithData,
        only: Option<&HashSet<Namespace>>,
        head: Seq,
    ) -> Option<Vec<LogRecord>> {
        if self.max_bytes == 0 {
            return None;
        }
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if after < inner.before {
            return None;
        }
        let end = inner.records.back().map_or(inner.before, |r| r.seq);
        if only.is_some() && end < head {
            return None;
        }
        let skip = (after - inner.before) as usize;
        let mut out = Vec::new();
        let mut bytes = 0;
        let wanted = inner
            .records
            .iter()
            .skip(skip)
            .filter(|held| only.is_none_or(|only| only.contains(&*held.namespace)));
        for held in wanted.take(limit) {
            let data = match with {
                WithData::No => None,
                WithData::ClientWritten { .. } if held.relayed => None,
                WithData::ClientWritten { budget } => match inner.data.get(&held.id) {
                    // Too large to keep here: the reader fetches it.
                    None => None,
                    Some((_, data)) if !out.is_empty() && bytes + data.len() > budget => break,
                    Some((_, data)) => {
                        bytes += data.len();
                        Some(data.clone())
                    }
                },
                WithData::All { budget } => {
                    let (_, data) = inner.data.get(&held.id)?;
                    if !out.is_empty() && bytes + data.len() > budget {
                        break;
                    }
                    bytes += data.len();
                    Some(data.clone())
                }
            };
            out.push(LogRecord {
                seq: held.seq,
                namespace: (*held.namespace).clone(),
                id: held.id,
                data,
            });
        }
        Some(out)
    }

    /// Whether there are records after `after` and all of them were pulled
    /// from peers (false when the tail does not reach back to `after`).
    pub fn only_relayed_after(&self, after: Seq) -> bool {
        if self.max_bytes == 0 {
            return false;
        }
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if after < inner.before {
            return false;
        }
        let mut newer = inner.records.iter().skip((after - inner.before) as usize);
        let mut any = false;
        newer.all(|r| {
            any = true;
            r.relayed
        }) && any
    }

    /// The data of each id held here in `ns`, or `None` when any is not.
    pub fn get(&self, ns: &Namespace, ids: &[EntryId]) -> Option<Vec<Option<Bytes>>> {
        if self.max_bytes == 0 {
            return None;
        }
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        ids.iter()
            .map(|id| {
                let (seq, data) = inner.data.get(id)?;
                let held = &inner.records[(seq - inner.before - 1) as usize];
                // Held in another namespace is not held in `ns`.
                Some((*held.namespace == *ns).then(|| data.clone()))
            })
            .collect()
    }
}

impl Inner {
    fn copy(&mut self, data: &[u8], block_size: usize) -> Bytes {
        if self.block.capacity() - self.block.len() < data.len() {
            self.block = BytesMut::with_capacity(block_size.max(data.len()));
        }
        self.block.extend_from_slice(data);
        self.block.split().freeze()
    }

    fn clear(&mut self, before: Seq) {
        *self = Inner {
            before,
            ..Default::default()
        };
    }

    fn evict_oldest(&mut self) {
        if let Some(old) = self.records.pop_front() {
            self.before = old.seq;
            self.bytes -= RECORD_OVERHEAD;
            if let Some((_, data)) = self.data.remove(&old.id) {
                self.bytes -= data.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use WithData::{All, ClientWritten, No};

    fn entry(ns: &str, n: u8, size: usize) -> VerifiedEntry {
        VerifiedEntry {
            id: EntryId([n; 32]),
            namespace: Namespace::new("t", ns).unwrap(),
            data: Bytes::from(vec![n; size]),
        }
    }

    fn seqs(records: &[LogRecord]) -> Vec<Seq> {
        records.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn serves_what_follows_a_position_it_reaches_back_to() {
        let tail = LogTail::new(10, 1 << 20);
        let batch = [entry("a", 1, 10), entry("a", 2, 10), entry("b", 3, 10)];
        tail.push(false, (11..).zip(&batch));
        assert_eq!(
            seqs(&tail.since(10, 100, No, None, 13).unwrap()),
            [11, 12, 13]
        );
        assert_eq!(seqs(&tail.since(12, 100, No, None, 13).unwrap()), [13]);
        assert_eq!(tail.since(13, 100, No, None, 13).unwrap(), []);
        assert_eq!(seqs(&tail.since(10, 2, No, None, 13).unwrap()), [11, 12]);
        // Before the tail starts: the store answers.
        assert_eq!(tail.since(9, 100, No, None, 13), None);
        // Data within the budget, at least one record.
        let with = tail.since(10, 100, All { budget: 15 }, None, 13).unwrap();
        assert_eq!(seqs(&with), [11]);
        assert_eq!(with[0].data.as_deref(), Some(&[1u8; 10][..]));
        assert_eq!(
            seqs(&tail.since(10, 100, All { budget: 1 }, None, 13).unwrap()),
            [11]
        );
    }

    #[test]
    fn forgets_the_oldest_beyond_its_bytes_and_keeps_large_data_out() {
        let max = 4 * (RECORD_OVERHEAD + 100);
        let tail = LogTail::new(0, max);
        let batch: Vec<_> = (1..=6).map(|n| entry("a", n, 100)).collect();
        tail.push(false, (1..).zip(&batch));
        assert_eq!(tail.since(1, 100, No, None, 7), None, "the oldest are gone");
        assert_eq!(
            seqs(&tail.since(2, 100, No, None, 7).unwrap()),
            [3, 4, 5, 6]
        );
        // Too large to keep: logged, but its data comes from the store.
        let big = entry("a", 7, max / 8 + 1);
        tail.push(false, [(7, &big)]);
        assert_eq!(seqs(&tail.since(6, 100, No, None, 7).unwrap()), [7]);
        assert_eq!(tail.since(6, 100, All { budget: 1 << 20 }, None, 7), None);
        let ns = Namespace::new("t", "a").unwrap();
        assert_eq!(tail.get(&ns, &[big.id]), None);
    }

    #[test]
    fn a_gap_starts_afresh() {
        let tail = LogTail::new(0, 1 << 20);
        let batch = [entry("a", 1, 10), entry("a", 2, 10)];
        tail.push(false, [(1, &batch[0])]);
        tail.push(false, [(5, &batch[1])]);
        assert_eq!(tail.since(0, 100, No, None, 5), None);
        assert_eq!(seqs(&tail.since(4, 100, No, None, 5).unwrap()), [5]);
    }

    #[test]
    fn gets_data_only_in_its_own_namespace_and_only_when_all_is_held() {
        let tail = LogTail::new(0, 1 << 20);
        let batch = [entry("a", 1, 10), entry("b", 2, 10)];
        tail.push(false, (1..).zip(&batch));
        let a = Namespace::new("t", "a").unwrap();
        let got = tail.get(&a, &[batch[0].id, batch[1].id]).unwrap();
        assert_eq!(got[0].as_deref(), Some(&[1u8; 10][..]));
        assert_eq!(got[1], None, "held in another namespace");
        assert_eq!(tail.get(&a, &[EntryId([9; 32])]), None);
    }

    #[test]
    fn knows_whether_what_follows_was_only_relayed() {
        let tail = LogTail::new(0, 1 << 20);
        let batch = [entry("a", 1, 10), entry("a", 2, 10), entry("a", 3, 10)];
        tail.push(true, [(1, &batch[0])]);
        assert!(tail.only_relayed_after(0));
        assert!(!tail.only_relayed_after(1), "nothing after 1");
        tail.push(false, [(2, &batch[1])]);
        tail.push(true, [(3, &batch[2])]);
        assert!(!tail.only_relayed_after(0));
        assert!(!tail.only_relayed_after(1));
        assert!(tail.only_relayed_after(2));
    }

    #[test]
    fn can_give_data_only_of_what_clients_wrote() {
        let tail = LogTail::new(0, 1 << 20);
        let batch = [entry("a", 1, 10), entry("a", 2, 10)];
        tail.push(true, [(1, &batch[0])]);
        tail.push(false, [(2, &batch[1])]);
        let got = tail
            .since(0, 100, ClientWritten { budget: 100 }, None, 2)
            .unwrap();
        assert_eq!(seqs(&got), [1, 2]);
        assert_eq!(got[0].data, None, "relayed: id only");
        assert_eq!(got[1].data.as_deref(), Some(&[2u8; 10][..]));
        // Relayed data is not kept: whole-data reads and fetches go to the store.
        assert_eq!(tail.since(0, 100, All { budget: 100 }, None, 2), None);
        let a = Namespace::new("t", "a").unwrap();
        assert_eq!(tail.get(&a, &[batch[0].id]), None);
    }

    #[test]
    fn serves_only_the_namespaces_asked_for() {
        let tail = LogTail::new(0, 1 << 20);
        let batch = [
            entry("a", 1, 10),
            entry("b", 2, 10),
            entry("a", 3, 10),
            entry("c", 4, 10),
            entry("b", 5, 10),
        ];
        tail.push(false, (1..).zip(&batch));
        let only = |names: &[&str]| -> HashSet<Namespace> {
            names
                .iter()
                .map(|n| Namespace::new("t", *n).unwrap())
                .collect()
        };
        let ab = only(&["a", "b"]);
        // Records the store holds and the tail not yet: the store answers.
        assert_eq!(tail.since(0, 100, No, Some(&ab), 6), None);
        assert_eq!(
            seqs(&tail.since(0, 100, No, Some(&ab), 5).unwrap()),
            [1, 2, 3, 5]
        );
        // The limit counts the records served, not those passed over.
        assert_eq!(seqs(&tail.since(2, 2, No, Some(&ab), 5).unwrap()), [3, 5]);
        // Nothing of theirs up to the end of the tail; nothing of unknown ones.
        assert_eq!(tail.since(5, 100, No, Some(&ab), 5).unwrap(), []);
        assert_eq!(tail.since(0, 100, No, Some(&only(&["z"])), 5).unwrap(), []);
        // Only the data of the records served must be held.
        let big = entry("c", 6, (1 << 20) / 8 + 1);
        tail.push(false, [(6, &big)]);
        let all = All { budget: 1 << 20 };
        let got = tail.since(0, 100, all, Some(&ab), 6).unwrap();
        assert_eq!(seqs(&got), [1, 2, 3, 5]);
        assert_eq!(got[3].data.as_deref(), Some(&[5u8; 10][..]));
        assert_eq!(tail.since(0, 100, all, None, 6), None);
    }

    #[test]
    fn holds_nothing_when_turned_off() {
        let tail = LogTail::new(0, 0);
        tail.push(false, [(1, &entry("a", 1, 10))]);
        assert_eq!(tail.since(0, 100, No, None, 1), None, "the store answers");
        assert_eq!(tail.since(1, 100, No, None, 1), None);
    }
}
