//! Entries sealed on the device: a plaintext (an Automerge change or
//! snapshot) encrypted with the database's current key and signed by the
//! author, so that a replica stores and forwards it without being able to
//! read it, and a reader can tell which key opens it.
//!
//! Ciphertext layout (inside the entry's ciphertext field):
//!
//! ```text
//! version (1 byte, 1) ‖ key id (16) ‖ nonce (24) ‖ XChaCha20-Poly1305(plaintext)
//! ```
//!
//! The associated data binds the ciphertext to its envelope (namespace,
//! author, time, kind, document id, dependencies) and to the version and
//! key id before it: a ciphertext moved under another envelope, or a key id
//! swapped, does not open.

use ed25519_dalek::SigningKey;

use crate::entry::{Entry, Envelope};
use crate::keys::{KEY_ID_LEN, KeyError, KeyId, KeyRing};
use chacha20poly1305::XNonce;
use chacha20poly1305::aead::{Aead, Payload};

const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

/// Why a sealed entry does not open, each saying what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "entry {entry} is encrypted with database key {key}, which this device does not hold: import it (`keys import`)"
    )]
    UnknownKey { entry: String, key: KeyId },
    #[error(
        "entry {0} does not authenticate: its ciphertext or envelope was altered, or the key with its id is not the one that sealed it"
    )]
    Tampered(String),
    #[error("entry {entry} is not sealed by this program: {why}")]
    NotSealed { entry: String, why: &'static str },
}

/// The associated data of a ciphertext: its header and its envelope.
fn associated(header: &[u8], envelope: &Envelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + envelope.deps.len() * 32);
    let mut field = |bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    field(header);
    field(envelope.namespace.tenant().as_bytes());
    field(envelope.namespace.db().as_bytes());
    field(&envelope.author);
    field(&envelope.created_ms.to_be_bytes());
    field(envelope.kind.as_bytes());
    field(&envelope.doc_id);
    for dep in &envelope.deps {
        field(&dep.0);
    }
    out
}

/// Encrypts `plaintext` with the ring's current key under `envelope` and
/// signs the entry with the ring's author key (the envelope's author is set
/// to it).
pub fn seal(keys: &KeyRing, mut envelope: Envelope, plaintext: &[u8]) -> Entry {
    let author: &SigningKey = keys.author();
    envelope.author = author.verifying_key().to_bytes();
    let key = keys.current();
    let nonce: [u8; NONCE_LEN] = rand::random();
    let mut ciphertext = Vec::with_capacity(HEADER_LEN + plaintext.len() + 16);
    ciphertext.push(SEAL_VERSION);
    ciphertext.extend_from_slice(&key.id.0);
    ciphertext.extend_from_slice(&nonce);
    let aad = associated(&ciphertext, &envelope);
    let sealed = key
        .cipher()
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .expect("XChaCha20-Poly1305 seals any entry-sized plaintext");
    ciphertext.extend_from_slice(&sealed);
    Entry::create(envelope, &ciphertext, Some(author))
}

/// The key id a sealed entry names, without opening it.
pub fn key_of(entry: &Entry) -> Result<KeyId, OpenError> {
    let ct = entry.ciphertext();
    let not_sealed = |why| OpenError::NotSealed {
        entry: entry.id.to_string(),
        why,
    };
    if ct.len() < HEADER_LEN + 16 {
        return Err(not_sealed("its ciphertext is too short"));
    }
    if ct[0] != SEAL_VERSION {
        return Err(not_sealed("unknown seal version"));
    }
    Ok(KeyId(
        ct[1..1 + KEY_ID_LEN].try_into().expect("KEY_ID_LEN bytes"),
    ))
}

/// Decrypts a sealed entry with the key it names. The signature is the
/// store's and policy's concern; this checks that the ciphertext belongs to
/// this envelope and key.
pub fn open(keys: &KeyRing, entry: &Entry) -> Result<Vec<u8>, OpenError> {
    let key_id = key_of(entry)?;
    let key = keys.key(&key_id).map_err(|e| match e {
        KeyError::UnknownKey(key) => OpenError::UnknownKey {
            entry: entry.id.to_string(),
            key,
        },
        _ => OpenError::Tampered(entry.id.to_string()),
    })?;
    let ct = entry.ciphertext();
    let (header, sealed) = ct.split_at(HEADER_LEN);
    let aad = associated(header, &entry.envelope);
    key.cipher()
        .decrypt(
            XNonce::from_slice(&header[1 + KEY_ID_LEN..]),
            Payload {
                msg: sealed,
                aad: &aad,
            },
        )
        .map_err(|_| OpenError::Tampered(entry.id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Namespace;

    fn envelope(doc: &[u8]) -> Envelope {
        Envelope {
            namespace: Namespace::new("acme", "notes").unwrap(),
            author: [0; 32],
            created_ms: 7,
            kind: "doc_change".into(),
            doc_id: doc.to_vec(),
            deps: vec![],
        }
    }

    #[test]
    fn a_sealed_entry_opens_with_its_key_and_hides_its_plaintext() {
        let keys = KeyRing::generate(1);
        let plaintext = b"the marker string 7f3a";
        let entry = seal(&keys, envelope(b"doc-1"), plaintext);
        entry.verify_signature().unwrap();
        assert_eq!(entry.envelope.author, keys.author_public().to_bytes());
        assert!(
            !entry
                .data()
                .windows(plaintext.len())
                .any(|w| w == plaintext),
            "the plaintext is nowhere in the entry's bytes"
        );
        assert_eq!(open(&keys, &entry).unwrap(), plaintext);
        // Twice the same plaintext: different ciphertexts (random nonces).
        let again = seal(&keys, envelope(b"doc-1"), plaintext);
        assert_ne!(again.ciphertext(), entry.ciphertext());
    }

    #[test]
    fn after_a_rotation_old_entries_open_and_new_ones_use_the_new_key() {
        let mut keys = KeyRing::generate(1);
        let old = seal(&keys, envelope(b"d"), b"before");
        let new_key = keys.rotate(2);
        let new = seal(&keys, envelope(b"d"), b"after");
        assert_eq!(key_of(&new).unwrap(), new_key);
        assert_ne!(key_of(&old).unwrap(), new_key);
        assert_eq!(open(&keys, &old).unwrap(), b"before");
        assert_eq!(open(&keys, &new).unwrap(), b"after");
        // A device holding only the old key reads the old entry only.
        let mut stranger = KeyRing::generate(1);
        let err = open(&stranger, &new).unwrap_err();
        assert!(matches!(err, OpenError::UnknownKey { .. }), "{err}");
        assert!(err.to_string().contains("keys import"), "{err}");
        stranger.import(KeyRing::open_export(&keys.export("pw", false), "pw").unwrap());
        assert_eq!(open(&stranger, &new).unwrap(), b"after");
    }

    #[test]
    fn an_altered_ciphertext_or_a_moved_one_does_not_open() {
        let keys = KeyRing::generate(1);
        let entry = seal(&keys, envelope(b"doc-1"), b"secret");
        // A flipped ciphertext byte, re-signed by someone else: the entry is
        // well formed, the plaintext does not authenticate.
        let mut ct = entry.ciphertext().to_vec();
        let last = ct.len() - 1;
        ct[last] ^= 1;
        let flipped = Entry::create(entry.envelope.clone(), &ct, None);
        assert!(matches!(open(&keys, &flipped), Err(OpenError::Tampered(_))));
        // The same ciphertext under another document's envelope.
        let mut elsewhere = envelope(b"doc-2");
        elsewhere.author = entry.envelope.author;
        let moved = Entry::create(elsewhere, entry.ciphertext(), None);
        assert!(matches!(open(&keys, &moved), Err(OpenError::Tampered(_))));
        // Not sealed at all.
        let plain = Entry::create(envelope(b"doc-1"), b"short", None);
        assert!(matches!(
            open(&keys, &plain),
            Err(OpenError::NotSealed { .. })
        ));
    }
}
