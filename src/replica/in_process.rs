//! The in-process adapter of [`Peer`]: a replica core (over any store) in
//! this process, pulled from or pushed to without a network. The same
//! engine that syncs with a remote replica syncs two local stores with it,
//! and tests drive the engine deterministically through it.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::outgoing::SendScope;
use super::{FollowOptions, LogFollower, Replica};
use crate::entry::{EntryId, Namespace, PutOutcome};
use crate::error::Error;
use crate::log::Head;
use crate::sync::peer::{EntryChunk, EntryStream, FollowRequest, LogStream, Peer, PeerError};

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
        for ns in &request.namespaces {
            self.replica.check_namespace(ns).map_err(peer_error)?;
        }
        let after = self
            .replica
            .resume_point(request.from)
            .await
            .map_err(peer_error)?;
        let opts = FollowOptions {
            with_data: request.with_data,
            live_data: request.live_data,
            only: (!request.namespaces.is_empty())
                .then(|| request.namespaces.into_iter().collect()),
            heartbeat: request.heartbeat,
            relay_delay: request.relay_delay,
        };
        let send = SendScope::replica(self.replica.send_pool());
        let follower = LogFollower::new(self.replica.clone(), after, None, opts, send);
        Ok(follower
            .into_stream()
            .map(|b| b.map_err(peer_error))
            .boxed())
    }

    async fn missing(&self, ns: &Namespace, ids: Vec<EntryId>) -> Result<Vec<EntryId>, PeerError> {
        self.replica
            .missing(ns.clone(), ids)
            .await
            .map_err(peer_error)
    }

    async fn get(&self, ns: &Namespace, ids: Vec<EntryId>) -> Result<EntryStream, PeerError> {
        self.replica.check_namespace(ns).map_err(peer_error)?;
        let (replica, ns) = (self.replica.clone(), ns.clone());
        // One store read per chunk of ids, as the engine asks for them.
        let chunks: Vec<Vec<EntryId>> = ids.chunks(64).map(<[EntryId]>::to_vec).collect();
        Ok(futures::stream::iter(chunks)
            .then(move |chunk| {
                let (replica, ns) = (replica.clone(), ns.clone());
                async move {
                    let found = replica.get(ns, chunk.clone()).await.map_err(peer_error)?;
                    let mut out = EntryChunk::default();
                    for (id, data) in chunk.into_iter().zip(found) {
                        match data {
                            Some(data) => out.entries.push((id, data)),
                            None => out.missing.push(id),
                        }
                    }
                    Ok(out)
                }
            })
            .boxed())
    }

    async fn put(&self, entries: Vec<(EntryId, Bytes)>) -> Result<Vec<PutOutcome>, PeerError> {
        let items: Vec<(Bytes, Bytes)> = entries
            .into_iter()
            .map(|(id, data)| (Bytes::copy_from_slice(&id.0), data))
            .collect();
        self.replica.put(items).await.map_err(peer_error)
    }
}
