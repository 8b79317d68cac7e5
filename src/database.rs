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
use crate::error::Error;
use crate::home::{DEFAULT_WAIT, Home, HomeError};
use crate::keys::{KeyError, KeyRing};
use crate::policy::Policy;
use crate::store::Seq;
use crate::sync::device::DeviceStore;
use crate::sync::env::{Clock, SystemClock};
use crate::sync::local::Local;
use tokio_util::task::AbortOnDropHandle;

/// Changes between a document's snapshots, unless set otherwise: a new
/// device reads one snapshot and fewer than this many changes after it
/// (1,000 changes apply in about 10 ms), while a writer saves the whole
/// document once per this many changes.
pub const DEFAULT_SNAPSHOT_EVERY: usize = 1000;

/// Log records read at once when looking for a document's entries.
const READ_RECORDS: usize = 4096;
/// Entry data read at once, at most.
const READ_BYTES: usize = 8 << 20;

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

    /// Every entry of this namespace in the device store, in log order,
    /// handed to `f` a read batch at a time.
    async fn each_batch(
        &self,
        mut f: impl FnMut(Vec<Entry>) -> Result<(), DatabaseError>,
    ) -> Result<(), DatabaseError> {
        // The next batch is read from the store while this one is parsed.
        let read_after = |after: Seq| {
            let (store, only) = (self.store.clone(), vec![self.namespace.clone()]);
            AbortOnDropHandle::new(tokio::spawn(async move {
                store
                    .log_since(after, READ_RECORDS, Some(only), Some(READ_BYTES))
                    .await
            }))
        };
        let mut after = 0;
        let mut pending = Some(read_after(after));
        while let Some(reading) = pending.take() {
            let read = reading.await.map_err(|e| {
                Error::Internal(format!("a read of the device store failed: {e}"))
            })??;
            if let Some((seq, _)) = read.through
                && seq > after
            {
                after = seq;
                pending = Some(read_after(after));
            }
            let mut batch = Vec::with_capacity(read.records.len());
            for r in read.records {
                let Some(data) = r.data else { continue };
                // Entries in a device store were checked when stored.
                if let Ok(entry) = Entry::parse(data) {
                    batch.push(entry);
                }
            }
            f(batch)?;
        }
        Ok(())
    }

    /// The document `id` as the entries on this device make it.
    ///
    /// It reads the newest snapshot and what that does not cover (see
    /// [`docs::needed`]), so changes a snapshot holds are not decrypted.
    pub async fn load(&self, id: DocId) -> Result<Document, DatabaseError> {
        let mine = self.entries_of(id).await?;
        let mut doc = Document::open(self.namespace.clone(), id, self.actor.clone());
        doc.apply(&self.keys, &docs::needed(mine))?;
        Ok(doc)
    }

    /// The entries of document `id` on this device, in log order.
    async fn entries_of(&self, id: DocId) -> Result<Vec<Entry>, DatabaseError> {
        let mut mine = Vec::new();
        self.each_batch(|batch| {
            mine.extend(batch.into_iter().filter(|e| e.envelope.doc_id == id.0));
            Ok(())
        })
        .await?;
        match mine.is_empty() {
            true => Err(DatabaseError::NoSuchDocument(id)),
            false => Ok(mine),
        }
    }

    /// Document `id`'s history on this device, in the order it arrived:
    /// every change (decrypted, to name its Automerge actor and count its
    /// operations) and every snapshot.
    pub async fn history(&self, id: DocId) -> Result<Vec<HistoryItem>, DatabaseError> {
        let mut out = Vec::new();
        for entry in self.entries_of(id).await? {
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

    /// The documents on this device, from the plaintext envelopes alone.
    pub async fn list(&self) -> Result<Vec<DocSummary>, DatabaseError> {
        let mut docs: std::collections::BTreeMap<DocId, DocSummary> = Default::default();
        self.each_batch(|batch| {
            for e in batch {
                let Some(id) = DocId::from_slice(&e.envelope.doc_id) else {
                    continue;
                };
                let s = docs.entry(id).or_insert(DocSummary {
                    id,
                    changes: 0,
                    snapshots: 0,
                    last_ms: 0,
                });
                match e.envelope.kind.as_str() {
                    KIND_CHANGE => s.changes += 1,
                    KIND_SNAPSHOT => s.snapshots += 1,
                    _ => continue,
                }
                s.last_ms = s.last_ms.max(e.envelope.created_ms);
            }
            Ok(())
        })
        .await?;
        Ok(docs.into_values().collect())
    }
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
