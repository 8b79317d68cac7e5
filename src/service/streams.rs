//! The streaming handlers. Each stream is a lazy state machine: it does the
//! next piece of work only when the transport asks for the next message, so
//! HTTP/2 flow control is the backpressure, and dropping the stream (client
//! gone, server stopping) stops the work. No task is spawned per stream.

use std::collections::HashSet;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Status, Streaming};

use super::ResponseStream;
use crate::entry::{EntryId, Namespace};
use crate::error::Error;
use crate::proto;
use crate::proto::convert;
use crate::replica::outgoing::{SendGrant, SendScope};
use crate::replica::{FollowOptions, LogFollower, MAX_RELAY_DELAY, Replica};
use crate::store::Seq;

/// Ids looked up per store call when streaming entries.
const GET_CHUNK: usize = 64;

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

/// GetEntries: entries packed into messages of at most
/// [`crate::limits::Limits::message_data_budget`] bytes of data, within
/// what the call's send pools grant (see [`crate::replica::outgoing`]).
pub fn get(
    replica: Arc<Replica>,
    ns: Namespace,
    ids: Vec<EntryId>,
    send: SendScope,
) -> ResponseStream<proto::EntryBatch> {
    let state = GetState {
        budget: replica.limits().message_data_budget(),
        replica,
        ns,
        ids,
        pos: 0,
        largest_seen: 0,
        send,
        sent: None,
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
    /// Ids before `pos` have been sent.
    pos: usize,
    budget: usize,
    /// The largest entry looked up so far (0: none yet), to look up about
    /// as many as a grant holds.
    largest_seen: usize,
    send: SendScope,
    /// The data of the last message sent, until the next is asked for.
    sent: Option<SendGrant>,
}

impl GetState {
    async fn next_batch(&mut self) -> Result<Option<proto::EntryBatch>, Error> {
        // Asked for the next message: the last one has left (all but its
        // last slice, see `connections::slices`).
        self.sent = None;
        let mut grant = self
            .send
            .grant(self.replica.limits().send_grant_bytes())
            .await;
        let mut batch = proto::EntryBatch::default();
        let mut bytes = 0;
        'fill: while self.pos < self.ids.len() {
            // About as many as fit, judging by the largest entry so far.
            let take = match self.largest_seen {
                0 => 1,
                largest => (self.budget.saturating_sub(bytes) / largest).clamp(1, GET_CHUNK),
            };
            let chunk: Vec<_> = self.ids[self.pos..].iter().take(take).copied().collect();
            let found = self.replica.get(self.ns.clone(), chunk.clone()).await?;
            for (id, data) in chunk.into_iter().zip(found) {
                if let Some(data) = data {
                    self.largest_seen = self.largest_seen.max(data.len());
                    // Always one entry: it fits in the grant.
                    if !batch.entries.is_empty() && bytes + data.len() > self.budget {
                        // Looked up again for the next message rather than
                        // held meanwhile.
                        break 'fill;
                    }
                    bytes += data.len();
                    batch.entries.push(proto::Entry {
                        id: convert::id_bytes(&id),
                        data,
                    });
                } else {
                    batch.missing.push(convert::id_bytes(&id));
                }
                self.pos += 1;
            }
        }
        grant.shrink_to(bytes);
        self.sent = Some(grant);
        let empty = batch.entries.is_empty() && batch.missing.is_empty();
        Ok((!empty).then_some(batch))
    }
}

/// What a ScanSince or Watch stream sends, from the request's fields.
pub fn follow_options(
    replica: &Replica,
    with_data: bool,
    live_data: bool,
    namespaces: Vec<proto::Namespace>,
    heartbeat_ms: u32,
    relay_delay_ms: u32,
) -> Result<FollowOptions, Error> {
    let relay_delay = std::time::Duration::from_millis(relay_delay_ms.into());
    if relay_delay > MAX_RELAY_DELAY {
        return Err(Error::InvalidArgument(format!(
            "relay_delay_ms {relay_delay_ms} is above the maximum of {}",
            MAX_RELAY_DELAY.as_millis()
        )));
    }
    let heartbeat = match heartbeat_ms {
        0 => None,
        1..100 => {
            return Err(Error::InvalidArgument(format!(
                "heartbeat_ms {heartbeat_ms} is below the minimum of 100"
            )));
        }
        ms => Some(std::time::Duration::from_millis(ms.into())),
    };
    crate::limits::check_count(
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
    Ok(FollowOptions {
        with_data,
        live_data,
        only: (!only.is_empty()).then_some(only),
        heartbeat,
        relay_delay: (!relay_delay.is_zero()).then_some(relay_delay),
    })
}

/// ScanSince (`limit` set) and Watch (`limit` none): log records after `after`.
pub fn log(
    replica: Arc<Replica>,
    after: Seq,
    limit: Option<usize>,
    opts: FollowOptions,
    send: SendScope,
) -> ResponseStream<proto::LogBatch> {
    let follower = LogFollower::new(replica, after, limit, opts, send);
    Box::pin(
        follower
            .into_stream()
            .map(|batch| batch.map(convert::log_batch_to_proto).map_err(Status::from)),
    )
}
