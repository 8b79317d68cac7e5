//! A database on this device: one namespace's documents, kept in the
//! device's own store (RocksDB under the client's home) as sealed entries,
//! readable and writable with no replica reachable. What the `doc`
//! commands and an app's code work with; syncing moves the same entries
//! through the sync engine.
//!
//! The store, the keys and the actor id are the client home's (see
//! [`crate::home`]).

use std::path::Path;
use std::sync::Arc;

use automerge::{ActorId, ROOT};
use bytes::Bytes;
use serde_json::Value;

use crate::docs::{self, DocError, DocId, Document, KIND_CHANGE, KIND_SNAPSHOT};
use crate::edit::{EditError, put_json};
use crate::entry::{Entry, EntryId, Namespace};
use crate::error::{Error, on_store};
use crate::home::{DEFAULT_WAIT, Home, HomeError};
use crate::keys::{KeyError, KeyRing};
use crate::policy::Policy;
use crate::store::{DocRange, DocRecord, Seq, Store, StoreError};
use crate::sync::device::DeviceStore;
use crate::sync::env::{Clock, SystemClock};

/// Changes between a document's snapshots, unless set otherwise: a new
/// device reads one snapshot and fewer than this many changes after it
/// (1,000 changes apply in about 10 ms), while a writer saves the whole
/// document once per this many changes.
pub const DEFAULT_SNAPSHOT_EVERY: usize = 1000;

/// Index records, or entries, read at once.
const READ_RECORDS: usize = 16_384;

#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Document(#[from] DocError),
    #[error("the device store: {0}")]
    Store(#[from] Error),
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error("no document {0} in this database on this device (pull it first?)")]
    NoSuchDocument(DocId),
    #[error("the device store refused an entry it wrote: {0}")]
    Refused(String),
    #[error(transparent)]
    Edit(#[from] EditError),
}

/// A document as listed from the plaintext envelopes, without decrypting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocSummary {
    pub id: DocId,
    /// Change entries held.
    pub changes: usize,
    /// Snapshot entries held.
    pub snapshots: usize,
    /// The newest entry's time (ms since the Unix epoch).
    pub last_ms: u64,
}

/// One entry of a document's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryItem {
    pub entry: EntryId,
    /// `doc_change` or `doc_snapshot`.
    pub kind: String,
    pub created_ms: u64,
    /// The signing author's public key.
    pub author: [u8; 32],
    /// Entries it builds on (a change) or covers (a snapshot).
    pub deps: usize,
    /// A change's Automerge actor (one per device).
    pub actor: Option<String>,
    /// A change's operations.
    pub ops: Option<usize>,
}

/// One namespace's documents on this device.
pub struct Database {
    namespace: Namespace,
    keys: KeyRing,
    actor: ActorId,
    store: Arc<DeviceStore>,
    /// Changes between a document's snapshots.
    snapshot_every: usize,
    /// The home this database's store is in, held while it lives.
    _home: Option<Arc<Home>>,
}

impl Database {
    /// Opens the database of `namespace` under `home`: its keys must be
    /// there (`keys init` or `keys import`); the store is made if missing.
    /// It holds the home (see [`crate::home`]) while it lives.
    pub fn open(home: &Path, namespace: Namespace) -> Result<Self, DatabaseError> {
        let home = Home::open(home, DEFAULT_WAIT)?;
        let store = Arc::new(DeviceStore::new(home.open_store()?, Policy::default()));
        Self::in_home(Arc::new(home), store, namespace)
    }

    /// The database of `namespace` in a home this process holds, over its
    /// store already open (shared by every database of the home).
    pub fn in_home(
        home: Arc<Home>,
        store: Arc<DeviceStore>,
        namespace: Namespace,
    ) -> Result<Self, DatabaseError> {
        let keys = KeyRing::load(&crate::keys::key_path(home.path(), &namespace))?;
        Ok(Self {
            keys,
            actor: home.actor().clone(),
            store,
            namespace,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            _home: Some(home),
        })
    }

    /// A database over a store already open (another namespace's, or one
    /// in memory), with `keys` and `actor`.
    pub fn with_store(
        namespace: Namespace,
        keys: KeyRing,
        actor: ActorId,
        store: Arc<DeviceStore>,
    ) -> Self {
        Self {
            namespace,
            keys,
            actor,
            store,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            _home: None,
        }
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// The device store, the sync engine's local side.
    pub fn store(&self) -> Arc<DeviceStore> {
        self.store.clone()
    }

    /// Stores entries written here.
    async fn write(&self, entries: &[Entry]) -> Result<(), DatabaseError> {
        let items = entries
            .iter()
            .map(|e| (Bytes::copy_from_slice(&e.id.0), e.data().clone()))
            .collect();
        let (_, rejected) = self.store.write(items).await?;
        match rejected.first() {
            Some((_, r)) => Err(DatabaseError::Refused(r.to_string())),
            None => Ok(()),
        }
    }

    /// A new document holding `initial` (a JSON object), stored as its
    /// first change.
    pub async fn create(&self, initial: &Value) -> Result<Document, DatabaseError> {
        let mut doc = Document::create(self.namespace.clone(), self.actor.clone());
        let Value::Object(fields) = initial else {
            return Err(EditError {
                path: String::new(),
                why: "a document starts as a JSON object".into(),
            }
            .into());
        };
        for (key, value) in fields {
            put_json(doc.doc_mut(), &ROOT, key.as_str().into(), value)?;
        }
        let first = doc.begin(&self.keys, SystemClock.unix_ms());
        self.write(std::slice::from_ref(&first)).await?;
        Ok(doc)
    }

    /// Commits a document's edits as one entry in the device store.
    ///
    /// Once [`Self::with_snapshot_every`] changes have been made or read
    /// since the document's last snapshot, a new snapshot is written with
    /// the change.
    pub async fn save(&self, doc: &mut Document) -> Result<Option<EntryId>, DatabaseError> {
        let now = SystemClock.unix_ms();
        let Some(entry) = doc.commit(&self.keys, now) else {
            return Ok(None);
        };
        let id = entry.id;
        let mut written = vec![entry];
        if self.snapshot_every > 0 && doc.since_snapshot() >= self.snapshot_every {
            written.push(doc.snapshot(&self.keys, now));
        }
        self.write(&written).await?;
        Ok(Some(id))
    }

    /// Writes a snapshot with the change that makes `every` changes since
    /// a document's last one (0: never; the default is
    /// [`DEFAULT_SNAPSHOT_EVERY`]).
    pub fn with_snapshot_every(mut self, every: usize) -> Self {
        self.snapshot_every = every;
        self
    }

    /// Writes a snapshot of `doc` covering its heads.
    pub async fn snapshot(&self, doc: &mut Document) -> Result<EntryId, DatabaseError> {
        let entry = doc.snapshot(&self.keys, SystemClock.unix_ms());
        self.write(std::slice::from_ref(&entry)).await?;
        Ok(entry.id)
    }

    /// Folds `f` over the index records of document `only`, or of every
    /// document of this namespace, in index order (by document, then in
    /// the order they were stored), in one trip to the blocking pool.
    async fn fold_records<T: Send + 'static>(
        &self,
        only: Option<DocId>,
        init: T,
        mut f: impl FnMut(&mut T, DocRecord) + Send + 'static,
    ) -> Result<T, DatabaseError> {
        let ns = self.namespace.clone();
        let read = on_store(self.store.store(), move |s| {
            let mut acc = init;
            let only = only.as_ref().map(|d| &d.0[..]);
            let mut after: Option<(Vec<u8>, Seq)> = None;
            loop {
                let range = DocRange {
                    only,
                    after: after.as_ref().map(|(doc, seq)| (&doc[..], *seq)),
                };
                let page = s.doc_records(&ns, range, READ_RECORDS)?;
                let full = page.len() == READ_RECORDS;
                after = page.last().map(|r| (r.doc.clone(), r.seq));
                page.into_iter().for_each(|r| f(&mut acc, r));
                if !full {
                    return Ok(acc);
                }
            }
        });
        Ok(read.await?)
    }

    /// The index records of document `id`, in the order they were stored.
    async fn records_of(&self, id: DocId) -> Result<Vec<DocRecord>, DatabaseError> {
        let records = self.fold_records(Some(id), Vec::new(), Vec::push).await?;
        match records.is_empty() {
            true => Err(DatabaseError::NoSuchDocument(id)),
            false => Ok(records),
        }
    }

    /// The document `id` as the entries on this device make it.
    ///
    /// It reads the newest snapshot and what that does not cover (see
    /// [`docs::needed`]), so changes a snapshot holds are neither read nor
    /// decrypted; the snapshot is read while the rest is worked out.
    pub async fn load(&self, id: DocId) -> Result<Document, DatabaseError> {
        let records = self.records_of(id).await?;
        let store = self.store.store().clone();
        let (ns, keys, actor) = (
            self.namespace.clone(),
            self.keys.clone(),
            self.actor.clone(),
        );
        tokio::task::spawn_blocking(move || {
            read_document(&*store, &keys, Document::open(ns, id, actor), records)
        })
        .await
        .map_err(|e| Error::Internal(format!("reading a document failed: {e}")))?
    }

    /// Document `id`'s history on this device, in the order it arrived:
    /// every change (decrypted, to name its Automerge actor and count its
    /// operations) and every snapshot.
    pub async fn history(&self, id: DocId) -> Result<Vec<HistoryItem>, DatabaseError> {
        let records = self.records_of(id).await?;
        let entries = on_store(self.store.store(), move |s| Ok(entries(s, &records))).await??;
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let change = match entry.envelope.kind.as_str() {
                KIND_CHANGE => Some(docs::change_in(&self.keys, &entry)?),
                _ => None,
            };
            out.push(HistoryItem {
                entry: entry.id,
                kind: entry.envelope.kind.clone(),
                created_ms: entry.envelope.created_ms,
                author: entry.envelope.author,
                deps: entry.envelope.deps.len(),
                actor: change.as_ref().map(|c| c.actor_id().to_hex_string()),
                ops: change.as_ref().map(|c| c.len()),
            });
        }
        Ok(out)
    }

    /// The documents on this device, from the index of their plaintext
    /// envelopes alone.
    pub async fn list(&self) -> Result<Vec<DocSummary>, DatabaseError> {
        let docs = self
            .fold_records(None, Vec::<DocSummary>::new(), |docs, r| {
                let Some(id) = DocId::from_slice(&r.doc) else {
                    return;
                };
                if docs.last().is_none_or(|s| s.id != id) {
                    docs.push(DocSummary {
                        id,
                        changes: 0,
                        snapshots: 0,
                        last_ms: 0,
                    });
                }
                let s = docs.last_mut().expect("pushed above");
                match r.kind.as_str() {
                    KIND_CHANGE => s.changes += 1,
                    KIND_SNAPSHOT => s.snapshots += 1,
                    _ => return,
                }
                s.last_ms = s.last_ms.max(r.created_ms);
            })
            .await?;
        let mut docs: Vec<DocSummary> = docs
            .into_iter()
            .filter(|s| s.changes + s.snapshots > 0)
            .collect();
        docs.sort_by_key(|s| s.id);
        Ok(docs)
    }
}

/// Blocking: reads `doc` from its index `records` (see [`Database::load`]).
/// The newest snapshot is read, decrypted and loaded on a thread of its own
/// while this one finds the entries it does not cover and reads those.
fn read_document(
    store: &dyn Store,
    keys: &KeyRing,
    mut doc: Document,
    records: Vec<DocRecord>,
) -> Result<Document, DatabaseError> {
    let Some(newest) = docs::newest(&records) else {
        doc.apply(keys, &entries(store, &records)?)?;
        return Ok(doc);
    };
    let snapshot = records[newest].clone();
    std::thread::scope(|scope| {
        let reading = std::thread::Builder::new()
            .name("snapshot-read".into())
            .spawn_scoped(scope, move || -> Result<Document, DatabaseError> {
                doc.apply(keys, &entries(store, &[snapshot])?)?;
                Ok(doc)
            })
            .map_err(|e| Error::Internal(format!("cannot start a thread: {e}")))?;
        let (_, rest) = docs::not_covered(records, newest);
        let rest = entries(store, &rest)?;
        let mut doc = reading
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        doc.apply(keys, &rest)?;
        Ok(doc)
    })
}

/// Blocking: the entries of `records`, read where they are logged, each
/// checked to be the one its record names.
fn entries(store: &dyn Store, records: &[DocRecord]) -> Result<Vec<Entry>, DatabaseError> {
    let mut out = Vec::with_capacity(records.len());
    for chunk in records.chunks(READ_RECORDS) {
        let seqs: Vec<Seq> = chunk.iter().map(|r| r.seq).collect();
        for (record, data) in chunk
            .iter()
            .zip(store.get_logged(&seqs).map_err(Error::from)?)
        {
            let entry = data.map(Entry::parse);
            match entry {
                Some(Ok(entry)) if entry.id == record.id => out.push(entry),
                _ => {
                    return Err(Error::from(StoreError::Corrupt {
                        what: "docs",
                        detail: format!(
                            "entry {} is indexed at seq {} but not held there",
                            record.id, record.seq
                        ),
                    })
                    .into());
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edit::set_path;
    use serde_json::json;

    fn database(home: &Path) -> Database {
        let ns = Namespace::new("acme", "notes").unwrap();
        KeyRing::generate(1)
            .create(&crate::keys::key_path(home, &ns))
            .unwrap();
        Database::open(home, ns).unwrap()
    }

    #[tokio::test]
    async fn documents_are_written_edited_listed_and_read_back_after_a_restart() {
        let home = tempfile::tempdir().unwrap();
        let db = database(home.path());
        let mut doc = db
            .create(&json!({"title": "groceries", "items": ["milk"], "meta": {"n": 1}}))
            .await
            .unwrap();
        set_path(&mut doc, "items.1", &json!("eggs")).unwrap();
        set_path(&mut doc, "meta.owner.name", &json!("ann")).unwrap();
        db.save(&mut doc).await.unwrap();
        assert_eq!(
            db.save(&mut doc).await.unwrap(),
            None,
            "nothing new to commit"
        );
        let other = db.create(&json!({})).await.unwrap();
        let expected = json!({
            "title": "groceries",
            "items": ["milk", "eggs"],
            "meta": {"n": 1, "owner": {"name": "ann"}}
        });
        assert_eq!(doc.to_json(), expected);
        let id = doc.id();
        drop(db);

        let db = Database::open(home.path(), Namespace::new("acme", "notes").unwrap()).unwrap();
        assert_eq!(db.load(id).await.unwrap().to_json(), expected);
        let listed = db.list().await.unwrap();
        let mut ids: Vec<DocId> = listed.iter().map(|s| s.id).collect();
        ids.sort();
        assert_eq!(db.load(other.id()).await.unwrap().to_json(), json!({}));
        let mut want = vec![id, other.id()];
        want.sort();
        assert_eq!(ids, want);
        assert_eq!(
            listed.iter().find(|s| s.id == id).unwrap().changes,
            2,
            "created, then one edit"
        );
        let missing = DocId::random();
        assert!(matches!(
            db.load(missing).await,
            Err(DatabaseError::NoSuchDocument(_))
        ));
        assert!(set_path(&mut doc, "items.9", &json!(1)).is_err());
    }

    #[tokio::test]
    async fn a_snapshot_is_written_every_n_changes_and_loads_the_same_document() {
        let home = tempfile::tempdir().unwrap();
        let db = database(home.path()).with_snapshot_every(5);
        let mut doc = db.create(&json!({"n": 0})).await.unwrap();
        for n in 1..=11 {
            set_path(&mut doc, "n", &json!(n)).unwrap();
            db.save(&mut doc).await.unwrap();
        }
        let listed = db.list().await.unwrap();
        assert_eq!((listed[0].changes, listed[0].snapshots), (12, 2));
        assert_eq!(doc.since_snapshot(), 2, "changes 11 and 12 follow");
        let loaded = db.load(doc.id()).await.unwrap();
        assert_eq!(loaded.to_json(), json!({"n": 11}));
        assert_eq!(loaded.since_snapshot(), 2, "read: the snapshot, then two");
    }

    #[tokio::test]
    async fn a_database_without_keys_says_how_to_make_them() {
        let home = tempfile::tempdir().unwrap();
        let err = Database::open(home.path(), Namespace::new("acme", "notes").unwrap())
            .err()
            .unwrap();
        assert!(err.to_string().contains("keys init"), "{err}");
    }
}
