//! The streaming handlers. Each stream is a lazy state machine: it does the
//! next piece of work only when the transport asks for the next message, so
//! HTTP/2 flow control is the backpressure, and dropping the stream (client
//! gone, server stopping) stops the work. No task is spawned per stream.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tonic::{Status, Streaming};

use super::ResponseStream;
use super::convert;
use crate::entry::{EntryId, Namespace};
use crate::error::Error;
use crate::proto;
use crate::replica::Replica;
use crate::store::Seq;

/// Log records fetched per store call.
const LOG_CHUNK: usize = 2048;
/// Ids looked up per store call when streaming entries.
const GET_CHUNK: usize = 64;
/// Target size of one streamed message.
const MESSAGE_BUDGET: usize = 1 << 20;

fn message_budget(replica: &Replica) -> usize {
    MESSAGE_BUDGET.min(replica.limits().max_message_bytes / 2)
}

/// Ends a stream after its first error.
fn fused<T: Send + 'static>(
    stream: impl Stream<Item = Result<T, Status>> + Send + 'static,
) -> ResponseStream<T> {
    let mut failed = false;
    Box::pin(stream.take_while(move |item| {
        let go = !failed;
        failed |= item.is_err();
        futures::future::ready(go)
    }))
}

/// One step of a batch stream: a batch, the end, or an error (which
/// [`fused`] makes the last item).
fn step<S, T>(state: S, next: Result<Option<T>, Error>) -> Option<(Result<T, Status>, S)> {
    match next {
        Ok(Some(batch)) => Some((Ok(batch), state)),
        Ok(None) => None,
        Err(e) => Some((Err(e.into()), state)),
    }
}

/// PutEntries: one response per request batch. Stops taking batches once the
/// replica starts shutting down, or when the client stays silent for
/// `limits.stream_idle_timeout_ms`; every acknowledged batch is committed.
pub fn put(
    replica: Arc<Replica>,
    inbound: Streaming<proto::PutEntriesRequest>,
) -> ResponseStream<proto::PutEntriesResponse> {
    fused(futures::stream::unfold(
        (replica, inbound),
        |(replica, mut inbound)| async move {
            let idle = replica.limits().stream_idle_timeout;
            let next = tokio::select! {
                biased;
                _ = replica.shutdown_token().cancelled() => Err(Error::ShuttingDown.into()),
                m = tokio::time::timeout(idle, inbound.message()) => m.unwrap_or_else(|_| {
                    Err(Status::deadline_exceeded(format!(
                        "no batch for {} ms; the stream is closed",
                        idle.as_millis()
                    )))
                }),
            };
            let batch = match next {
                Ok(Some(batch)) => batch,
                Ok(None) => return None,
                Err(status) => return Some((Err(limit_status(status)), (replica, inbound))),
            };
            let result = replica
                .put(convert::put_entries(batch))
                .await
                .map(|outcomes| convert::put_response(outcomes, replica.stats().head_seq))
                .map_err(Status::from);
            Some((result, (replica, inbound)))
        },
    ))
}

/// tonic reports a request message over the decode limit as OUT_OF_RANGE; it
/// is a limit, so the stream reports it as RESOURCE_EXHAUSTED like the others.
fn limit_status(status: Status) -> Status {
    match status.code() {
        tonic::Code::OutOfRange => Status::resource_exhausted(status.message()),
        _ => status,
    }
}

/// GetEntries: entries packed into messages of at most [`MESSAGE_BUDGET`]
/// bytes of data (a single larger entry travels alone).
pub fn get(
    replica: Arc<Replica>,
    ns: Namespace,
    ids: Vec<EntryId>,
) -> ResponseStream<proto::EntryBatch> {
    let state = GetState {
        budget: message_budget(&replica),
        replica,
        ns,
        ids,
        pos: 0,
        fetched: VecDeque::new(),
    };
    fused(futures::stream::unfold(state, |mut st| async move {
        let next = st.next_batch().await;
        step(st, next)
    }))
}

struct GetState {
    replica: Arc<Replica>,
    ns: Namespace,
    ids: Vec<EntryId>,
    /// Ids before `pos` have been looked up.
    pos: usize,
    /// Looked up, not yet sent.
    fetched: VecDeque<(EntryId, Option<Bytes>)>,
    budget: usize,
}

impl GetState {
    async fn next_batch(&mut self) -> Result<Option<proto::EntryBatch>, Error> {
        let mut batch = proto::EntryBatch::default();
        let mut bytes = 0;
        loop {
            if self.fetched.is_empty() {
                if self.pos >= self.ids.len() {
                    break;
                }
                let chunk: Vec<_> = self.ids[self.pos..]
                    .iter()
                    .take(GET_CHUNK)
                    .copied()
                    .collect();
                self.pos += chunk.len();
                let found = self.replica.get(self.ns.clone(), chunk.clone()).await?;
                self.fetched.extend(chunk.into_iter().zip(found));
            }
            let Some((id, data)) = self.fetched.pop_front() else {
                break;
            };
            match data {
                Some(data) => {
                    if !batch.entries.is_empty() && bytes + data.len() > self.budget {
                        self.fetched.push_front((id, Some(data)));
                        break;
                    }
                    bytes += data.len();
                    batch.entries.push(proto::Entry {
                        id: convert::id_bytes(&id),
                        data,
                    });
                }
                None => batch.missing.push(convert::id_bytes(&id)),
            }
        }
        let empty = batch.entries.is_empty() && batch.missing.is_empty();
        Ok((!empty).then_some(batch))
    }
}

/// What a ScanSince or Watch stream sends.
pub struct LogOptions {
    with_data: bool,
    only: Option<HashSet<Namespace>>,
    heartbeat: Option<std::time::Duration>,
}

impl LogOptions {
    pub fn new(
        replica: &Replica,
        with_data: bool,
        namespaces: Vec<proto::Namespace>,
        heartbeat_ms: u32,
    ) -> Result<Self, Error> {
        let heartbeat = match heartbeat_ms {
            0 => None,
            1..100 => {
                return Err(Error::InvalidArgument(format!(
                    "heartbeat_ms {heartbeat_ms} is below the minimum of 100"
                )));
            }
            ms => Some(std::time::Duration::from_millis(ms.into())),
        };
        Replica::check_count(
            "namespaces in a filter",
            namespaces.len(),
            replica.limits().max_ids_per_request,
        )?;
        let only = namespaces
            .into_iter()
            .map(|ns| convert::namespace(Some(ns)))
            .collect::<Result<HashSet<_>, _>>()?;
        for ns in &only {
            replica.check_namespace(ns)?;
        }
        Ok(Self {
            with_data,
            only: (!only.is_empty()).then_some(only),
            heartbeat,
        })
    }
}

struct LogState {
    replica: Arc<Replica>,
    after: Seq,
    /// Records still to send; `None` follows the log forever (Watch).
    remaining: Option<usize>,
    opts: LogOptions,
    head: tokio::sync::watch::Receiver<Seq>,
}

/// ScanSince (`limit` set) and Watch (`limit` none): log records after `after`.
pub fn log(
    replica: Arc<Replica>,
    after: Seq,
    limit: Option<usize>,
    opts: LogOptions,
) -> ResponseStream<proto::LogBatch> {
    let state = LogState {
        head: replica.subscribe(),
        replica,
        after,
        remaining: limit,
        opts,
    };
    fused(futures::stream::unfold(state, |mut st| async move {
        let next = st.next_batch().await;
        step(st, next)
    }))
}

impl LogState {
    async fn next_batch(&mut self) -> Result<Option<proto::LogBatch>, Error> {
        loop {
            let limit = self.remaining.unwrap_or(usize::MAX).min(LOG_CHUNK);
            if limit == 0 {
                return Ok(None);
            }
            let budget = self.opts.with_data.then(|| message_budget(&self.replica));
            let records = self.replica.log_since(self.after, limit, budget).await?;
            if let Some(last) = records.last() {
                self.after = last.seq;
                if let Some(r) = &mut self.remaining {
                    *r -= records.len();
                }
                return Ok(Some(self.batch(records)));
            }
            if self.remaining.is_some() {
                return Ok(None);
            }
            let after = self.after;
            let heartbeat = async {
                match self.opts.heartbeat {
                    Some(every) => tokio::time::sleep(every).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.replica.shutdown_token().cancelled() => return Err(Error::ShuttingDown),
                changed = self.head.wait_for(|head| *head > after) => {
                    changed.map_err(|_| Error::ShuttingDown)?;
                }
                _ = heartbeat => {
                    return Ok(Some(proto::LogBatch {
                        head_seq: self.replica.stats().head_seq,
                        ..Default::default()
                    }));
                }
            }
        }
    }

    fn batch(&self, records: Vec<crate::store::LogRecord>) -> proto::LogBatch {
        let last = records.last().map(|r| (r.seq, r.id));
        let mut batch = proto::LogBatch {
            head_seq: self.replica.stats().head_seq,
            ..Default::default()
        };
        let mut index: HashMap<Namespace, u32> = HashMap::new();
        for r in records {
            if self
                .opts
                .only
                .as_ref()
                .is_some_and(|only| !only.contains(&r.namespace))
            {
                continue;
            }
            let next = index.len() as u32;
            let ns = *index.entry(r.namespace.clone()).or_insert_with(|| {
                batch
                    .namespaces
                    .push(convert::namespace_to_proto(&r.namespace));
                next
            });
            batch.records.push(proto::LogRecord {
                seq: r.seq,
                namespace: ns,
                id: convert::id_bytes(&r.id),
                data: r.data.unwrap_or_default(),
            });
        }
        if let Some((seq, id)) = last {
            batch.next = Some(convert::cursor_to_proto(
                self.replica.incarnation(),
                seq,
                Some(&id),
            ));
        }
        batch
    }
}
