//! The `mindoo.replica.v1.Store` gRPC service: thin handlers that validate
//! requests (see [`convert`]), call the [`Replica`] core and shape responses.

pub mod backup;
mod maintenance;
pub mod reconcile;
pub mod replication;
mod streams;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use tokio::sync::watch;

use crate::access::{Access, AccessPolicy};
use crate::connections::ConnectionInfo;
use crate::error::Error;
use crate::fair::Share;
use crate::identity::Caller;
use crate::log::FollowRequest;
use crate::proto;
use crate::proto::convert;
// The generated trait is the wire API; `Store` alone names the storage trait.
use crate::proto::store_server::{Store as StoreApi, StoreServer};
use crate::replica::Replica;
use crate::replica::outgoing::SendScope;
use crate::replication::settings::ReplicationSettings;
use crate::sync::status::StatusBoard;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub struct StoreService {
    replica: Arc<Replica>,
    access: watch::Receiver<AccessPolicy>,
    /// The most replicas a write may ask for.
    mesh: Mesh,
}

/// The replicas of the mesh: this one, and the peers it pairs with,
/// configured or found so far (see [`streams::WriteCheck::mesh`]).
pub struct Mesh {
    pub board: StatusBoard,
    pub settings: watch::Receiver<ReplicationSettings>,
}

impl Mesh {
    fn size(&self) -> usize {
        let configured = self.settings.borrow().peers.len();
        let found = self.board.snapshot().iter().filter(|p| !p.is_self).count();
        1 + configured.max(found)
    }
}

impl StoreService {
    /// The service wrapped for tonic, with message limits from the config,
    /// checking each call against the access policy as it is now.
    pub fn server(
        replica: Arc<Replica>,
        access: watch::Receiver<AccessPolicy>,
        mesh: Mesh,
    ) -> StoreServer<Self> {
        let max = replica.limits().max_message_bytes;
        StoreServer::new(Self {
            replica,
            access,
            mesh,
        })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max)
    }

    /// Whether `caller` may read what `follow` asks for.
    fn check_follow(&self, caller: &Caller, follow: &FollowRequest) -> Result<(), Status> {
        let policy = self.access.borrow();
        match follow.namespaces.is_empty() {
            true => policy.check_read_all(caller)?,
            false => {
                for ns in &follow.namespaces {
                    policy.check(caller, ns, Access::Read)?;
                }
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl StoreApi for StoreService {
    type PutEntriesStream = ResponseStream<proto::PutEntriesResponse>;
    type GetEntriesStream = ResponseStream<proto::EntryBatch>;
    type ScanSinceStream = ResponseStream<proto::LogBatch>;
    type WatchStream = ResponseStream<proto::LogBatch>;

    async fn put_entries(
        &self,
        request: Request<Streaming<proto::PutEntriesRequest>>,
    ) -> Result<Response<Self::PutEntriesStream>, Status> {
        let caller = Caller::of(&request);
        self.access.borrow().check_known(&caller)?;
        let share = request.extensions().get::<Arc<Share>>().cloned();
        let may_write = streams::WriteCheck {
            access: self.access.clone(),
            caller,
            share,
            mesh: self.mesh.size(),
        };
        Ok(Response::new(streams::put(
            self.replica.clone(),
            request.into_inner(),
            may_write,
        )))
    }

    async fn missing_ids(
        &self,
        request: Request<proto::MissingIdsRequest>,
    ) -> Result<Response<proto::MissingIdsResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let ids = convert::ids(req.ids, self.replica.limits().max_ids_per_request)?;
        let ns = convert::namespace(req.namespace)?;
        self.access.borrow().check(&caller, &ns, Access::Read)?;
        let missing = self.replica.missing(ns, ids).await?;
        Ok(Response::new(proto::MissingIdsResponse {
            missing: missing.iter().map(convert::id_bytes).collect(),
        }))
    }

    async fn get_entries(
        &self,
        request: Request<proto::GetEntriesRequest>,
    ) -> Result<Response<Self::GetEntriesStream>, Status> {
        let send = self.send_scope(&request);
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let ids = convert::ids(req.ids, self.replica.limits().max_ids_per_request)?;
        let ns = convert::namespace(req.namespace)?;
        self.access.borrow().check(&caller, &ns, Access::Read)?;
        let chunks = self.replica.serve_entries(ns, ids, send)?;
        Ok(Response::new(streams::served(
            chunks,
            convert::entry_chunk_to_proto,
        )))
    }

    async fn list_ids(
        &self,
        request: Request<proto::ListIdsRequest>,
    ) -> Result<Response<proto::ListIdsResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let ns = convert::namespace(req.namespace)?;
        self.access.borrow().check(&caller, &ns, Access::Read)?;
        let after = match req.page_token.is_empty() {
            true => None,
            false => Some(
                crate::entry::EntryId::from_slice(&req.page_token)
                    .map_err(|_| Error::InvalidArgument("page_token is not valid".into()))?,
            ),
        };
        let limit = page_limit(req.limit, self.replica.limits().max_page)?;
        let ids = self.replica.list_ids(ns, after, limit).await?;
        let next_page_token = match ids.len() == limit {
            true => ids.last().map(convert::id_bytes).unwrap_or_default(),
            false => Default::default(),
        };
        Ok(Response::new(proto::ListIdsResponse {
            ids: ids.iter().map(convert::id_bytes).collect(),
            next_page_token,
        }))
    }

    async fn head(
        &self,
        request: Request<proto::HeadRequest>,
    ) -> Result<Response<proto::HeadResponse>, Status> {
        self.access.borrow().check_known(&Caller::of(&request))?;
        let mut head = self.replica.head().await?;
        head.pulls = self.mesh.settings.borrow().pull.namespaces.clone();
        Ok(Response::new(convert::head_to_proto(&head)))
    }

    async fn scan_since(
        &self,
        request: Request<proto::ScanSinceRequest>,
    ) -> Result<Response<Self::ScanSinceStream>, Status> {
        let send = self.send_scope(&request);
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let limit = page_limit(req.limit, usize::MAX)?;
        let follow =
            convert::follow_request(req.cursor, req.include_data, false, req.namespaces, 0, 0)?;
        self.check_follow(&caller, &follow)?;
        self.log_stream(follow, Some(limit), send).await
    }

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let send = self.send_scope(&request);
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let follow = convert::follow_request(
            req.cursor,
            req.include_data,
            req.live_data,
            req.namespaces,
            req.heartbeat_ms,
            req.relay_delay_ms,
        )?;
        self.check_follow(&caller, &follow)?;
        self.log_stream(follow, None, send).await
    }
}

impl StoreService {
    /// ScanSince (with a limit) and Watch (without): the replica checks the
    /// request and the cursor, then streams the log from there.
    async fn log_stream(
        &self,
        follow: FollowRequest,
        limit: Option<usize>,
        send: SendScope,
    ) -> Result<Response<ResponseStream<proto::LogBatch>>, Status> {
        let batches = self.replica.serve_log(follow, limit, send).await?;
        Ok(Response::new(streams::served(
            batches,
            convert::log_batch_to_proto,
        )))
    }

    /// The pools a call's response data is granted from: its connection's
    /// and its source address's (when it came over one), its client's
    /// (see [`crate::fair`]), and the replica's.
    fn send_scope<T>(&self, request: &Request<T>) -> SendScope {
        let mut pools = request
            .extensions()
            .get::<ConnectionInfo>()
            .map(ConnectionInfo::send_pools)
            .unwrap_or_default();
        if let Some(share) = request.extensions().get::<Arc<Share>>() {
            pools.push(share.send_pool().clone());
        }
        pools.push(self.replica.send_pool().clone());
        SendScope::new(pools)
    }
}

/// A requested page size: 0 means the default (`max`), more than `max` is an error.
fn page_limit(requested: u32, max: usize) -> Result<usize, Error> {
    match requested as usize {
        0 => Ok(max),
        n => crate::limits::check_count("requested page size", n, max).map(|_| n),
    }
}
