//! Ingest policy: the checks every entry passes before it is stored, whether it
//! comes from a client or from a peer.
//!
//! A replica never decrypts anything. It checks what it can check without keys:
//! the id matches the body, the size is within limits, the namespace is served,
//! and, where a namespace lists trusted authors, the signature over the id.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use crate::entry::{Entry, EntryId, Namespace, RejectReason, Rejection, VerifiedEntry};

/// The entries of a batch that passed the checks, in order, and the index
/// and reason of each one that did not.
pub type Checked = (Vec<VerifiedEntry>, Vec<(usize, Rejection)>);

/// Rules for one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceRules {
    /// When non-empty, only these ed25519 public keys may author entries, and
    /// every entry must carry a valid signature.
    pub trusted_authors: HashSet<[u8; 32]>,
    /// Every entry must carry a valid signature by its declared author.
    pub require_signature: bool,
}

/// Which namespaces a replica serves and what it requires of their entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Serve namespaces that have no rules of their own.
    pub allow_unlisted: bool,
    pub namespaces: HashMap<Namespace, NamespaceRules>,
    /// Largest accepted entry encoding, in bytes.
    pub max_entry_bytes: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allow_unlisted: true,
            namespaces: HashMap::new(),
            max_entry_bytes: 1024 * 1024,
        }
    }
}

impl Policy {
    /// A digest of what this policy lets in: 0 for the default policy.
    /// Stored with each pull cursor, so that when a restart brings a policy
    /// that lets more in, records the cursor passed are looked at again.
    pub fn digest(&self) -> u64 {
        self.raw_digest() ^ Policy::default().raw_digest()
    }

    fn raw_digest(&self) -> u64 {
        let mut h = blake3::Hasher::new();
        h.update(&[self.allow_unlisted as u8]);
        h.update(&(self.max_entry_bytes as u64).to_be_bytes());
        let mut namespaces: Vec<_> = self.namespaces.iter().collect();
        namespaces.sort_by(|a, b| a.0.cmp(b.0));
        for (ns, rules) in namespaces {
            h.update(ns.to_string().as_bytes());
            h.update(&[0, rules.require_signature as u8]);
            let mut authors: Vec<_> = rules.trusted_authors.iter().collect();
            authors.sort();
            for author in authors {
                h.update(author);
            }
            h.update(&[0xff]);
        }
        let bytes: [u8; 8] = h.finalize().as_bytes()[..8].try_into().expect("8 bytes");
        u64::from_be_bytes(bytes)
    }

    /// Whether the replica serves `ns` at all.
    pub fn serves(&self, ns: &Namespace) -> bool {
        self.allow_unlisted || self.namespaces.contains_key(ns)
    }

    /// Checks `(claimed id, data)` pairs: the entries that pass, in order,
    /// and the index and reason of each one that does not.
    pub fn check_batch(&self, items: Vec<(Bytes, Bytes)>) -> Checked {
        let mut verified = Vec::with_capacity(items.len());
        let mut rejections = Vec::new();
        for (index, (id, data)) in items.into_iter().enumerate() {
            match self.check(&id, data) {
                Ok(entry) => verified.push(entry),
                Err(rejection) => rejections.push((index, rejection)),
            }
        }
        (verified, rejections)
    }

    /// Checks an entry as received: `claimed_id` is the id the sender gave.
    pub fn check(&self, claimed_id: &[u8], data: Bytes) -> Result<VerifiedEntry, Rejection> {
        if data.len() > self.max_entry_bytes {
            return Err(Rejection::new(
                RejectReason::TooLarge,
                format!(
                    "{} bytes, the limit is {}",
                    data.len(),
                    self.max_entry_bytes
                ),
            ));
        }
        let claimed = EntryId::from_slice(claimed_id)
            .map_err(|e| Rejection::new(RejectReason::Malformed, e.to_string()))?;
        let entry = Entry::parse(data)?;
        if entry.id != claimed {
            return Err(Rejection::new(
                RejectReason::IdMismatch,
                format!("claimed id {claimed} but the body hashes to {}", entry.id),
            ));
        }
        self.check_namespace_rules(&entry)?;
        Ok(VerifiedEntry {
            id: entry.id,
            namespace: entry.envelope.namespace.clone(),
            data: entry.data().clone(),
        })
    }

    fn check_namespace_rules(&self, entry: &Entry) -> Result<(), Rejection> {
        let ns = entry.namespace();
        let rules = match self.namespaces.get(ns) {
            Some(rules) => rules,
            None if self.allow_unlisted => return Ok(()),
            None => {
                return Err(Rejection::new(
                    RejectReason::NamespaceNotAllowed,
                    format!("namespace {ns} is not served by this replica"),
                ));
            }
        };
        if !rules.trusted_authors.is_empty()
            && !rules.trusted_authors.contains(&entry.envelope.author)
        {
            return Err(Rejection::new(
                RejectReason::AuthorNotTrusted,
                format!(
                    "author {} is not trusted in {ns}",
                    hex::encode(entry.envelope.author)
                ),
            ));
        }
        if rules.require_signature || !rules.trusted_authors.is_empty() {
            entry.verify_signature()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::entry::Envelope;

    fn entry(ns: &Namespace, key: Option<&SigningKey>) -> Entry {
        let env = Envelope {
            namespace: ns.clone(),
            author: [0; 32],
            created_ms: 1,
            kind: "doc_change".into(),
            doc_id: vec![],
            deps: vec![],
        };
        Entry::create(env, &[1; 100], key)
    }

    fn reason(p: &Policy, e: &Entry) -> Option<RejectReason> {
        p.check(&e.id.0, e.data().clone()).err().map(|r| r.reason)
    }

    #[test]
    fn the_digest_is_zero_by_default_and_follows_the_rules() {
        assert_eq!(Policy::default().digest(), 0);
        let ns = Namespace::new("t", "d").unwrap();
        let with = |authors: &[[u8; 32]]| Policy {
            namespaces: [(
                ns.clone(),
                NamespaceRules {
                    trusted_authors: authors.iter().copied().collect(),
                    require_signature: false,
                },
            )]
            .into(),
            ..Default::default()
        };
        let one = with(&[[1; 32]]);
        assert_ne!(one.digest(), 0);
        assert_eq!(one.digest(), with(&[[1; 32]]).digest());
        assert_ne!(one.digest(), with(&[[1; 32], [2; 32]]).digest());
        assert_eq!(
            with(&[[2; 32], [1; 32]]).digest(),
            with(&[[1; 32], [2; 32]]).digest(),
            "order does not matter"
        );
    }

    #[test]
    fn checks_in_order() {
        let ns = Namespace::new("t", "d").unwrap();
        let other = Namespace::new("t", "other").unwrap();
        let trusted = SigningKey::from_bytes(&[1; 32]);
        let stranger = SigningKey::from_bytes(&[2; 32]);
        let rules = NamespaceRules {
            trusted_authors: [trusted.verifying_key().to_bytes()].into(),
            require_signature: false,
        };
        let policy = Policy {
            allow_unlisted: false,
            namespaces: [(ns.clone(), rules)].into(),
            max_entry_bytes: 1000,
        };
        assert_eq!(reason(&policy, &entry(&ns, Some(&trusted))), None);
        assert_eq!(
            reason(&policy, &entry(&ns, Some(&stranger))),
            Some(RejectReason::AuthorNotTrusted)
        );
        assert_eq!(
            reason(&policy, &entry(&other, Some(&trusted))),
            Some(RejectReason::NamespaceNotAllowed)
        );
        // Unsigned, but claiming the trusted author.
        let mut env = entry(&ns, None).envelope;
        env.author = trusted.verifying_key().to_bytes();
        let unsigned = Entry::create(env, b"x", None);
        assert_eq!(
            reason(&policy, &unsigned),
            Some(RejectReason::SignatureMissing)
        );
        let e = entry(&ns, Some(&trusted));
        assert_eq!(
            policy.check(&[0; 32], e.data().clone()).unwrap_err().reason,
            RejectReason::IdMismatch
        );
        assert_eq!(
            policy.check(&[0; 3], e.data().clone()).unwrap_err().reason,
            RejectReason::Malformed
        );
        let big = Entry::create(entry(&ns, None).envelope, &[0; 2000], Some(&trusted));
        assert_eq!(reason(&policy, &big), Some(RejectReason::TooLarge));
    }
}
