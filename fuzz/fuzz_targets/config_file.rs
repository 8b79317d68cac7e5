//! The config loader: any file is a clear error or settings that passed
//! every check, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mindoo_replica::config::RawConfig;

fuzz_target!(|data: &[u8]| {
    // A file that is not UTF-8 is refused before it is parsed.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match RawConfig::parse_with_env(text, Some(Default::default())) {
        Ok(raw) => {
            let _ = raw.validate();
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
