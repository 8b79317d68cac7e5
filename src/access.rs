//! Who may read and write which namespace: the access policy, checked by
//! the Store handlers against the request's [`Caller`].
//!
//! - Peers and operators (by their certificates) may do everything.
//! - With client authentication required (the default), a client must
//!   sign its requests ([`crate::auth`]): no credentials, or bad ones, get
//!   UNAUTHENTICATED; a key without the right gets PERMISSION_DENIED.
//!   A namespace's own `readers` and `writers` decide; a namespace without
//!   its own lists follows the default lists. `*` stands for any key.
//! - With client authentication off (said explicitly in config, and warned
//!   about at start), anyone may read and write every namespace.
//!
//! Reading across namespaces (a log scan or watch without a namespace
//! filter) needs the right to read every namespace: `*`-less default
//! readers cannot, so a client lists the namespaces it follows.

use std::collections::{HashMap, HashSet};

use crate::entry::Namespace;
use crate::error::Error;
use crate::identity::Caller;

/// Keys allowed something.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys {
    /// Any authenticated key.
    pub any: bool,
    pub keys: HashSet<[u8; 32]>,
}

impl Keys {
    fn allows(&self, key: &[u8; 32]) -> bool {
        self.any || self.keys.contains(key)
    }
}

/// The readers and writers of a namespace (or the defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rights {
    pub readers: Keys,
    pub writers: Keys,
}

/// What a request does with a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// `[auth]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    pub access: AccessPolicy,
    /// How far a client's clock may be from this replica's.
    pub max_clock_skew: std::time::Duration,
    /// Signed requests remembered at once (to refuse them a second time).
    pub max_recent_requests: usize,
}

/// Who may make the admin calls (`PeerStatus`; later repair and backup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAccess {
    /// Anyone: callers are not authenticated at all (TLS and client
    /// authentication both off).
    Open,
    /// Peers and operators: by their certificates, or operators' keys.
    PeersAndOperators,
}

/// The access policy (reloaded without a restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    /// Clients must sign their requests; `false` lets anyone in.
    pub clients_required: bool,
    /// Keys of operators, who may make the admin calls.
    pub operators: Keys,
    /// For namespaces without rights of their own.
    pub default: Rights,
    pub namespaces: HashMap<Namespace, Rights>,
    /// What clients may store per tenant (`[quotas]`).
    pub quotas: std::sync::Arc<crate::quota::Quotas>,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        Self {
            clients_required: true,
            operators: Keys::default(),
            default: Rights::default(),
            namespaces: HashMap::new(),
            quotas: Default::default(),
        }
    }
}

impl AccessPolicy {
    /// Anyone may do anything (client authentication off).
    pub fn open() -> Self {
        Self {
            clients_required: false,
            ..Self::default()
        }
    }

    fn rights(&self, ns: &Namespace) -> &Rights {
        self.namespaces.get(ns).unwrap_or(&self.default)
    }

    /// Whether `caller` may `access` `ns`.
    pub fn check(&self, caller: &Caller, ns: &Namespace, access: Access) -> Result<(), Error> {
        let key = match self.client_key(caller)? {
            None => return Ok(()),
            Some(key) => key,
        };
        let rights = self.rights(ns);
        let (keys, verb) = match access {
            Access::Read => (&rights.readers, "read"),
            Access::Write => (&rights.writers, "write"),
        };
        match keys.allows(key) {
            true => Ok(()),
            false => Err(Error::PermissionDenied(format!(
                "key {} may not {verb} namespace {ns}",
                short(key)
            ))),
        }
    }

    /// Whether `caller` may read every namespace (a scan or a watch with
    /// no namespace filter).
    pub fn check_read_all(&self, caller: &Caller) -> Result<(), Error> {
        let key = match self.client_key(caller)? {
            None => return Ok(()),
            Some(key) => key,
        };
        let everywhere = self.default.readers.allows(key)
            && self.namespaces.values().all(|r| r.readers.allows(key));
        match everywhere {
            true => Ok(()),
            false => Err(Error::PermissionDenied(format!(
                "key {} may not read every namespace: name the namespaces to read",
                short(key)
            ))),
        }
    }

    /// Whether `caller` may make the admin calls.
    pub fn check_admin(&self, caller: &Caller, admin: AdminAccess) -> Result<(), Error> {
        match (admin, caller) {
            (AdminAccess::Open, _) | (_, Caller::Peer(_) | Caller::Operator(_)) => Ok(()),
            (_, Caller::Client(key)) if self.operators.allows(key) => Ok(()),
            (_, Caller::Refused(why)) => Err(Error::Unauthenticated(why.clone())),
            _ => Err(Error::PermissionDenied(
                "admin calls need a peer's or an operator's certificate, or an operator's key"
                    .into(),
            )),
        }
    }

    /// Whether what `caller` may do depends on the namespace (a client
    /// while authentication is required).
    pub fn restricts(&self, caller: &Caller) -> bool {
        matches!(self.client_key(caller), Ok(Some(_)))
    }

    /// Whether `caller` may make calls that concern no namespace (`Head`).
    pub fn check_known(&self, caller: &Caller) -> Result<(), Error> {
        self.client_key(caller).map(|_| ())
    }

    /// `None` when the caller may do anything; the client's key when its
    /// rights decide; an error when it is not authenticated.
    fn client_key<'a>(&self, caller: &'a Caller) -> Result<Option<&'a [u8; 32]>, Error> {
        match caller {
            Caller::Peer(_) | Caller::Operator(_) => Ok(None),
            _ if !self.clients_required => Ok(None),
            Caller::Client(key) => Ok(Some(key)),
            Caller::Refused(why) => Err(Error::Unauthenticated(why.clone())),
            Caller::Anonymous => Err(Error::Unauthenticated(format!(
                "sign requests with a client key ({})",
                crate::auth::AUTH_HEADER
            ))),
        }
    }
}

/// The start of a key, to name it in messages and logs.
pub fn short(key: &[u8; 32]) -> String {
    hex::encode(&key[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(db: &str) -> Namespace {
        Namespace::new("acme", db).unwrap()
    }

    #[test]
    fn rights_follow_the_namespace_then_the_defaults() {
        let (alice, bob) = ([1u8; 32], [2u8; 32]);
        let mut policy = AccessPolicy::default();
        policy.default.readers.any = true;
        policy.namespaces.insert(
            ns("private"),
            Rights {
                readers: Keys {
                    any: false,
                    keys: [alice].into(),
                },
                writers: Keys {
                    any: false,
                    keys: [alice].into(),
                },
            },
        );
        let (a, b) = (Caller::Client(alice), Caller::Client(bob));
        assert!(policy.check(&a, &ns("private"), Access::Write).is_ok());
        let denied = policy.check(&b, &ns("private"), Access::Read).unwrap_err();
        assert!(matches!(denied, Error::PermissionDenied(_)), "{denied}");
        assert!(policy.check(&b, &ns("public"), Access::Read).is_ok());
        assert!(policy.check(&b, &ns("public"), Access::Write).is_err());
        assert!(
            policy.check_read_all(&b).is_err(),
            "bob may not read private"
        );
        assert!(policy.check_read_all(&a).is_ok());
        for caller in [Caller::Anonymous, Caller::Refused("replayed".into())] {
            let e = policy
                .check(&caller, &ns("public"), Access::Read)
                .unwrap_err();
            assert!(matches!(e, Error::Unauthenticated(_)), "{e}");
        }
        let peer = Caller::Peer("r-1".into());
        assert!(policy.check(&peer, &ns("private"), Access::Write).is_ok());
        let open = AccessPolicy::open();
        assert!(
            open.check(&Caller::Anonymous, &ns("private"), Access::Write)
                .is_ok()
        );
    }
}
