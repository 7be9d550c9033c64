//! `syncnode seed --until-complete N` keeps serving until N distinct nodes
//! report the version complete, then exits by itself with success.

use std::time::Duration;

use syncnode_tests::{checkpoint, cluster, wait_complete};

const CH: &str = "exit";

#[test]
fn seed_exits_once_enough_nodes_report_complete() {
    let (c, _tmp) = cluster();
    let src = c.root.join("src");
    checkpoint::write_v1(&src, 2 << 20, 11).unwrap();
    let mut seed = c
        .seed("seed", &src, CH, "v1", &[], &["--until-complete", "2"])
        .unwrap();
    seed.wait_ready(Duration::from_secs(30)).unwrap();
    let addr = seed.addr().unwrap();

    let mut n1 = c
        .node("n1", CH, std::slice::from_ref(&addr), &[&c.publisher], &[])
        .unwrap();
    n1.wait_ready(Duration::from_secs(30)).unwrap();
    wait_complete(&[&n1], CH, "v1", Duration::from_secs(60)).unwrap();
    // One complete node is not enough: the seed must still be serving after
    // a few completion rounds (nodes repeat `Complete` every 3 s).
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        seed.is_running(),
        "seed exited with only one node complete; log:\n{}",
        seed.log_text()
    );

    let mut n2 = c
        .node("n2", CH, std::slice::from_ref(&addr), &[&c.publisher], &[])
        .unwrap();
    n2.wait_ready(Duration::from_secs(30)).unwrap();
    wait_complete(&[&n2], CH, "v1", Duration::from_secs(60)).unwrap();
    let status = seed.wait_exit(Duration::from_secs(20)).unwrap_or_else(|e| {
        panic!("{e}; seed log:\n{}", seed.log_text());
    });
    assert!(status.success(), "seed exit status {status}");
    assert!(seed.log_text().contains("seed exiting"));
}
