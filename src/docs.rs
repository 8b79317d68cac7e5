//! Documents: Automerge documents whose every local commit becomes one
//! sealed `doc_change` entry, and which are read back from entries that
//! arrive in any order.
//!
//! A change entry's envelope names the document and lists, as dependency
//! ids, the entry ids of the changes it builds on; its ciphertext is the
//! Automerge change, sealed with the database key ([`crate::seal`]). A
//! `doc_snapshot` entry holds the whole document as saved, and lists the
//! entry ids of the heads it covers (in the order of those heads' change
//! hashes), so a new device loads one snapshot plus the changes after it.
//!
//! Entries are applied in batches (Automerge applies a batch far faster
//! than one change at a time); a change whose dependencies have not
//! arrived waits inside Automerge until they do.

use std::collections::{HashMap, HashSet};
use std::fmt;

use automerge::{
    ActorId, AutoCommit, AutoSerde, Change, ChangeHash, LoadOptions, VerificationMode,
};

use crate::entry::{Entry, EntryId, Envelope, Namespace};
use crate::keys::KeyRing;
use crate::seal::{self, OpenError};
use crate::store::DocRecord;

/// The kind of an entry holding one Automerge change.
pub const KIND_CHANGE: &str = "doc_change";
/// The kind of an entry holding a whole saved document.
pub const KIND_SNAPSHOT: &str = "doc_snapshot";

/// Bytes of a document id.
pub const DOC_ID_LEN: usize = 16;

/// A document's id, random, in every entry's plaintext envelope.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocId(pub [u8; DOC_ID_LEN]);

impl DocId {
    pub fn random() -> Self {
        Self(rand::random())
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// Parses the hex form.
    pub fn parse(text: &str) -> Option<Self> {
        Self::from_slice(&hex::decode(text).ok()?)
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocId({self})")
    }
}

/// Why entries could not be read into a document.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("entry {entry} belongs to document {found}, not {expected}")]
    OtherDocument {
        entry: EntryId,
        expected: DocId,
        found: String,
    },
    #[error("entry {entry} is a {kind:?} entry, not a document change or snapshot")]
    NotADocumentEntry { entry: EntryId, kind: String },
    #[error("entry {entry} does not hold an Automerge {what}: {why}")]
    Undecodable {
        entry: EntryId,
        what: &'static str,
        why: String,
    },
    #[error("the document refused entry {entry}: {why}")]
    Refused { entry: EntryId, why: String },
}

/// What reading a batch of entries did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Changes newly applied or queued for their dependencies.
    pub changes: usize,
    /// Snapshots merged.
    pub snapshots: usize,
    /// Changes the document already held.
    pub known: usize,
}

/// An Automerge document of one namespace, with the entry ids of the
/// changes it holds.
pub struct Document {
    id: DocId,
    namespace: Namespace,
    doc: AutoCommit,
    /// Entry ids by Automerge change hash: a new change lists those of its
    /// dependencies.
    entries: HashMap<ChangeHash, EntryId>,
    /// Changes made or read since the last snapshot made or read.
    since_snapshot: usize,
}

impl fmt::Debug for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Document")
            .field("id", &self.id)
            .field("namespace", &self.namespace)
            .field("changes", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl Document {
    /// A new, empty document edited as `actor` (one actor per device).
    pub fn create(namespace: Namespace, actor: ActorId) -> Self {
        Self::open(namespace, DocId::random(), actor)
    }

    /// An existing document, empty until entries are read into it.
    pub fn open(namespace: Namespace, id: DocId, actor: ActorId) -> Self {
        Self {
            id,
            namespace,
            doc: AutoCommit::new().with_actor(actor),
            entries: HashMap::new(),
            since_snapshot: 0,
        }
    }

    pub fn id(&self) -> DocId {
        self.id
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The Automerge document, to read.
    pub fn doc(&self) -> &AutoCommit {
        &self.doc
    }

    /// The Automerge document, to edit; [`Self::commit`] turns the edits
    /// into an entry.
    pub fn doc_mut(&mut self) -> &mut AutoCommit {
        &mut self.doc
    }

    /// Changes made or read after the last snapshot made or read: when a
    /// new snapshot is due.
    pub fn since_snapshot(&self) -> usize {
        self.since_snapshot
    }

    /// The document as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(AutoSerde::from(&self.doc)).expect("a document serialises to JSON")
    }

    fn envelope(&self, kind: &str, deps: Vec<EntryId>, now_ms: u64) -> Envelope {
        Envelope {
            namespace: self.namespace.clone(),
            author: [0; 32],
            created_ms: now_ms,
            kind: kind.into(),
            doc_id: self.id.0.to_vec(),
            deps,
        }
    }

    /// Commits the edits made since the last commit as one sealed, signed
    /// `doc_change` entry; `None` when there were none.
    pub fn commit(&mut self, keys: &KeyRing, now_ms: u64) -> Option<Entry> {
        self.doc.commit()?;
        self.seal_last(keys, now_ms)
    }

    /// A new document's first entry: its edits so far, or an empty change
    /// when there are none, so that even an empty document exists.
    pub fn begin(&mut self, keys: &KeyRing, now_ms: u64) -> Entry {
        if self.doc.commit().is_none() {
            self.doc
                .empty_change(automerge::transaction::CommitOptions::default());
        }
        self.seal_last(keys, now_ms)
            .expect("a change was just committed here")
    }

    fn seal_last(&mut self, keys: &KeyRing, now_ms: u64) -> Option<Entry> {
        let change = self.doc.get_last_local_change()?;
        let deps = change
            .deps()
            .iter()
            .filter_map(|h| self.entries.get(h).copied())
            .collect();
        let entry = seal::seal(
            keys,
            self.envelope(KIND_CHANGE, deps, now_ms),
            change.raw_bytes(),
        );
        self.entries.insert(change.hash(), entry.id);
        self.since_snapshot += 1;
        Some(entry)
    }

    /// The whole document as one sealed `doc_snapshot` entry covering its
    /// current heads.
    pub fn snapshot(&mut self, keys: &KeyRing, now_ms: u64) -> Entry {
        let heads = self.doc.get_heads();
        let deps = heads
            .iter()
            .filter_map(|h| self.entries.get(h).copied())
            .collect();
        let saved = self.doc.save();
        self.since_snapshot = 0;
        seal::seal(keys, self.envelope(KIND_SNAPSHOT, deps, now_ms), &saved)
    }

    /// Reads entries of this document, in any order: snapshots are merged,
    /// then every change is applied in one batch (those whose dependencies
    /// are missing wait for them).
    pub fn apply(&mut self, keys: &KeyRing, entries: &[Entry]) -> Result<Applied, DocError> {
        let mut applied = Applied::default();
        let mut changes = Vec::new();
        let mut opened = open_changes(keys, entries).into_iter();
        for entry in entries {
            if entry.envelope.doc_id != self.id.0 {
                return Err(DocError::OtherDocument {
                    entry: entry.id,
                    expected: self.id,
                    found: hex::encode(&entry.envelope.doc_id),
                });
            }
            match entry.envelope.kind.as_str() {
                KIND_CHANGE => {
                    let change = opened.next().expect("one per change entry")?;
                    match self.entries.insert(change.hash(), entry.id) {
                        Some(_) => applied.known += 1,
                        None => {
                            applied.changes += 1;
                            changes.push(change);
                        }
                    }
                }
                KIND_SNAPSHOT => {
                    let plaintext = seal::open(keys, entry)?;
                    // The bytes are authenticated (sealed with the database
                    // key and signed), so the heads they claim are not
                    // recomputed from every change, which is most of the
                    // time a load takes.
                    let options = LoadOptions::new().verification_mode(VerificationMode::DontCheck);
                    let mut saved =
                        AutoCommit::load_with_options(&plaintext, options).map_err(|e| {
                            DocError::Undecodable {
                                entry: entry.id,
                                what: "document",
                                why: e.to_string(),
                            }
                        })?;
                    // The snapshot's heads, in hash order, are its deps.
                    let heads = saved.get_heads();
                    if self.doc.get_heads().is_empty() && self.doc.get_missing_deps(&[]).is_empty()
                    {
                        // Nothing to merge into: take the loaded document
                        // whole (a merge would apply its every change).
                        saved.set_actor(self.doc.get_actor().clone());
                        self.doc = saved;
                    } else {
                        self.doc.merge(&mut saved).map_err(|e| DocError::Refused {
                            entry: entry.id,
                            why: e.to_string(),
                        })?;
                    }
                    if heads.len() == entry.envelope.deps.len() {
                        for (hash, id) in heads.into_iter().zip(&entry.envelope.deps) {
                            self.entries.entry(hash).or_insert(*id);
                        }
                    }
                    applied.snapshots += 1;
                    self.since_snapshot = 0;
                }
                other => {
                    return Err(DocError::NotADocumentEntry {
                        entry: entry.id,
                        kind: other.to_owned(),
                    });
                }
            }
        }
        self.since_snapshot += changes.len();
        if !changes.is_empty() {
            let first = entries[0].id;
            self.doc
                .apply_changes_batch(changes)
                .map_err(|e| DocError::Refused {
                    entry: first,
                    why: e.to_string(),
                })?;
        }
        Ok(applied)
    }

    /// Changes this document knows of but cannot apply yet: hashes of
    /// dependencies that have not arrived.
    pub fn missing(&mut self) -> Vec<ChangeHash> {
        self.doc.get_missing_deps(&[])
    }
}

/// Entries opened on one thread; more are split between two.
const OPEN_ON_ONE_THREAD: usize = 4096;

/// The changes of the `doc_change` entries among `entries`, in order,
/// decrypted and decoded. A large batch is opened on two threads: opening
/// is about a third of what reading a document without a snapshot takes.
fn open_changes(keys: &KeyRing, entries: &[Entry]) -> Vec<Result<Change, DocError>> {
    let open = |entries: &[Entry]| -> Vec<Result<Change, DocError>> {
        entries
            .iter()
            .filter(|e| e.envelope.kind == KIND_CHANGE)
            .map(|e| change_in(keys, e))
            .collect()
    };
    if entries.len() <= OPEN_ON_ONE_THREAD {
        return open(entries);
    }
    let (first, second) = entries.split_at(entries.len() / 2);
    std::thread::scope(|scope| {
        let other = std::thread::Builder::new()
            .name("open-changes".into())
            .spawn_scoped(scope, || open(second));
        let mut out = open(first);
        match other {
            Ok(other) => out.extend(
                other
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            ),
            // No thread to be had: this one opens the rest.
            Err(_) => out.extend(open(second)),
        }
        out
    })
}

/// The Automerge change a `doc_change` entry holds.
pub fn change_in(keys: &KeyRing, entry: &Entry) -> Result<Change, DocError> {
    let plaintext = seal::open(keys, entry)?;
    Change::from_bytes(plaintext).map_err(|e| DocError::Undecodable {
        entry: entry.id,
        what: "change",
        why: e.to_string(),
    })
}

/// What choosing the entries a reader needs looks at: an entry's plaintext
/// envelope, whole ([`Entry`]) or as a device's store indexes it
/// ([`DocRecord`]).
pub trait Listed {
    fn id(&self) -> EntryId;
    fn kind(&self) -> &str;
    fn created_ms(&self) -> u64;
    fn deps(&self) -> &[EntryId];
}

impl Listed for Entry {
    fn id(&self) -> EntryId {
        self.id
    }
    fn kind(&self) -> &str {
        &self.envelope.kind
    }
    fn created_ms(&self) -> u64 {
        self.envelope.created_ms
    }
    fn deps(&self) -> &[EntryId] {
        &self.envelope.deps
    }
}

impl Listed for DocRecord {
    fn id(&self) -> EntryId {
        self.id
    }
    fn kind(&self) -> &str {
        &self.kind
    }
    fn created_ms(&self) -> u64 {
        self.created_ms
    }
    fn deps(&self) -> &[EntryId] {
        &self.deps
    }
}

/// Of one document's entries, in any order, those a reader needs: the
/// newest snapshot first, then what it does not cover (see [`newest`] and
/// [`not_covered`]). Reads only the plaintext envelopes, so covered changes
/// are never decrypted.
pub fn needed<T: Listed>(entries: Vec<T>) -> Vec<T> {
    match newest(&entries) {
        None => entries,
        Some(at) => {
            let (snapshot, rest) = not_covered(entries, at);
            std::iter::once(snapshot).chain(rest).collect()
        }
    }
}

/// Where the newest snapshot is among one document's entries: the latest
/// made, and of those made in the same millisecond the last in `entries`
/// (which a device reads in the order it stored them).
pub fn newest<T: Listed>(entries: &[T]) -> Option<usize> {
    entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind() == KIND_SNAPSHOT)
        // On a tie, `max_by_key` keeps the last.
        .max_by_key(|(_, e)| e.created_ms())
        .map(|(i, _)| i)
}

/// The snapshot at `snapshot` in `entries`, and the entries it does not
/// cover, in their order: changes that are not among its heads' ancestors
/// (found from the dependencies in the envelopes), and snapshots of other
/// heads.
pub fn not_covered<T: Listed>(mut entries: Vec<T>, snapshot: usize) -> (T, Vec<T>) {
    let snapshot = entries.remove(snapshot);
    type Fast = foldhash::fast::RandomState;
    let deps: HashMap<EntryId, &[EntryId], Fast> = entries
        .iter()
        .filter(|e| e.kind() == KIND_CHANGE)
        .map(|e| (e.id(), e.deps()))
        .collect();
    let mut covered: HashSet<EntryId, Fast> = HashSet::default();
    let mut stack = snapshot.deps().to_vec();
    while let Some(id) = stack.pop() {
        if covered.insert(id)
            && let Some(parents) = deps.get(&id)
        {
            stack.extend_from_slice(parents);
        }
    }
    drop(deps);
    entries.retain(|e| match e.kind() {
        KIND_CHANGE => !covered.contains(&e.id()),
        KIND_SNAPSHOT => !e.deps().iter().all(|d| covered.contains(d)),
        _ => true,
    });
    (snapshot, entries)
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{ObjType, ROOT, ReadDoc};

    use super::*;

    fn ns() -> Namespace {
        Namespace::new("acme", "notes").unwrap()
    }

    fn device(byte: u8) -> ActorId {
        ActorId::from(vec![byte; 16])
    }

    /// A document made on one device, its entries, and the list in it.
    fn started(keys: &KeyRing) -> (Document, Vec<Entry>) {
        let mut doc = Document::create(ns(), device(1));
        doc.doc_mut().put(ROOT, "title", "groceries").unwrap();
        doc.doc_mut()
            .put_object(ROOT, "items", ObjType::List)
            .unwrap();
        let first = doc.commit(keys, 1).unwrap();
        (doc, vec![first])
    }

    fn list(doc: &Document) -> automerge::ObjId {
        let (_, items) = doc.doc().get(ROOT, "items").unwrap().unwrap();
        items
    }

    #[test]
    fn concurrent_edits_on_two_devices_converge_in_any_order() {
        let keys = KeyRing::generate(1);
        let (mut a, mut log) = started(&keys);
        let mut b = Document::open(ns(), a.id(), device(2));
        b.apply(&keys, &log).unwrap();
        assert_eq!(b.to_json(), a.to_json());

        // Offline on both: A sets x, B sets y, both set z, both insert
        // into the same list.
        let (la, lb) = (list(&a), list(&b));
        a.doc_mut().put(ROOT, "x", 1).unwrap();
        a.doc_mut().put(ROOT, "z", "from a").unwrap();
        a.doc_mut().insert(&la, 0, "milk").unwrap();
        let from_a = a.commit(&keys, 2).unwrap();
        b.doc_mut().put(ROOT, "y", 2).unwrap();
        b.doc_mut().put(ROOT, "z", "from b").unwrap();
        b.doc_mut().insert(&lb, 0, "eggs").unwrap();
        let from_b = b.commit(&keys, 2).unwrap();
        assert_eq!(
            from_a.envelope.deps,
            [log[0].id],
            "deps name the entry built on"
        );
        log.extend([from_a.clone(), from_b.clone()]);

        a.apply(&keys, std::slice::from_ref(&from_b)).unwrap();
        b.apply(&keys, std::slice::from_ref(&from_a)).unwrap();
        // A third device reads the whole log backwards.
        let mut c = Document::open(ns(), a.id(), device(3));
        let reversed: Vec<Entry> = log.iter().rev().cloned().collect();
        c.apply(&keys, &reversed).unwrap();

        let json = a.to_json();
        assert_eq!(b.to_json(), json);
        assert_eq!(c.to_json(), json);
        assert_eq!(json["x"], 1);
        assert_eq!(json["y"], 2);
        assert!(json["z"] == "from a" || json["z"] == "from b", "{json}");
        let items = json["items"].as_array().unwrap();
        assert_eq!(items.len(), 2, "{json}");
    }

    #[test]
    fn a_change_waits_for_its_dependencies() {
        let keys = KeyRing::generate(1);
        let (mut a, mut log) = started(&keys);
        a.doc_mut().put(ROOT, "title", "errands").unwrap();
        log.push(a.commit(&keys, 2).unwrap());
        let mut b = Document::open(ns(), a.id(), device(2));
        let applied = b.apply(&keys, &log[1..]).unwrap();
        assert_eq!(applied.changes, 1);
        assert_eq!(b.to_json(), serde_json::json!({}), "waiting, not applied");
        assert_eq!(b.missing().len(), 1);
        b.apply(&keys, &log[..1]).unwrap();
        assert_eq!(b.to_json(), a.to_json());
        assert!(b.missing().is_empty());
        // Read again: nothing new.
        let again = b.apply(&keys, &log).unwrap();
        assert_eq!(again.known, 2);
    }

    #[test]
    fn a_snapshot_plus_later_changes_loads_the_same_document() {
        let keys = KeyRing::generate(1);
        let (mut a, mut log) = started(&keys);
        let items = list(&a);
        for i in 0..50 {
            a.doc_mut().insert(&items, i, i as i64).unwrap();
            log.push(a.commit(&keys, 2 + i as u64).unwrap());
        }
        let snapshot = a.snapshot(&keys, 100);
        assert_eq!(snapshot.envelope.kind, KIND_SNAPSHOT);
        assert_eq!(snapshot.envelope.deps, [log.last().unwrap().id]);
        a.doc_mut().put(ROOT, "done", true).unwrap();
        let later = a.commit(&keys, 101).unwrap();

        let mut fresh = Document::open(ns(), a.id(), device(2));
        fresh.apply(&keys, &[snapshot, later.clone()]).unwrap();
        assert_eq!(fresh.to_json(), a.to_json());
        assert_eq!(fresh.doc().get_actor(), &device(2), "it edits as itself");
        // Its next change builds on the entry it read after the snapshot.
        fresh.doc_mut().put(ROOT, "done", false).unwrap();
        let next = fresh.commit(&keys, 102).unwrap();
        assert_eq!(next.envelope.deps, [later.id]);

        let mut full = Document::open(ns(), a.id(), device(3));
        log.push(later);
        full.apply(&keys, &log).unwrap();
        assert_eq!(full.to_json(), a.to_json());
    }

    #[test]
    fn a_reader_needs_the_newest_snapshot_and_what_it_does_not_cover() {
        let keys = KeyRing::generate(1);
        let (mut a, mut log) = started(&keys);
        let items = list(&a);
        let mut b = Document::open(ns(), a.id(), device(2));
        b.apply(&keys, &log).unwrap();
        for i in 0..10 {
            a.doc_mut().insert(&items, i, i as i64).unwrap();
            log.push(a.commit(&keys, 2 + i as u64).unwrap());
        }
        let old = a.snapshot(&keys, 20);
        assert_eq!(a.since_snapshot(), 0);
        a.doc_mut().put(ROOT, "more", 1).unwrap();
        let after_old = a.commit(&keys, 21).unwrap();
        let newest = a.snapshot(&keys, 30);
        // B's concurrent change, built on the first entries only.
        b.doc_mut().put(ROOT, "b", true).unwrap();
        let concurrent = b.commit(&keys, 31).unwrap();
        a.doc_mut().put(ROOT, "done", true).unwrap();
        let later = a.commit(&keys, 32).unwrap();
        assert_eq!(a.since_snapshot(), 1);

        let mut all = log.clone();
        all.extend([
            old,
            after_old,
            newest.clone(),
            concurrent.clone(),
            later.clone(),
        ]);
        all.reverse();
        let ids: Vec<EntryId> = needed(all.clone()).iter().map(|e| e.id).collect();
        assert_eq!(ids[0], newest.id, "the newest snapshot comes first");
        let mut rest = ids[1..].to_vec();
        rest.sort_by_key(|id| id.0);
        let mut expected = vec![concurrent.id, later.id];
        expected.sort_by_key(|id| id.0);
        assert_eq!(
            rest, expected,
            "covered changes and the older snapshot are left out"
        );

        let mut fresh = Document::open(ns(), a.id(), device(3));
        fresh.apply(&keys, &needed(all)).unwrap();
        a.apply(&keys, &[concurrent]).unwrap();
        assert_eq!(fresh.to_json(), a.to_json());
        assert_eq!(fresh.since_snapshot(), 2);
    }

    #[test]
    fn a_wrong_key_a_tampered_entry_or_another_document_is_named() {
        let keys = KeyRing::generate(1);
        let (a, log) = started(&keys);
        let stranger = KeyRing::generate(1);
        let mut b = Document::open(ns(), a.id(), device(2));
        let err = b.apply(&stranger, &log).unwrap_err();
        assert!(err.to_string().contains("does not hold"), "{err}");
        let mut ct = log[0].ciphertext().to_vec();
        ct[60] ^= 1;
        let tampered = Entry::create(log[0].envelope.clone(), &ct, None);
        let err = b.apply(&keys, &[tampered]).unwrap_err();
        assert!(
            matches!(err, DocError::Open(OpenError::Tampered(_))),
            "{err}"
        );
        let mut other = Document::open(ns(), DocId::random(), device(2));
        let err = other.apply(&keys, &log).unwrap_err();
        assert!(matches!(err, DocError::OtherDocument { .. }), "{err}");
    }
}
