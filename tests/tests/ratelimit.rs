//! Bandwidth limits on real processes: a publisher started with
//! `--upload-limit-mbps`, limits changed at run time with `syncnode limit`
//! (reported by `status` and `/metrics`), bad values refused, and a limited
//! transfer that still completes byte-identical, and not faster than the
//! limit allows (a coarse check; rates are measured by tests/bench/ratelimit.py).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{CONVERGE, current_link, http_get, log_tail, metric, run_bounded};
use syncnode_tests::{Proc, checkpoint, cluster, syncnode_bin, wait_complete};

const CH: &str = "limited";
const SIZE: u64 = 12 << 20;

fn limit(p: &Proc, args: &[&str]) -> common::Output {
    let mut cmd = Command::new(syncnode_bin());
    cmd.arg("limit").arg("--socket").arg(&p.socket).args(args);
    run_bounded(&mut cmd, Duration::from_secs(30))
}

#[test]
fn limits_apply_change_at_run_time_and_the_transfer_completes() {
    let (c, _tmp) = cluster();
    let src = c.root.join("src");
    checkpoint::write_v1(&src, SIZE, 5).unwrap();
    let mut seed = c
        .seed("seed", &src, CH, "v1", &[], &["--upload-limit-mbps", "20"])
        .unwrap();
    let st = seed.wait_ready(Duration::from_secs(30)).unwrap();
    assert_eq!(st.bandwidth.upload_limit_mbps, Some(20.0), "{st:?}");
    assert_eq!(st.bandwidth.download_limit_mbps, None, "{st:?}");
    assert_eq!(st.bandwidth.mode, "fixed");

    let addr = seed.addr().unwrap();
    let started = Instant::now();
    let mut node = c
        .node("n1", CH, std::slice::from_ref(&addr), &[&c.publisher], &[])
        .unwrap();
    node.wait_ready(Duration::from_secs(30)).unwrap();

    // Mid-transfer: raise the publisher's limit, cap the node's download.
    std::thread::sleep(Duration::from_secs(1));
    let out = limit(&seed, &["--upload", "30"]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("upload 30 Mbit/s"), "{out:?}");
    let out = limit(&node, &["--download", "50", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let b: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(b["download_limit_mbps"], 50.0, "{b}");
    assert_eq!(b["upload_limit_mbps"], serde_json::Value::Null, "{b}");

    // Both changes show in status, the node's in /metrics too.
    let st = seed.status().unwrap();
    assert_eq!(st.bandwidth.upload_limit_mbps, Some(30.0), "{st:?}");
    assert_eq!(st.bandwidth.upload_rate_mbps, Some(30.0), "{st:?}");
    let nst = node.status().unwrap();
    assert_eq!(nst.bandwidth.download_limit_mbps, Some(50.0), "{nst:?}");
    let maddr = nst.metrics_addr.clone().expect("node metrics enabled");
    let m = http_get(&maddr, "/metrics");
    assert_eq!(
        metric(&m, "syncnode_download_limit_bytes_per_second"),
        Some(6_250_000),
        "{m}"
    );
    assert_eq!(
        metric(&m, "syncnode_upload_limit_bytes_per_second"),
        Some(0)
    );
    let mut cmd = Command::new(syncnode_bin());
    cmd.arg("status").arg("--socket").arg(&seed.socket);
    let out = run_bounded(&mut cmd, Duration::from_secs(30));
    assert!(
        out.stdout.contains("bandwidth: upload 30 Mbit/s"),
        "{out:?}"
    );

    // Bad values are refused with the field named, and change nothing.
    let out = limit(&seed, &["--upload", "5000000"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("upload_mbps"), "{out:?}");
    assert_eq!(
        seed.status().unwrap().bandwidth.upload_limit_mbps,
        Some(30.0)
    );
    let out = limit(&seed, &[]);
    assert!(
        !out.status.success() && out.stderr.contains("nothing to change"),
        "{out:?}"
    );

    let st = wait_complete(&[&node], CH, "v1", CONVERGE)
        .unwrap_or_else(|e| panic!("{e}\n{}", log_tail(&node)));
    let took = started.elapsed();
    assert_eq!(checkpoint::diff_trees(&src, &current_link(&node, CH)), None);
    assert_eq!(st[0].bytes_fetched, st[0].bytes_total);
    // 12 MiB at 20 Mbit/s for the first second, then 30 Mbit/s, needs > 3.5 s;
    // unlimited on loopback it takes well under one.
    assert!(
        took > Duration::from_secs(3),
        "12 MiB arrived in {took:?}: the upload limit was not applied"
    );
    let sent = seed.status().unwrap().bandwidth.wire_bytes_sent;
    assert!(sent >= SIZE, "seed wire bytes {sent} < {SIZE}");

    // --unlimited lifts both limits.
    let out = limit(&seed, &["--unlimited"]);
    assert!(out.status.success(), "{out:?}");
    let b = seed.status().unwrap().bandwidth;
    assert_eq!((b.upload_limit_mbps, b.download_limit_mbps), (None, None));
}

#[test]
fn bad_limits_at_start_name_the_flag_value() {
    let (c, _tmp) = cluster();
    let src = c.root.join("src");
    checkpoint::write_v1(&src, 1 << 20, 5).unwrap();
    let mut seed = c
        .seed(
            "seed",
            &src,
            CH,
            "v1",
            &[],
            &["--download-limit-mbps", "0.0001"],
        )
        .unwrap();
    let code = seed.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(!code.success());
    let log = seed.log_text();
    assert!(log.contains("bandwidth_limit_mbps.download"), "{log}");
}
