//! The replica's error type and its one mapping to gRPC status codes.

use tonic::{Code, Status};

use crate::entry::{InvalidId, InvalidNamespace, Namespace};
use crate::proto;
use crate::proto::convert::Invalid;
use std::sync::Arc;

use crate::store::{Seq, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    #[error(transparent)]
    InvalidNamespace(#[from] InvalidNamespace),
    #[error("namespace {0} is not served by this replica")]
    NamespaceNotAllowed(Namespace),
    #[error("{what}: {got} is over the limit of {limit}")]
    LimitExceeded {
        what: &'static str,
        got: usize,
        limit: usize,
    },
    #[error(
        "cursor is from incarnation {cursor} but this replica is incarnation {ours}; \
         the replica was restored or rebuilt, start over"
    )]
    CursorIncarnation { cursor: String, ours: String },
    #[error("cursor seq {seq} is beyond this replica's head {head}")]
    CursorBeyondHead { seq: Seq, head: Seq },
    #[error("cursor names {expected} at seq {seq} but this replica logged {found} there")]
    CursorMismatch {
        seq: Seq,
        expected: String,
        found: String,
    },
    #[error("peer sent corrupt data: {0}")]
    DataLoss(String),
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error(transparent)]
    OverQuota(#[from] crate::quota::OverQuota),
    #[error(
        "the batch asks for {asked} replicas but this mesh has {mesh} (this replica and the \
         peers it pairs with)"
    )]
    MeshTooSmall { asked: u32, mesh: usize },
    #[error(
        "the batch is stored on this replica, durably, but only {confirmed} of the {asked} \
         replicas asked for confirmed holding it within {waited_ms} ms; it stays stored and \
         still replicates"
    )]
    NotConfirmed {
        asked: u32,
        confirmed: usize,
        waited_ms: u128,
    },
    #[error("the replica is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<Invalid> for Error {
    fn from(e: Invalid) -> Self {
        match e {
            Invalid::Field(m) => Error::InvalidArgument(m),
            Invalid::Id(e) => Error::InvalidId(e),
            Invalid::Namespace(e) => Error::InvalidNamespace(e),
            Invalid::TooMany { what, got, limit } => Error::LimitExceeded { what, got, limit },
        }
    }
}

impl From<Invalid> for Status {
    fn from(e: Invalid) -> Self {
        Error::from(e).into()
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::InvalidArgument(_)
            | Error::InvalidId(_)
            | Error::InvalidNamespace(_)
            | Error::NamespaceNotAllowed(_)
            | Error::MeshTooSmall { .. } => Code::InvalidArgument,
            Error::NotConfirmed { .. } => Code::DeadlineExceeded,
            Error::LimitExceeded { .. } | Error::OverQuota(_) => Code::ResourceExhausted,
            Error::CursorIncarnation { .. } | Error::CursorMismatch { .. } => {
                Code::FailedPrecondition
            }
            Error::CursorBeyondHead { .. } => Code::OutOfRange,
            Error::DataLoss(_) => Code::DataLoss,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::ShuttingDown => Code::Unavailable,
            Error::Store(StoreError::DiskFull(_)) => Code::ResourceExhausted,
            Error::Store(StoreError::Locked { .. } | StoreError::OutOfFiles(_)) => {
                Code::Unavailable
            }
            Error::Store(StoreError::Unsupported(_)) => Code::FailedPrecondition,
            Error::Store(_) | Error::Internal(_) => Code::Internal,
        };
        if code == Code::Internal {
            tracing::error!(error = %e, "internal error");
        }
        let mut status = Status::new(code, e.to_string());
        let reason = match e {
            Error::NamespaceNotAllowed(_) => Some(proto::REASON_NAMESPACE_NOT_SERVED),
            Error::NotConfirmed { .. } => Some(proto::REASON_NOT_CONFIRMED),
            _ => None,
        };
        if let Some(reason) = reason {
            status.metadata_mut().insert(
                proto::ERROR_REASON_KEY,
                tonic::metadata::MetadataValue::from_static(reason),
            );
        }
        status
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs a store call on tokio's blocking pool, never on the executor.
pub async fn on_store<T: Send + 'static>(
    store: &Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T> {
    let store = store.clone();
    crate::blocking::run(move || f(&*store))
        .await?
        .map_err(Error::from)
}
