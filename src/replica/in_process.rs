//! The in-process adapter of [`Peer`]: a replica core (over any store) in
//! this process, pulled from or pushed to without a network. The same
//! engine that syncs with a remote replica syncs two local stores with it,
//! and tests drive the engine deterministically through it.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::Replica;
use super::outgoing::SendScope;
use crate::entry::{EntryId, Namespace, PutOutcome};
use crate::error::Error;
use crate::log::{Head, WriteConcern};
use crate::store::PeerCursor;
use crate::store::ranges::Scope;
use crate::sync::local::Local;
use crate::sync::peer::{EntryStream, FollowRequest, LogStream, Peer, PeerError, ReconcileChannel};
use crate::sync::reconcile::{Part, Role, Session, SessionLimits};

pub struct LocalPeer {
    name: String,
    replica: Arc<Replica>,
}

impl LocalPeer {
    pub fn new(replica: Arc<Replica>) -> Self {
        Self {
            name: format!("local:{}", replica.identity().node),
            replica,
        }
    }
}

/// What an error of the core means to the engine.
fn peer_error(e: Error) -> PeerError {
    match e {
        Error::CursorIncarnation { .. }
        | Error::CursorBeyondHead { .. }
        | Error::CursorMismatch { .. } => PeerError::CursorRefused(e.to_string()),
        Error::ShuttingDown => PeerError::Unavailable(e.to_string()),
        Error::DataLoss(m) => PeerError::DataLoss(m),
        Error::NamespaceNotAllowed(_) => PeerError::NamespaceNotServed(e.to_string()),
        other => PeerError::Refused {
            code: "local".into(),
            message: other.to_string(),
        },
    }
}

#[async_trait]
impl Peer for LocalPeer {
    fn address(&self) -> &str {
        &self.name
    }

    async fn head(&self) -> Result<Head, PeerError> {
        self.replica.head().await.map_err(peer_error)
    }

    async fn follow(&self, request: FollowRequest) -> Result<LogStream, PeerError> {
        let send = SendScope::replica(self.replica.send_pool());
        let batches = self
            .replica
            .serve_log(request, None, send)
            .await
            .map_err(peer_error)?;
        Ok(batches.map(|b| b.map_err(peer_error)).boxed())
    }

    async fn missing(&self, ns: &Namespace, ids: Vec<EntryId>) -> Result<Vec<EntryId>, PeerError> {
        self.replica
            .missing(ns.clone(), ids)
            .await
            .map_err(peer_error)
    }

    async fn get(&self, ns: &Namespace, ids: Vec<EntryId>) -> Result<EntryStream, PeerError> {
        let send = SendScope::replica(self.replica.send_pool());
        let chunks = self
            .replica
            .serve_entries(ns.clone(), ids, send)
            .map_err(peer_error)?;
        Ok(chunks.map(|c| c.map_err(peer_error)).boxed())
    }

    /// A store in this process pairs with no replicas of its own: it
    /// holds what it is given alone, and refuses a concern of more.
    async fn put(
        &self,
        entries: Vec<(EntryId, Bytes)>,
        concern: WriteConcern,
    ) -> Result<Vec<PutOutcome>, PeerError> {
        if concern.replicas > 1 {
            let small = Error::MeshTooSmall {
                asked: concern.replicas,
                mesh: 1,
            };
            return Err(peer_error(small));
        }
        let items: Vec<(Bytes, Bytes)> = entries
            .into_iter()
            .map(|(id, data)| (Bytes::copy_from_slice(&id.0), data))
            .collect();
        self.replica.put(items).await.map_err(peer_error)
    }

    async fn confirm(
        &self,
        node: &str,
        at: PeerCursor,
        namespaces: &[Namespace],
    ) -> Result<(), PeerError> {
        self.replica
            .confirmations()
            .confirm(node, at.incarnation, at.seq, namespaces.to_vec());
        Ok(())
    }

    async fn reconcile(
        &self,
        namespaces: &[Namespace],
    ) -> Result<Box<dyn ReconcileChannel>, PeerError> {
        let scope = match namespaces.is_empty() {
            true => Scope::all(),
            false => Scope::only(namespaces),
        };
        Ok(Box::new(InProcessReconcile {
            replica: self.replica.clone(),
            session: Some(Session::new(
                Role::Responder,
                scope,
                SessionLimits::default(),
            )),
        }))
    }
}

/// The replica's side of a session, answered in this process.
struct InProcessReconcile {
    replica: Arc<Replica>,
    session: Option<Session>,
}

#[async_trait]
impl ReconcileChannel for InProcessReconcile {
    async fn round(&mut self, parts: Vec<Part>) -> Result<Vec<Part>, PeerError> {
        let session = self.session.take().ok_or(PeerError::Closed)?;
        let (session, answer) = Local::reconcile(&*self.replica, session, Some(parts))
            .await
            .map_err(peer_error)?;
        self.session = Some(session);
        Ok(answer)
    }
}
