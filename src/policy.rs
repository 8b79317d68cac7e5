//! Ingest policy: the checks every entry passes before it is stored, whether it
//! comes from a client or from a peer.
//!
//! A replica never decrypts anything. It checks what it can check without keys:
//! the id matches the body, the size is within limits, the namespace is served,
//! and the signature over the id by the author the envelope names.
//!
//! Signatures are required of what clients write, unless a namespace opts
//! out: a replica never stores or forwards a change its author did not sign.
//! Entries pulled from peers were checked by the replica a client wrote them
//! to, so they are checked again only where a namespace asks for it (trusted
//! authors, or `require_signature = true`). Signed entries of a batch are
//! verified together (ed25519 batch verification); when a batch fails, each
//! is verified on its own, strictly, to find the ones that do not verify.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use ed25519_dalek::{Signature, VerifyingKey};

use crate::entry::{Entry, EntryId, Namespace, RejectReason, Rejection, VerifiedEntry};

/// The entries of a batch that passed the checks, in order, and the index
/// and reason of each one that did not.
pub type Checked = (Vec<VerifiedEntry>, Vec<(usize, Rejection)>);

/// Where entries being checked come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Written by a client (of a replica, or of a device serving its store).
    Client,
    /// Pulled from a peer, which checked them when a client wrote them.
    Peer,
    /// Written by this process: a device's own changes, signed here.
    Local,
}

/// Rules for one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceRules {
    /// When non-empty, only these ed25519 public keys may author entries, and
    /// every entry, from clients and peers alike, must carry a valid
    /// signature.
    pub trusted_authors: HashSet<[u8; 32]>,
    /// `Some(true)`: every entry, from clients and peers alike, must carry a
    /// valid signature by its declared author. `Some(false)`: signatures
    /// are not checked here (unless authors are listed). `None`: as
    /// [`Policy::require_signatures`] says.
    pub require_signature: Option<bool>,
}

/// Which namespaces a replica serves and what it requires of their entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Serve namespaces that have no rules of their own.
    pub allow_unlisted: bool,
    pub namespaces: HashMap<Namespace, NamespaceRules>,
    /// Largest accepted entry encoding, in bytes.
    pub max_entry_bytes: usize,
    /// Entries clients write must carry a valid signature by the author
    /// their envelope names, unless their namespace says otherwise.
    pub require_signatures: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allow_unlisted: true,
            namespaces: HashMap::new(),
            max_entry_bytes: 1024 * 1024,
            require_signatures: true,
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
        h.update(&[self.allow_unlisted as u8, self.require_signatures as u8]);
        h.update(&(self.max_entry_bytes as u64).to_be_bytes());
        let mut namespaces: Vec<_> = self.namespaces.iter().collect();
        namespaces.sort_by(|a, b| a.0.cmp(b.0));
        for (ns, rules) in namespaces {
            h.update(ns.to_string().as_bytes());
            let required = match rules.require_signature {
                None => 0,
                Some(false) => 1,
                Some(true) => 2,
            };
            h.update(&[0, required]);
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

    /// Checks `(claimed id, data)` pairs from `origin`: the entries that
    /// pass, in order, and the index and reason of each one that does not.
    pub fn check_batch(&self, items: Vec<(Bytes, Bytes)>, origin: Origin) -> Checked {
        let mut passed = Vec::with_capacity(items.len());
        let mut rejections = Vec::new();
        let mut to_verify = Vec::new();
        for (index, (id, data)) in items.into_iter().enumerate() {
            match self.check_unsigned(&id, data) {
                Ok(entry) => {
                    if self.signature_required(&entry, origin) {
                        to_verify.push(passed.len());
                    }
                    passed.push((index, entry));
                }
                Err(rejection) => rejections.push((index, rejection)),
            }
        }
        let failed = verify_signatures(&passed, &to_verify);
        let mut verified = Vec::with_capacity(passed.len());
        for (at, (index, entry)) in passed.into_iter().enumerate() {
            match failed.get(&at) {
                Some(rejection) => rejections.push((index, rejection.clone())),
                None => verified.push(VerifiedEntry {
                    id: entry.id,
                    namespace: entry.envelope.namespace.clone(),
                    data: entry.data().clone(),
                }),
            }
        }
        rejections.sort_by_key(|(index, _)| *index);
        (verified, rejections)
    }

    /// Checks one entry as received from `origin`: `claimed_id` is the id
    /// the sender gave.
    pub fn check(
        &self,
        claimed_id: &[u8],
        data: Bytes,
        origin: Origin,
    ) -> Result<VerifiedEntry, Rejection> {
        let items = vec![(Bytes::copy_from_slice(claimed_id), data)];
        match self.check_batch(items, origin) {
            (mut verified, _) if verified.len() == 1 => Ok(verified.remove(0)),
            (_, mut rejections) => Err(rejections.remove(0).1),
        }
    }

    /// Every check but the signature's.
    fn check_unsigned(&self, claimed_id: &[u8], data: Bytes) -> Result<Entry, Rejection> {
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
        Ok(entry)
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
        Ok(())
    }

    /// Whether `entry`, from `origin`, must carry a valid signature.
    fn signature_required(&self, entry: &Entry, origin: Origin) -> bool {
        let rules = self.namespaces.get(entry.namespace());
        if rules.is_some_and(|r| !r.trusted_authors.is_empty()) {
            return true;
        }
        match rules.and_then(|r| r.require_signature) {
            Some(required) => required,
            None => self.require_signatures && origin == Origin::Client,
        }
    }
}

/// Signatures verified in one batch at least; a larger batch is split
/// over the machine's cores.
const VERIFY_CHUNK: usize = 128;

/// Verifies the signatures of `entries[at]` for each `at` in `which`:
/// the rejection of each one that fails, by its position in `entries`.
fn verify_signatures(entries: &[(usize, Entry)], which: &[usize]) -> HashMap<usize, Rejection> {
    let mut failed = HashMap::new();
    // A batch usually comes from a few authors: each key is decompressed once.
    let mut keys: HashMap<[u8; 32], Result<VerifyingKey, Rejection>> = HashMap::new();
    let mut batch = Vec::with_capacity(which.len());
    for &at in which {
        let entry = &entries[at].1;
        let signed = entry
            .signature
            .ok_or_else(|| {
                Rejection::new(RejectReason::SignatureMissing, "the entry is not signed")
            })
            .and_then(|sig| {
                let key = keys
                    .entry(entry.envelope.author)
                    .or_insert_with(|| author_key(&entry.envelope.author));
                Ok((key.clone()?, Signature::from_bytes(&sig)))
            });
        match signed {
            Ok(signed) => batch.push((at, signed)),
            Err(rejection) => {
                failed.insert(at, rejection);
            }
        }
    }
    if batch.is_empty() {
        return failed;
    }
    let chunk = batch.len().div_ceil(cores()).max(VERIFY_CHUNK);
    let verify = |part: &[(usize, (VerifyingKey, Signature))]| -> Vec<(usize, Rejection)> {
        let messages: Vec<&[u8]> = part
            .iter()
            .map(|(at, _)| &entries[*at].1.id.0[..])
            .collect();
        let signatures: Vec<Signature> = part.iter().map(|(_, (_, sig))| *sig).collect();
        let keys: Vec<VerifyingKey> = part.iter().map(|(_, (key, _))| *key).collect();
        if part.len() > 1 && ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
            return Vec::new();
        }
        part.iter()
            .filter_map(|(at, _)| Some((*at, entries[*at].1.verify_signature().err()?)))
            .collect()
    };
    let bad: Vec<(usize, Rejection)> = match batch.len() > chunk {
        false => verify(&batch),
        true => std::thread::scope(|scope| {
            let mut parts = batch.chunks(chunk);
            let first = parts.next().unwrap_or_default();
            let others: Vec<_> = parts
                .map(|part| {
                    (
                        part,
                        std::thread::Builder::new().spawn_scoped(scope, || verify(part)),
                    )
                })
                .collect();
            let mut bad = verify(first);
            for (part, thread) in others {
                bad.extend(match thread {
                    Ok(thread) => thread
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                    // No thread to be had: verified here.
                    Err(_) => verify(part),
                });
            }
            bad
        }),
    };
    failed.extend(bad);
    failed
}

/// The cores a batch's signatures are verified on, learned once: the
/// standard library reads the cgroup's CPU quota from files every time.
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// An author's public key, unless it cannot verify anything. Weak keys are
/// refused: batch verification would let a signature by one pass for any
/// message.
fn author_key(author: &[u8; 32]) -> Result<VerifyingKey, Rejection> {
    let invalid = |why: &str| Rejection::new(RejectReason::SignatureInvalid, why);
    let key = VerifyingKey::from_bytes(author)
        .map_err(|_| invalid("the author is not a valid ed25519 public key"))?;
    match key.is_weak() {
        true => Err(invalid("the author key is a weak ed25519 key")),
        false => Ok(key),
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
        reason_from(p, e, Origin::Peer)
    }

    fn reason_from(p: &Policy, e: &Entry, origin: Origin) -> Option<RejectReason> {
        p.check(&e.id.0, e.data().clone(), origin)
            .err()
            .map(|r| r.reason)
    }

    /// `e` with its signature's last byte flipped.
    fn flipped(e: &Entry) -> Entry {
        let mut data = e.data().to_vec();
        let last = data.len() - 1;
        data[last] ^= 1;
        Entry::parse(data.into()).unwrap()
    }

    #[test]
    fn what_clients_write_must_be_signed_by_its_author_unless_the_namespace_opts_out() {
        let ns = Namespace::new("t", "d").unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        let policy = Policy::default();
        let signed = entry(&ns, Some(&key));
        let (unsigned, forged) = (entry(&ns, None), flipped(&signed));
        assert_eq!(reason_from(&policy, &signed, Origin::Client), None);
        assert_eq!(
            reason_from(&policy, &unsigned, Origin::Client),
            Some(RejectReason::SignatureMissing)
        );
        assert_eq!(
            reason_from(&policy, &forged, Origin::Client),
            Some(RejectReason::SignatureInvalid)
        );
        // A peer checked them when a client wrote them; this device wrote
        // its own.
        for origin in [Origin::Peer, Origin::Local] {
            assert_eq!(reason_from(&policy, &unsigned, origin), None);
            assert_eq!(reason_from(&policy, &forged, origin), None);
        }
        // A namespace that opts out, and a replica that requires nothing.
        let rules = |required| NamespaceRules {
            trusted_authors: HashSet::new(),
            require_signature: Some(required),
        };
        let opted_out = Policy {
            namespaces: [(ns.clone(), rules(false))].into(),
            ..Policy::default()
        };
        let lax = Policy {
            require_signatures: false,
            ..Policy::default()
        };
        for p in [&opted_out, &lax] {
            assert_eq!(reason_from(p, &unsigned, Origin::Client), None);
            assert_eq!(reason_from(p, &forged, Origin::Client), None);
        }
        // A namespace that requires them of peers too.
        let strict = Policy {
            namespaces: [(ns.clone(), rules(true))].into(),
            ..lax.clone()
        };
        assert_eq!(
            reason_from(&strict, &forged, Origin::Peer),
            Some(RejectReason::SignatureInvalid)
        );
        assert_ne!(strict.digest(), opted_out.digest());
        assert_ne!(Policy::default().digest(), lax.digest());
    }

    #[test]
    fn a_batch_finds_each_bad_signature_among_good_ones() {
        let ns = Namespace::new("t", "d").unwrap();
        let keys = [
            SigningKey::from_bytes(&[4; 32]),
            SigningKey::from_bytes(&[5; 32]),
        ];
        // Enough to be verified in parts on several threads.
        let mut entries: Vec<Entry> = (0..600u64)
            .map(|i| {
                let mut env = entry(&ns, None).envelope;
                env.created_ms = i;
                Entry::create(env, &i.to_be_bytes(), Some(&keys[i as usize % 2]))
            })
            .collect();
        entries[7] = flipped(&entries[7]);
        entries[590] = flipped(&entries[590]);
        entries[31] = entry(&ns, None);
        // Signed by one author, naming another: the id covers the author,
        // so the signature (over the id it had) does not verify.
        let mut data = entries[12].data().to_vec();
        let author = keys[0].verifying_key().to_bytes();
        let at = data.windows(32).position(|w| w == author).unwrap();
        data[at..at + 32].copy_from_slice(keys[1].verifying_key().as_bytes());
        entries[12] = Entry::parse(data.into()).unwrap();
        let items = entries
            .iter()
            .map(|e| (Bytes::copy_from_slice(&e.id.0), e.data().clone()))
            .collect();
        let (verified, rejections) = Policy::default().check_batch(items, Origin::Client);
        let rejected: Vec<(usize, RejectReason)> =
            rejections.iter().map(|(i, r)| (*i, r.reason)).collect();
        assert_eq!(
            rejected,
            [
                (7, RejectReason::SignatureInvalid),
                (12, RejectReason::SignatureInvalid),
                (31, RejectReason::SignatureMissing),
                (590, RejectReason::SignatureInvalid)
            ]
        );
        let kept: Vec<EntryId> = verified.iter().map(|v| v.id).collect();
        let expected: Vec<EntryId> = entries
            .iter()
            .enumerate()
            .filter(|(i, _)| ![7, 12, 31, 590].contains(i))
            .map(|(_, e)| e.id)
            .collect();
        assert_eq!(kept, expected, "the rest, in order");
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
                    require_signature: None,
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
            require_signature: None,
        };
        let policy = Policy {
            allow_unlisted: false,
            namespaces: [(ns.clone(), rules)].into(),
            max_entry_bytes: 1000,
            require_signatures: true,
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
            policy
                .check(&[0; 32], e.data().clone(), Origin::Peer)
                .unwrap_err()
                .reason,
            RejectReason::IdMismatch
        );
        assert_eq!(
            policy
                .check(&[0; 3], e.data().clone(), Origin::Peer)
                .unwrap_err()
                .reason,
            RejectReason::Malformed
        );
        let big = Entry::create(entry(&ns, None).envelope, &[0; 2000], Some(&trusted));
        assert_eq!(reason(&policy, &big), Some(RejectReason::TooLarge));
    }
}
