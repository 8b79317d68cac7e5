//! The streaming handlers' edge: PutEntries, and the replica's served
//! streams (see `crate::replica::Replica::serve_log`) as response streams.
//! Each stream is lazy: it does the next piece of work only when the
//! transport asks for the next message, so HTTP/2 flow control is the
//! backpressure, and dropping the stream (client gone, server stopping)
//! stops the work. No task is spawned per stream.

use std::sync::Arc;

use futures::{FutureExt, Stream, StreamExt};
use tonic::{Status, Streaming};

use super::ResponseStream;
use crate::error::Error;
use crate::proto;
use crate::proto::convert;
use crate::replica::Replica;

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

/// PutEntries: one response per request batch. Stops taking batches once the
/// replica starts shutting down, or when the client stays silent for
/// `limits.stream_idle_timeout_ms`; every acknowledged batch is committed.
/// Whether a PutEntries caller may write to the namespaces a batch's
/// entries name. A batch with one it may not is refused whole, before any
/// of it is stored.
pub struct WriteCheck {
    pub access: tokio::sync::watch::Receiver<crate::access::AccessPolicy>,
    pub caller: crate::identity::Caller,
    /// The client's fair share: each batch after the first takes a request
    /// from its rate (the call took one for the first).
    pub share: Option<Arc<crate::fair::Share>>,
    /// Replicas in the mesh: this one and the peers it pairs with, the
    /// most a batch's write concern may ask for.
    pub mesh: usize,
}

impl WriteCheck {
    /// The tenants' quotas, for a client; peers and operators have none.
    fn quotas(&self) -> Option<Arc<crate::quota::Quotas>> {
        use crate::identity::Caller;
        match self.caller {
            Caller::Peer(_) | Caller::Operator(_) => None,
            _ => Some(self.access.borrow().quotas.clone()),
        }
    }

    fn check(&self, entries: &[(bytes::Bytes, bytes::Bytes)]) -> Result<(), Status> {
        let policy = self.access.borrow();
        if !policy.restricts(&self.caller) {
            return Ok(());
        }
        let mut checked: Vec<&crate::entry::Namespace> = Vec::new();
        let envelopes: Vec<_> = entries
            .iter()
            // What does not parse is rejected by the ingest checks.
            .filter_map(|(_, data)| crate::entry::Envelope::parse(data).ok())
            .collect();
        for envelope in &envelopes {
            let ns = &envelope.namespace;
            if !checked.contains(&ns) {
                policy.check(&self.caller, ns, crate::access::Access::Write)?;
                checked.push(ns);
            }
        }
        Ok(())
    }
}

pub fn put(
    replica: Arc<Replica>,
    inbound: Streaming<proto::PutEntriesRequest>,
    may_write: WriteCheck,
) -> ResponseStream<proto::PutEntriesResponse> {
    // Each batch is checked and committed in order; its response waits
    // until the commit is durable. The next batch is committed meanwhile
    // (one ahead), so a single stream shares fsyncs with itself too.
    let committed = futures::stream::unfold(
        Some((replica, inbound, may_write, 0u64)),
        |state| async move {
            let (replica, mut inbound, may_write, batches) = state?;
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
                // Nothing is taken after an error.
                Err(status) => return Some((acked(Err(limit_status(status))), None)),
            };
            if batches > 0
                && let Some(share) = &may_write.share
            {
                share.request().await;
            }
            let (entries, concern) = match convert::put_entries(batch) {
                Ok(batch) => batch,
                Err(invalid) => return Some((acked(Err(invalid.into())), None)),
            };
            if concern.replicas as usize > may_write.mesh {
                let small = Error::MeshTooSmall {
                    asked: concern.replicas,
                    mesh: may_write.mesh,
                };
                return Some((acked(Err(small.into())), None));
            }
            if let Err(denied) = may_write.check(&entries) {
                return Some((acked(Err(denied)), None));
            }
            let confirming = (concern.replicas > 1).then(|| Confirming {
                namespaces: namespaces_of(&entries),
                // Before the commit: every log batch that carries these
                // entries asks its reader to confirm.
                _expecting: replica.confirmations().expect(),
            });
            // A client's batch is checked and stored in its turn; the turn
            // is not held while the commit waits for its fsync.
            let turn = match &may_write.share {
                Some(share) => Some(share.turn().await),
                None => None,
            };
            let committed = replica.put_within(entries, may_write.quotas()).await;
            drop(turn);
            let committed = match committed {
                Ok(committed) => committed,
                Err(e) => return Some((acked(Err(e.into())), None)),
            };
            // Where the log was once the batch was in it: what peers confirm.
            let logged = replica.stats().head_seq;
            let response = {
                let replica = replica.clone();
                async move {
                    let outcomes = committed.durable().await.map_err(Status::from)?;
                    let replicas = match confirming {
                        None => 1,
                        Some(c) => c.wait(&replica, logged, concern).await?,
                    };
                    Ok(convert::put_response(
                        outcomes,
                        replica.stats().head_seq,
                        replicas,
                    ))
                }
                .boxed()
            };
            Some((response, Some((replica, inbound, may_write, batches + 1))))
        },
    );
    fused(committed.buffered(2))
}

/// A batch that waits for peers to confirm it.
struct Confirming {
    namespaces: Vec<crate::entry::Namespace>,
    _expecting: crate::replica::confirm::Expecting,
}

impl Confirming {
    /// Waits until `concern` is met for the log up to `logged`: the
    /// replicas holding the batch, this one included, or why not.
    async fn wait(
        self,
        replica: &Replica,
        logged: crate::store::Seq,
        concern: crate::log::WriteConcern,
    ) -> Result<u32, Status> {
        let needed = concern.replicas as usize - 1;
        let waited = replica
            .confirmations()
            .wait(logged, &self.namespaces, needed, concern.timeout)
            .await;
        let metrics = replica.metrics();
        let (result, confirmers) = match &waited {
            Ok(c) => ("met", c),
            Err(c) => ("timed_out", c),
        };
        metrics
            .write_concern_batches
            .with_label_values(&[result])
            .inc();
        for (peer, after) in confirmers {
            metrics
                .peer_confirmation
                .with_label_values(&[peer.as_str()])
                .observe(after.as_secs_f64());
        }
        match waited {
            Ok(confirmers) => Ok(1 + confirmers.len() as u32),
            Err(confirmers) => Err(Error::NotConfirmed {
                asked: concern.replicas,
                confirmed: 1 + confirmers.len(),
                waited_ms: concern.timeout.as_millis(),
            }
            .into()),
        }
    }
}

/// The namespaces a batch's entries name (what does not parse is rejected
/// by the ingest checks, and needs no confirmation).
fn namespaces_of(entries: &[(bytes::Bytes, bytes::Bytes)]) -> Vec<crate::entry::Namespace> {
    let mut namespaces: Vec<_> = entries
        .iter()
        .filter_map(|(_, data)| crate::entry::Envelope::parse(data).ok())
        .map(|e| e.namespace)
        .collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    namespaces
}

/// A response that needs no waiting.
fn acked(
    response: Result<proto::PutEntriesResponse, Status>,
) -> futures::future::BoxFuture<'static, Result<proto::PutEntriesResponse, Status>> {
    futures::future::ready(response).boxed()
}

/// tonic reports a request message over the decode limit as OUT_OF_RANGE; it
/// is a limit, so the stream reports it as RESOURCE_EXHAUSTED like the others.
fn limit_status(status: Status) -> Status {
    match status.code() {
        tonic::Code::OutOfRange => Status::resource_exhausted(status.message()),
        _ => status,
    }
}

/// A domain stream of the replica's as a response stream, each item
/// converted by `to_proto`, ending after its first error.
pub fn served<T: 'static, P: Send + 'static>(
    stream: impl Stream<Item = Result<T, Error>> + Send + 'static,
    to_proto: fn(T) -> P,
) -> ResponseStream<P> {
    fused(stream.map(move |item| item.map(to_proto).map_err(Status::from)))
}
