//! A tower layer that records every gRPC call: count by method, status
//! code and kind of caller (so it runs after [`crate::identity`] has set
//! the caller), duration by method and status code, plus calls in flight.
//!
//! The record is made when the call's guard is dropped: after the trailers
//! (which carry `grpc-status`) have been sent, or when the call is abandoned,
//! so cancelled calls are counted too and the in-flight gauge always returns.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tonic::Code;
use tower::{Layer, Service};

use super::Metrics;
use crate::identity::Caller;

#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Arc<Metrics>,
    methods: Arc<HashSet<String>>,
}

impl GrpcMetricsLayer {
    /// Records calls of `methods` (`package.Service/Method`) under their
    /// names, every other path as `unknown`.
    pub fn new(metrics: Arc<Metrics>, methods: impl IntoIterator<Item = String>) -> Self {
        Self {
            metrics,
            methods: Arc::new(methods.into_iter().collect()),
        }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            metrics: self.metrics.clone(),
            methods: self.methods.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
    methods: Arc<HashSet<String>>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<RecordingBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let method = method_label(&self.methods, req.uri().path());
        let caller = req
            .extensions()
            .get::<Caller>()
            .map_or("anonymous", Caller::kind);
        let guard = CallGuard::start(self.metrics.clone(), method, caller);
        ResponseFuture {
            inner: self.inner.call(req),
            guard: Some(guard),
        }
    }
}

/// The label for a request path: a served method keeps its name, anything
/// else is `unknown`, so clients cannot grow the label set.
fn method_label(methods: &HashSet<String>, path: &str) -> String {
    match path.strip_prefix('/') {
        Some(method) if methods.contains(method) => method.to_owned(),
        _ => "unknown".to_owned(),
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.parse().ok()?))
}

fn code_label(code: Code) -> String {
    match code {
        Code::Ok => "OK".to_owned(),
        other => format!("{other:?}"),
    }
}

struct CallGuard {
    metrics: Arc<Metrics>,
    method: String,
    caller: &'static str,
    start: Instant,
    code: Option<Code>,
}

impl CallGuard {
    fn start(metrics: Arc<Metrics>, method: String, caller: &'static str) -> Self {
        metrics
            .grpc_in_flight
            .with_label_values(&[method.as_str()])
            .inc();
        Self {
            metrics,
            method,
            caller,
            start: Instant::now(),
            code: None,
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let code = code_label(self.code.unwrap_or(Code::Cancelled));
        let labels = [self.method.as_str(), code.as_str()];
        self.metrics
            .grpc_requests
            .with_label_values(&[self.method.as_str(), code.as_str(), self.caller])
            .inc();
        self.metrics
            .grpc_duration
            .with_label_values(&labels)
            .observe(self.start.elapsed().as_secs_f64());
        self.metrics
            .grpc_in_flight
            .with_label_values(&[self.method.as_str()])
            .dec();
    }
}

pin_project_lite::pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Option<CallGuard>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<RecordingBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut guard = this.guard.take().expect("polled after completion");
        Poll::Ready(match result {
            Ok(response) => {
                // A trailers-only response carries its status in the headers.
                guard.code = grpc_status(response.headers());
                Ok(response.map(|inner| RecordingBody { inner, guard }))
            }
            Err(e) => {
                guard.code = Some(Code::Internal);
                Err(e)
            }
        })
    }
}

pin_project_lite::pin_project! {
    pub struct RecordingBody<B> {
        #[pin]
        inner: B,
        guard: CallGuard,
    }
}

impl<B: Body> Body for RecordingBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(code) = frame.trailers_ref().and_then(grpc_status)
        {
            this.guard.code = Some(code);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
