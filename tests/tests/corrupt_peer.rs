//! A peer that corrupts every chunk it serves is caught: its chunks fail
//! BLAKE3 verification, are rejected and fetched from an honest peer, and
//! nothing corrupt reaches the store or the materialized files.

mod common;

use std::time::Duration;

use common::{CONVERGE, assert_store_verified, current_link, log_tail};
use syncnode_tests::{checkpoint, cluster, wait_complete};

const CH: &str = "ckpt";

#[test]
fn corrupt_chunks_are_rejected_and_refetched_from_an_honest_peer() {
    let (mut c, _tmp) = cluster();
    let src = c.root.join("src");
    checkpoint::write_v1(&src, 4 << 20, 11).unwrap();

    // A slow but honest origin, so the fetcher has every reason to prefer the
    // corrupt peer (which holds the whole version) over it.
    c.env = vec![("SYNCNODE_FAULT".into(), "serve-delay-ms=50".into())];
    let mut seed = c.seed("seed", &src, CH, "v1", &[], &[]).unwrap();
    c.env.clear();
    seed.wait_ready(Duration::from_secs(30)).unwrap();
    let seed_addr = seed.addr().unwrap();

    // A fetches honestly from the seed; only what it serves is corrupted.
    let mut a = c
        .node(
            "a",
            CH,
            std::slice::from_ref(&seed_addr),
            &[&c.publisher],
            &[("SYNCNODE_FAULT", "corrupt-serve")],
        )
        .unwrap();
    a.wait_ready(Duration::from_secs(30)).unwrap();
    wait_complete(&[&a], CH, "v1", CONVERGE).unwrap();
    assert_eq!(checkpoint::diff_trees(&src, &current_link(&a, CH)), None);
    assert!(
        a.log_text().contains("FAULT INJECTION"),
        "the fault switch must be announced in the log: {}",
        log_tail(&a)
    );
    let a_addr = a.addr().unwrap();

    // B knows both: the corrupt complete peer A and the slow honest origin.
    let mut b = c
        .node("b", CH, &[a_addr, seed_addr], &[&c.publisher], &[])
        .unwrap();
    b.wait_ready(Duration::from_secs(30)).unwrap();
    let st = wait_complete(&[&b], CH, "v1", CONVERGE).unwrap().remove(0);

    assert_eq!(
        checkpoint::diff_trees(&src, &current_link(&b, CH)),
        None,
        "B's materialized files must equal the source"
    );
    assert_store_verified(&b.data_dir);

    let bs = b.status().unwrap();
    println!(
        "B: chunks_rejected {} bytes_fetched {}; v1 {st:?}",
        bs.chunks_rejected, bs.bytes_fetched
    );
    assert!(
        bs.chunks_rejected > 0,
        "B must have been served corrupt chunks by A and rejected them; status {bs:?}; log:\n{}",
        log_tail(&b)
    );
    let blog = b.log_text();
    assert!(
        blog.contains("rejected a chunk that failed BLAKE3 verification"),
        "B's log must report the rejection:\n{}",
        log_tail(&b)
    );
    assert!(
        a.status().unwrap().bytes_served > 0,
        "A served (corrupt) chunks to B"
    );
    // Rejected bytes are not counted as fetched.
    assert_eq!(st.bytes_fetched, st.bytes_total, "{st:?}");
    assert_eq!(bs.bytes_fetched, st.bytes_total, "{bs:?}");
    assert!(a.is_running() && b.is_running() && seed.is_running());
}
