//! Who may connect: `allowed_peers` refuses every other peer at the
//! connection level, and a private-network key (`private_network_key_file`)
//! keeps out every node that does not hold the same key. Both apply to `seed`
//! (flags) and `run` (config), and the refusing or failing side logs why.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{CONVERGE, current_link, log_tail, run_bounded, wait_for};
use syncnode_tests::{Cluster, Proc, checkpoint, cluster, latest, syncnode_bin, wait_complete};

const CH: &str = "ckpt";

/// `syncnode peer-id --data-dir <root>/<name>`: creates the identity the
/// process started as `name` will use, and returns its peer id.
fn peer_id(c: &Cluster, name: &str) -> String {
    let out = run_bounded(
        Command::new(syncnode_bin())
            .arg("peer-id")
            .arg("--data-dir")
            .arg(c.root.join(name)),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{out:?}");
    let id = out.stdout.trim().to_owned();
    assert!(id.starts_with("12D3KooW"), "{out:?}");
    id
}

/// Starts `syncnode run` as `name` following [`CH`], trusting the cluster's
/// publisher, bootstrapping from `bootstrap`, with `extra` YAML appended.
fn node(c: &Cluster, name: &str, bootstrap: &str, extra: &str) -> Proc {
    let data_dir = c.root.join(name);
    let yaml = format!(
        "data_dir: \"{}\"\nlisten: [/ip4/127.0.0.1/tcp/0]\nbootstrap: [\"{bootstrap}\"]\n\
         channels: [{CH}]\ntrusted_publishers: [{}]\nmetrics_listen: null\n\
         request_timeout_secs: 5\n{extra}",
        data_dir.display(),
        c.publisher
    );
    std::fs::write(c.root.join(format!("{name}.yaml")), yaml).unwrap();
    let mut p = c.restart_node(name, &[]).unwrap();
    p.wait_ready(Duration::from_secs(30)).unwrap();
    p
}

/// Whether one line of `log` contains every one of `parts`.
fn has_line(log: &str, parts: &[&str]) -> bool {
    log.lines().any(|l| parts.iter().all(|p| l.contains(p)))
}

#[test]
fn allowed_peers_refuses_every_other_peer() {
    let (c, _tmp) = cluster();
    let src = c.root.join("src");
    checkpoint::write_v1(&src, 1 << 20, 5).unwrap();
    let seed_id = peer_id(&c, "seed");
    let member_id = peer_id(&c, "member");
    let outsider_id = peer_id(&c, "outsider");

    let mut seed = c
        .seed("seed", &src, CH, "v1", &[], &["--allow-peer", &member_id])
        .unwrap();
    let s = seed.wait_ready(Duration::from_secs(30)).unwrap();
    assert_eq!(
        s.peer_id, seed_id,
        "peer-id must print the id the seed uses"
    );
    let seed_addr = seed.addr().unwrap();

    let mut member = node(
        &c,
        "member",
        &seed_addr,
        &format!("allowed_peers: [{seed_id}]\n"),
    );
    assert_eq!(member.status().unwrap().peer_id, member_id);
    let mut outsider = node(&c, "outsider", &seed_addr, "");
    assert_eq!(outsider.status().unwrap().peer_id, outsider_id);

    wait_complete(&[&member], CH, "v1", CONVERGE).unwrap();
    assert_eq!(
        checkpoint::diff_trees(&src, &current_link(&member, CH)),
        None
    );
    wait_for(
        Duration::from_secs(30),
        "the seed to log the refused outsider",
        || {
            has_line(
                &seed.log_text(),
                &[
                    "refused connection from a peer not in allowed_peers",
                    &outsider_id,
                ],
            )
            .then_some(())
        },
    );
    // The outsider keeps re-dialling (backoff) but never gets anything.
    std::thread::sleep(Duration::from_secs(3));
    assert!(latest(&outsider, CH).is_none(), "{}", log_tail(&outsider));
    let so = outsider.status().unwrap();
    assert_eq!(so.bytes_fetched, 0, "{so:?}");
    assert!(!outsider.data_dir.join(CH).exists());
    let ss = seed.status().unwrap();
    assert!(
        ss.peers.iter().all(|p| p.id != outsider_id),
        "the outsider must not stay connected: {ss:?}"
    );
    assert!(
        ss.peers.iter().any(|p| p.id == member_id),
        "the member stays connected: {ss:?}"
    );
    assert!(seed.is_running() && member.is_running() && outsider.is_running());
    let log = member.log_text();
    assert!(
        has_line(&log, &["node identity", &member_id]),
        "the node logs its own peer id at start:\n{}",
        log_tail(&member)
    );
    seed.kill();
    member.kill();
    outsider.kill();
}

/// `syncnode keygen --psk --out FILE`; returns the printed fingerprint.
fn psk(c: &Cluster, name: &str) -> (std::path::PathBuf, String) {
    let path = c.root.join(name);
    let out = run_bounded(
        Command::new(syncnode_bin())
            .args(["keygen", "--psk", "--out"])
            .arg(&path),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("/key/swarm/psk/1.0.0/\n/base16/\n"),
        "{text}"
    );
    let fp = out.stdout.trim().to_owned();
    assert_eq!(fp.len(), 32, "{out:?}");
    (path, fp)
}

#[test]
fn private_network_key_keeps_out_nodes_without_the_same_key() {
    let (c, _tmp) = cluster();
    let src = c.root.join("src");
    checkpoint::write_v1(&src, 1 << 20, 6).unwrap();
    let (k1, fp1) = psk(&c, "swarm.key");
    let (k2, fp2) = psk(&c, "other.key");
    assert_ne!(fp1, fp2);

    let k1s = k1.display().to_string();
    let mut seed = c
        .seed(
            "seed",
            &src,
            CH,
            "v1",
            &[],
            &["--private-network-key", &k1s],
        )
        .unwrap();
    seed.wait_ready(Duration::from_secs(30)).unwrap();
    let seed_addr = seed.addr().unwrap();

    let key_line = |k: &std::path::Path| format!("private_network_key_file: \"{}\"\n", k.display());
    let mut good = node(&c, "good", &seed_addr, &key_line(&k1));
    let mut wrong = node(&c, "wrong", &seed_addr, &key_line(&k2));
    let mut none = node(&c, "none", &seed_addr, "");

    wait_complete(&[&good], CH, "v1", CONVERGE).unwrap();
    assert_eq!(checkpoint::diff_trees(&src, &current_link(&good, CH)), None);
    for (p, hint) in [
        (&wrong, fp2.as_str()),
        (&none, "this node uses no private network key"),
    ] {
        wait_for(
            Duration::from_secs(30),
            "the keyless or wrong-key node to log why it cannot connect",
            || {
                has_line(
                    &p.log_text(),
                    &["cannot connect to peer", "handshake failed", hint],
                )
                .then_some(())
            },
        );
    }
    wait_for(
        Duration::from_secs(30),
        "the seed to log failed inbound handshakes",
        || {
            has_line(
                &seed.log_text(),
                &["inbound connection failed", "handshake failed", &fp1],
            )
            .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    for p in [&wrong, &none] {
        assert!(latest(p, CH).is_none(), "{}", log_tail(p));
        let s = p.status().unwrap();
        assert!(s.peers.is_empty(), "{} connected to someone: {s:?}", p.name);
    }
    assert!(seed.is_running() && good.is_running());
    seed.kill();
    good.kill();
    wrong.kill();
    none.kill();
}
