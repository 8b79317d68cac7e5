//! The replica core as the sync engine's local side: what a pull commits
//! into and a push reads from.

use std::collections::HashSet;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use super::{Origin, Replica, WithData};
use crate::entry::{EntryId, Namespace, Rejection, VerifiedEntry};
use crate::error::Result;
use crate::store::{Appended, CursorRecord, CursorUpdate, Seq, StoreStats};
use crate::sync::local::{Checked, Fatal, Local, LocalIdentity, LogRead, passed};
use crate::sync::reconcile::{self, Part, Session};

#[async_trait]
impl Local for Replica {
    fn identity(&self) -> LocalIdentity {
        LocalIdentity {
            instance: self.identity().instance,
            incarnation: self.incarnation(),
            node: Some(self.identity().node.clone()),
        }
    }

    fn stats(&self) -> StoreStats {
        Replica::stats(self)
    }

    fn policy_digest(&self) -> u64 {
        Replica::policy_digest(self)
    }

    fn max_ids_per_request(&self) -> usize {
        self.limits().max_ids_per_request
    }

    fn subscribe(&self) -> watch::Receiver<Seq> {
        Replica::subscribe(self)
    }

    async fn cursor(&self, key: &str) -> Result<Option<CursorRecord>> {
        self.peer_cursor(key).await
    }

    async fn missing(&self, ns: Namespace, ids: Vec<EntryId>) -> Result<Vec<EntryId>> {
        Replica::missing(self, ns, ids).await
    }

    async fn verify(&self, items: Vec<(Bytes, Bytes)>) -> Result<Checked> {
        Replica::verify(self, Origin::Peer, items).await
    }

    async fn ingest(
        &self,
        entries: Vec<VerifiedEntry>,
        cursor: Option<CursorUpdate>,
    ) -> Result<Vec<Appended>> {
        Replica::ingest(self, Origin::Peer, entries, cursor).await
    }

    async fn verify_and_ingest(
        &self,
        items: Vec<(Bytes, Bytes)>,
        cursor: Option<CursorUpdate>,
        fatal: Fatal,
    ) -> Result<(Vec<(usize, Rejection)>, Option<Vec<Appended>>)> {
        Replica::verify_and_ingest(self, Origin::Peer, items, cursor, fatal).await
    }

    async fn log_since(
        &self,
        after: Seq,
        limit: usize,
        namespaces: Option<Vec<Namespace>>,
        data: Option<usize>,
    ) -> Result<LogRead> {
        let head = self.stats().head_seq;
        let with = match data {
            Some(budget) => WithData::All { budget },
            None => WithData::No,
        };
        let only: Option<HashSet<Namespace>> = namespaces.map(|n| n.into_iter().collect());
        let records = Replica::log_since(self, after, limit, with, only.as_ref()).await?;
        let through = passed(&records, limit, data.is_some(), after, head, |seq| {
            self.log_at(seq)
        })
        .await?;
        Ok(LogRead { records, through })
    }

    async fn log_at(&self, seq: Seq) -> Result<Option<EntryId>> {
        Replica::log_at(self, seq).await
    }

    async fn get(&self, ns: Namespace, ids: Vec<EntryId>) -> Result<Vec<Option<Bytes>>> {
        Replica::get(self, ns, ids).await
    }

    fn reconcile_key(&self) -> Option<u64> {
        self.store.ranges().map(|r| r.key().check())
    }

    async fn reconcile(
        &self,
        session: Session,
        incoming: Option<Vec<Part>>,
    ) -> Result<(Session, Vec<Part>)> {
        reconcile::step(self.store.clone(), session, incoming).await
    }
}
