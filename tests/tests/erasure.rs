//! The erasure drill: a publisher with Reed-Solomon parity (4+2) that never
//! serves the last two data chunks of every stripe and serves every other
//! piece at most once is SIGKILLed as soon as it has sent all it will (so it
//! sent each stripe's k = 4 pieces once, and half of the data chunks never
//! left it). Every node still completes byte-identical, rebuilding the
//! withheld chunks from parity. The converse, without parity and with the
//! same faults, does not complete within a bounded wait.

mod common;

use std::time::{Duration, Instant};

use common::{CONVERGE, current_link, http_get, log_tail, metric};
use std::collections::HashSet;

use merkle::erasure::stripes;
use merkle::{ChunkerConfig, ErasureConfig, Manifest};
use node::cluster::{Cluster, Proc};
use syncnode_tests::{checkpoint, cluster, wait_complete};

const CH: &str = "ec";
const SIZE: u64 = 3 << 20;
const SEED: u64 = 21;
const K: u32 = 4;
const WITHHELD: u32 = 2;
const FAULT: &str = "withhold-data=4:2,serve-once";

fn chunker() -> ChunkerConfig {
    ChunkerConfig {
        min_size: 24576,
        avg_size: 32768,
        max_size: 40960,
    }
}

/// The manifest `seed` builds (pieces and stripes), the bytes the faulty
/// publisher serves at most (each allowed piece once) and the bytes of one
/// full copy of the data.
fn expected(src: &std::path::Path, tmp: &std::path::Path, parity: bool) -> (Manifest, u64, u64) {
    let (mut m, mut idx) = node::publish::scan(src, CH, "v1", 0, chunker()).unwrap();
    if parity {
        let ec = ErasureConfig::new(K as u16, 2).unwrap();
        node::publish::add_parity(&mut m, &mut idx, ec, &tmp.join("parity.bin")).unwrap();
    }
    let unique = m.unique_chunks();
    let copy: u64 = unique.iter().map(|c| u64::from(c.len)).sum();
    let data_sent: u64 = unique
        .iter()
        .enumerate()
        .filter(|(i, _)| (*i as u32) % K < K - WITHHELD)
        .map(|(_, c)| u64::from(c.len))
        .sum();
    let parity_sent: u64 = m
        .erasure
        .iter()
        .flat_map(|e| &e.parity)
        .map(|p| u64::from(p.len))
        .sum();
    (m, data_sent + parity_sent, copy)
}

/// Whether the nodes' stores together hold at least as many pieces of every
/// stripe as it has data chunks (for a manifest without parity: every chunk).
fn swarm_can_finish(m: &Manifest, nodes: &[Proc]) -> bool {
    let held: HashSet<merkle::Hash> = nodes
        .iter()
        .flat_map(|n| common::chunk_files(&n.data_dir))
        .map(|(h, _)| h)
        .collect();
    let unique = m.unique_chunks();
    let Some(e) = &m.erasure else {
        return unique.iter().all(|c| held.contains(&c.hash));
    };
    stripes(e.config, &unique).iter().all(|s| {
        let data = unique[s.data.clone()].iter();
        let have = data
            .chain(&e.parity[s.parity.clone()])
            .filter(|c| held.contains(&c.hash));
        have.count() >= s.data.len()
    })
}

struct Drill {
    _c: Cluster,
    _tmp: tempfile::TempDir,
    src: std::path::PathBuf,
    _seed: Proc,
    nodes: Vec<Proc>,
    origin_bytes: u64,
    one_copy: u64,
}

/// Starts the faulty publisher (with or without parity) and three nodes,
/// waits until the publisher has served all it will, and SIGKILLs it.
fn run_drill(parity: bool) -> Drill {
    let (c, tmp) = cluster();
    let src = c.root.join("src");
    checkpoint::write_v1(&src, SIZE, SEED).unwrap();
    let (m, allowed, one_copy) = expected(&src, &c.root, parity);
    println!("publisher will serve {allowed} bytes; one copy is {one_copy} bytes");
    let cfg = c.root.join("seed.yaml");
    std::fs::write(
        &cfg,
        "chunker: {min_size: 24576, avg_size: 32768, max_size: 40960}\n",
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    let mut extra = vec!["--config", cfg.as_str()];
    if parity {
        extra.extend(["--erasure", "4+2"]);
    }
    let env = [("SYNCNODE_FAULT", FAULT)];
    let mut seed = c
        .seed_env("seed", &src, CH, "v1", &[], &extra, &env)
        .unwrap();
    seed.wait_ready(Duration::from_secs(30)).unwrap();
    let addr = seed.addr().unwrap();
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let boot = std::slice::from_ref(&addr);
        let mut n = c
            .node(&format!("n{i}"), CH, boot, &[&c.publisher], &[])
            .unwrap();
        n.wait_ready(Duration::from_secs(30)).unwrap();
        nodes.push(n);
    }
    // Kill the origin once it has sent all it will, or (with parity) once
    // the nodes together hold k pieces of every stripe, whichever is first.
    let start = Instant::now();
    let origin_bytes = loop {
        let served = seed.status().map(|s| s.bytes_served).unwrap_or(0);
        if served >= allowed || (parity && swarm_can_finish(&m, &nodes)) {
            break served;
        }
        assert!(
            start.elapsed() < CONVERGE,
            "publisher served {served} of {allowed} bytes; log:\n{}",
            log_tail(&seed)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    seed.kill();
    let served_after = seed.status().map(|s| s.bytes_served).ok();
    assert!(
        served_after.is_none(),
        "the publisher still answers after SIGKILL"
    );
    Drill {
        _c: c,
        _tmp: tmp,
        src,
        _seed: seed,
        nodes,
        origin_bytes,
        one_copy,
    }
}

#[test]
fn origin_dies_before_one_full_copy_and_parity_completes_every_node() {
    let d = run_drill(true);
    let frac = d.origin_bytes as f64 / d.one_copy as f64;
    println!(
        "erasure drill: origin sent {} bytes = {frac:.3} of one copy ({} bytes), \
         and only {} of every {K} data chunks",
        d.origin_bytes,
        d.one_copy,
        K - WITHHELD
    );
    let refs: Vec<_> = d.nodes.iter().collect();
    wait_complete(&refs, CH, "v1", CONVERGE).unwrap_or_else(|e| {
        panic!("{e}; n1 log:\n{}", log_tail(&d.nodes[0]));
    });
    let mut rebuilt = 0;
    for n in &d.nodes {
        assert_eq!(
            checkpoint::diff_trees(&d.src, &current_link(n, CH)),
            None,
            "{} differs from the source",
            n.name
        );
        common::assert_store_verified(&n.data_dir);
        let m = n.status().unwrap().metrics_addr.expect("metrics address");
        let text = http_get(&m, "/metrics");
        rebuilt += metric(&text, "syncnode_chunks_rebuilt_total").unwrap_or(0);
    }
    // The withheld chunks never left the origin: somebody rebuilt each.
    assert!(rebuilt > 0, "no node rebuilt a chunk from parity");
}

#[test]
fn without_parity_the_same_drill_does_not_complete() {
    let d = run_drill(false);
    let frac = d.origin_bytes as f64 / d.one_copy as f64;
    println!(
        "no-parity drill: origin sent {} bytes = {frac:.3} of one copy",
        d.origin_bytes
    );
    assert!(d.origin_bytes < d.one_copy);
    let refs: Vec<_> = d.nodes.iter().collect();
    let r = wait_complete(&refs, CH, "v1", Duration::from_secs(15));
    assert!(r.is_err(), "completed without the withheld chunks: {r:?}");
    for n in &d.nodes {
        assert!(
            !current_link(n, CH).exists(),
            "{}: a version became current without the withheld chunks",
            n.name
        );
    }
}

#[test]
fn bad_erasure_flag_is_refused_naming_the_flag_and_the_rule() {
    let (c, _tmp) = cluster();
    let src = c.root.join("src");
    checkpoint::write_v1(&src, 1 << 20, 1).unwrap();
    for (spec, rule) in [
        ("8", "write it as K+M"),
        ("0+2", "need data in 1..=128"),
        ("8+200", "parity in 1..=128"),
    ] {
        let mut cmd = std::process::Command::new(syncnode_tests::syncnode_bin());
        cmd.arg("seed")
            .arg(&src)
            .args(["--channel", CH, "--erasure", spec, "--key"])
            .arg(&c.key_file)
            .arg("--data-dir")
            .arg(c.root.join("seed-data"));
        let out = common::run_bounded(&mut cmd, Duration::from_secs(30));
        assert!(!out.status.success(), "--erasure {spec} must fail: {out:?}");
        assert!(out.stderr.contains("--erasure"), "{spec}: {}", out.stderr);
        assert!(out.stderr.contains(rule), "{spec}: {}", out.stderr);
    }
}

/// `erasure: {data: K, parity: M}` in the seed's config file adds parity as
/// the flag does; a bad value is refused naming the key, before anything is
/// published.
#[test]
fn erasure_from_the_config_file() {
    let (c, _tmp) = cluster();
    let src = c.root.join("src");
    checkpoint::write_v1(&src, 1 << 20, 1).unwrap();
    let seed = |erasure: &str| {
        let cfg = c.root.join("seed.yaml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir: {}\nlisten: [\"/ip4/127.0.0.1/tcp/0\"]\nmetrics_listen: null\nerasure: {erasure}\n",
                c.root.join("seed-data").display()
            ),
        )
        .unwrap();
        let mut cmd = std::process::Command::new(syncnode_tests::syncnode_bin());
        cmd.args(["--log-format", "json", "seed"])
            .arg(&src)
            .args(["--channel", CH, "--until-complete", "0", "--key"])
            .arg(&c.key_file)
            .arg("--config")
            .arg(&cfg);
        common::run_bounded(&mut cmd, Duration::from_secs(60))
    };
    let bad = seed("{data: 0, parity: 2}");
    assert!(!bad.status.success(), "{bad:?}");
    assert!(bad.stderr.contains("`erasure`"), "{}", bad.stderr);
    let good = seed("{data: 4, parity: 2}");
    let all = format!("{}{}", good.stdout, good.stderr);
    assert!(
        all.contains("parity computed")
            && all.contains("\"data\":4")
            && all.contains("\"parity\":2"),
        "no parity from the config file: {all}"
    );
}
