//! The config loader: any file is a clear error or settings that passed
//! every check, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mindoo_replica::config::RawConfig;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("replica.toml");
    std::fs::write(&path, data).expect("a temp file");
    match RawConfig::load_with_env(Some(&path), Some(Default::default())) {
        Ok(raw) => {
            let _ = raw.validate();
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
