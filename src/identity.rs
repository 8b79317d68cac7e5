//! Who is calling: every request carries a [`Caller`] as a request
//! extension, set once at the edge by [`IdentifyLayer`] from what the
//! connection proved (its TLS certificate), so that authorization, limits
//! and metrics read it from one place.

use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::connections::ConnectionInfo;
use crate::error::Error;
use crate::tls::CertRole;

/// The identity a request was made with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Caller {
    /// A replica of the mesh, by the name its certificate carries.
    Peer(String),
    /// An operator, by the name their certificate carries.
    Operator(String),
    /// Nothing proven.
    #[default]
    Anonymous,
}

impl Caller {
    /// The caller a request was made by.
    pub fn of<T>(request: &tonic::Request<T>) -> Caller {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or_default()
    }

    /// A low-cardinality name of the kind of caller, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Caller::Peer(_) => "peer",
            Caller::Operator(_) => "operator",
            Caller::Anonymous => "anonymous",
        }
    }
}

/// Who may make the admin calls (`PeerStatus`; later repair and backup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAccess {
    /// Anyone: callers are not authenticated (TLS is off).
    Open,
    /// Peers and operators.
    PeersAndOperators,
}

impl AdminAccess {
    pub fn check(self, caller: &Caller) -> Result<(), Error> {
        match (self, caller) {
            (AdminAccess::Open, _) | (_, Caller::Peer(_) | Caller::Operator(_)) => Ok(()),
            (AdminAccess::PeersAndOperators, Caller::Anonymous) => Err(Error::PermissionDenied(
                "admin calls need a peer's or an operator's certificate".into(),
            )),
        }
    }
}

/// Sets each request's [`Caller`] from its connection.
#[derive(Clone, Copy, Default)]
pub struct IdentifyLayer;

impl<S> Layer<S> for IdentifyLayer {
    type Service = Identify<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Identify { inner }
    }
}

#[derive(Clone)]
pub struct Identify<S> {
    inner: S,
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
        let caller = match req
            .extensions()
            .get::<ConnectionInfo>()
            .and_then(ConnectionInfo::certificate)
        {
            Some(CertRole::Peer(name)) => Caller::Peer(name.clone()),
            Some(CertRole::Operator(name)) => Caller::Operator(name.clone()),
            None => Caller::Anonymous,
        };
        req.extensions_mut().insert(caller);
        self.inner.call(req)
    }
}
