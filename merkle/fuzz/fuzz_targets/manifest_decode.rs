//! Fuzzes every decoder that reads bytes from the network or disk:
//! `Manifest::decode`, `SignedRoot::decode` and `decode_frame`.
//! Run with `RUSTC_BOOTSTRAP=1 cargo fuzz run manifest_decode` from `merkle/`
//! (or `cargo +nightly fuzz run manifest_decode` where a nightly toolchain exists).
#![no_main]

use libfuzzer_sys::fuzz_target;
use merkle::{Manifest, SignedRoot, decode_frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        // Anything accepted must be valid and re-encode to a decodable form.
        assert!(m.validate().is_ok());
        let again = Manifest::decode(&m.encode()).expect("re-encoded manifest decodes");
        assert_eq!(again, m);
        let _ = m.root();
    }
    if let Ok(s) = SignedRoot::decode(data) {
        let _ = s.verify();
        assert_eq!(SignedRoot::decode(&s.encode()).as_ref(), Ok(&s));
    }
    let mut rest = data;
    while let Ok(Some((payload, used))) = decode_frame(rest, 1 << 20) {
        assert!(used == payload.len() + merkle::FRAME_HEADER_LEN && used <= rest.len());
        rest = &rest[used..];
    }
});
