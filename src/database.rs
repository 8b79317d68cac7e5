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

use automerge::transaction::Transactable;
use automerge::{ActorId, ObjId, ObjType, Prop, ROOT, ScalarValue};
use bytes::Bytes;
use serde_json::Value;

use crate::docs::{DocError, DocId, Document, KIND_CHANGE, KIND_SNAPSHOT};
use crate::entry::{Entry, EntryId, Namespace};
use crate::error::Error;
use crate::home::{DEFAULT_WAIT, Home, HomeError};
use crate::keys::{KeyError, KeyRing};
use crate::policy::Policy;
use crate::sync::device::DeviceStore;
use crate::sync::env::{Clock, SystemClock};
use crate::sync::local::Local;

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
    #[error("cannot edit {path:?}: {why}")]
    BadEdit { path: String, why: String },
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

/// One namespace's documents on this device.
pub struct Database {
    namespace: Namespace,
    keys: KeyRing,
    actor: ActorId,
    store: Arc<DeviceStore>,
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
            return Err(DatabaseError::BadEdit {
                path: String::new(),
                why: "a document starts as a JSON object".into(),
            });
        };
        for (key, value) in fields {
            put_json(doc.doc_mut(), &ROOT, key.as_str().into(), value)?;
        }
        let first = doc.begin(&self.keys, SystemClock.unix_ms());
        self.write(std::slice::from_ref(&first)).await?;
        Ok(doc)
    }

    /// Commits a document's edits as one entry in the device store.
    pub async fn save(&self, doc: &mut Document) -> Result<Option<EntryId>, DatabaseError> {
        let Some(entry) = doc.commit(&self.keys, SystemClock.unix_ms()) else {
            return Ok(None);
        };
        self.write(std::slice::from_ref(&entry)).await?;
        Ok(Some(entry.id))
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
        let mut after = 0;
        let only = Some(vec![self.namespace.clone()]);
        loop {
            let read = self
                .store
                .log_since(after, READ_RECORDS, only.clone(), Some(READ_BYTES))
                .await?;
            let mut batch = Vec::with_capacity(read.records.len());
            for r in read.records {
                let Some(data) = r.data else { continue };
                // Entries in a device store were checked when stored.
                if let Ok(entry) = Entry::parse(data) {
                    batch.push(entry);
                }
            }
            f(batch)?;
            match read.through {
                Some((seq, _)) if seq > after => after = seq,
                _ => return Ok(()),
            }
        }
    }

    /// The document `id` as the entries on this device make it.
    pub async fn load(&self, id: DocId) -> Result<Document, DatabaseError> {
        let mut doc = Document::open(self.namespace.clone(), id, self.actor.clone());
        let mut found = false;
        let keys = &self.keys;
        self.each_batch(|batch| {
            let mine: Vec<Entry> = batch
                .into_iter()
                .filter(|e| e.envelope.doc_id == id.0)
                .collect();
            if !mine.is_empty() {
                found = true;
                doc.apply(keys, &mine)?;
            }
            Ok(())
        })
        .await?;
        match found {
            true => Ok(doc),
            false => Err(DatabaseError::NoSuchDocument(id)),
        }
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

/// Sets `path` (`a.b.0.c`: map keys and list indexes) in `doc` to `value`,
/// making missing maps on the way.
pub fn set_path(doc: &mut Document, path: &str, value: &Value) -> Result<(), DatabaseError> {
    use automerge::ReadDoc;
    let bad = |why: &str| DatabaseError::BadEdit {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    let parts: Vec<&str> = path.split('.').collect();
    let (last, walk) = parts.split_last().ok_or_else(|| bad("empty path"))?;
    let d = doc.doc_mut();
    let mut obj = ROOT;
    for part in walk {
        let prop = prop_in(d, &obj, part).ok_or_else(|| bad("no such list index"))?;
        obj = match d.get(&obj, prop.clone()).map_err(|e| bad(&e.to_string()))? {
            Some((automerge::Value::Object(_), id)) => id,
            Some(_) => return Err(bad("a value on the way is not a map or list")),
            None => d
                .put_object(&obj, prop, ObjType::Map)
                .map_err(|e| bad(&e.to_string()))?,
        };
    }
    let prop = prop_in(d, &obj, last).ok_or_else(|| bad("no such list index"))?;
    put_json(d, &obj, prop, value).map_err(|e| match e {
        DatabaseError::BadEdit { why, .. } => bad(&why),
        other => other,
    })
}

/// The property `part` names in `obj`: a list index in a list, else a key.
fn prop_in(doc: &automerge::AutoCommit, obj: &ObjId, part: &str) -> Option<Prop> {
    use automerge::ReadDoc;
    match doc.object_type(obj) {
        Ok(ObjType::List | ObjType::Text) => part.parse::<usize>().ok().map(Prop::Seq),
        _ => Some(Prop::Map(part.to_owned())),
    }
}

fn scalar(value: &Value) -> Option<ScalarValue> {
    Some(match value {
        Value::Null => ScalarValue::Null,
        Value::Bool(b) => ScalarValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => ScalarValue::Int(i),
            None => ScalarValue::F64(n.as_f64()?),
        },
        Value::String(s) => ScalarValue::Str(s.as_str().into()),
        Value::Array(_) | Value::Object(_) => return None,
    })
}

/// Puts a JSON value at `prop` of `obj`: scalars as scalars, arrays as
/// lists, objects as maps. A list index one past the end appends.
fn put_json(
    doc: &mut automerge::AutoCommit,
    obj: &ObjId,
    prop: Prop,
    value: &Value,
) -> Result<(), DatabaseError> {
    let bad = |e: automerge::AutomergeError| DatabaseError::BadEdit {
        path: format!("{prop:?}"),
        why: e.to_string(),
    };
    let append = match &prop {
        Prop::Seq(i) => {
            use automerge::ReadDoc;
            *i == doc.length(obj)
        }
        Prop::Map(_) => false,
    };
    let kind = match value {
        Value::Array(_) => Some(ObjType::List),
        Value::Object(_) => Some(ObjType::Map),
        _ => None,
    };
    let child = match (kind, &prop, append) {
        (None, Prop::Seq(i), true) => {
            doc.insert(obj, *i, scalar(value).expect("a scalar"))
                .map_err(bad)?;
            return Ok(());
        }
        (None, _, _) => {
            doc.put(obj, prop.clone(), scalar(value).expect("a scalar"))
                .map_err(bad)?;
            return Ok(());
        }
        (Some(kind), Prop::Seq(i), true) => doc.insert_object(obj, *i, kind).map_err(bad)?,
        (Some(kind), _, _) => doc.put_object(obj, prop.clone(), kind).map_err(bad)?,
    };
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                put_json(doc, &child, Prop::Seq(i), item)?;
            }
        }
        Value::Object(fields) => {
            for (key, item) in fields {
                put_json(doc, &child, key.as_str().into(), item)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
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
    async fn a_database_without_keys_says_how_to_make_them() {
        let home = tempfile::tempdir().unwrap();
        let err = Database::open(home.path(), Namespace::new("acme", "notes").unwrap())
            .err()
            .unwrap();
        assert!(err.to_string().contains("keys init"), "{err}");
    }
}
