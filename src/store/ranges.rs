//! Range fingerprints: what set reconciliation asks of a store.
//!
//! A store's entries are ordered by their key, `ns ‖ id` (`ns` is
//! [`Namespace::encode_key`], prefix-free, so a namespace is one contiguous
//! run of keys). The fingerprint of a key range is the wrapping sum of
//! `k = BLAKE3_keyed(K, ns ‖ id)` (its first 8 bytes) over the entries in
//! the range, with their count. Sums are additive, so the index keeps them
//! per namespace in radix buckets of the id's first 16 bits and adds
//! buckets up; a bound that cuts a bucket is completed by scanning that
//! bucket's few keys.
//!
//! K is a secret the replicas share: a client chooses its entries' bytes
//! and so their ids, but cannot compute `k`, so it can neither make two
//! different sets look equal nor steer which ranges collide.
//!
//! Memory is sparse: a namespace keeps only the buckets it uses, in sorted
//! chunks, so a million entries cost about 1 MB in one namespace and about
//! 16 bytes each spread over many small ones.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Bound::{Included, Unbounded};
use std::sync::RwLock;

use super::{Appended, Store, StoreError};
use crate::entry::{EntryId, ID_LEN, Namespace, VerifiedEntry};

/// The secret the replicas of a mesh share to key their fingerprints.
#[derive(Clone, PartialEq, Eq)]
pub struct FingerprintKey([u8; 32]);

impl FingerprintKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A new random key.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// Reads 64 hex digits (surrounding whitespace ignored, as in a file).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let mut key = [0u8; 32];
        hex::decode_to_slice(text, &mut key).map_err(|_| {
            format!(
                "a fingerprint key is 64 hex digits (32 bytes); this one has {} characters \
                 and is not that",
                text.len()
            )
        })?;
        Ok(Self(key))
    }

    /// A check value of the key: equal on replicas that share it, and
    /// nothing about the key itself (a keyed hash of a fixed label).
    pub fn check(&self) -> u64 {
        let out = blake3::keyed_hash(&self.0, b"mindoo-replica fingerprint key check");
        u64::from_le_bytes(out.as_bytes()[..8].try_into().expect("8 bytes"))
    }

    /// `k` of one entry.
    pub fn hash(&self, ns_key: &[u8], id: &EntryId) -> u64 {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(ns_key);
        h.update(&id.0);
        let out = h.finalize();
        u64::from_le_bytes(out.as_bytes()[..8].try_into().expect("8 bytes"))
    }
}

impl fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FingerprintKey(…)")
    }
}

/// The fingerprint of a set of entries: the wrapping sum of their `k` and
/// their count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fingerprint {
    pub sum: u64,
    pub count: u64,
}

impl Fingerprint {
    pub fn add(&mut self, k: u64) {
        self.sum = self.sum.wrapping_add(k);
        self.count += 1;
    }

    fn remove(&mut self, k: u64) {
        self.sum = self.sum.wrapping_sub(k);
        self.count = self.count.saturating_sub(1);
    }

    pub fn merge(&mut self, other: Fingerprint) {
        self.sum = self.sum.wrapping_add(other.sum);
        self.count += other.count;
    }
}

/// A range of keys, `[lo, hi)`; `hi: None` runs to the end.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyRange {
    pub lo: Vec<u8>,
    pub hi: Option<Vec<u8>>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> Self {
        Self::default()
    }

    pub fn new(lo: Vec<u8>, hi: Option<Vec<u8>>) -> Self {
        Self { lo, hi }
    }

    /// Whether `key` lies before the range's end.
    pub fn below_hi(&self, key: &[u8]) -> bool {
        self.hi.as_deref().is_none_or(|hi| key < hi)
    }
}

/// The smallest key after every key that starts with `prefix`; `None`
/// when there is none (a prefix of 0xFF bytes only).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The namespaces a reconciliation covers, by key; `None`: all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope(Option<BTreeSet<Vec<u8>>>);

impl Scope {
    pub fn all() -> Self {
        Self(None)
    }

    /// Exactly these namespaces.
    pub fn only<'a>(namespaces: impl IntoIterator<Item = &'a Namespace>) -> Self {
        Self(Some(namespaces.into_iter().map(ns_key).collect()))
    }

    pub fn covers(&self, ns_key: &[u8]) -> bool {
        self.0.as_ref().is_none_or(|set| set.contains(ns_key))
    }
}

pub fn ns_key(ns: &Namespace) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + ns.tenant().len() + ns.db().len());
    ns.encode_key(&mut key);
    key
}

/// Scans a store's ids in `[lo, hi)`, both within one namespace.
pub type ScanIds<'a> = dyn FnMut(&[u8], &[u8]) -> Result<Vec<EntryId>, StoreError> + 'a;

const BUCKETS: u32 = 1 << 16;
const CHUNK: usize = 512;

/// The bucket of an id-part bound of at most 2 bytes, which is where the
/// bucket starts; longer ones cut their bucket.
fn aligned(bound: &[u8]) -> Option<u32> {
    match bound {
        [] => Some(0),
        [a] => Some(u32::from(*a) << 8),
        [a, b] => Some((u32::from(*a) << 8) | u32::from(*b)),
        _ => None,
    }
}

fn bucket_of(id_part: &[u8]) -> u32 {
    (u32::from(id_part[0]) << 8) | u32::from(id_part[1])
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    prefix: u16,
    count: u32,
    sum: u64,
}

/// A namespace's non-empty buckets in prefix order, in chunks of at most
/// [`CHUNK`] so an insert moves little.
#[derive(Default)]
struct Buckets {
    chunks: Vec<Vec<Bucket>>,
}

impl Buckets {
    fn chunk_for(&self, prefix: u16) -> usize {
        let i = self
            .chunks
            .partition_point(|c| c.last().is_some_and(|b| b.prefix < prefix));
        i.min(self.chunks.len().saturating_sub(1))
    }

    fn add(&mut self, prefix: u16, k: u64) {
        if self.chunks.is_empty() {
            self.chunks.push(Vec::new());
        }
        let ci = self.chunk_for(prefix);
        let chunk = &mut self.chunks[ci];
        match chunk.binary_search_by_key(&prefix, |b| b.prefix) {
            Ok(i) => {
                chunk[i].count += 1;
                chunk[i].sum = chunk[i].sum.wrapping_add(k);
            }
            Err(i) => {
                chunk.insert(
                    i,
                    Bucket {
                        prefix,
                        count: 1,
                        sum: k,
                    },
                );
                if chunk.len() > CHUNK {
                    let tail = chunk.split_off(CHUNK / 2);
                    chunk.shrink_to(CHUNK);
                    self.chunks.insert(ci + 1, tail);
                }
            }
        }
    }

    fn remove(&mut self, prefix: u16, k: u64) {
        if self.chunks.is_empty() {
            return;
        }
        let ci = self.chunk_for(prefix);
        let chunk = &mut self.chunks[ci];
        if let Ok(i) = chunk.binary_search_by_key(&prefix, |b| b.prefix) {
            chunk[i].count -= 1;
            chunk[i].sum = chunk[i].sum.wrapping_sub(k);
            if chunk[i].count == 0 {
                chunk.remove(i);
                if chunk.is_empty() {
                    self.chunks.remove(ci);
                }
            }
        }
    }

    /// The sum of the buckets `from..to`.
    fn sum(&self, from: u32, to: u32) -> Fingerprint {
        let mut fp = Fingerprint::default();
        if from >= to {
            return fp;
        }
        let start = self
            .chunks
            .partition_point(|c| c.last().is_some_and(|b| u32::from(b.prefix) < from));
        for chunk in &self.chunks[start..] {
            if chunk.first().is_some_and(|b| u32::from(b.prefix) >= to) {
                break;
            }
            for b in chunk {
                let p = u32::from(b.prefix);
                if p >= to {
                    break;
                }
                if p >= from {
                    fp.sum = fp.sum.wrapping_add(b.sum);
                    fp.count += u64::from(b.count);
                }
            }
        }
        fp
    }

    fn bytes(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| c.capacity() * std::mem::size_of::<Bucket>() + 24)
            .sum::<usize>()
            + self.chunks.capacity() * 24
    }
}

#[derive(Default)]
struct Space {
    total: Fingerprint,
    buckets: Buckets,
}

/// The fingerprint index of a store (see the module's documentation).
pub struct RangeIndex {
    key: FingerprintKey,
    spaces: RwLock<BTreeMap<Vec<u8>, Space>>,
}

impl fmt::Debug for RangeIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RangeIndex").finish_non_exhaustive()
    }
}

impl RangeIndex {
    pub fn new(key: FingerprintKey) -> Self {
        Self {
            key,
            spaces: RwLock::new(BTreeMap::new()),
        }
    }

    pub fn key(&self) -> &FingerprintKey {
        &self.key
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Vec<u8>, Space>> {
        self.spaces.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<Vec<u8>, Space>> {
        self.spaces.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts entries now stored (each once: the store calls this for its
    /// first inserts only).
    pub fn insert<'a>(&self, entries: impl IntoIterator<Item = (&'a Namespace, &'a EntryId)>) {
        let mut spaces = self.write();
        let mut key = Vec::new();
        for (ns, id) in entries {
            key.clear();
            ns.encode_key(&mut key);
            let k = self.key.hash(&key, id);
            let space = match spaces.get_mut(key.as_slice()) {
                Some(s) => s,
                None => spaces.entry(key.clone()).or_default(),
            };
            space.total.add(k);
            space.buckets.add(bucket_of(&id.0) as u16, k);
        }
    }

    /// Counts entries by their stored keys (`ns ‖ id`), as a store reads
    /// them back when it opens.
    pub fn insert_keys<'a>(&self, keys: impl IntoIterator<Item = &'a [u8]>) {
        let mut spaces = self.write();
        for key in keys {
            let Some(split) = key.len().checked_sub(ID_LEN) else {
                continue;
            };
            let (ns, id) = key.split_at(split);
            let id = EntryId(id.try_into().expect("ID_LEN bytes"));
            let k = self.key.hash(ns, &id);
            let space = match spaces.get_mut(ns) {
                Some(s) => s,
                None => spaces.entry(ns.to_vec()).or_default(),
            };
            space.total.add(k);
            space.buckets.add(bucket_of(&id.0) as u16, k);
        }
    }

    /// Counts the entries of an append that were stored (not duplicates).
    pub fn insert_appended(&self, entries: &[VerifiedEntry], appended: &[Appended]) {
        let stored = entries.iter().zip(appended);
        self.insert(
            stored
                .filter(|(_, a)| matches!(a, Appended::Stored(_)))
                .map(|(e, _)| (&e.namespace, &e.id)),
        );
    }

    /// Forgets entries no longer stored.
    pub fn remove<'a>(&self, entries: impl IntoIterator<Item = (&'a Namespace, &'a EntryId)>) {
        let mut spaces = self.write();
        for (ns, id) in entries {
            let key = ns_key(ns);
            let k = self.key.hash(&key, id);
            if let Some(space) = spaces.get_mut(&key) {
                space.total.remove(k);
                space.buckets.remove(bucket_of(&id.0) as u16, k);
                if space.total.count == 0 {
                    spaces.remove(&key);
                }
            }
        }
    }

    /// Whether `bound` falls inside a namespace held here, after its
    /// first key.
    pub fn cuts(&self, bound: &[u8]) -> bool {
        self.read()
            .range::<[u8], _>((Unbounded, Included(bound)))
            .next_back()
            .is_some_and(|(k, _)| bound.len() > k.len() && bound.starts_with(k))
    }

    /// Entries counted, in every namespace.
    pub fn count(&self) -> u64 {
        self.read().values().map(|s| s.total.count).sum()
    }

    /// Memory the index holds, in bytes (its buckets and namespace keys).
    pub fn memory_bytes(&self) -> usize {
        self.read()
            .iter()
            .map(|(k, s)| k.capacity() + s.buckets.bytes() + 96)
            .sum()
    }

    /// Each namespace in `scope` with entries in `range`, and its
    /// fingerprint there, in key order.
    pub fn spaces(
        &self,
        range: &KeyRange,
        scope: &Scope,
        scan: &mut ScanIds<'_>,
    ) -> Result<Vec<(Vec<u8>, Fingerprint)>, StoreError> {
        let spaces = self.read();
        let mut out = Vec::new();
        for (key, space) in overlapping(&spaces, range, scope) {
            let fp = self.space_fingerprint(key, space, range, scan)?;
            if fp.count > 0 {
                out.push((key.clone(), fp));
            }
        }
        Ok(out)
    }

    /// The keys of the namespaces in `scope` that `range` overlaps, in
    /// key order, without computing their part of it.
    pub fn namespaces(&self, range: &KeyRange, scope: &Scope) -> Vec<Vec<u8>> {
        let spaces = self.read();
        overlapping(&spaces, range, scope)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// The fingerprint of the entries in `range`, of namespaces in `scope`.
    pub fn fingerprint(
        &self,
        range: &KeyRange,
        scope: &Scope,
        scan: &mut ScanIds<'_>,
    ) -> Result<Fingerprint, StoreError> {
        let mut fp = Fingerprint::default();
        for (_, f) in self.spaces(range, scope, scan)? {
            fp.merge(f);
        }
        Ok(fp)
    }

    /// One namespace's part of `range`.
    fn space_fingerprint(
        &self,
        ns: &[u8],
        space: &Space,
        range: &KeyRange,
        scan: &mut ScanIds<'_>,
    ) -> Result<Fingerprint, StoreError> {
        // The id-part bounds within this namespace; `None`: its whole side.
        let lo = range
            .lo
            .strip_prefix(ns)
            .filter(|_| range.lo.as_slice() > ns);
        let hi = match range.hi.as_deref() {
            Some(hi) if hi.starts_with(ns) => Some(&hi[ns.len()..]),
            _ => None,
        };
        if lo.is_none() && hi.is_none() {
            return Ok(space.total);
        }
        let lo = lo.unwrap_or(&[]);
        if hi.is_some_and(|hi| hi <= lo) {
            return Ok(Fingerprint::default());
        }
        let full_from = aligned(lo).unwrap_or_else(|| bucket_of(lo) + 1);
        let full_to = match hi {
            None => BUCKETS,
            Some(hi) => aligned(hi).unwrap_or_else(|| bucket_of(hi)),
        };
        let mut fp = space.buckets.sum(full_from, full_to);
        let key = |part: &[u8]| [ns, part].concat();
        let mut add = |from: Vec<u8>, to: Vec<u8>, fp: &mut Fingerprint| {
            for id in scan(&from, &to)? {
                fp.add(self.key.hash(ns, &id));
            }
            Ok::<_, StoreError>(())
        };
        let lo_cut = aligned(lo).is_none().then(|| bucket_of(lo));
        let hi_cut = hi.filter(|h| aligned(h).is_none()).map(bucket_of);
        match (lo_cut, hi_cut) {
            (Some(a), Some(b)) if a == b => add(key(lo), key(hi.unwrap_or(&[])), &mut fp)?,
            (lo_cut, hi_cut) => {
                if let Some(a) = lo_cut {
                    let end = match hi {
                        Some(h) if aligned(h).is_some_and(|b| b <= a + 1) => key(h),
                        _ => bucket_end(ns, a),
                    };
                    add(key(lo), end, &mut fp)?;
                }
                if let (Some(b), Some(h)) = (hi_cut, hi) {
                    add(bucket_start(ns, b), key(h), &mut fp)?;
                }
            }
        }
        Ok(fp)
    }
}

/// The namespaces of `scope` that `range` overlaps: the one that holds its
/// start, if one does, then those before its end.
fn overlapping<'a>(
    spaces: &'a BTreeMap<Vec<u8>, Space>,
    range: &'a KeyRange,
    scope: &'a Scope,
) -> impl Iterator<Item = (&'a Vec<u8>, &'a Space)> {
    let first = spaces
        .range::<[u8], _>((Unbounded, Included(range.lo.as_slice())))
        .next_back()
        .filter(|(k, _)| range.lo.starts_with(k))
        .map(|(k, _)| k.as_slice());
    let from = first.unwrap_or(range.lo.as_slice());
    spaces
        .range::<[u8], _>((Included(from), Unbounded))
        .take_while(|(key, _)| range.below_hi(key))
        .filter(|(key, _)| scope.covers(key))
}

fn bucket_start(ns: &[u8], bucket: u32) -> Vec<u8> {
    let mut k = ns.to_vec();
    k.extend_from_slice(&(bucket as u16).to_be_bytes());
    k
}

fn bucket_end(ns: &[u8], bucket: u32) -> Vec<u8> {
    match bucket + 1 {
        BUCKETS => prefix_end(ns).expect("a namespace key ends below 0xFF"),
        next => bucket_start(ns, next),
    }
}

/// A store's ranges, read through its index and, where a bound cuts a
/// bucket, its keys.
pub struct Ranges<'a, S: Store + ?Sized> {
    store: &'a S,
    index: &'a RangeIndex,
}

impl<'a, S: Store + ?Sized> Ranges<'a, S> {
    /// `None` for a store that keeps no fingerprints.
    pub fn of(store: &'a S) -> Option<Self> {
        Some(Self {
            index: store.ranges()?,
            store,
        })
    }

    pub fn key(&self) -> &FingerprintKey {
        self.index.key()
    }

    /// See [`RangeIndex::cuts`].
    pub fn cuts(&self, bound: &[u8]) -> bool {
        self.index.cuts(bound)
    }

    fn scan(&self) -> impl FnMut(&[u8], &[u8]) -> Result<Vec<EntryId>, StoreError> + '_ {
        |lo, hi| {
            let range = KeyRange::new(lo.to_vec(), Some(hi.to_vec()));
            let ids = self.store.range_ids(&range, usize::MAX)?;
            Ok(ids.into_iter().map(|(_, id)| id).collect())
        }
    }

    pub fn fingerprint(&self, range: &KeyRange, scope: &Scope) -> Result<Fingerprint, StoreError> {
        self.index.fingerprint(range, scope, &mut self.scan())
    }

    /// Each namespace in `scope` with entries in `range`, and its
    /// fingerprint there.
    pub fn spaces(
        &self,
        range: &KeyRange,
        scope: &Scope,
    ) -> Result<Vec<(Vec<u8>, Fingerprint)>, StoreError> {
        self.index.spaces(range, scope, &mut self.scan())
    }

    /// The entries of `scope` in `range`, with their `k`, in key order; at
    /// most `limit`.
    pub fn items(
        &self,
        range: &KeyRange,
        scope: &Scope,
        limit: usize,
    ) -> Result<Vec<(Namespace, EntryId, u64)>, StoreError> {
        let mut out = Vec::new();
        for key in self.index.namespaces(range, scope) {
            // This namespace's part of the range.
            let lo = range.lo.clone().max(key.clone());
            let end = prefix_end(&key);
            let hi = match (&range.hi, end) {
                (Some(hi), Some(end)) => Some(hi.clone().min(end)),
                (hi, end) => hi.clone().or(end),
            };
            let left = limit - out.len();
            for (ns, id) in self.store.range_ids(&KeyRange::new(lo, hi), left)? {
                let k = self.key().hash(&key, &id);
                out.push((ns, id, k));
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(db: &str) -> Namespace {
        Namespace::new("t", db).unwrap()
    }

    /// The fingerprint of `range` by brute force over `set`.
    fn brute(
        key: &FingerprintKey,
        set: &BTreeSet<Vec<u8>>,
        ns_keys: &[Vec<u8>],
        r: &KeyRange,
    ) -> Fingerprint {
        let mut fp = Fingerprint::default();
        for k in set {
            if k.as_slice() >= r.lo.as_slice() && r.below_hi(k) {
                let n = ns_keys.iter().find(|n| k.starts_with(n)).unwrap();
                fp.add(key.hash(n, &EntryId::from_slice(&k[n.len()..]).unwrap()));
            }
        }
        fp
    }

    #[test]
    fn range_fingerprints_match_a_brute_force_sum() {
        let key = FingerprintKey::random();
        let index = RangeIndex::new(key.clone());
        let spaces = [ns("a"), ns("b"), ns("c")];
        let ns_keys: Vec<Vec<u8>> = spaces.iter().map(ns_key).collect();
        let mut set = BTreeSet::new();
        let mut entries = Vec::new();
        for i in 0..3000u32 {
            let n = &spaces[(i % 3) as usize];
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&(i.wrapping_mul(2654435761)).to_be_bytes());
            id[4] = (i % 7) as u8;
            let id = EntryId(id);
            set.insert([ns_key(n), id.0.to_vec()].concat());
            entries.push((n.clone(), id));
        }
        index.insert(entries.iter().map(|(n, i)| (n, i)));
        let mut scan = |lo: &[u8], hi: &[u8]| -> Result<Vec<EntryId>, StoreError> {
            let n = ns_keys.iter().find(|n| lo.starts_with(n)).unwrap();
            Ok(set
                .range(lo.to_vec()..hi.to_vec())
                .map(|k| EntryId::from_slice(&k[n.len()..]).unwrap())
                .collect())
        };
        let bounds: Vec<Vec<u8>> = {
            let mut b = vec![Vec::new()];
            for n in &ns_keys {
                b.push(n.clone());
                b.push([n.as_slice(), &[0x40]].concat());
                b.push([n.as_slice(), &[0x40, 0x12]].concat());
                b.push([n.as_slice(), &[0x40, 0x12, 0x80]].concat());
                b.push([n.as_slice(), &[0x40, 0x12, 0x90, 1]].concat());
                b.push([n.as_slice(), &[0x41, 0x00, 0x01]].concat());
                b.push([n.as_slice(), &[0xFF, 0xFF, 0x01]].concat());
                b.push(prefix_end(n).unwrap());
            }
            b
        };
        let his: Vec<Option<Vec<u8>>> = bounds
            .iter()
            .cloned()
            .map(Some)
            .chain(std::iter::once(None))
            .collect();
        for lo in &bounds {
            for hi in &his {
                let r = KeyRange::new(lo.clone(), hi.clone());
                let want = brute(&key, &set, &ns_keys, &r);
                let got = index.fingerprint(&r, &Scope::all(), &mut scan).unwrap();
                assert_eq!(got, want, "range {r:?}");
            }
        }
        // Counted from the stored keys, as a store does when it opens: the same.
        let by_keys = RangeIndex::new(key.clone());
        by_keys.insert_keys(set.iter().map(|k| k.as_slice()));
        for scope in [Scope::all(), Scope::only([&spaces[2]])] {
            let all = KeyRange::all();
            assert_eq!(
                by_keys.fingerprint(&all, &scope, &mut scan).unwrap(),
                index.fingerprint(&all, &scope, &mut scan).unwrap()
            );
        }
        let only_b = Scope::only([&spaces[1]]);
        let got = index
            .fingerprint(&KeyRange::all(), &only_b, &mut scan)
            .unwrap();
        assert_eq!(got.count, 1000);
        index.remove(entries[..30].iter().map(|(n, i)| (n, i)));
        for (n, i) in &entries[..30] {
            set.remove(&[ns_key(n), i.0.to_vec()].concat());
        }
        let r = KeyRange::all();
        let want = brute(&key, &set, &ns_keys, &r);
        let mut scan = |_: &[u8], _: &[u8]| -> Result<Vec<EntryId>, StoreError> { Ok(vec![]) };
        let got = index.fingerprint(&r, &Scope::all(), &mut scan).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn a_million_entries_in_one_namespace_or_spread_stay_small() {
        let key = FingerprintKey::random();
        let one = RangeIndex::new(key.clone());
        let spread = RangeIndex::new(key);
        let a = ns("a");
        let many: Vec<Namespace> = (0..10_000).map(|i| ns(&format!("db{i}"))).collect();
        for chunk in 0..100u64 {
            let ids: Vec<EntryId> = (0..10_000u64)
                .map(|i| EntryId(*blake3::hash(&(chunk * 10_000 + i).to_le_bytes()).as_bytes()))
                .collect();
            one.insert(ids.iter().map(|id| (&a, id)));
            spread.insert(ids.iter().enumerate().map(|(i, id)| (&many[i], id)));
        }
        let (one, spread) = (one.memory_bytes(), spread.memory_bytes());
        assert!(one < 2 << 20, "one namespace: {one} bytes");
        assert!(spread < 32 << 20, "10,000 namespaces: {spread} bytes");
    }

    #[test]
    fn keys_parse_from_hex_and_never_print() {
        let key = FingerprintKey::parse(&format!(" {}\n", "ab".repeat(32))).unwrap();
        assert_eq!(format!("{key:?}"), "FingerprintKey(…)");
        let err = FingerprintKey::parse("abc").unwrap_err();
        assert!(err.contains("64 hex digits"), "{err}");
    }
}
