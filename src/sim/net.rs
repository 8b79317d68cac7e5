//! The simulated network: every call a replica's pull worker makes to a
//! peer goes through [`SimPeer`], which delays it by a random time, and
//! fails it while the link is cut or the peer is down. A stream checks the
//! link before each item, so a cut or a crash ends it midway.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::entry::{EntryId, Namespace, PutOutcome};
use crate::log::{Head, WriteConcern};
use crate::replica::Replica;
use crate::replica::in_process::LocalPeer;
use crate::store::PeerCursor;
use crate::sync::peer::{EntryStream, FollowRequest, LogStream, Peer, PeerError, ReconcileChannel};
use crate::sync::reconcile::Part;

/// The network between the simulated replicas.
pub struct Net {
    rng: Mutex<StdRng>,
    /// Each node's replica while it is up.
    pub up: Mutex<Vec<Option<Arc<Replica>>>>,
    /// Links cut, as (lower, higher) node numbers.
    pub cut: Mutex<HashSet<(usize, usize)>>,
    /// Longest delay of one hop.
    pub max_delay: Duration,
}

impl Net {
    pub fn new(nodes: usize, seed: u64, max_delay: Duration) -> Self {
        Self {
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            up: Mutex::new(vec![None; nodes]),
            cut: Mutex::new(HashSet::new()),
            max_delay,
        }
    }

    /// One hop from `from` to `to`: a random delay, then the peer's
    /// replica if the link is whole and the peer up.
    async fn hop(&self, from: usize, to: usize) -> Result<Arc<Replica>, PeerError> {
        self.hop_to(from, to, None).await
    }

    /// A hop within a stream or session opened on `to`'s replica `on`:
    /// it fails once that replica is gone (crashed, even if restarted), as
    /// a connection to a process that died does.
    async fn hop_to(
        &self,
        from: usize,
        to: usize,
        on: Option<&Arc<Replica>>,
    ) -> Result<Arc<Replica>, PeerError> {
        let delay = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            self.max_delay.mul_f64(rng.random())
        };
        tokio::time::sleep(delay).await;
        let link = (from.min(to), from.max(to));
        if self
            .cut
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&link)
        {
            return Err(PeerError::Unavailable("the link is cut".into()));
        }
        let now = self.up.lock().unwrap_or_else(|e| e.into_inner())[to].clone();
        match (now, on) {
            (Some(now), Some(on)) if !Arc::ptr_eq(&now, on) => {
                Err(PeerError::Unavailable("the peer restarted".into()))
            }
            (Some(now), _) => Ok(now),
            (None, _) => Err(PeerError::Unavailable("the peer is down".into())),
        }
    }
}

/// Node `to` as node `from` reaches it.
pub struct SimPeer {
    pub from: usize,
    pub to: usize,
    pub name: String,
    pub net: Arc<Net>,
}

impl SimPeer {
    async fn peer(&self) -> Result<(LocalPeer, Arc<Replica>), PeerError> {
        let replica = self.net.hop(self.from, self.to).await?;
        Ok((LocalPeer::new(replica.clone()), replica))
    }

    /// `stream`, opened on `on`, with every item a hop: it ends with an
    /// error once the link is cut or that replica is gone.
    fn carried<T: Send + 'static>(
        &self,
        on: Arc<Replica>,
        stream: futures::stream::BoxStream<'static, Result<T, PeerError>>,
    ) -> futures::stream::BoxStream<'static, Result<T, PeerError>> {
        let (net, from, to) = (self.net.clone(), self.from, self.to);
        Box::pin(stream.then(move |item| {
            let (net, on) = (net.clone(), on.clone());
            async move {
                net.hop_to(from, to, Some(&on)).await?;
                item
            }
        }))
    }
}

#[async_trait]
impl Peer for SimPeer {
    fn address(&self) -> &str {
        &self.name
    }

    async fn head(&self) -> Result<Head, PeerError> {
        self.peer().await?.0.head().await
    }

    async fn follow(&self, request: FollowRequest) -> Result<LogStream, PeerError> {
        let (peer, on) = self.peer().await?;
        let stream = peer.follow(request).await?;
        Ok(self.carried(on, stream))
    }

    async fn missing(&self, ns: &Namespace, ids: Vec<EntryId>) -> Result<Vec<EntryId>, PeerError> {
        self.peer().await?.0.missing(ns, ids).await
    }

    async fn get(&self, ns: &Namespace, ids: Vec<EntryId>) -> Result<EntryStream, PeerError> {
        let (peer, on) = self.peer().await?;
        let stream = peer.get(ns, ids).await?;
        Ok(self.carried(on, stream))
    }

    async fn put(
        &self,
        entries: Vec<(EntryId, Bytes)>,
        concern: WriteConcern,
    ) -> Result<Vec<PutOutcome>, PeerError> {
        self.peer().await?.0.put(entries, concern).await
    }

    async fn confirm(
        &self,
        node: &str,
        at: PeerCursor,
        namespaces: &[Namespace],
    ) -> Result<(), PeerError> {
        self.peer().await?.0.confirm(node, at, namespaces).await
    }

    async fn reconcile(
        &self,
        namespaces: &[Namespace],
    ) -> Result<Box<dyn ReconcileChannel>, PeerError> {
        let (peer, on) = self.peer().await?;
        let inner = peer.reconcile(namespaces).await?;
        Ok(Box::new(SimChannel {
            inner,
            on,
            net: self.net.clone(),
            from: self.from,
            to: self.to,
        }))
    }
}

/// A reconciliation session over the simulated network: each round a hop.
struct SimChannel {
    inner: Box<dyn ReconcileChannel>,
    on: Arc<Replica>,
    net: Arc<Net>,
    from: usize,
    to: usize,
}

#[async_trait]
impl ReconcileChannel for SimChannel {
    async fn round(&mut self, parts: Vec<Part>) -> Result<Vec<Part>, PeerError> {
        self.net.hop_to(self.from, self.to, Some(&self.on)).await?;
        self.inner.round(parts).await
    }
}
