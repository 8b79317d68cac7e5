//! What a replica serves to whoever syncs with it, a gRPC call or a peer in
//! this process, in domain types: its log from a cursor, and entries by id
//! within the send pools. The gRPC handlers convert at the edge; the
//! in-process adapter maps errors. Each stream does the next piece of work
//! only when asked for the next item, so a slow reader holds back the
//! work, not a queue.

use std::sync::Arc;

use futures::Stream;

use super::outgoing::{SendGrant, SendScope};
use super::{FollowOptions, LogFollower, Replica};
use crate::entry::{EntryId, Namespace};
use crate::error::Result;
use crate::limits::check_count;
use crate::log::{EntryChunk, FollowRequest, LogBatch};

/// Ids looked up per store call when streaming entries.
const GET_CHUNK: usize = 64;

impl Replica {
    /// The log after `request.from`: `limit` records of the asked
    /// namespaces (ScanSince), or forever (Watch). Checks the namespaces
    /// and the cursor first.
    pub async fn serve_log(
        self: &Arc<Self>,
        request: FollowRequest,
        limit: Option<usize>,
        send: SendScope,
    ) -> Result<impl Stream<Item = Result<LogBatch>> + Send + 'static> {
        check_count(
            "namespaces in a filter",
            request.namespaces.len(),
            self.limits().max_ids_per_request,
        )?;
        for ns in &request.namespaces {
            self.check_namespace(ns)?;
        }
        let after = self.resume_point(request.from).await?;
        let opts = FollowOptions {
            with_data: request.with_data,
            live_data: request.live_data,
            only: (!request.namespaces.is_empty())
                .then(|| request.namespaces.into_iter().collect()),
            heartbeat: request.heartbeat,
            relay_delay: request.relay_delay,
        };
        Ok(LogFollower::new(self.clone(), after, limit, opts, send).into_stream())
    }

    /// The entries of `ids` in `ns`, packed into chunks of at most
    /// [`crate::limits::Limits::message_data_budget`] bytes of data, within
    /// what `send` grants (see [`super::outgoing`]); ids not held are named.
    pub fn serve_entries(
        self: &Arc<Self>,
        ns: Namespace,
        ids: Vec<EntryId>,
        send: SendScope,
    ) -> Result<impl Stream<Item = Result<EntryChunk>> + Send + 'static> {
        self.check_namespace(&ns)?;
        let state = Entries {
            budget: self.limits().message_data_budget(),
            replica: self.clone(),
            ns,
            ids,
            pos: 0,
            largest_seen: 0,
            send,
            sent: None,
        };
        Ok(futures::stream::unfold(
            (state, false),
            |(mut st, failed)| async move {
                if failed {
                    return None;
                }
                match st.next_chunk().await {
                    Ok(Some(chunk)) => Some((Ok(chunk), (st, false))),
                    Ok(None) => None,
                    Err(e) => Some((Err(e), (st, true))),
                }
            },
        ))
    }
}

struct Entries {
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
    /// The data of the last chunk sent, until the next is asked for.
    sent: Option<SendGrant>,
}

impl Entries {
    async fn next_chunk(&mut self) -> Result<Option<EntryChunk>> {
        // Asked for the next chunk: the last one has left (all but its
        // last slice, see `connections::slices`).
        self.sent = None;
        let mut grant = self
            .send
            .grant(self.replica.limits().send_grant_bytes())
            .await;
        let mut chunk = EntryChunk::default();
        let mut bytes = 0;
        'fill: while self.pos < self.ids.len() {
            // About as many as fit, judging by the largest entry so far.
            let take = match self.largest_seen {
                0 => 1,
                largest => (self.budget.saturating_sub(bytes) / largest).clamp(1, GET_CHUNK),
            };
            let asked: Vec<_> = self.ids[self.pos..].iter().take(take).copied().collect();
            let found = self.replica.get(self.ns.clone(), asked.clone()).await?;
            for (id, data) in asked.into_iter().zip(found) {
                if let Some(data) = data {
                    self.largest_seen = self.largest_seen.max(data.len());
                    // Always one entry: it fits in the grant.
                    if !chunk.entries.is_empty() && bytes + data.len() > self.budget {
                        // Looked up again for the next chunk rather than
                        // held meanwhile.
                        break 'fill;
                    }
                    bytes += data.len();
                    chunk.entries.push((id, data));
                } else {
                    chunk.missing.push(id);
                }
                self.pos += 1;
            }
        }
        grant.shrink_to(bytes);
        self.sent = Some(grant);
        let empty = chunk.entries.is_empty() && chunk.missing.is_empty();
        Ok((!empty).then_some(chunk))
    }
}
