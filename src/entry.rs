//! Entries: the unit of storage and replication.
//!
//! An entry is an immutable, encrypted, signed change. Its plaintext envelope says
//! where it belongs and who wrote it; its ciphertext is opaque to every replica.
//! The canonical byte layout (documented in `proto/mindoo/replica/v1/store.proto`)
//! is parsed and produced only here, and the id is the BLAKE3 hash of the body.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// Magic and version at the start of every entry body.
pub const MAGIC: [u8; 4] = *b"MDE\x01";
/// Length of an entry id (a BLAKE3 hash).
pub const ID_LEN: usize = 32;
/// Length of an ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Longest tenant or database name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest entry kind, in bytes.
pub const MAX_KIND_LEN: usize = 32;
/// Longest document id, in bytes.
pub const MAX_DOC_ID_LEN: usize = 64;
/// Most dependency ids one entry may list.
pub const MAX_DEPS: usize = 1024;

/// Why an entry was refused. Every rejection has exactly one reason, which is
/// also the label of the `entries_rejected_total` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    IdMismatch,
    Malformed,
    TooLarge,
    NamespaceNotAllowed,
    SignatureMissing,
    SignatureInvalid,
    AuthorNotTrusted,
}

impl RejectReason {
    pub const ALL: [RejectReason; 7] = [
        Self::IdMismatch,
        Self::Malformed,
        Self::TooLarge,
        Self::NamespaceNotAllowed,
        Self::SignatureMissing,
        Self::SignatureInvalid,
        Self::AuthorNotTrusted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::IdMismatch => "id_mismatch",
            Self::Malformed => "malformed",
            Self::TooLarge => "too_large",
            Self::NamespaceNotAllowed => "namespace_not_allowed",
            Self::SignatureMissing => "signature_missing",
            Self::SignatureInvalid => "signature_invalid",
            Self::AuthorNotTrusted => "author_not_trusted",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused entry: the reason plus a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }

    fn malformed(detail: impl Into<String>) -> Self {
        Self::new(RejectReason::Malformed, detail)
    }
}

/// The 32-byte BLAKE3 id of an entry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId(pub [u8; ID_LEN]);

impl EntryId {
    /// The id of a body.
    pub fn of(body: &[u8]) -> Self {
        Self(*blake3::hash(body).as_bytes())
    }

    /// Reads an id from exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, InvalidId> {
        bytes
            .try_into()
            .map(Self)
            .map_err(|_| InvalidId(bytes.len()))
    }

    pub fn as_bytes(&self) -> &[u8; ID_LEN] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntryId({})", &self.to_hex()[..16])
    }
}

/// An id that is not 32 bytes long.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an entry id is {ID_LEN} bytes, got {0}")]
pub struct InvalidId(pub usize);

/// A (tenant, database) pair. Entries, policies and listings are per namespace.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace {
    tenant: String,
    db: String,
}

/// A tenant or database name that breaks the naming rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid namespace {field} {value:?}: {why}")]
pub struct InvalidNamespace {
    pub field: &'static str,
    pub value: String,
    pub why: &'static str,
}

impl Namespace {
    pub fn new(tenant: impl Into<String>, db: impl Into<String>) -> Result<Self, InvalidNamespace> {
        let (tenant, db) = (tenant.into(), db.into());
        check_name("tenant", &tenant)?;
        check_name("db", &db)?;
        Ok(Self { tenant, db })
    }

    /// A namespace written `tenant/db`, as in configuration and commands.
    pub fn from_path(path: &str) -> Result<Self, InvalidNamespace> {
        match path.split_once('/') {
            Some((tenant, db)) => Self::new(tenant, db),
            None => Err(InvalidNamespace {
                field: "path",
                value: path.to_owned(),
                why: "is not tenant/db",
            }),
        }
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn db(&self) -> &str {
        &self.db
    }

    /// The key prefix used by stores: `u8 len ‖ tenant ‖ u8 len ‖ db`.
    pub fn encode_key(&self, out: &mut Vec<u8>) {
        out.push(self.tenant.len() as u8);
        out.extend_from_slice(self.tenant.as_bytes());
        out.push(self.db.len() as u8);
        out.extend_from_slice(self.db.as_bytes());
    }

    /// Reads a key prefix written by [`Namespace::encode_key`]; returns the rest.
    pub fn decode_key(key: &[u8]) -> Option<(Self, &[u8])> {
        let mut r = Reader::new(key);
        let tenant = r.short_str().ok()?;
        let db = r.short_str().ok()?;
        let ns = Self::new(tenant, db).ok()?;
        Some((ns, r.rest()))
    }
}

fn check_name(field: &'static str, value: &str) -> Result<(), InvalidNamespace> {
    let why = if value.is_empty() {
        "must not be empty"
    } else if value.len() > MAX_NAME_LEN {
        "longer than 64 bytes"
    } else if value.chars().any(|c| c == '/' || c.is_control()) {
        "contains '/' or a control character"
    } else {
        return Ok(());
    };
    Err(InvalidNamespace {
        field,
        value: value.chars().take(80).collect(),
        why,
    })
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.db)
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Namespace({self})")
    }
}

/// The plaintext part of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub namespace: Namespace,
    pub author: [u8; 32],
    pub created_ms: u64,
    pub kind: String,
    pub doc_id: Vec<u8>,
    pub deps: Vec<EntryId>,
}

/// A parsed entry. `data` is the exact canonical encoding it was parsed from.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: EntryId,
    pub envelope: Envelope,
    pub signature: Option<[u8; SIGNATURE_LEN]>,
    data: Bytes,
    ciphertext: std::ops::Range<usize>,
}

impl Entry {
    /// Encodes and, when a key is given, signs a new entry. The envelope's
    /// author is replaced by the signing key's public key.
    pub fn create(mut envelope: Envelope, ciphertext: &[u8], signer: Option<&SigningKey>) -> Self {
        if let Some(key) = signer {
            envelope.author = key.verifying_key().to_bytes();
        }
        let mut buf = BytesMut::with_capacity(encoded_len(&envelope, ciphertext.len()));
        buf.put_slice(&MAGIC);
        put_short(&mut buf, envelope.namespace.tenant.as_bytes());
        put_short(&mut buf, envelope.namespace.db.as_bytes());
        buf.put_slice(&envelope.author);
        buf.put_u64(envelope.created_ms);
        put_short(&mut buf, envelope.kind.as_bytes());
        put_short(&mut buf, &envelope.doc_id);
        buf.put_u16(envelope.deps.len() as u16);
        for dep in &envelope.deps {
            buf.put_slice(&dep.0);
        }
        buf.put_u32(ciphertext.len() as u32);
        let ct_start = buf.len();
        buf.put_slice(ciphertext);
        let ct_end = buf.len();
        let id = EntryId::of(&buf);
        let signature = signer.map(|key| key.sign(&id.0).to_bytes());
        match &signature {
            Some(sig) => {
                buf.put_u8(SIGNATURE_LEN as u8);
                buf.put_slice(sig);
            }
            None => buf.put_u8(0),
        }
        Self {
            id,
            envelope,
            signature,
            data: buf.freeze(),
            ciphertext: ct_start..ct_end,
        }
    }

    /// Parses the canonical encoding. Checks the layout only: the caller
    /// compares [`Entry::id`] with the id it was given.
    pub fn parse(data: Bytes) -> Result<Self, Rejection> {
        let mut r = Reader::new(&data);
        let envelope = read_envelope(&mut r)?;
        let ct_len = u32::from_be_bytes(r.array()?) as usize;
        let ct_start = r.pos;
        r.take(ct_len)?;
        let body_end = r.pos;
        let sig_len = r.array::<1>()?[0] as usize;
        let signature = match sig_len {
            0 => None,
            SIGNATURE_LEN => Some(r.array::<SIGNATURE_LEN>()?),
            n => {
                return Err(Rejection::malformed(format!(
                    "signature length {n}, expected 0 or {SIGNATURE_LEN}"
                )));
            }
        };
        if !r.rest().is_empty() {
            return Err(Rejection::malformed(format!(
                "{} trailing bytes after the signature",
                r.rest().len()
            )));
        }
        let id = EntryId::of(&data[..body_end]);
        Ok(Self {
            id,
            envelope,
            signature,
            ciphertext: ct_start..ct_start + ct_len,
            data,
        })
    }

    /// The canonical encoding, as stored and sent.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    pub fn ciphertext(&self) -> &[u8] {
        &self.data[self.ciphertext.clone()]
    }

    pub fn namespace(&self) -> &Namespace {
        &self.envelope.namespace
    }

    /// Checks the signature over the id against the envelope's author key.
    pub fn verify_signature(&self) -> Result<(), Rejection> {
        let sig = self.signature.ok_or_else(|| {
            Rejection::new(RejectReason::SignatureMissing, "the entry is not signed")
        })?;
        let key = VerifyingKey::from_bytes(&self.envelope.author).map_err(|_| {
            Rejection::new(
                RejectReason::SignatureInvalid,
                "the author is not a valid ed25519 public key",
            )
        })?;
        key.verify_strict(&self.id.0, &Signature::from_bytes(&sig))
            .map_err(|_| {
                Rejection::new(
                    RejectReason::SignatureInvalid,
                    "the signature does not verify against the author key",
                )
            })
    }
}

impl Envelope {
    /// The envelope of an entry's canonical encoding, read without hashing
    /// the body or looking past the envelope: for data already checked (a
    /// store's own), where only the plaintext fields are wanted.
    pub fn parse(data: &[u8]) -> Result<Self, Rejection> {
        read_envelope(&mut Reader::new(data))
    }
}

/// Reads the magic and the envelope, checking each field's layout.
fn read_envelope(r: &mut Reader<'_>) -> Result<Envelope, Rejection> {
    if r.take(4)? != MAGIC {
        return Err(Rejection::malformed(
            "bad magic: not a version 1 entry encoding",
        ));
    }
    let tenant = r.short_str()?;
    let db = r.short_str()?;
    let namespace = Namespace::new(tenant, db).map_err(|e| Rejection::malformed(e.to_string()))?;
    let author: [u8; 32] = r.array()?;
    let created_ms = u64::from_be_bytes(r.array()?);
    let kind = r.short_str()?;
    if kind.is_empty() || kind.len() > MAX_KIND_LEN || !kind.is_ascii() {
        return Err(Rejection::malformed(format!(
            "kind must be 1..={MAX_KIND_LEN} ASCII bytes"
        )));
    }
    let doc_id = r.short_bytes()?;
    if doc_id.len() > MAX_DOC_ID_LEN {
        return Err(Rejection::malformed(format!(
            "doc_id longer than {MAX_DOC_ID_LEN} bytes"
        )));
    }
    let dep_count = u16::from_be_bytes(r.array()?) as usize;
    if dep_count > MAX_DEPS {
        return Err(Rejection::malformed(format!(
            "{dep_count} dependencies, at most {MAX_DEPS} allowed"
        )));
    }
    // Checked against the remaining length before anything is allocated.
    let dep_bytes = r.take(dep_count * ID_LEN)?;
    let deps = dep_bytes
        .chunks_exact(ID_LEN)
        .map(|c| EntryId(c.try_into().expect("chunk is 32 bytes")))
        .collect();
    Ok(Envelope {
        namespace,
        author,
        created_ms,
        kind: kind.to_owned(),
        doc_id: doc_id.to_vec(),
        deps,
    })
}

fn encoded_len(env: &Envelope, ct_len: usize) -> usize {
    4 + 2
        + env.namespace.tenant.len()
        + env.namespace.db.len()
        + 32
        + 8
        + 2
        + env.kind.len()
        + env.doc_id.len()
        + 2
        + env.deps.len() * ID_LEN
        + 4
        + ct_len
        + 1
        + SIGNATURE_LEN
}

fn put_short(buf: &mut BytesMut, bytes: &[u8]) {
    buf.put_u8(bytes.len() as u8);
    buf.put_slice(bytes);
}

/// A bounds-checked cursor over an encoding; every read fails with a
/// `Malformed` rejection instead of panicking.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Rejection> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| {
            Rejection::malformed(format!(
                "truncated: needed {n} bytes at offset {}, {} left",
                self.pos,
                self.buf.len() - self.pos
            ))
        })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Rejection> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    fn short_bytes(&mut self) -> Result<&'a [u8], Rejection> {
        let len = self.array::<1>()?[0] as usize;
        self.take(len)
    }

    fn short_str(&mut self) -> Result<&'a str, Rejection> {
        std::str::from_utf8(self.short_bytes()?)
            .map_err(|_| Rejection::malformed("a text field is not UTF-8"))
    }

    fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            namespace: Namespace::new("acme", "notes").unwrap(),
            author: [7; 32],
            created_ms: 1_700_000_000_000,
            kind: "doc_change".into(),
            doc_id: b"doc-1".to_vec(),
            deps: vec![EntryId([9; 32])],
        }
    }

    /// Whatever bytes arrive, decoding rejects them or yields an entry whose
    /// canonical encoding is exactly those bytes: no panic, no second
    /// encoding of one entry.
    #[test]
    fn any_bytes_decode_to_a_rejection_or_an_entry_that_encodes_back_to_them() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let signed = Entry::create(envelope(), b"ciphertext", Some(&key));
        let unsigned = Entry::create(envelope(), b"", None);
        let mut parsed = 0;
        for (seed, valid) in [signed.data(), unsigned.data()].into_iter().enumerate() {
            for m in crate::fixtures::mutations(valid, seed as u64, 20_000) {
                let Ok(e) = Entry::parse(Bytes::from(m.clone())) else {
                    continue;
                };
                parsed += 1;
                let again = Entry::create(e.envelope.clone(), e.ciphertext(), None);
                let signature = e.signature.map_or(1, |_| 1 + SIGNATURE_LEN);
                let unsigned_len = again.data().len() - 1;
                assert_eq!(again.id, e.id, "{}", hex::encode(&m));
                assert_eq!(
                    again.data()[..unsigned_len],
                    m[..m.len() - signature],
                    "{}",
                    hex::encode(&m)
                );
            }
        }
        assert!(
            parsed > 0,
            "some mutations still decode (extended ciphertext)"
        );
    }

    /// Pins the canonical layout: if this test changes, every stored id changes.
    #[test]
    fn canonical_encoding_test_vector() {
        let e = Entry::create(envelope(), b"ciphertext", None);
        let expected_body = [
            &b"MDE\x01"[..],
            b"\x04acme",
            b"\x05notes",
            &[7; 32],
            &1_700_000_000_000u64.to_be_bytes(),
            b"\x0adoc_change",
            b"\x05doc-1",
            b"\x00\x01",
            &[9; 32],
            b"\x00\x00\x00\x0a",
            b"ciphertext",
        ]
        .concat();
        assert_eq!(&e.data()[..expected_body.len()], &expected_body[..]);
        assert_eq!(e.data().len(), expected_body.len() + 1);
        assert_eq!(e.data()[expected_body.len()], 0);
        assert_eq!(
            e.id.to_hex(),
            blake3::hash(&expected_body).to_hex().to_string()
        );
        assert_eq!(
            e.id.to_hex(),
            "30ade5a49fc54b02d94551d11b071d46e1ef2fe023fbc70ff7413b500b432975"
        );
    }

    #[test]
    fn signed_entry_round_trips_and_verifies() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let e = Entry::create(envelope(), b"secret", Some(&key));
        let parsed = Entry::parse(e.data().clone()).unwrap();
        assert_eq!(parsed.id, e.id);
        assert_eq!(parsed.envelope, e.envelope);
        assert_eq!(parsed.ciphertext(), b"secret");
        parsed.verify_signature().unwrap();
    }

    #[test]
    fn tampered_signature_is_invalid() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let e = Entry::create(envelope(), b"secret", Some(&key));
        let mut data = e.data().to_vec();
        let last = data.len() - 1;
        data[last] ^= 1;
        let parsed = Entry::parse(data.into()).unwrap();
        let err = parsed.verify_signature().unwrap_err();
        assert_eq!(err.reason, RejectReason::SignatureInvalid);
        let unsigned = Entry::create(envelope(), b"secret", None);
        let err = unsigned.verify_signature().unwrap_err();
        assert_eq!(err.reason, RejectReason::SignatureMissing);
    }

    #[test]
    fn every_truncation_is_rejected_without_panic() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let e = Entry::create(envelope(), b"secret", Some(&key));
        for len in 0..e.data().len() {
            let err = Entry::parse(e.data().slice(..len)).unwrap_err();
            assert_eq!(err.reason, RejectReason::Malformed, "len {len}");
        }
        let mut long = e.data().to_vec();
        long.push(0);
        assert!(Entry::parse(long.into()).is_err());
    }

    #[test]
    fn forged_counts_do_not_allocate() {
        // A huge ciphertext length and dependency count on a tiny buffer.
        let mut e = Entry::create(envelope(), b"", None).data().to_vec();
        let deps_at = 4 + 5 + 6 + 32 + 8 + 11 + 6;
        e[deps_at..deps_at + 2].copy_from_slice(&1000u16.to_be_bytes());
        let err = Entry::parse(e.into()).unwrap_err();
        assert!(err.detail.contains("truncated"), "{err}");
        let mut e = Entry::create(envelope(), b"", None).data().to_vec();
        let ct_at = deps_at + 2 + 32;
        e[ct_at..ct_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = Entry::parse(e.into()).unwrap_err();
        assert!(err.detail.contains("truncated"), "{err}");
    }

    #[test]
    fn namespace_rules() {
        assert!(Namespace::new("", "x").is_err());
        assert!(Namespace::new("a/b", "x").is_err());
        assert!(Namespace::new("a", "x".repeat(65)).is_err());
        let ns = Namespace::new("a", "b").unwrap();
        let mut key = Vec::new();
        ns.encode_key(&mut key);
        key.extend_from_slice(b"rest");
        assert_eq!(Namespace::decode_key(&key), Some((ns, &b"rest"[..])));
    }
}

/// An entry that passed every check of a replica's policy. Only verified
/// entries reach a store.
#[derive(Debug, Clone)]
pub struct VerifiedEntry {
    pub id: EntryId,
    pub namespace: Namespace,
    pub data: Bytes,
}

/// What happened to one entry of a put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    Stored,
    Duplicate,
    Rejected(Rejection),
}
