//! The gRPC adapter of [`Peer`]: a replica reached over the network.
//! Protobuf stops here; everything it returns is validated domain data.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use rustls::ClientConfig;
use tonic::Code;

use crate::tls::Reloading;

use super::peer::{
    ConnectOptions, Connector, EntryStream, FollowRequest, LogStream, Peer, PeerError,
    ReconcileChannel,
};
use super::reconcile::Part;
use crate::auth::RequestSigner;
use crate::client::{MAX_MESSAGE_BYTES, SignedChannel, endpoint, only_message};
use bytes::Bytes;
use prost::Message;

use crate::entry::{EntryId, Namespace, PutOutcome};
use crate::log::LogBatch;
use crate::log::{Head, WriteConcern};
use crate::proto::convert;
use crate::proto::{
    self, replication_client::ReplicationClient, store_client::StoreClient as RawClient,
};
use crate::store::PeerCursor;

/// The TLS config each new connection is made with.
pub type TlsSource = Arc<dyn Fn() -> Arc<ClientConfig> + Send + Sync>;

pub struct GrpcPeer {
    address: String,
    client: RawClient<SignedChannel>,
    replication: ReplicationClient<SignedChannel>,
}

impl GrpcPeer {
    /// A peer at `address` (`host:port`); connects on first use and
    /// reconnects as needed.
    /// As the environment asks (see [`crate::client::Dial::from_env`]).
    pub fn lazy(address: &str, options: ConnectOptions) -> Result<Self, PeerError> {
        let dial = crate::client::Dial::from_env()
            .map_err(|e| PeerError::Unavailable(format!("client TLS or key: {e}")))?;
        let tls = dial
            .tls
            .map(|config| Arc::new(move || config.clone()) as TlsSource);
        Self::lazy_over(address, options, tls, dial.key)
    }

    /// As [`GrpcPeer::lazy`], over TLS when `tls` is given, signing each
    /// request with `key` when given.
    pub fn lazy_over(
        address: &str,
        options: ConnectOptions,
        tls: Option<TlsSource>,
        key: Option<ed25519_dalek::SigningKey>,
    ) -> Result<Self, PeerError> {
        let endpoint = endpoint(address)
            .map_err(|e| PeerError::Unavailable(format!("invalid peer address: {e}")))?
            .connect_timeout(options.connect_timeout)
            .http2_keep_alive_interval(options.keepalive_interval)
            .keep_alive_timeout(
                options
                    .keepalive_interval
                    .min(std::time::Duration::from_secs(20)),
            )
            .keep_alive_while_idle(true);
        let channel = match tls {
            None => endpoint.connect_lazy(),
            Some(tls) => endpoint.connect_with_connector_lazy(crate::tls::dialer(move || tls())),
        };
        Ok(Self {
            address: address.to_owned(),
            client: RawClient::with_interceptor(channel.clone(), RequestSigner::new(key.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            replication: ReplicationClient::with_interceptor(channel, RequestSigner::new(key)),
        })
    }

    /// Connects to peers over gRPC, for a supervisor.
    pub fn connector() -> Connector {
        Arc::new(|address, options| Ok(Arc::new(Self::lazy(address, options)?) as Arc<dyn Peer>))
    }

    /// Connects to peers over mutual TLS, for a supervisor.
    pub fn tls_connector(tls: Arc<Reloading<ClientConfig>>) -> Connector {
        let tls: TlsSource = Arc::new(move || tls.current());
        Arc::new(move |address, options| {
            let peer = Self::lazy_over(address, options, Some(tls.clone()), None)?;
            Ok(Arc::new(peer) as Arc<dyn Peer>)
        })
    }
}

/// What a status from a peer means to the engine.
pub fn peer_error(status: tonic::Status) -> PeerError {
    // A transport failure's cause (connection refused, no route) is in the
    // status's sources.
    let mut message = status.message().to_owned();
    let mut source = std::error::Error::source(&status);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = cause.source();
    }
    let reason = status.metadata().get(proto::ERROR_REASON_KEY);
    if reason.is_some_and(|r| r == proto::REASON_NAMESPACE_NOT_SERVED) {
        return PeerError::NamespaceNotServed(message);
    }
    if reason.is_some_and(|r| r == proto::REASON_NOT_CONFIRMED) {
        return PeerError::NotConfirmed(message);
    }
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled => PeerError::Unavailable(message),
        Code::DeadlineExceeded => PeerError::Timeout("a call"),
        Code::FailedPrecondition | Code::OutOfRange => PeerError::CursorRefused(message),
        Code::DataLoss => PeerError::DataLoss(message),
        code => PeerError::Refused {
            code: format!("{code:?}"),
            message,
        },
    }
}

fn corrupt(e: impl std::fmt::Display) -> PeerError {
    PeerError::DataLoss(e.to_string())
}

#[async_trait]
impl Peer for GrpcPeer {
    fn address(&self) -> &str {
        &self.address
    }

    async fn head(&self) -> Result<Head, PeerError> {
        let response = self
            .client
            .clone()
            .head(proto::HeadRequest {})
            .await
            .map_err(peer_error)?;
        convert::head(response.into_inner()).map_err(corrupt)
    }

    async fn follow(&self, request: FollowRequest) -> Result<LogStream, PeerError> {
        let watch = convert::watch_request(&request);
        let stream = self
            .client
            .clone()
            .watch(watch)
            .await
            .map_err(peer_error)?
            .into_inner();
        Ok(stream
            .map(|item| -> Result<LogBatch, PeerError> {
                convert::log_batch(item.map_err(peer_error)?).map_err(corrupt)
            })
            .boxed())
    }

    async fn missing(&self, ns: &Namespace, ids: Vec<EntryId>) -> Result<Vec<EntryId>, PeerError> {
        let response = self
            .client
            .clone()
            .missing_ids(proto::MissingIdsRequest {
                namespace: Some(convert::namespace_to_proto(ns)),
                ids: ids.iter().map(convert::id_bytes).collect(),
            })
            .await
            .map_err(peer_error)?;
        convert::ids(response.into_inner().missing, usize::MAX).map_err(corrupt)
    }

    async fn get(&self, ns: &Namespace, ids: Vec<EntryId>) -> Result<EntryStream, PeerError> {
        let stream = self
            .client
            .clone()
            .get_entries(proto::GetEntriesRequest {
                namespace: Some(convert::namespace_to_proto(ns)),
                ids: ids.iter().map(convert::id_bytes).collect(),
            })
            .await
            .map_err(peer_error)?
            .into_inner();
        Ok(stream
            .map(|item| convert::entry_chunk(item.map_err(peer_error)?).map_err(corrupt))
            .boxed())
    }

    async fn put(
        &self,
        entries: Vec<(EntryId, Bytes)>,
        concern: WriteConcern,
    ) -> Result<Vec<PutOutcome>, PeerError> {
        let request = convert::with_concern(convert::put_request_raw(entries), concern);
        let mut responses = self
            .client
            .clone()
            .put_entries(futures::stream::iter([request]))
            .await
            .map_err(peer_error)?
            .into_inner();
        let response = only_message(&mut responses)
            .await
            .map_err(peer_error)?
            .ok_or(PeerError::Closed)?;
        Ok(convert::put_outcomes(response))
    }

    async fn confirm(
        &self,
        node: &str,
        at: PeerCursor,
        namespaces: &[Namespace],
    ) -> Result<(), PeerError> {
        self.replication
            .clone()
            .confirm(proto::ConfirmRequest {
                node: node.to_owned(),
                cursor: Some(convert::cursor_to_proto(
                    at.incarnation,
                    at.seq,
                    Some(&at.id_at_seq),
                )),
                namespaces: namespaces.iter().map(convert::namespace_to_proto).collect(),
            })
            .await
            .map_err(peer_error)?;
        Ok(())
    }

    async fn reconcile(
        &self,
        namespaces: &[Namespace],
    ) -> Result<Box<dyn ReconcileChannel>, PeerError> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let outgoing = tokio_stream::wrappers::ReceiverStream::new(rx);
        let response = self
            .replication
            .clone()
            .reconcile(outgoing)
            .await
            .map_err(peer_error)?;
        Ok(Box::new(GrpcReconcile {
            tx,
            incoming: response.into_inner(),
            namespaces: Some(namespaces.to_vec()),
            sent: 0,
            received: 0,
        }))
    }
}

/// A `Reconcile` stream: a round out as frames, the answer back as frames.
struct GrpcReconcile {
    tx: tokio::sync::mpsc::Sender<proto::ReconcileFrame>,
    incoming: tonic::Streaming<proto::ReconcileFrame>,
    /// Sent with the first round.
    namespaces: Option<Vec<Namespace>>,
    sent: u64,
    received: u64,
}

/// Bytes of one gRPC message's length prefix.
const MESSAGE_PREFIX: u64 = 5;

#[async_trait]
impl ReconcileChannel for GrpcReconcile {
    async fn round(&mut self, parts: Vec<Part>) -> Result<Vec<Part>, PeerError> {
        let namespaces = self.namespaces.take().unwrap_or_default();
        for frame in proto::reconcile::frames(parts, &namespaces) {
            self.sent += frame.encoded_len() as u64 + MESSAGE_PREFIX;
            self.tx.send(frame).await.map_err(|_| PeerError::Closed)?;
        }
        let mut answer = Vec::new();
        let mut round_bytes = 0;
        loop {
            let frame = self.incoming.message().await.map_err(peer_error)?;
            let frame = frame.ok_or(PeerError::Closed)?;
            let len = frame.encoded_len() as u64 + MESSAGE_PREFIX;
            self.received += len;
            round_bytes += len;
            if round_bytes > proto::reconcile::MAX_ROUND_BYTES as u64 {
                return Err(PeerError::Refused {
                    code: "ResourceExhausted".into(),
                    message: format!(
                        "the peer's reconcile round is over {} bytes",
                        proto::reconcile::MAX_ROUND_BYTES
                    ),
                });
            }
            let end = frame.end_of_round;
            answer.extend(
                proto::reconcile::parts(frame).map_err(|e| PeerError::Refused {
                    code: "InvalidArgument".into(),
                    message: format!("the peer sent a malformed reconcile frame: {e}"),
                })?,
            );
            if end {
                return Ok(answer);
            }
        }
    }

    fn bytes(&self) -> (u64, u64) {
        (self.sent, self.received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn a_namespace_the_peer_does_not_serve_is_told_apart_from_other_invalid_arguments() {
        let ns = Namespace::new("acme", "other").unwrap();
        let status = tonic::Status::from(Error::NamespaceNotAllowed(ns));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(matches!(
            peer_error(status),
            PeerError::NamespaceNotServed(_)
        ));
        let status = tonic::Status::from(Error::InvalidArgument("no ids".into()));
        assert!(matches!(peer_error(status), PeerError::Refused { .. }));
    }
}
