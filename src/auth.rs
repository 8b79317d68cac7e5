//! Client authentication by key: a client proves it holds an ed25519 key
//! (the author key its commands already hold) on every request, with no
//! secret shared with the replica.
//!
//! Each request carries one metadata entry, [`AUTH_HEADER`]:
//!
//! ```text
//! x-mindoo-auth: v1.<public key, 64 hex>.<unix ms>.<nonce, 32 hex>.<signature, 128 hex>
//! ```
//!
//! The signature is over `"mindoo-replica auth v1\n" ‖ ms (u64 BE) ‖
//! nonce`. A replica takes it when the time is within its allowed clock
//! skew of its own, and the nonce was not seen within that window, so a
//! captured header cannot be used again on another connection. A client
//! uses one set for a few seconds ([`REUSE`]); the connection that first
//! presented it is served with it, without verifying it again. Which namespaces a key may read
//! and write is the replica's access policy (`crate::access`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// The metadata key of a request's credentials.
pub const AUTH_HEADER: &str = "x-mindoo-auth";

const CONTEXT: &[u8] = b"mindoo-replica auth v1\n";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn signed_bytes(at_ms: u64, nonce: &[u8; 16]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(CONTEXT.len() + 24);
    msg.extend_from_slice(CONTEXT);
    msg.extend_from_slice(&at_ms.to_be_bytes());
    msg.extend_from_slice(nonce);
    msg
}

/// Credentials for one request made now with `key`.
pub fn credentials(key: &SigningKey) -> String {
    credentials_at(key, now_ms(), rand::random())
}

/// Credentials made at `at_ms` with `nonce` (tests make stale ones).
pub fn credentials_at(key: &SigningKey, at_ms: u64, nonce: [u8; 16]) -> String {
    let signature = key.sign(&signed_bytes(at_ms, &nonce));
    format!(
        "v1.{}.{at_ms}.{}.{}",
        hex::encode(key.verifying_key().as_bytes()),
        hex::encode(nonce),
        hex::encode(signature.to_bytes())
    )
}

/// How long a client uses one set of credentials before it makes new ones:
/// well within any replica's clock skew, so a replica takes them for as
/// long as they are used.
pub const REUSE: Duration = Duration::from_secs(5);

/// The credentials a [`RequestSigner`] sends now, and when they were made.
type Current = Option<(tonic::metadata::AsciiMetadataValue, Instant)>;

/// A tonic interceptor that signs requests with a client's key (or adds
/// nothing, without one). One set of credentials serves every request for
/// [`REUSE`]: a replica verifies it once per connection, and refuses it on
/// any other connection.
#[derive(Clone, Default)]
pub struct RequestSigner {
    key: Option<SigningKey>,
    current: std::sync::Arc<Mutex<Current>>,
}

impl RequestSigner {
    pub fn new(key: Option<SigningKey>) -> Self {
        Self {
            key,
            current: Default::default(),
        }
    }
}

impl tonic::service::Interceptor for RequestSigner {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(key) = &self.key else {
            return Ok(request);
        };
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let value = match &*current {
            Some((value, made)) if made.elapsed() < REUSE => value.clone(),
            _ => {
                let value: tonic::metadata::AsciiMetadataValue = credentials(key)
                    .parse()
                    .map_err(|_| tonic::Status::internal("credentials are not ASCII"))?;
                *current = Some((value.clone(), Instant::now()));
                value
            }
        };
        request.metadata_mut().insert(AUTH_HEADER, value);
        Ok(request)
    }
}

/// Credentials a connection has proven, so that its later requests with
/// the same credentials are taken without verifying them again. Kept per
/// connection: the same credentials on another connection are a replay.
#[derive(Default)]
pub struct Proven(Mutex<Option<(String, [u8; 32], u64)>>);

impl Proven {
    /// The key `value` proved on this connection, while it is in time.
    fn get(&self, value: &str, now: u64, skew: u64) -> Option<[u8; 32]> {
        let proven = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &*proven {
            Some((v, key, at)) if v == value && at.abs_diff(now) <= skew => Some(*key),
            _ => None,
        }
    }

    fn set(&self, value: &str, key: [u8; 32], at: u64) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((value.to_owned(), key, at));
    }
}

/// Why credentials were not taken. The messages name what is wrong, never
/// the credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("{AUTH_HEADER} is not v1.<key>.<ms>.<nonce>.<signature>")]
    Malformed,
    #[error("the signature does not verify against the key")]
    BadSignature,
    #[error("signed {0} ms away from this replica's clock, beyond the allowed skew")]
    Skewed(i64),
    #[error("these credentials were used before")]
    Replayed,
    #[error("too many signed requests within the clock skew window; try again")]
    Busy,
}

/// Parsed credentials, not yet verified.
struct Claim {
    key: [u8; 32],
    at_ms: u64,
    nonce: [u8; 16],
    signature: [u8; 64],
}

fn parse(value: &str) -> Result<Claim, AuthError> {
    fn field<const N: usize>(hex_text: &str) -> Result<[u8; N], AuthError> {
        let mut out = [0u8; N];
        hex::decode_to_slice(hex_text, &mut out).map_err(|_| AuthError::Malformed)?;
        Ok(out)
    }
    let mut parts = value.split('.');
    let (Some("v1"), Some(key), Some(at), Some(nonce), Some(sig), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(AuthError::Malformed);
    };
    Ok(Claim {
        key: field(key)?,
        at_ms: at.parse().map_err(|_| AuthError::Malformed)?,
        nonce: field(nonce)?,
        signature: field(sig)?,
    })
}

/// Checks credentials: signature, time, and that they are not used twice.
pub struct Verifier {
    max_skew: Duration,
    recent: Mutex<Recent>,
    capacity: usize,
}

/// Nonces taken within the skew window, with when each may be forgotten.
#[derive(Default)]
struct Recent {
    seen: HashMap<[u8; 16], u64>,
    order: VecDeque<(u64, [u8; 16])>,
}

impl Verifier {
    /// Takes credentials signed within `max_skew` of now, and remembers at
    /// most `capacity` of them at once (the memory it may use).
    pub fn new(max_skew: Duration, capacity: usize) -> Self {
        Self {
            max_skew,
            recent: Mutex::new(Recent::default()),
            capacity,
        }
    }

    /// The key `value` proves its holder has, for a request on the
    /// connection that `proven` belongs to: credentials it already proved
    /// are taken as they are, while in time.
    pub fn verify_on(&self, value: &str, proven: &Proven) -> Result<[u8; 32], AuthError> {
        let now = now_ms();
        let skew = self.max_skew.as_millis() as u64;
        if let Some(key) = proven.get(value, now, skew) {
            return Ok(key);
        }
        let key = self.verify_at(value, now)?;
        if let Ok(claim) = parse(value) {
            proven.set(value, key, claim.at_ms);
        }
        Ok(key)
    }

    fn verify_at(&self, value: &str, now: u64) -> Result<[u8; 32], AuthError> {
        let claim = parse(value)?;
        let skew = self.max_skew.as_millis() as u64;
        if claim.at_ms.abs_diff(now) > skew {
            return Err(AuthError::Skewed(claim.at_ms as i64 - now as i64));
        }
        let key = VerifyingKey::from_bytes(&claim.key).map_err(|_| AuthError::BadSignature)?;
        if key.is_weak() {
            return Err(AuthError::BadSignature);
        }
        key.verify_strict(
            &signed_bytes(claim.at_ms, &claim.nonce),
            &Signature::from_bytes(&claim.signature),
        )
        .map_err(|_| AuthError::BadSignature)?;
        // Remembered until it could no longer pass the time check.
        let forget_at = claim.at_ms.saturating_add(skew);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(&(at, nonce)) = recent.order.front() {
            if at >= now {
                break;
            }
            recent.order.pop_front();
            recent.seen.remove(&nonce);
        }
        if recent.seen.contains_key(&claim.nonce) {
            return Err(AuthError::Replayed);
        }
        if recent.seen.len() >= self.capacity {
            return Err(AuthError::Busy);
        }
        recent.seen.insert(claim.nonce, forget_at);
        // Kept in order of forgetting (times arrive nearly in order; a
        // late one only waits for those before it).
        recent.order.push_back((forget_at, claim.nonce));
        Ok(claim.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn credentials_prove_the_key_once() {
        let v = Verifier::new(Duration::from_secs(30), 100);
        let now = now_ms();
        let c = credentials_at(&key(1), now, [7; 16]);
        assert_eq!(v.verify_at(&c, now), Ok(*key(1).verifying_key().as_bytes()));
        assert_eq!(v.verify_at(&c, now + 1), Err(AuthError::Replayed));
        // Another nonce is another request.
        let c2 = credentials_at(&key(1), now, [8; 16]);
        assert!(v.verify_at(&c2, now).is_ok());
    }

    #[test]
    fn stale_forged_and_malformed_credentials_are_refused() {
        let v = Verifier::new(Duration::from_secs(30), 100);
        let now = now_ms();
        let stale = credentials_at(&key(1), now - 31_000, [1; 16]);
        assert!(matches!(
            v.verify_at(&stale, now),
            Err(AuthError::Skewed(_))
        ));
        let future = credentials_at(&key(1), now + 31_000, [2; 16]);
        assert!(matches!(
            v.verify_at(&future, now),
            Err(AuthError::Skewed(_))
        ));
        // Key 2's public key with key 1's signature.
        let c = credentials_at(&key(1), now, [3; 16]);
        let other = hex::encode(key(2).verifying_key().as_bytes());
        let mut parts: Vec<&str> = c.split('.').collect();
        parts[1] = &other;
        assert_eq!(
            v.verify_at(&parts.join("."), now),
            Err(AuthError::BadSignature)
        );
        for bad in [
            "",
            "v1",
            "v2.aa.1.bb.cc",
            &format!("{c}.extra"),
            "v1.zz.1.00.00",
        ] {
            assert_eq!(v.verify_at(bad, now), Err(AuthError::Malformed), "{bad}");
        }
    }

    #[test]
    fn a_connection_reuses_what_it_proved_and_no_other_connection_can() {
        let v = Verifier::new(Duration::from_secs(30), 100);
        let (mine, theirs) = (Proven::default(), Proven::default());
        let c = credentials(&key(1));
        let expected = *key(1).verifying_key().as_bytes();
        assert_eq!(v.verify_on(&c, &mine), Ok(expected));
        assert_eq!(v.verify_on(&c, &mine), Ok(expected));
        assert_eq!(v.verify_on(&c, &theirs), Err(AuthError::Replayed));
        // A forgery is not taken for what the connection proved.
        let last = if c.ends_with('0') { "1" } else { "0" };
        let forged = format!("{}{last}", &c[..c.len() - 1]);
        assert!(v.verify_on(&forged, &mine).is_err());
    }

    /// The fuzz target `auth_header`'s property, on mutations of valid
    /// credentials: a mangled header is refused with a reason, never a
    /// panic, and is never taken for the key the valid one proves unless
    /// it still carries that key's valid signature.
    #[test]
    fn mangled_credentials_are_refused_never_a_panic() {
        let valid = credentials(&key(1));
        let mut taken = 0;
        for m in crate::fixtures::mutations(valid.as_bytes(), 3, 5_000) {
            let Ok(text) = std::str::from_utf8(&m) else {
                continue;
            };
            let v = Verifier::new(Duration::from_secs(30), 10_000);
            match v.verify_on(text, &Proven::default()) {
                Ok(key) => {
                    // Only a change the parser ignores (hex case) can pass.
                    assert_eq!(text.to_ascii_lowercase(), valid, "{text}");
                    assert_eq!(key, *self::key(1).verifying_key().as_bytes());
                    taken += 1;
                }
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
        assert!(taken < 100, "{taken} mangled headers were taken");
    }

    #[test]
    fn memory_is_bounded_and_forgotten_with_time() {
        let v = Verifier::new(Duration::from_secs(1), 2);
        let now = now_ms();
        for n in 0..2u8 {
            v.verify_at(&credentials_at(&key(1), now, [n; 16]), now)
                .unwrap();
        }
        let third = credentials_at(&key(1), now, [9; 16]);
        assert_eq!(v.verify_at(&third, now), Err(AuthError::Busy));
        // Once the first two are past the window they are forgotten.
        let later = now + 1_500;
        let fresh = credentials_at(&key(1), later, [10; 16]);
        assert!(v.verify_at(&fresh, later).is_ok());
    }
}
