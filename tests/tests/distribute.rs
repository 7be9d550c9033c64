//! A publisher and three nodes: v1, then a delta v2 from a second publisher
//! process; every node ends byte-identical to the source, fetching only the
//! chunks that changed, and reports it over `/metrics`, `/healthz` and
//! `syncnode status`.

mod common;

use std::time::Duration;

use common::{CONVERGE, current_link, http_get, log_tail, metric, run_bounded};
use syncnode_tests::{checkpoint, cluster, wait_complete};

const CH: &str = "llama";
const SIZE: u64 = 6 << 20;
const SEED: u64 = 7;

#[test]
fn v1_then_delta_v2_reach_every_node_byte_identical() {
    let (c, _tmp) = cluster();
    // Smaller chunks than the default (256 KiB average) so that the v2 edit
    // (every fourth 192 KiB tensor rewritten) leaves most chunks unchanged.
    let seed_cfg = c.root.join("seed.yaml");
    std::fs::write(
        &seed_cfg,
        "chunker: {min_size: 16384, avg_size: 32768, max_size: 131072}\n",
    )
    .unwrap();
    let seed_cfg = seed_cfg.display().to_string();
    let extra = ["--config", seed_cfg.as_str()];

    let v1 = c.root.join("src-v1");
    checkpoint::write_v1(&v1, SIZE, SEED).unwrap();
    let mut s1 = c.seed("seed1", &v1, CH, "v1", &[], &extra).unwrap();
    s1.wait_ready(Duration::from_secs(30)).unwrap();
    let s1_addr = s1.addr().unwrap();

    let mut nodes = Vec::new();
    for i in 0..3 {
        let mut n = c
            .node(
                &format!("n{i}"),
                CH,
                std::slice::from_ref(&s1_addr),
                &[&c.publisher],
                &[],
            )
            .unwrap();
        n.wait_ready(Duration::from_secs(30)).unwrap();
        nodes.push(n);
    }
    let refs: Vec<_> = nodes.iter().collect();
    let st1 = wait_complete(&refs, CH, "v1", CONVERGE).unwrap();
    for (n, st) in nodes.iter().zip(&st1) {
        assert_eq!(
            checkpoint::diff_trees(&v1, &current_link(n, CH)),
            None,
            "{} v1 differs from the source",
            n.name
        );
        assert_eq!(st.chunks_done, st.chunks_total, "{}: {st:?}", n.name);
        assert_eq!(st.bytes_done, st.bytes_total, "{}: {st:?}", n.name);
        assert_eq!(
            st.bytes_reused, 0,
            "{}: nothing to reuse for v1: {st:?}",
            n.name
        );
        assert_eq!(
            st.bytes_fetched, st.bytes_total,
            "{}: v1 must be fetched whole, exactly once per chunk: {st:?}",
            n.name
        );
    }

    // v2: the v1 publisher goes away; a new publisher process (bootstrapping
    // to the nodes) publishes the edited copy.
    s1.kill();
    let v2 = c.root.join("src-v2");
    checkpoint::copy_tree(&v1, &v2).unwrap();
    let changed = checkpoint::edit_to_v2(&v2, SIZE, SEED).unwrap();
    assert_ne!(
        checkpoint::diff_trees(&v1, &v2),
        None,
        "edit_to_v2 changed nothing"
    );
    let node_addrs: Vec<String> = nodes.iter().map(|n| n.addr().unwrap()).collect();
    let mut s2 = c.seed("seed2", &v2, CH, "v2", &node_addrs, &extra).unwrap();
    s2.wait_ready(Duration::from_secs(30)).unwrap();
    let st2 = wait_complete(&refs, CH, "v2", CONVERGE).unwrap();

    for (n, st) in nodes.iter().zip(&st2) {
        println!("{} v2: {st:?} (changed bytes {changed})", n.name);
        let cur = current_link(n, CH);
        assert_eq!(
            std::fs::read_link(&cur).unwrap().to_str(),
            Some("v2"),
            "{}: current must point at v2",
            n.name
        );
        assert_eq!(
            checkpoint::diff_trees(&v2, &cur),
            None,
            "{} v2 differs from the source",
            n.name
        );
        // The previous version stays untouched next to it.
        assert_eq!(
            checkpoint::diff_trees(&v1, &n.data_dir.join(CH).join("v1")),
            None,
            "{}: the v1 folder must still be there, unchanged",
            n.name
        );
        // The delta: only changed chunks crossed the network.
        assert_eq!(
            st.bytes_fetched + st.bytes_reused,
            st.bytes_total,
            "{}: fetched + reused must add up to the version: {st:?}",
            n.name
        );
        assert!(st.bytes_reused > 0, "{}: nothing reused: {st:?}", n.name);
        assert!(
            st.bytes_fetched * 2 < st.bytes_total,
            "{}: fetched {} of {} bytes for a v2 that changed {changed} bytes; the delta \
             should need well under half",
            n.name,
            st.bytes_fetched,
            st.bytes_total
        );
        assert!(
            st.bytes_fetched >= changed,
            "{}: fetched {} bytes but {changed} bytes changed content: {st:?}",
            n.name,
            st.bytes_fetched
        );
    }

    // Metrics and health of one node over HTTP.
    let status = nodes[0].status().unwrap();
    let maddr = status
        .metrics_addr
        .clone()
        .expect("node has a metrics endpoint");
    let m = http_get(&maddr, "/metrics");
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    let fetched = metric(&m, "syncnode_bytes_fetched_total").unwrap_or_else(|| panic!("{m}"));
    assert!(fetched > 0, "{m}");
    assert_eq!(
        fetched, status.bytes_fetched,
        "/metrics and the control socket disagree on bytes fetched"
    );
    assert_eq!(
        fetched,
        st1[0].bytes_fetched + st2[0].bytes_fetched,
        "the counter covers both versions"
    );
    let complete = metric(&m, "syncnode_versions_complete_total").unwrap_or_else(|| panic!("{m}"));
    assert_eq!(complete, 2, "v1 and v2 were completed: {m}");
    let reused = metric(&m, "syncnode_bytes_reused_total").unwrap_or_else(|| panic!("{m}"));
    assert_eq!(reused, st2[0].bytes_reused, "{m}");
    let h = http_get(&maddr, "/healthz");
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    assert_eq!(h.split("\r\n\r\n").nth(1).map(str::trim), Some("ok"), "{h}");

    // `syncnode status` against the running daemon.
    let out = run_bounded(
        std::process::Command::new(&c.bin)
            .arg("status")
            .arg("--data-dir")
            .arg(&nodes[0].data_dir),
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains(&format!("channel {CH}: current = v2")),
        "status output: {}",
        out.stdout
    );
    assert!(
        out.stdout.contains("latest v2 [complete]"),
        "status output: {}",
        out.stdout
    );
    let out = run_bounded(
        std::process::Command::new(&c.bin)
            .args(["status", "--json", "--data-dir"])
            .arg(&nodes[0].data_dir),
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["channels"][0]["current"], "v2", "{}", out.stdout);

    for n in &mut nodes {
        assert!(n.is_running(), "{} exited: {}", n.name, log_tail(n));
    }
}
