//! The peer interface the sync engine pulls and pushes through, in domain
//! types only: a replica over gRPC ([`super::grpc::GrpcPeer`]) and a store
//! in this process ([`super::local::LocalPeer`]) look the same to it.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::entry::{EntryId, Namespace, PutOutcome};
pub use crate::log::{EntryChunk, FollowRequest};
use crate::log::{Head, LogBatch, WriteConcern};
use crate::store::PeerCursor;
use crate::sync::reconcile::Part;

/// How a peer is connected to.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
}

/// Makes a peer for an address: how a supervisor reaches the peers its
/// topology names (over gRPC, or in this process in tests).
pub type Connector = std::sync::Arc<
    dyn Fn(&str, ConnectOptions) -> Result<std::sync::Arc<dyn Peer>, PeerError> + Send + Sync,
>;

pub type LogStream = BoxStream<'static, Result<LogBatch, PeerError>>;
pub type EntryStream = BoxStream<'static, Result<EntryChunk, PeerError>>;

/// Why a call to a peer failed, in terms the engine acts on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("cannot reach the peer: {0}")]
    Unavailable(String),
    #[error("the peer did not answer {0} in time")]
    Timeout(&'static str),
    /// The peer does not recognise the cursor (restored or rebuilt).
    #[error("the peer refused the cursor: {0}")]
    CursorRefused(String),
    #[error("the peer answered {code}: {message}")]
    Refused { code: String, message: String },
    /// The peer does not serve a namespace asked about.
    #[error("the peer does not serve the namespace: {0}")]
    NamespaceNotServed(String),
    #[error("the peer sent corrupt data: {0}")]
    DataLoss(String),
    #[error("the peer closed the stream")]
    Closed,
    /// A put that asked for more replicas than confirmed in time; what was
    /// sent is stored on the peer and still replicates.
    #[error("{0}")]
    NotConfirmed(String),
}

impl PeerError {
    /// The `kind` label of `peer_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "connect",
            Self::Timeout(_) => "timeout",
            Self::CursorRefused(_) => "cursor",
            Self::Refused { .. } => "rpc",
            Self::NamespaceNotServed(_) => "namespace",
            Self::DataLoss(_) => "data_loss",
            Self::Closed => "closed",
            Self::NotConfirmed(_) => "not_confirmed",
        }
    }
}

/// A replica or store the engine syncs with. Calls carry no timeouts of
/// their own: the engine bounds each one.
#[async_trait]
pub trait Peer: Send + Sync + 'static {
    /// Where the peer is reached: an address, or a name for one in this process.
    fn address(&self) -> &str;

    /// Who the peer is and where its log ends.
    async fn head(&self) -> Result<Head, PeerError>;

    /// The peer's log after `request.from`, then live.
    async fn follow(&self, request: FollowRequest) -> Result<LogStream, PeerError>;

    /// The ids of `ids` the peer lacks.
    async fn missing(&self, ns: &Namespace, ids: Vec<EntryId>) -> Result<Vec<EntryId>, PeerError>;

    /// Entries by id, in chunks as they arrive. At most the peer's
    /// `max_ids_per_request` ids per call.
    async fn get(&self, ns: &Namespace, ids: Vec<EntryId>) -> Result<EntryStream, PeerError>;

    /// Stores entries, as `(id, data)`, at the peer; one outcome per
    /// entry. At most the peer's `max_ids_per_request` entries and
    /// `max_message_bytes` per call.
    ///
    /// Acknowledged once `concern` is met: held by that many replicas
    /// (the peer and those it replicates to), or [`PeerError::NotConfirmed`]
    /// when they did not confirm in time.
    async fn put(
        &self,
        entries: Vec<(EntryId, Bytes)>,
        concern: WriteConcern,
    ) -> Result<Vec<PutOutcome>, PeerError>;

    /// Tells the peer that `node` (this side) holds its log durably up to
    /// `at`, in `namespaces` (all when empty): what its writers that asked
    /// for more replicas wait for. A peer that takes no confirmations (a
    /// device) ignores it.
    async fn confirm(
        &self,
        node: &str,
        at: PeerCursor,
        namespaces: &[Namespace],
    ) -> Result<(), PeerError> {
        let _ = (node, at, namespaces);
        Ok(())
    }

    /// Opens a reconciliation session over `namespaces` (all when empty).
    /// Only for a peer whose head says it reconciles.
    async fn reconcile(
        &self,
        namespaces: &[Namespace],
    ) -> Result<Box<dyn ReconcileChannel>, PeerError> {
        let _ = namespaces;
        Err(PeerError::Refused {
            code: "Unimplemented".into(),
            message: "this peer does not reconcile".into(),
        })
    }
}

/// A reconciliation session open with a peer.
#[async_trait]
pub trait ReconcileChannel: Send {
    /// Sends one round and returns the peer's answer (empty: it has
    /// nothing more to say).
    async fn round(&mut self, parts: Vec<Part>) -> Result<Vec<Part>, PeerError>;

    /// Bytes sent and received so far, as encoded on the wire (none in this
    /// process).
    fn bytes(&self) -> (u64, u64) {
        (0, 0)
    }
}
