//! Fuzzes everything a peer's bytes reach before any verification: the frame
//! reader exactly as the `/syncnode/chunks/1` codec runs it (header, limits,
//! tag, CRC), the request and response decoders, and the gossip decoder.
//! Whatever decodes must re-encode to a message that decodes to the same value.
//! Run with `RUSTC_BOOTSTRAP=1 cargo fuzz run wire_decode` from `node/`.
#![no_main]

use futures::executor::block_on;
use libfuzzer_sys::fuzz_target;
use node::wire::{
    Gossip, MAX_REQUEST, MAX_RESPONSE, Request, Response, read_frame, request_limit, response_limit,
};

fn check_request(payload: &[u8]) {
    if let Ok(r) = Request::decode(payload) {
        assert_eq!(Request::decode(&r.encode()).expect("re-encoded request"), r);
    }
}

fn check_response(payload: Vec<u8>) {
    if let Ok(r) = Response::decode(payload) {
        assert_eq!(
            Response::decode(r.encode()).expect("re-encoded response"),
            r
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = block_on(read_frame(&mut &data[..], MAX_REQUEST, request_limit)) {
        assert!(p.len() + merkle::FRAME_HEADER_LEN <= data.len());
        check_request(&p);
    }
    if let Ok(p) = block_on(read_frame(&mut &data[..], MAX_RESPONSE, response_limit)) {
        assert!(p.len() + merkle::FRAME_HEADER_LEN <= data.len());
        check_response(p);
    }
    check_request(data);
    check_response(data.to_vec());
    if let Ok(g) = Gossip::decode(data) {
        assert_eq!(Gossip::decode(&g.encode()).expect("re-encoded gossip"), g);
    }
});
