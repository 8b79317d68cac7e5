//! The `mindoo.replica.v1.Replication` service: peer status for operators
//! and peers (see [`AdminAccess`]), peers' confirmations of what they
//! hold (see `crate::replica::confirm`), and operators' backups (see
//! `backup.rs`).

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use tonic::{Request, Response, Status};

use tokio::sync::watch;

use super::ResponseStream;
use super::backup::{Backups, backup};
use super::{maintenance, reconcile};
use crate::access::{AccessPolicy, AdminAccess};
use crate::identity::Caller;
use crate::proto;
use crate::proto::convert;
use crate::proto::replication_server::{Replication as ReplicationApi, ReplicationServer};
use crate::replica::Replica;
use crate::sync::repair::Repairs;
use crate::sync::status::StatusBoard;

/// What the operators' calls reach besides the replica.
pub struct Operations {
    /// The pull workers' statuses.
    pub board: StatusBoard,
    /// Where repairs are requested of the pull workers.
    pub repairs: Repairs,
    /// Where backups are kept; `None` for a store with nothing on disk.
    pub backups: Option<Backups>,
}

pub struct ReplicationService {
    replica: Arc<Replica>,
    ops: Operations,
    admin: AdminAccess,
    access: watch::Receiver<AccessPolicy>,
}

impl ReplicationService {
    pub fn server(
        replica: Arc<Replica>,
        ops: Operations,
        admin: AdminAccess,
        access: watch::Receiver<AccessPolicy>,
    ) -> ReplicationServer<Self> {
        ReplicationServer::new(Self {
            replica,
            ops,
            admin,
            access,
        })
    }
}

#[tonic::async_trait]
impl ReplicationApi for ReplicationService {
    async fn peer_status(
        &self,
        request: Request<proto::PeerStatusRequest>,
    ) -> Result<Response<proto::PeerStatusResponse>, Status> {
        let caller = Caller::of(&request);
        self.access.borrow().check_admin(&caller, self.admin)?;
        let stats = self.replica.stats();
        let peers = self
            .ops
            .board
            .snapshot()
            .into_iter()
            .map(|s| proto::PeerState {
                peer: s.peer,
                connected: s.connected,
                is_self: s.is_self,
                peer_incarnation: s
                    .peer_incarnation
                    .map(|i| Bytes::copy_from_slice(&i.0))
                    .unwrap_or_default(),
                cursor_seq: s.cursor_seq,
                peer_head_seq: s.peer_head_seq,
                entries_pulled: s.entries_pulled,
                last_success_unix_ms: s
                    .last_success
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as i64),
                last_error: s.last_error.unwrap_or_default(),
                address: s.address,
                state: s.state.to_owned(),
                shares_incarnation: s.shares_incarnation,
                last_reconcile_unix_ms: s
                    .last_reconcile
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as i64),
                last_reconcile: s.last_reconcile_result.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(proto::PeerStatusResponse {
            node: self.replica.identity().node.clone(),
            incarnation: Bytes::copy_from_slice(&self.replica.incarnation().0),
            head_seq: stats.head_seq,
            entry_count: stats.entries,
            peers,
        }))
    }

    type BackupStream = ResponseStream<proto::BackupChunk>;

    async fn backup(
        &self,
        request: Request<proto::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let caller = Caller::of(&request);
        self.access.borrow().check_admin(&caller, self.admin)?;
        let request = request.into_inner();
        let stream = backup(
            self.replica.clone(),
            self.ops.backups.as_ref(),
            request.download,
            request.mb_per_second.saturating_mul(1 << 20),
        )
        .await?;
        Ok(Response::new(stream))
    }

    type ReconcileStream = ResponseStream<proto::ReconcileFrame>;

    async fn reconcile(
        &self,
        request: Request<tonic::Streaming<proto::ReconcileFrame>>,
    ) -> Result<Response<Self::ReconcileStream>, Status> {
        match (Caller::of(&request), self.admin) {
            (Caller::Peer(_), _) | (_, AdminAccess::Open) => {}
            _ => {
                return Err(Status::permission_denied(
                    "Reconcile is for the mesh's replicas, by their certificates",
                ));
            }
        }
        Ok(Response::new(reconcile::serve(
            self.replica.clone(),
            request.into_inner(),
        )))
    }

    async fn scrub(
        &self,
        request: Request<proto::ScrubRequest>,
    ) -> Result<Response<proto::ScrubResponse>, Status> {
        let caller = Caller::of(&request);
        self.access.borrow().check_admin(&caller, self.admin)?;
        let answer =
            maintenance::scrub(&self.replica, &self.ops.repairs, request.into_inner()).await?;
        Ok(Response::new(answer))
    }

    async fn repair(
        &self,
        request: Request<proto::RepairRequest>,
    ) -> Result<Response<proto::RepairResponse>, Status> {
        let caller = Caller::of(&request);
        self.access.borrow().check_admin(&caller, self.admin)?;
        let answer =
            maintenance::repair(&self.ops.board, &self.ops.repairs, request.into_inner()).await?;
        Ok(Response::new(answer))
    }

    async fn confirm(
        &self,
        request: Request<proto::ConfirmRequest>,
    ) -> Result<Response<proto::ConfirmResponse>, Status> {
        // A peer by its certificate; anyone on an open mesh, by the name
        // it gives.
        let node = match (Caller::of(&request), self.admin) {
            (Caller::Peer(name), _) => name,
            (_, AdminAccess::Open) => request.get_ref().node.clone(),
            _ => {
                return Err(Status::permission_denied(
                    "Confirm is for the mesh's replicas, by their certificates",
                ));
            }
        };
        if node.is_empty() {
            return Err(Status::invalid_argument("node is required"));
        }
        let req = request.into_inner();
        let cursor = convert::cursor(req.cursor)?
            .ok_or_else(|| Status::invalid_argument("cursor is required"))?;
        let namespaces = req
            .namespaces
            .into_iter()
            .map(|ns| convert::namespace(Some(ns)))
            .collect::<Result<Vec<_>, _>>()?;
        self.replica
            .confirmations()
            .confirm(&node, cursor.incarnation, cursor.seq, namespaces);
        Ok(Response::new(proto::ConfirmResponse {}))
    }
}
