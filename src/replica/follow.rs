//! Reading the local log forward from a position, in domain types: what a
//! ScanSince or Watch stream sends, and what a peer in this process is
//! pulled through. Each batch is read from the store only when the reader
//! asks for it, so a slow reader holds back the work, not a queue.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::watch;

use super::Replica;
use super::outgoing::{SendGrant, SendScope};
use crate::entry::Namespace;
use crate::error::{Error, Result};
pub use crate::log::{LogBatch, MAX_RELAY_DELAY};
use crate::store::{LogRecord, PeerCursor, Seq};

/// Which records of a log read carry their entry's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithData {
    No,
    /// Every record, within `budget` bytes of data (at least one record).
    All {
        budget: usize,
    },
    /// Only records of entries written here by a client, while they are
    /// still in memory, within `budget` bytes.
    ClientWritten {
        budget: usize,
    },
}

/// What a follower sends.
#[derive(Debug, Clone, Default)]
pub struct FollowOptions {
    /// Records carry their entry's data.
    pub with_data: bool,
    /// Once the follower has reached the head, records of entries written
    /// here by a client carry their data (Watch only): a peer that follows
    /// gets a new entry in one message from the replica that took it.
    pub live_data: bool,
    /// Only these namespaces, read from the store's index of them (a reader
    /// of one namespace costs its records, not the log's); `None` sends
    /// all. The reader's position still moves along the whole log: when
    /// none of its namespaces' records remain up to the head, a batch
    /// without records moves it there.
    pub only: Option<HashSet<Namespace>>,
    /// Send a heartbeat after this long without records (Watch only).
    pub heartbeat: Option<Duration>,
    /// Hold records this replica pulled from peers back up to this long,
    /// to send them together, unless a record written here by a client
    /// follows them (Watch only). A follower that pulls from every replica
    /// gets each entry from its origin; what a replica relays matters only
    /// when a link is down, and then a little later is as good.
    pub relay_delay: Option<Duration>,
}

/// Reads the log after a position: up to a number of records (ScanSince),
/// or forever, waiting for new records at the head (Watch).
pub struct LogFollower {
    replica: Arc<Replica>,
    after: Seq,
    /// Records still to send; `None` follows the log forever.
    remaining: Option<usize>,
    opts: FollowOptions,
    head: watch::Receiver<Seq>,
    /// The follower has been at the head: what follows is live.
    live: bool,
    /// The pools the data of its messages is granted from.
    send: SendScope,
    /// The data of the last message sent, until the next is asked for.
    sent: Option<SendGrant>,
}

impl LogFollower {
    /// Follows from `after`, an already checked resume point (see
    /// [`Replica::resume_point`]).
    pub fn new(
        replica: Arc<Replica>,
        after: Seq,
        limit: Option<usize>,
        opts: FollowOptions,
        send: SendScope,
    ) -> Self {
        Self {
            send,
            // Starting at the head, everything that follows is live.
            live: after >= replica.stats().head_seq,
            head: replica.subscribe(),
            replica,
            after,
            remaining: limit,
            opts,
            sent: None,
        }
    }

    /// The follower as a stream that ends after its first error.
    pub fn into_stream(self) -> impl Stream<Item = Result<LogBatch>> + Send + 'static {
        futures::stream::unfold((self, false), |(mut f, failed)| async move {
            if failed {
                return None;
            }
            match f.next_batch().await {
                Ok(Some(batch)) => Some((Ok(batch), (f, false))),
                Ok(None) => None,
                Err(e) => Some((Err(e), (f, true))),
            }
        })
    }

    /// The next batch, a heartbeat, or `None` once a ScanSince is done.
    pub async fn next_batch(&mut self) -> Result<Option<LogBatch>> {
        let limits = *self.replica.limits();
        // Asked for the next message: the last one has left (all but its
        // last slice, see `connections::slices`).
        self.sent = None;
        let mut held = false;
        loop {
            let limit = self
                .remaining
                .unwrap_or(usize::MAX)
                .min(limits.log_records_per_message());
            if limit == 0 {
                return Ok(None);
            }
            let live_data = self.opts.live_data && self.live && self.remaining.is_none();
            let with_data = self.opts.with_data || live_data;
            let wanted = if with_data {
                limits.send_grant_bytes()
            } else {
                0
            };
            let mut grant = self.send.grant(wanted).await;
            let budget = grant.bytes().min(limits.message_data_budget());
            let with = match self.opts {
                FollowOptions {
                    with_data: true, ..
                } => WithData::All { budget },
                _ if live_data => WithData::ClientWritten { budget },
                _ => WithData::No,
            };
            // A filtered read that finds nothing has passed over everything
            // up to the head before it (see `Replica::log_since`).
            let head = self.replica.stats().head_seq;
            let only = self.opts.only.as_ref();
            let records = self
                .replica
                .log_since(self.after, limit, with, only)
                .await?;
            if !records.is_empty()
                && !held
                && let Some(delay) = self.relay_delay()
                && self.replica.only_relayed_after(self.after)
            {
                held = true;
                self.hold(delay).await?;
                continue;
            }
            if let Some(last) = records.last() {
                self.after = last.seq;
                if let Some(r) = &mut self.remaining {
                    *r -= records.len();
                }
                grant.shrink_to(
                    records
                        .iter()
                        .filter_map(|r| r.data.as_ref())
                        .map(Bytes::len)
                        .sum(),
                );
                self.sent = Some(grant);
                return Ok(Some(self.batch(records)));
            }
            drop(grant);
            if only.is_some() && head > self.after {
                // Nothing of its namespaces up to `head`: the reader's
                // position moves there, once, so its cursor and lag follow
                // the log without it being sent what it did not ask for.
                self.live = true;
                return self.advance_to(head).await.map(Some);
            }
            if self.remaining.is_some() {
                return Ok(None);
            }
            self.live = true;
            let after = self.after;
            let heartbeat = async {
                match self.opts.heartbeat {
                    Some(every) => tokio::time::sleep(every).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = self.replica.shutdown_token().cancelled() => return Err(Error::ShuttingDown),
                changed = self.head.wait_for(|head| *head > after) => {
                    changed.map_err(|_| Error::ShuttingDown)?;
                }
                _ = heartbeat => {
                    return Ok(Some(LogBatch {
                        records: Vec::new(),
                        next: None,
                        head_seq: self.replica.stats().head_seq,
                        confirm: self.replica.confirmations().wanted(),
                    }));
                }
            }
        }
    }

    fn relay_delay(&self) -> Option<Duration> {
        match self.remaining {
            None => self.opts.relay_delay,
            Some(_) => None,
        }
    }

    /// Lets relayed records gather for up to `delay`; returns early once a
    /// record written here by a client follows them.
    async fn hold(&mut self, delay: Duration) -> Result<()> {
        let until = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                biased;
                _ = self.replica.shutdown_token().cancelled() => return Err(Error::ShuttingDown),
                _ = tokio::time::sleep_until(until) => return Ok(()),
                changed = self.head.changed() => {
                    changed.map_err(|_| Error::ShuttingDown)?;
                    if !self.replica.only_relayed_after(self.after) {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// A batch without records that moves the reader's position to `seq`.
    async fn advance_to(&mut self, seq: Seq) -> Result<LogBatch> {
        let id_at_seq = self.replica.log_at(seq).await?.ok_or_else(|| {
            Error::Internal(format!("no log record at seq {seq}, below the head"))
        })?;
        self.after = seq;
        Ok(LogBatch {
            records: Vec::new(),
            next: Some(PeerCursor {
                incarnation: self.replica.incarnation(),
                seq,
                id_at_seq,
            }),
            head_seq: self.replica.stats().head_seq,
            confirm: self.replica.confirmations().wanted(),
        })
    }

    /// Records read (of the follower's namespaces only, when it has some).
    fn batch(&self, records: Vec<LogRecord>) -> LogBatch {
        let next = records.last().map(|r| PeerCursor {
            incarnation: self.replica.incarnation(),
            seq: r.seq,
            id_at_seq: r.id,
        });
        LogBatch {
            records,
            next,
            head_seq: self.replica.stats().head_seq,
            confirm: self.replica.confirmations().wanted(),
        }
    }
}
