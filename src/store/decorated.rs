//! A store wrapped with hooks, for tests that inject faults: a different
//! incarnation, appends that fail or stall, data corrupted on the way out.
//! Everything else passes through to the inner store.

use std::sync::Arc;

use bytes::Bytes;

use super::{
    Appended, CursorRecord, CursorUpdate, DocRange, DocRecord, Incarnation, LogRecord, Seq, Store,
    StoreError, StoreStats,
};
use crate::entry::{EntryId, Namespace, VerifiedEntry};

/// What a [`Decorated`] store does besides passing calls through.
pub trait Hooks: Send + Sync + 'static {
    /// Reported instead of the inner store's incarnation.
    fn incarnation(&self, inner: Incarnation) -> Incarnation {
        inner
    }

    /// Runs before every append; an error fails the append.
    fn before_append(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The append itself, given the inner store (a test can commit it
    /// otherwise than in one batch).
    fn append(
        &self,
        inner: &dyn Store,
        entries: &[VerifiedEntry],
        cursor: Option<&CursorUpdate>,
    ) -> Result<Vec<Appended>, StoreError> {
        inner.append(entries, cursor)
    }

    /// Entry data on its way out (`get`, `get_logged`, `log_since`).
    fn data_out(&self, data: Bytes) -> Bytes {
        data
    }
}

pub struct Decorated<H> {
    pub inner: Arc<dyn Store>,
    pub hooks: H,
}

impl<H: Hooks> Store for Decorated<H> {
    fn incarnation(&self) -> Incarnation {
        self.hooks.incarnation(self.inner.incarnation())
    }
    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
    fn usage(&self, tenant: &str) -> crate::store::Usage {
        self.inner.usage(tenant)
    }
    fn disk_bytes(&self) -> u64 {
        self.inner.disk_bytes()
    }
    fn memory_bytes(&self) -> Vec<(&'static str, u64)> {
        self.inner.memory_bytes()
    }
    fn append(
        &self,
        entries: &[VerifiedEntry],
        cursor: Option<&CursorUpdate>,
    ) -> Result<Vec<Appended>, StoreError> {
        self.hooks.before_append()?;
        self.hooks.append(&*self.inner, entries, cursor)
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync()
    }
    fn syncs(&self) -> u64 {
        self.inner.syncs()
    }
    fn checkpoint(&self, dir: &std::path::Path) -> Result<(), StoreError> {
        self.inner.checkpoint(dir)
    }
    fn quarantine(&self, found: &[crate::store::scrub::Finding]) -> Result<usize, StoreError> {
        self.inner.quarantine(found)
    }
    fn scrub_mark(&self) -> Result<crate::store::scrub::ScrubMark, StoreError> {
        self.inner.scrub_mark()
    }
    fn set_scrub_mark(&self, mark: crate::store::scrub::ScrubMark) -> Result<(), StoreError> {
        self.inner.set_scrub_mark(mark)
    }
    fn ranges(&self) -> Option<&crate::store::ranges::RangeIndex> {
        self.inner.ranges()
    }
    fn range_ids(
        &self,
        range: &crate::store::ranges::KeyRange,
        limit: usize,
    ) -> Result<Vec<(Namespace, EntryId)>, StoreError> {
        self.inner.range_ids(range, limit)
    }
    fn contains(&self, ns: &Namespace, ids: &[EntryId]) -> Result<Vec<bool>, StoreError> {
        self.inner.contains(ns, ids)
    }
    fn get(&self, ns: &Namespace, ids: &[EntryId]) -> Result<Vec<Option<Bytes>>, StoreError> {
        Ok(self
            .inner
            .get(ns, ids)?
            .into_iter()
            .map(|d| d.map(|d| self.hooks.data_out(d)))
            .collect())
    }
    fn read_back(&self, seqs: &[Seq]) -> Result<Vec<Option<Bytes>>, StoreError> {
        let read = self.inner.read_back(seqs)?;
        Ok(read
            .into_iter()
            .map(|d| d.map(|d| self.hooks.data_out(d)))
            .collect())
    }
    fn get_logged(&self, seqs: &[Seq]) -> Result<Vec<Option<Bytes>>, StoreError> {
        Ok(self
            .inner
            .get_logged(seqs)?
            .into_iter()
            .map(|d| d.map(|d| self.hooks.data_out(d)))
            .collect())
    }
    fn doc_records(
        &self,
        ns: &Namespace,
        range: DocRange<'_>,
        limit: usize,
    ) -> Result<Vec<DocRecord>, StoreError> {
        self.inner.doc_records(ns, range, limit)
    }
    fn log_since(
        &self,
        after: Seq,
        limit: usize,
        data_budget: Option<usize>,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let mut records = self.inner.log_since(after, limit, data_budget)?;
        for r in &mut records {
            r.data = r.data.take().map(|d| self.hooks.data_out(d));
        }
        Ok(records)
    }
    fn log_since_in(
        &self,
        namespaces: &[Namespace],
        after: Seq,
        limit: usize,
        data_budget: Option<usize>,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let mut records = self
            .inner
            .log_since_in(namespaces, after, limit, data_budget)?;
        for r in &mut records {
            r.data = r.data.take().map(|d| self.hooks.data_out(d));
        }
        Ok(records)
    }
    fn log_records_read(&self) -> u64 {
        self.inner.log_records_read()
    }
    fn log_at(&self, seq: Seq) -> Result<Option<EntryId>, StoreError> {
        self.inner.log_at(seq)
    }
    fn list_ids(
        &self,
        ns: &Namespace,
        after: Option<&EntryId>,
        limit: usize,
    ) -> Result<Vec<EntryId>, StoreError> {
        self.inner.list_ids(ns, after, limit)
    }
    fn cursor(&self, peer: &str) -> Result<Option<CursorRecord>, StoreError> {
        self.inner.cursor(peer)
    }
    fn cursors(&self) -> Result<Vec<(String, CursorRecord)>, StoreError> {
        self.inner.cursors()
    }
    fn delete_cursor(&self, peer: &str) -> Result<(), StoreError> {
        self.inner.delete_cursor(peer)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn probe_write(&self) -> Result<(), StoreError> {
        self.hooks.before_append()?;
        self.inner.probe_write()
    }
}
