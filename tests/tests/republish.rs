//! Publishing identical content again under a new version name: the node
//! accepts it as a new version (the root binds the names), fetches nothing
//! (every chunk is already held) and switches `current` to it.

use std::time::Duration;

use syncnode_tests::{checkpoint, cluster, wait_complete};

const CH: &str = "same";

#[test]
fn same_content_as_new_version_moves_no_bytes() {
    let (c, _tmp) = cluster();
    let src = c.root.join("src");
    checkpoint::write_v1(&src, 2 << 20, 5).unwrap();
    let mut s1 = c.seed("seed1", &src, CH, "v1", &[], &[]).unwrap();
    s1.wait_ready(Duration::from_secs(30)).unwrap();
    let addr = s1.addr().unwrap();
    let mut n = c
        .node("n", CH, std::slice::from_ref(&addr), &[&c.publisher], &[])
        .unwrap();
    n.wait_ready(Duration::from_secs(30)).unwrap();
    let v1 = wait_complete(&[&n], CH, "v1", Duration::from_secs(60)).unwrap();
    assert_eq!(v1[0].bytes_fetched, v1[0].bytes_total);
    s1.kill();

    let node_addr = n.addr().unwrap();
    let _s2 = c
        .seed(
            "seed2",
            &src,
            CH,
            "v2",
            std::slice::from_ref(&node_addr),
            &[],
        )
        .unwrap();
    let v2 = wait_complete(&[&n], CH, "v2", Duration::from_secs(60)).unwrap();
    assert_ne!(
        v1[0].root, v2[0].root,
        "a new version name must give a new root"
    );
    assert_eq!(v2[0].bytes_fetched, 0, "{:?}", v2[0]);
    assert_eq!(v2[0].bytes_reused, v2[0].bytes_total);
    assert!(checkpoint::diff_trees(&src, &n.data_dir.join(CH).join("current")).is_none());
    assert!(n.data_dir.join(CH).join("v1").is_dir());
}
