//! The request authenticator: any credentials header is taken (only when it
//! carries a valid signature) or refused with a reason, never a panic; and
//! a header taken once is refused on another connection.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mindoo_replica::auth::{Proven, Verifier};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let verifier = Verifier::new(Duration::from_secs(30), 1_000);
    let (one, other) = (Proven::default(), Proven::default());
    match verifier.verify_on(value, &one) {
        Ok(key) => {
            assert_eq!(verifier.verify_on(value, &one), Ok(key));
            assert!(verifier.verify_on(value, &other).is_err());
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
