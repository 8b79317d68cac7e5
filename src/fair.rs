//! Fair shares per identity: what one client holds cannot starve another.
//!
//! Every call from a client is charged to its identity: its key when it
//! signed the request, else its source address (client authentication off,
//! or credentials that were refused). Peers and operators, proven by their
//! certificates, are the mesh's own members and are not charged here (the
//! connection caps still bound them). Each identity has:
//!
//! - **a request rate**: a token bucket of `limits.client_request_burst`
//!   refilled at `limits.client_requests_per_second`. A call takes a token
//!   when it starts, and a PutEntries stream one more for each batch after
//!   its first. A call that finds none is refused with RESOURCE_EXHAUSTED;
//!   a stream's batch waits for one, so a fast writer is slowed, not cut off;
//! - **calls open at once**: at most `limits.max_calls_per_client`, from a
//!   call's start until its response is done or dropped (a Watch counts for
//!   as long as it is open). One more is refused with RESOURCE_EXHAUSTED;
//! - **a send budget**: a pool of `limits.max_send_data_per_client_mb` that
//!   its responses' data is granted from, beside the connection's, the
//!   address's and the replica's (see [`crate::replica::outgoing`]);
//! - **turns at the write path**: a client's batch is checked and stored
//!   in one of `limits.client_write_turns` turns that all clients share,
//!   handed out in rotation between the clients that wait for one. A
//!   client alone takes every turn; beside others, one that sends a
//!   thousand batches at once waits its turn like one that sends one, so
//!   the work it makes cannot push another's batches back by more than a
//!   round. (Peers' pulls take no turns.)
//!
//! At most `limits.max_tracked_clients` identities are kept. An identity
//! with nothing open and a full bucket is forgotten when room is needed;
//! while every tracked identity is busy, new ones share one overflow share,
//! so memory stays bounded whatever keys callers make up.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::connections::ConnectionInfo;
use crate::identity::Caller;
use crate::metrics::Metrics;
use crate::replica::outgoing::BytePool;

/// `limits.client_*`, checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FairLimits {
    pub requests_per_second: f64,
    pub burst: f64,
    pub max_calls: usize,
    pub send_bytes: usize,
    pub max_tracked: usize,
    /// Batches all clients together may have in the write path at once
    /// (`limits.client_write_turns`; 0 there: one per core).
    pub write_turns: usize,
}

impl Default for FairLimits {
    fn default() -> Self {
        Self {
            requests_per_second: 1_000.0,
            burst: 2_000.0,
            max_calls: 256,
            send_bytes: 16 << 20,
            max_tracked: 10_000,
            write_turns: 2,
        }
    }
}

/// Which limit a call ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Rate,
    Calls,
}

impl Limited {
    pub const ALL: [Limited; 2] = [Limited::Rate, Limited::Calls];

    pub fn label(self) -> &'static str {
        match self {
            Limited::Rate => "rate",
            Limited::Calls => "calls",
        }
    }
}

/// Who a call is charged to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Charged {
    Key([u8; 32]),
    Address(IpAddr),
    /// New identities while every tracked one is busy.
    Overflow,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One identity's share: its bucket, its open calls, its send pool, and
/// its place in the rotation of turns.
pub struct Share {
    limits: FairLimits,
    bucket: Mutex<Bucket>,
    calls: AtomicUsize,
    send: BytePool,
    turns: Arc<Turns>,
    /// Its batches waiting for a turn, first come first served.
    waiting: Mutex<std::collections::VecDeque<oneshot::Sender<Turn>>>,
}

impl Share {
    fn new(limits: FairLimits, turns: Arc<Turns>) -> Self {
        Self {
            limits,
            bucket: Mutex::new(Bucket {
                tokens: limits.burst,
                at: Instant::now(),
            }),
            calls: AtomicUsize::new(0),
            send: BytePool::new(limits.send_bytes),
            turns,
            waiting: Mutex::new(Default::default()),
        }
    }

    /// Waits for a turn at the write path (see the module docs).
    pub async fn turn(self: &Arc<Self>) -> Turn {
        let waiting = {
            let mut ring = self.turns.lock();
            if ring.free > 0 {
                ring.free -= 1;
                return Turn(self.turns.clone());
            }
            let (tx, rx) = oneshot::channel();
            let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            if waiting.is_empty() {
                ring.clients.push_back(self.clone());
            }
            waiting.push_back(tx);
            rx
        };
        // A turn passed to a waiter dropped meanwhile is dropped with the
        // channel, which hands it on.
        waiting
            .await
            .expect("a waiter's turn is sent or its sender kept")
    }

    /// The pool this identity's response data is granted from.
    pub fn send_pool(&self) -> &BytePool {
        &self.send
    }

    /// Takes a token, or says how long until one is there.
    fn take(&self) -> Result<(), Duration> {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refilled =
            now.duration_since(bucket.at).as_secs_f64() * self.limits.requests_per_second;
        bucket.tokens = (bucket.tokens + refilled).min(self.limits.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) / self.limits.requests_per_second;
        Err(Duration::from_secs_f64(wait))
    }

    /// Waits for a token (a stream's next message).
    pub async fn request(&self) {
        while let Err(wait) = self.take() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Whether the bucket has refilled: nothing would be lost by forgetting it.
    fn is_rested(&self) -> bool {
        let bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let refilled = bucket.at.elapsed().as_secs_f64() * self.limits.requests_per_second;
        bucket.tokens + refilled >= self.limits.burst
    }

    /// A call starting: within the open calls and the rate, or which not.
    fn admit(self: &Arc<Self>) -> Result<OpenCall, Limited> {
        if self.calls.fetch_add(1, Ordering::AcqRel) >= self.limits.max_calls {
            self.calls.fetch_sub(1, Ordering::AcqRel);
            return Err(Limited::Calls);
        }
        let call = OpenCall(self.clone());
        self.take().map_err(|_| Limited::Rate)?;
        Ok(call)
    }
}

/// The turns at the write path, and the clients waiting for one, in
/// rotation.
struct Turns {
    ring: Mutex<Ring>,
}

struct Ring {
    free: usize,
    /// Clients with a batch waiting, each once, in the order they get one.
    clients: std::collections::VecDeque<Arc<Share>>,
}

impl Turns {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A turn at the write path, until dropped: then the next client in the
/// rotation with a batch waiting gets it.
pub struct Turn(Arc<Turns>);

impl Drop for Turn {
    fn drop(&mut self) {
        let turns = self.0.clone();
        let mut ring = turns.lock();
        while let Some(client) = ring.clients.pop_front() {
            let mut waiting = client.waiting.lock().unwrap_or_else(|e| e.into_inner());
            while let Some(waiter) = waiting.pop_front() {
                if waiter.is_closed() {
                    continue;
                }
                if !waiting.is_empty() {
                    ring.clients.push_back(client.clone());
                }
                // The receiver is alive: it gets the turn, or, should it be
                // dropped before taking it, drops it (after this lock is
                // released, as the channel is not dropped here).
                if let Err(turn) = waiter.send(Turn(turns.clone())) {
                    // Closed since: this drop hands the turn on again.
                    drop(waiting);
                    drop(ring);
                    drop(turn);
                }
                return;
            }
        }
        ring.free += 1;
    }
}

/// A call counted as open against its identity until dropped.
pub struct OpenCall(Arc<Share>);

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.0.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every tracked identity's share.
pub struct Shares {
    limits: FairLimits,
    tracked: Mutex<Tracked>,
    turns: Arc<Turns>,
    metrics: Arc<Metrics>,
}

struct Tracked {
    shares: HashMap<Charged, Arc<Share>>,
    /// When a full map last had nothing to forget: no sweep before a second.
    full_since: Option<Instant>,
}

impl Shares {
    pub fn new(limits: FairLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            limits,
            tracked: Mutex::new(Tracked {
                shares: HashMap::new(),
                full_since: None,
            }),
            turns: Arc::new(Turns {
                ring: Mutex::new(Ring {
                    free: limits.write_turns,
                    clients: Default::default(),
                }),
            }),
            metrics,
        }
    }

    /// The share a call from `caller` over `from` is charged to; `None` for
    /// the mesh's own members (and calls with no connection to charge).
    pub fn share_of(&self, caller: &Caller, from: Option<IpAddr>) -> Option<Arc<Share>> {
        let charged = match caller {
            Caller::Peer(_) | Caller::Operator(_) => return None,
            Caller::Client(key) => Charged::Key(*key),
            Caller::Refused(_) | Caller::Anonymous => Charged::Address(from?),
        };
        let mut tracked = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(share) = tracked.shares.get(&charged) {
            return Some(share.clone());
        }
        if tracked.shares.len() >= self.limits.max_tracked && !tracked.make_room() {
            let overflow = tracked
                .shares
                .entry(Charged::Overflow)
                .or_insert_with(|| Arc::new(Share::new(self.limits, self.turns.clone())));
            return Some(overflow.clone());
        }
        let share = Arc::new(Share::new(self.limits, self.turns.clone()));
        tracked.shares.insert(charged, share.clone());
        self.metrics
            .clients_tracked
            .set(tracked.shares.len() as i64);
        Some(share)
    }

    fn refused(&self, limit: Limited) {
        self.metrics
            .client_calls_limited
            .with_label_values(&[limit.label()])
            .inc();
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.tracked.lock().unwrap().shares.len()
    }
}

impl Tracked {
    /// Forgets the identities with nothing open and a full bucket; at most
    /// one sweep a second while none can go.
    fn make_room(&mut self) -> bool {
        if self
            .full_since
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return false;
        }
        let before = self.shares.len();
        self.shares
            .retain(|_, share| Arc::strong_count(share) > 1 || !share.is_rested());
        let made = self.shares.len() < before;
        self.full_since = (!made).then(Instant::now);
        made
    }
}

/// Charges each call to its caller's share (after [`crate::identity`]
/// has set the caller), refusing what is over its limits; the share rides
/// on the request for the handlers (a stream's batches, the send pools).
#[derive(Clone)]
pub struct FairLayer {
    pub shares: Arc<Shares>,
}

impl<S> Layer<S> for FairLayer {
    type Service = Fair<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Fair {
            inner,
            shares: self.shares.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Fair<S> {
    inner: S,
    shares: Arc<Shares>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Fair<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<FairBody<ResBody>>;
    type Error = S::Error;
    type Future = FairFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let from = req
            .extensions()
            .get::<ConnectionInfo>()
            .and_then(|c| c.tcp.remote_addr())
            .map(|a| a.ip());
        let caller = req
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or_default();
        let Some(share) = self.shares.share_of(&caller, from) else {
            return FairFuture::Served {
                inner: self.inner.call(req),
                call: None,
            };
        };
        match share.admit() {
            Ok(call) => {
                req.extensions_mut().insert(share);
                FairFuture::Served {
                    inner: self.inner.call(req),
                    call: Some(call),
                }
            }
            Err(limit) => {
                self.shares.refused(limit);
                let why = match limit {
                    Limited::Rate => format!(
                        "this client is over its {} requests a second; retry later",
                        self.shares.limits.requests_per_second
                    ),
                    Limited::Calls => format!(
                        "this client has {} calls open, its limit; finish one first",
                        self.shares.limits.max_calls
                    ),
                };
                FairFuture::Refused {
                    status: Some(tonic::Status::resource_exhausted(why)),
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    #[project = FairFutureProj]
    pub enum FairFuture<F> {
        Served { #[pin] inner: F, call: Option<OpenCall> },
        Refused { status: Option<tonic::Status> },
    }
}

impl<F, ResBody, E> Future for FairFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<FairBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            FairFutureProj::Served { inner, call } => {
                let response = std::task::ready!(inner.poll(cx))?;
                let call = call.take();
                Poll::Ready(Ok(
                    response.map(|body| FairBody::Served { body, _call: call })
                ))
            }
            FairFutureProj::Refused { status } => {
                let status = status.take().expect("polled after completion");
                Poll::Ready(Ok(status.into_http()))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call open against its identity; or,
    /// for a refused call, none (its status is in the headers).
    #[project = FairBodyProj]
    pub enum FairBody<B> {
        Served { #[pin] body: B, _call: Option<OpenCall> },
        Refused,
    }
}

// `pin_project_lite` takes no `#[default]` on a variant.
#[allow(clippy::derivable_impls)]
impl<B> Default for FairBody<B> {
    fn default() -> Self {
        FairBody::Refused
    }
}

impl<B: http_body::Body> http_body::Body for FairBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match self.project() {
            FairBodyProj::Served { body, .. } => body.poll_frame(cx),
            FairBodyProj::Refused => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            FairBody::Served { body, .. } => body.is_end_stream(),
            FairBody::Refused => true,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            FairBody::Served { body, .. } => body.size_hint(),
            FairBody::Refused => http_body::SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: Caller = Caller::Client([1; 32]);
    const KEY_B: Caller = Caller::Client([2; 32]);

    fn shares(limits: FairLimits) -> Shares {
        Shares::new(limits, Arc::new(Metrics::new()))
    }

    fn limits() -> FairLimits {
        FairLimits {
            requests_per_second: 10.0,
            burst: 5.0,
            max_calls: 3,
            send_bytes: 1 << 20,
            max_tracked: 4,
            write_turns: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn turns_go_round_the_clients_that_wait() {
        let shares = shares(limits());
        let a = shares.share_of(&KEY_A, None).unwrap();
        let b = shares.share_of(&KEY_B, None).unwrap();
        let first = a.turn().await;
        let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let mut waiting = tokio::task::JoinSet::new();
        // Three of a's batches queue, then one of b's.
        for (who, share) in [("a1", &a), ("a2", &a), ("a3", &a), ("b1", &b)] {
            let (share, order_tx) = (share.clone(), order_tx.clone());
            waiting.spawn(async move {
                let _turn = share.turn().await;
                order_tx.send(who).unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            });
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // A waiter that gives up passes its turn on.
        let gave_up = {
            let a = a.clone();
            tokio::spawn(async move { a.turn().await })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        gave_up.abort();
        drop(first);
        while waiting.join_next().await.is_some() {}
        drop(order_tx);
        let mut got = Vec::new();
        while let Some(who) = order.recv().await {
            got.push(who);
        }
        // b's one batch goes second, not after all of a's.
        assert_eq!(got, ["a1", "b1", "a2", "a3"]);
        // Every turn came back.
        let again = a.turn().await;
        drop(again);
        assert_eq!(shares.turns.lock().free, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_over_its_rate_is_refused_and_another_is_not() {
        let shares = shares(limits());
        let a = shares.share_of(&KEY_A, None).unwrap();
        for _ in 0..5 {
            drop(a.admit().unwrap());
        }
        assert_eq!(a.admit().err(), Some(Limited::Rate));
        let b = shares.share_of(&KEY_B, None).unwrap();
        assert!(b.admit().is_ok(), "another key has a bucket of its own");
        // A token comes back every 100 ms.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(a.admit().is_ok());
        assert_eq!(a.admit().err(), Some(Limited::Rate));
    }

    #[tokio::test(start_paused = true)]
    async fn open_calls_are_capped_until_one_ends() {
        let shares = shares(limits());
        let a = shares.share_of(&KEY_A, None).unwrap();
        let open: Vec<_> = (0..3).map(|_| a.admit().unwrap()).collect();
        assert_eq!(a.admit().err(), Some(Limited::Calls));
        drop(open);
        assert!(a.admit().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_waits_for_its_next_token() {
        let shares = shares(limits());
        let a = shares.share_of(&KEY_A, None).unwrap();
        let start = Instant::now();
        for _ in 0..7 {
            a.request().await;
        }
        // 5 at once, then one every 100 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn members_are_not_charged_and_anonymous_callers_go_by_address() {
        let shares = shares(limits());
        assert!(shares.share_of(&Caller::Peer("r1".into()), None).is_none());
        assert!(shares.share_of(&Caller::Anonymous, None).is_none());
        let here: IpAddr = "10.0.0.1".parse().unwrap();
        let one = shares.share_of(&Caller::Anonymous, Some(here)).unwrap();
        let two = shares
            .share_of(&Caller::Refused("bad".into()), Some(here))
            .unwrap();
        assert!(Arc::ptr_eq(&one, &two));
    }

    #[tokio::test(start_paused = true)]
    async fn identities_beyond_the_cap_are_forgotten_when_rested_or_share_the_overflow() {
        let shares = shares(limits());
        let busy: Vec<_> = (0..4u8)
            .map(|i| shares.share_of(&Caller::Client([i; 32]), None).unwrap())
            .collect();
        // Every tracked identity is held: a new one shares the overflow.
        let new = shares.share_of(&Caller::Client([9; 32]), None).unwrap();
        let newer = shares.share_of(&Caller::Client([8; 32]), None).unwrap();
        assert!(Arc::ptr_eq(&new, &newer));
        assert_eq!(shares.tracked(), 5);
        drop((busy, new, newer));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let fresh = shares.share_of(&Caller::Client([7; 32]), None).unwrap();
        assert_eq!(shares.tracked(), 1, "rested identities were forgotten");
        drop(fresh);
    }
}
