//! Who is calling: every request carries a [`Caller`] as a request
//! extension, set once at the edge by [`IdentifyLayer`] from what the
//! connection proved (its TLS certificate) or the request's signed
//! credentials ([`crate::auth`]), so that authorization, limits and
//! metrics read it from one place.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::auth::{AUTH_HEADER, AuthError, Verifier};
use crate::connections::ConnectionInfo;
use crate::tls::CertRole;

/// The identity a request was made with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Caller {
    /// A replica of the mesh, by the name its certificate carries.
    Peer(String),
    /// An operator, by the name their certificate carries.
    Operator(String),
    /// A client, by the ed25519 key it signed the request with.
    Client([u8; 32]),
    /// Credentials that were not taken, and why.
    Refused(String),
    /// Nothing proven.
    #[default]
    Anonymous,
}

impl Caller {
    /// The kind of caller, as metrics label it.
    pub fn kind(&self) -> &'static str {
        match self {
            Caller::Peer(_) => "peer",
            Caller::Operator(_) => "operator",
            Caller::Client(_) => "client",
            Caller::Refused(_) => "refused",
            Caller::Anonymous => "anonymous",
        }
    }

    /// The caller a request was made by.
    pub fn of<T>(request: &tonic::Request<T>) -> Caller {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or_default()
    }
}

/// Sets each request's [`Caller`]: from its connection's certificate, else
/// from its signed credentials, checked by `verifier`.
#[derive(Clone)]
pub struct IdentifyLayer {
    pub verifier: Arc<Verifier>,
}

impl<S> Layer<S> for IdentifyLayer {
    type Service = Identify<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Identify {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Identify<S> {
    inner: S,
    verifier: Arc<Verifier>,
}

impl<S, B> Service<http::Request<B>> for Identify<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let conn = req.extensions().get::<ConnectionInfo>();
        let proven = conn.map(|c| c.proven.clone()).unwrap_or_default();
        let caller = match conn.and_then(ConnectionInfo::certificate) {
            Some(CertRole::Peer(name)) => Caller::Peer(name.clone()),
            Some(CertRole::Operator(name)) => Caller::Operator(name.clone()),
            None => match req.headers().get(AUTH_HEADER) {
                None => Caller::Anonymous,
                Some(value) => match value.to_str() {
                    Err(_) => Caller::Refused(AuthError::Malformed.to_string()),
                    Ok(value) => match self.verifier.verify_on(value, &proven) {
                        Ok(key) => Caller::Client(key),
                        Err(e) => Caller::Refused(e.to_string()),
                    },
                },
            },
        };
        req.extensions_mut().insert(caller);
        self.inner.call(req)
    }
}
