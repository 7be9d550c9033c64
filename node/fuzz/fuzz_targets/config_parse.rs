//! Fuzzes the config parser: YAML parsing into `NodeConfig` and every
//! validation rule, plus the private-network key file parser. Never touches
//! the file system (the key file path is cleared before validation and its
//! text format fuzzed directly). Run with
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run config_parse` from `node/`.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use node::config::NodeConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = node::security::parse_psk(text);
    if let Ok(mut cfg) = NodeConfig::parse(Path::new("fuzz.yaml"), text) {
        cfg.private_network_key_file = None;
        if let Ok(v) = cfg.clone().validate(false) {
            // Whatever validates keeps its parsed lists in step with the raw ones.
            assert_eq!(v.listen.len(), v.raw.listen.len());
            assert_eq!(v.allowed_peers.len(), v.raw.allowed_peers.len());
            assert_eq!(v.trusted.len(), v.raw.trusted_publishers.len());
        }
        let _ = cfg.validate(true);
    }
});
