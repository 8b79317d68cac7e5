//! Why a sync session ended, in terms the workers act on and report.

use super::peer::PeerError;
use crate::error::Error;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("the local store failed: {0}")]
    Store(#[from] Error),
    #[error("node {node} is already being pulled through {holder}")]
    Duplicate { node: String, holder: String },
}

impl SyncError {
    /// The `kind` label of `peer_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Peer(e) => e.kind(),
            Self::Store(_) => "store",
            Self::Duplicate { .. } => "duplicate",
        }
    }
}
