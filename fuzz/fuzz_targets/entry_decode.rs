//! The canonical entry decoder: any bytes decode to a rejection, or to an
//! entry whose canonical encoding is exactly those bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mindoo_replica::entry::{Entry, SIGNATURE_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(entry) = Entry::parse(Bytes::copy_from_slice(data)) else {
        return;
    };
    let again = Entry::create(entry.envelope.clone(), entry.ciphertext(), None);
    let signature = entry.signature.map_or(1, |_| 1 + SIGNATURE_LEN);
    assert_eq!(again.id, entry.id);
    assert_eq!(
        again.data()[..again.data().len() - 1],
        data[..data.len() - signature]
    );
});
