//! Entries for demos, benchmarks and tests: valid, with random ciphertext
//! (a replica cannot tell it from real ciphertext, and neither can
//! compression).

use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;

use crate::entry::{Entry, Envelope, Namespace};

/// Creates `count` unsigned entries numbered from `first`, with random
/// ciphertext of `size` bytes (cheap enough to generate millions).
pub fn unsigned_entries(ns: &Namespace, first: u64, count: usize, size: usize) -> Vec<Entry> {
    let mut ciphertext = vec![0u8; size];
    (0..count as u64)
        .map(|i| {
            rand::fill(&mut ciphertext[..]);
            let envelope = Envelope {
                namespace: ns.clone(),
                author: [0; 32],
                created_ms: first + i,
                kind: "doc_change".into(),
                doc_id: format!("doc-{}", (first + i) % 1000).into_bytes(),
                deps: vec![],
            };
            Entry::create(envelope, &ciphertext, None)
        })
        .collect()
}

/// Creates `count` signed entries with random ciphertext of `size` bytes.
pub fn sample_entries(ns: &Namespace, key: &SigningKey, count: usize, size: usize) -> Vec<Entry> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut ciphertext = vec![0u8; size];
    (0..count)
        .map(|i| {
            rand::fill(&mut ciphertext[..]);
            let envelope = Envelope {
                namespace: ns.clone(),
                author: [0; 32],
                created_ms: now + i as u64,
                kind: "doc_change".into(),
                doc_id: format!("doc-{}", i % 100).into_bytes(),
                deps: vec![],
            };
            Entry::create(envelope, &ciphertext, Some(key))
        })
        .collect()
}

/// Deterministic mutations of `valid`, for property tests of decoders
/// (and the fuzz targets' seed corpus): each copy has a few bytes flipped,
/// set to a boundary value, inserted or removed, or is cut short or
/// extended. `seed` picks the sequence, so a failure can be replayed.
pub fn mutations(valid: &[u8], seed: u64, count: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..count).map(move |_| {
        let mut m = valid.to_vec();
        for _ in 0..rng.random_range(1..=4) {
            let at = rng.random_range(0..=m.len());
            match rng.random_range(0..6) {
                0 if at < m.len() => m[at] ^= 1 << rng.random_range(0..8),
                1 if at < m.len() => m[at] = [0, 1, 0x7f, 0x80, 0xff][rng.random_range(0..5)],
                2 => m.insert(at, rng.random()),
                3 if at < m.len() => {
                    m.remove(at);
                }
                4 => m.truncate(at),
                _ => m.extend((0..rng.random_range(1..64)).map(|_| rng.random::<u8>())),
            }
        }
        m
    })
}
