//! A version signed by a key the node does not trust is refused (never
//! fetched, never materialized), while a node trusting the key gets it.

mod common;

use std::time::{Duration, Instant};

use common::{CONVERGE, chunk_files, current_link, log_tail, wait_for};
use syncnode_tests::{checkpoint, cluster, latest, wait_complete};

const CH: &str = "ckpt";

#[test]
fn untrusted_publisher_is_refused_and_trusted_one_accepted() {
    let (c, _tmp) = cluster();
    let src = c.root.join("src");
    checkpoint::write_v1(&src, 2 << 20, 3).unwrap();
    let other = syncnode_tests::cluster::keygen(&c.root.join("other.key")).unwrap();
    assert_ne!(other, c.publisher);

    let mut seed = c.seed("seed", &src, CH, "v1", &[], &[]).unwrap();
    seed.wait_ready(Duration::from_secs(30)).unwrap();
    let seed_addr = seed.addr().unwrap();
    let seed_id = seed.status().unwrap().peer_id;

    let mut bad = c
        .node(
            "distrustful",
            CH,
            std::slice::from_ref(&seed_addr),
            &[&other],
            &[],
        )
        .unwrap();
    bad.wait_ready(Duration::from_secs(30)).unwrap();
    wait_for(
        Duration::from_secs(30),
        "the node to connect to the seed",
        || {
            let s = bad.status().ok()?;
            s.peers.iter().any(|p| p.id == seed_id).then_some(())
        },
    );
    // The seed offers its root at once (hello) and re-announces every 2 s:
    // within ~5 s connected the node has heard it several times.
    let connected_at = Instant::now();
    let rejected = wait_for(Duration::from_secs(30), "the root to be refused", || {
        let s = bad.status().ok()?;
        (s.roots_rejected > 0).then_some(s.roots_rejected)
    });
    assert!(rejected > 0);
    std::thread::sleep(Duration::from_secs(5).saturating_sub(connected_at.elapsed()));

    let s = bad.status().unwrap();
    assert!(s.roots_rejected > 0, "{s:?}");
    assert!(
        s.peers.iter().any(|p| p.id == seed_id),
        "still connected to the seed: {s:?}"
    );
    assert!(
        latest(&bad, CH).is_none(),
        "an untrusted version was taken up: {s:?}"
    );
    assert_eq!(s.channels[0].current, None, "{s:?}");
    assert!(
        std::fs::symlink_metadata(current_link(&bad, CH)).is_err(),
        "no `current` may exist"
    );
    assert!(!bad.data_dir.join(CH).join("v1").exists());
    assert_eq!(
        s.bytes_fetched, 0,
        "nothing may be fetched for an untrusted root: {s:?}"
    );
    assert!(chunk_files(&bad.data_dir).is_empty());
    let log = bad.log_text();
    assert!(
        log.contains("untrusted"),
        "the log must say why the version was refused:\n{}",
        log_tail(&bad)
    );
    assert!(
        log.contains(&c.publisher),
        "the log names the refused key:\n{}",
        log_tail(&bad)
    );

    // Control: a node that trusts the seed's key gets the version.
    let mut good = c
        .node("trusting", CH, &[seed_addr], &[&other, &c.publisher], &[])
        .unwrap();
    good.wait_ready(Duration::from_secs(30)).unwrap();
    let t = Instant::now();
    wait_complete(&[&good], CH, "v1", CONVERGE).unwrap();
    println!("trusting node complete after {:?}", t.elapsed());
    assert_eq!(checkpoint::diff_trees(&src, &current_link(&good, CH)), None);
    assert_eq!(good.status().unwrap().roots_rejected, 0);

    // The distrustful node, now also connected to a peer holding the version
    // (peer exchange), still refuses it.
    std::thread::sleep(Duration::from_secs(2));
    assert!(latest(&bad, CH).is_none());
    assert!(std::fs::symlink_metadata(current_link(&bad, CH)).is_err());
    assert!(bad.is_running(), "{}", log_tail(&bad));
}
