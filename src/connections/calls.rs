//! Counting the calls each connection has open, from a call's start until
//! its response body is done or dropped: what the idle timeout and the
//! eviction of idle connections go by.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::ConnectionInfo;
use super::registry::Conn;

/// A call counted as open on its connection until dropped.
struct OpenCall(Arc<Conn>);

impl OpenCall {
    fn begin(conn: &Arc<Conn>) -> Self {
        conn.call_began();
        Self(conn.clone())
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.0.call_ended();
    }
}

/// Counts each call as open on its connection.
#[derive(Clone, Copy, Default)]
pub struct CallsLayer;

impl<S> Layer<S> for CallsLayer {
    type Service = CountCalls<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountCalls { inner }
    }
}

#[derive(Clone)]
pub struct CountCalls<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for CountCalls<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<WithCall<ResBody>>;
    type Error = S::Error;
    type Future = CallFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let call = req
            .extensions()
            .get::<ConnectionInfo>()
            .map(|info| OpenCall::begin(&info.conn));
        CallFuture {
            inner: self.inner.call(req),
            call,
        }
    }
}

pin_project_lite::pin_project! {
    pub struct CallFuture<F> {
        #[pin]
        inner: F,
        call: Option<OpenCall>,
    }
}

impl<F, ResBody, E> Future for CallFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<WithCall<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let call = this.call.take();
        Poll::Ready(Ok(response.map(|body| WithCall { body, _call: call })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call open.
    pub struct WithCall<B> {
        #[pin]
        body: B,
        _call: Option<OpenCall>,
    }
}

impl<B: http_body::Body> http_body::Body for WithCall<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
