//! A device's store as the engine's local side: any [`Store`] (RocksDB on
//! disk, or memory) with the entry checks of a [`Policy`], and nothing of a
//! replica's serving machinery (no metrics registry, send pools or log
//! tail). What a client syncs through, and what tests sync two stores with.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use super::local::{Checked, Local, LocalIdentity, LogRead, passed};
use super::reconcile::{Part, Session};
use crate::entry::{EntryId, Namespace, VerifiedEntry};
use crate::error::{Error, Result, on_store};
use crate::policy::{Origin, Policy};
use crate::store::{Appended, CursorRecord, CursorUpdate, Seq, Store, StoreError, StoreStats};

/// The most ids a device asks a peer for, or answers, in one request.
pub const MAX_IDS_PER_REQUEST: usize = 10_000;

pub struct DeviceStore {
    store: Arc<dyn Store>,
    policy: Arc<Policy>,
    instance: [u8; 16],
    head: watch::Sender<Seq>,
}

impl DeviceStore {
    /// A device store over `store`, taking the entries `policy` allows.
    pub fn new(store: Arc<dyn Store>, policy: Policy) -> Self {
        let head = watch::channel(store.stats().head_seq).0;
        Self {
            store,
            policy: Arc::new(policy),
            instance: rand::random(),
            head,
        }
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Stores entries written on this device (checked like any other).
    ///
    /// An app saves one change at a time and waits for it, so the trip to
    /// the store is most of a save: a hop to the blocking pool and back
    /// costs about three times the write. On a multi-threaded runtime the
    /// write runs on the caller's thread instead, through
    /// [`tokio::task::block_in_place`], which hands the thread's other tasks
    /// to another worker first; elsewhere it takes the blocking pool.
    pub async fn write(&self, items: Vec<(Bytes, Bytes)>) -> Result<Checked> {
        let (policy, head) = (self.policy.clone(), self.head.clone());
        let write = move |s: &dyn Store| {
            let (verified, rejections) = policy.check_batch(items, Origin::Local);
            if !verified.is_empty() {
                append_and_wake(s, &head, &verified, None)?;
            }
            Ok((verified, rejections))
        };
        let multi_threaded = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        match multi_threaded {
            true => tokio::task::block_in_place(|| write(&*self.store)).map_err(Error::from),
            false => self.blocking(write).await,
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T> {
        on_store(&self.store, f).await
    }
}

/// Appends to the store, moves the head signal, then waits until the
/// append is durable. Woken from the thread
/// that committed, so a caller that goes away mid-commit cannot lose the
/// wakeup.
fn append_and_wake(
    s: &dyn Store,
    head: &watch::Sender<Seq>,
    entries: &[VerifiedEntry],
    cursor: Option<&CursorUpdate>,
) -> Result<Vec<Appended>, StoreError> {
    let out = s.append(entries, cursor)?;
    let last = s.stats().head_seq;
    head.send_if_modified(|h| std::mem::replace(h, last.max(*h)) < last);
    s.sync()?;
    Ok(out)
}

#[async_trait]
impl Local for DeviceStore {
    fn identity(&self) -> LocalIdentity {
        LocalIdentity {
            instance: self.instance,
            incarnation: self.store.incarnation(),
            node: None,
        }
    }

    fn stats(&self) -> StoreStats {
        self.store.stats()
    }

    fn policy_digest(&self) -> u64 {
        self.policy.digest()
    }

    fn max_ids_per_request(&self) -> usize {
        MAX_IDS_PER_REQUEST
    }

    fn subscribe(&self) -> watch::Receiver<Seq> {
        self.head.subscribe()
    }

    async fn cursor(&self, key: &str) -> Result<Option<CursorRecord>> {
        let key = key.to_owned();
        self.blocking(move |s| s.cursor(&key)).await
    }

    async fn missing(&self, ns: Namespace, ids: Vec<EntryId>) -> Result<Vec<EntryId>> {
        self.blocking(move |s| s.missing(&ns, ids)).await
    }

    async fn verify(&self, items: Vec<(Bytes, Bytes)>) -> Result<Checked> {
        let policy = self.policy.clone();
        crate::blocking::run(move || policy.check_batch(items, Origin::Peer)).await
    }

    async fn ingest(
        &self,
        entries: Vec<VerifiedEntry>,
        cursor: Option<CursorUpdate>,
    ) -> Result<Vec<Appended>> {
        if entries.is_empty() && cursor.is_none() {
            return Ok(Vec::new());
        }
        let head = self.head.clone();
        self.blocking(move |s| append_and_wake(s, &head, &entries, cursor.as_ref()))
            .await
    }

    async fn log_since(
        &self,
        after: Seq,
        limit: usize,
        namespaces: Option<Vec<Namespace>>,
        data: Option<usize>,
    ) -> Result<LogRead> {
        let head = self.stats().head_seq;
        let records = match namespaces {
            None => {
                self.blocking(move |s| s.log_since(after, limit, data))
                    .await?
            }
            Some(only) => {
                self.blocking(move |s| s.log_since_in(&only, after, limit, data))
                    .await?
            }
        };
        let through = passed(&records, limit, data.is_some(), after, head, |seq| {
            self.log_at(seq)
        })
        .await?;
        Ok(LogRead { records, through })
    }

    async fn log_at(&self, seq: Seq) -> Result<Option<EntryId>> {
        self.blocking(move |s| s.log_at(seq)).await
    }

    async fn get(&self, ns: Namespace, ids: Vec<EntryId>) -> Result<Vec<Option<Bytes>>> {
        self.blocking(move |s| s.get(&ns, &ids)).await
    }

    fn reconcile_key(&self) -> Option<u64> {
        self.store.ranges().map(|r| r.key().check())
    }

    async fn reconcile(
        &self,
        session: Session,
        incoming: Option<Vec<Part>>,
    ) -> Result<(Session, Vec<Part>)> {
        super::reconcile::step(self.store.clone(), session, incoming).await
    }
}
