//! Client library for the Store API: typed calls with domain types, and
//! verification of everything a replica returns.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use tonic::service::interceptor::InterceptedService;

use crate::auth::RequestSigner;
use crate::entry::PutOutcome;
use crate::entry::{Entry, EntryId, Namespace};
use crate::log::WriteConcern;
use crate::proto;
use crate::proto::convert;
use crate::proto::store_client::StoreClient as RawClient;

/// Largest message the client accepts; above any replica's configured limit.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

pub use crate::log::Head;

/// Totals of a streamed put.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutSummary {
    pub stored: u64,
    pub duplicate: u64,
    pub rejected: u64,
}

/// A channel whose requests are signed with the client's key (when it has
/// one).
pub type SignedChannel = InterceptedService<Channel, RequestSigner>;

#[derive(Clone)]
pub struct StoreClient {
    inner: RawClient<SignedChannel>,
}

/// How a client reaches replicas: over TLS when `tls` is set, signing each
/// request with `key` (its author key) when set.
#[derive(Clone, Default)]
pub struct Dial {
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub key: Option<ed25519_dalek::SigningKey>,
}

impl Dial {
    /// TLS as the environment asks (see [`TLS_CA_ENV`]), signing with the
    /// key [`CLIENT_KEY_ENV`] names, if any.
    pub fn from_env() -> Result<Self, crate::tls::TlsError> {
        let key = match std::env::var_os(CLIENT_KEY_ENV).filter(|v| !v.is_empty()) {
            None => None,
            Some(path) => Some(read_client_key(std::path::Path::new(&path))?),
        };
        Ok(Self {
            tls: tls_from_env()?,
            key,
        })
    }

    /// Signs requests with `key`.
    pub fn signed_by(mut self, key: ed25519_dalek::SigningKey) -> Self {
        self.key = Some(key);
        self
    }
}

/// An endpoint tuned for bulk transfer: large HTTP/2 windows, no Nagle
/// delay. TLS, when wanted, is the connector's (see [`channel`]).
pub fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    let addr = addr
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let uri = format!("http://{addr}");
    Ok(Endpoint::from_shared(uri)?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20)))
}

/// The CA (PEM) a client checks a TLS replica's certificate against; when
/// set, clients of the `mindoo-replica` command connect over TLS.
pub const TLS_CA_ENV: &str = "MINDOO_REPLICA_TLS_CA";
/// A certificate (PEM) the client presents, with [`TLS_KEY_ENV`]: an
/// operator's, for the admin calls.
pub const TLS_CERT_ENV: &str = "MINDOO_REPLICA_TLS_CERT";
pub const TLS_KEY_ENV: &str = "MINDOO_REPLICA_TLS_KEY";
/// A file holding a client's ed25519 secret key (64 hex digits), which the
/// command's clients sign their requests with (see [`crate::auth`]).
pub const CLIENT_KEY_ENV: &str = "MINDOO_REPLICA_CLIENT_KEY_FILE";

/// Why a client could not connect.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// TLS to replicas as the environment asks (see [`TLS_CA_ENV`]); `None`
/// when it does not.
fn tls_from_env() -> Result<Option<Arc<rustls::ClientConfig>>, crate::tls::TlsError> {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let Some(ca) = var(TLS_CA_ENV) else {
        return Ok(None);
    };
    let (cert, key) = (var(TLS_CERT_ENV), var(TLS_KEY_ENV));
    let identity = match (&cert, &key) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        (None, None) => None,
        _ => {
            return Err(crate::tls::TlsError::Config(format!(
                "{TLS_CERT_ENV} and {TLS_KEY_ENV} go together"
            )));
        }
    };
    crate::tls::client(&ca, identity).map(Some)
}

/// A client key from a file of 64 hex digits (its secret seed); the error
/// names the file, never its contents.
pub fn read_client_key(
    path: &std::path::Path,
) -> Result<ed25519_dalek::SigningKey, crate::tls::TlsError> {
    let text = std::fs::read_to_string(path).map_err(|source| crate::tls::TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| crate::tls::TlsError::Pem {
        path: path.to_owned(),
        what: "does not hold an ed25519 secret key as 64 hex digits".into(),
    })?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// A channel to the replica at `addr`, over TLS when `tls` is given.
pub async fn channel(
    addr: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Channel, ConnectError> {
    Ok(match tls {
        None => endpoint(addr)?.connect().await?,
        Some(config) => {
            endpoint(addr)?
                .connect_with_connector(crate::tls::dialer(move || config.clone()))
                .await?
        }
    })
}

impl StoreClient {
    /// Connects to `host:port` as the environment asks (see
    /// [`Dial::from_env`]).
    pub async fn connect(addr: &str) -> Result<Self, ConnectError> {
        Self::connect_with(addr, &Dial::from_env()?).await
    }

    /// Connects to `host:port` as `dial` says.
    pub async fn connect_with(addr: &str, dial: &Dial) -> Result<Self, ConnectError> {
        let channel = channel(addr, dial.tls.clone()).await?;
        Ok(Self::signed(channel, dial.key.clone()))
    }

    /// A client over `channel` that signs nothing.
    pub fn new(channel: Channel) -> Self {
        Self::signed(channel, None)
    }

    /// A client over `channel` that signs each request with `key`.
    pub fn signed(channel: Channel, key: Option<ed25519_dalek::SigningKey>) -> Self {
        Self {
            inner: RawClient::with_interceptor(channel, RequestSigner::new(key))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        }
    }

    /// The generated client, for calls this wrapper does not cover.
    pub fn raw(&mut self) -> &mut RawClient<SignedChannel> {
        &mut self.inner
    }

    pub async fn head(&mut self) -> Result<Head, Status> {
        let h = self.inner.head(proto::HeadRequest {}).await?.into_inner();
        convert::head(h)
            .map_err(|e| Status::data_loss(format!("replica sent a malformed head: {e}")))
    }

    /// Puts one batch and returns the outcome of each entry.
    pub async fn put(&mut self, entries: &[Entry]) -> Result<Vec<PutOutcome>, Status> {
        Ok(self.put_with(entries, WriteConcern::default()).await?.0)
    }

    /// Puts one batch, acknowledged once `concern.replicas` replicas hold
    /// it durably: the outcome of each entry, and how many replicas
    /// confirmed. DEADLINE_EXCEEDED when too few did within
    /// `concern.timeout` (the batch is stored on the replica and still
    /// replicates).
    pub async fn put_with(
        &mut self,
        entries: &[Entry],
        concern: WriteConcern,
    ) -> Result<(Vec<PutOutcome>, u32), Status> {
        let req = convert::put_request_with(entries, concern);
        let mut responses = self
            .inner
            .put_entries(futures::stream::iter([req]))
            .await?
            .into_inner();
        let resp = only_message(&mut responses)
            .await?
            .ok_or_else(|| Status::internal("replica closed the put stream without a response"))?;
        let replicas = resp.replicas.max(1);
        Ok((convert::put_outcomes(resp), replicas))
    }

    /// Streams batches through one PutEntries call, pipelined: the next batch
    /// is sent while earlier ones are being stored.
    pub async fn put_stream(
        &mut self,
        batches: impl Stream<Item = Vec<Entry>> + Send + 'static,
    ) -> Result<PutSummary, Status> {
        let requests = batches.map(|b| convert::put_request(&b));
        let mut responses = self.inner.put_entries(requests).await?.into_inner();
        let mut summary = PutSummary::default();
        while let Some(resp) = responses.message().await? {
            for s in resp.status {
                match proto::PutStatus::try_from(s) {
                    Ok(proto::PutStatus::Stored) => summary.stored += 1,
                    Ok(proto::PutStatus::Duplicate) => summary.duplicate += 1,
                    _ => summary.rejected += 1,
                }
            }
        }
        Ok(summary)
    }

    /// Follows the replica's log live from its current head: only what is
    /// stored from now on arrives.
    pub async fn watch_from_head(
        &mut self,
        include_data: bool,
    ) -> Result<tonic::Streaming<proto::LogBatch>, Status> {
        let head = self.inner.head(proto::HeadRequest {}).await?.into_inner();
        let request = proto::WatchRequest {
            cursor: head.cursor,
            include_data,
            namespaces: vec![],
            heartbeat_ms: 0,
            relay_delay_ms: 0,
            live_data: false,
        };
        Ok(self.inner.watch(request).await?.into_inner())
    }

    /// The ids of `ids` the replica lacks.
    pub async fn missing(
        &mut self,
        ns: &Namespace,
        ids: &[EntryId],
    ) -> Result<Vec<EntryId>, Status> {
        let resp = self
            .inner
            .missing_ids(proto::MissingIdsRequest {
                namespace: Some(convert::namespace_to_proto(ns)),
                ids: ids.iter().map(convert::id_bytes).collect(),
            })
            .await?
            .into_inner();
        resp.missing
            .iter()
            .map(|id| EntryId::from_slice(id).map_err(|e| Status::internal(e.to_string())))
            .collect()
    }

    /// Fetches entries and checks that each one's bytes hash to its id.
    pub async fn get(&mut self, ns: &Namespace, ids: &[EntryId]) -> Result<Vec<Entry>, Status> {
        let mut stream = self
            .inner
            .get_entries(proto::GetEntriesRequest {
                namespace: Some(convert::namespace_to_proto(ns)),
                ids: ids.iter().map(convert::id_bytes).collect(),
            })
            .await?
            .into_inner();
        let mut out = Vec::with_capacity(ids.len());
        while let Some(batch) = stream.message().await? {
            for e in batch.entries {
                out.push(verify(&e.id, e.data)?);
            }
        }
        Ok(out)
    }
}

/// The one message of a response stream, read to its end (the trailers):
/// a call dropped before them is reset, the trailers then arrive for a
/// stream the client forgot, and HTTP/2 counts each as an error; after
/// 1,024 the client ends the connection and the calls on it.
pub(crate) async fn only_message<T>(stream: &mut tonic::Streaming<T>) -> Result<Option<T>, Status> {
    let first = stream.message().await?;
    if first.is_some() && stream.message().await?.is_some() {
        return Err(Status::internal("replica sent more than one response"));
    }
    Ok(first)
}

/// Parses an entry received from a replica and checks its id: a mismatch is
/// DATA_LOSS, because the replica (or the network) corrupted it.
pub fn verify(claimed: &[u8], data: Bytes) -> Result<Entry, Status> {
    let entry = Entry::parse(data)
        .map_err(|r| Status::data_loss(format!("replica sent a malformed entry: {r}")))?;
    if entry.id.0 != claimed {
        return Err(Status::data_loss(format!(
            "replica sent entry {} whose bytes hash to {}",
            hex::encode(claimed),
            entry.id
        )));
    }
    Ok(entry)
}
