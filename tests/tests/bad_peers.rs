//! A peer that announces chunks it does not serve (a lying `Have`: it
//! answers `NotFound`) is penalised after a threshold, then banned; the ban
//! holds across versions: the next version is not asked of it either. The
//! victim keeps working and serving.

mod common;

use std::time::Duration;

use common::{CONVERGE, current_link, log_tail};
use syncnode_tests::{checkpoint, cluster, wait_complete};

const CH: &str = "liar";

#[test]
fn a_peer_announcing_chunks_it_lacks_is_penalised_banned_and_stays_banned_for_the_next_version() {
    let (mut c, _tmp) = cluster();
    let src1 = c.root.join("src1");
    let src2 = c.root.join("src2");
    checkpoint::write_v1(&src1, 2 << 20, 3).unwrap();
    checkpoint::copy_tree(&src1, &src2).unwrap();
    checkpoint::edit_to_v2(&src2, 2 << 20, 4).unwrap();
    let chunker = c.root.join("chunker.yaml");
    std::fs::write(
        &chunker,
        "chunker: {min_size: 8192, avg_size: 16384, max_size: 65536}\n",
    )
    .unwrap();
    let chunker = chunker.display().to_string();

    // A slow honest origin, so the fetcher prefers the liar, which announces
    // the whole version.
    c.env = vec![("SYNCNODE_FAULT".into(), "serve-delay-ms=20".into())];
    let mut seed = c
        .seed("seed1", &src1, CH, "v1", &[], &["--config", &chunker])
        .unwrap();
    seed.wait_ready(Duration::from_secs(30)).unwrap();
    let seed_addr = seed.addr().unwrap();
    c.env.clear();
    let fault = [("SYNCNODE_FAULT", "notfound-serve")];
    let mut liar = c
        .node(
            "liar",
            CH,
            std::slice::from_ref(&seed_addr),
            &[&c.publisher],
            &fault,
        )
        .unwrap();
    liar.wait_ready(Duration::from_secs(30)).unwrap();
    wait_complete(&[&liar], CH, "v1", CONVERGE).unwrap();
    let liar_id = liar.status().unwrap().peer_id;
    let liar_addr = liar.addr().unwrap();

    let mut b = c
        .node(
            "b",
            CH,
            &[liar_addr.clone(), seed_addr.clone()],
            &[&c.publisher],
            &[],
        )
        .unwrap();
    b.wait_ready(Duration::from_secs(30)).unwrap();
    wait_complete(&[&b], CH, "v1", CONVERGE).unwrap();
    assert_eq!(checkpoint::diff_trees(&src1, &current_link(&b, CH)), None);
    let log = b.log_text();
    let lies = log
        .lines()
        .filter(|l| {
            l.contains("penalising peer: announced chunks it does not have")
                && l.contains(&liar_id)
                && l.contains(r#""version":"v1""#)
        })
        .count();
    let bans = log
        .lines()
        .filter(|l| l.contains("peer banned") && l.contains(&liar_id))
        .count();
    println!("v1: B penalised the liar {lies} times, banned it {bans} times");
    assert!(lies >= 3, "B must penalise the liar:\n{}", log_tail(&b));
    assert_eq!(bans, 1, "B must ban the liar once:\n{}", log_tail(&b));

    // v2: the liar follows the channel too and announces v2 chunks as it gets
    // them; B, which banned it, must not ask it for any of them.
    c.env = vec![("SYNCNODE_FAULT".into(), "serve-delay-ms=20".into())];
    let b_addr = b.addr().unwrap();
    let mut seed2 = c
        .seed(
            "seed2",
            &src2,
            CH,
            "v2",
            &[b_addr, liar_addr, seed_addr],
            &["--config", &chunker],
        )
        .unwrap();
    c.env.clear();
    seed2.wait_ready(Duration::from_secs(30)).unwrap();
    wait_complete(&[&b, &liar], CH, "v2", CONVERGE).unwrap();
    assert_eq!(checkpoint::diff_trees(&src2, &current_link(&b, CH)), None);
    let log = b.log_text();
    let v2_penalties: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("penalising peer") && l.contains(r#""version":"v2""#))
        .collect();
    assert!(
        v2_penalties.is_empty(),
        "the ban must hold across versions: {v2_penalties:?}"
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("peer banned") && l.contains(&liar_id))
            .count(),
        1
    );
    // The victim keeps serving: it answers its control socket and runs.
    assert!(b.is_running() && liar.is_running() && seed.is_running());
    assert!(b.status().unwrap().bytes_fetched > 0);
}
