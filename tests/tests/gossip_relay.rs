//! Gossip is validated before it is forwarded (gossipsub `validate_messages`:
//! a node forwards a message only after it decoded it), and valid messages
//! still travel more than one hop: in the chain seed - a - c, where c is
//! never connected to the seed, the seed hears c's `Complete` only through a.

mod common;

use std::time::Duration;

use common::{CONVERGE, log_tail};
use syncnode_tests::{Cluster, Proc, checkpoint, cluster, wait_complete};

const CH: &str = "relay";

/// `syncnode run` as `name`, bootstrapping from `bootstrap` only, dialling no
/// peer learned through exchange (`max_peers: 1`).
fn chain_node(c: &Cluster, name: &str, bootstrap: &str) -> Proc {
    let yaml = format!(
        "data_dir: \"{}\"\nlisten: [/ip4/127.0.0.1/tcp/0]\nbootstrap: [\"{bootstrap}\"]\n\
         channels: [{CH}]\ntrusted_publishers: [{}]\nmetrics_listen: null\nmax_peers: 1\n",
        c.root.join(name).display(),
        c.publisher
    );
    std::fs::write(c.root.join(format!("{name}.yaml")), yaml).unwrap();
    let mut p = c.restart_node(name, &[]).unwrap();
    p.wait_ready(Duration::from_secs(30)).unwrap();
    p
}

#[test]
fn completion_gossip_is_relayed_through_a_middle_node() {
    let (c, _tmp) = cluster();
    let src = c.root.join("src");
    checkpoint::write_v1(&src, 1 << 20, 12).unwrap();
    let mut seed = c
        .seed("seed", &src, CH, "v1", &[], &["--until-complete", "2"])
        .unwrap();
    seed.wait_ready(Duration::from_secs(30)).unwrap();
    let mut a = chain_node(&c, "a", &seed.addr().unwrap());
    let mut z = chain_node(&c, "c", &a.addr().unwrap());
    wait_complete(&[&a, &z], CH, "v1", CONVERGE).unwrap();
    let seed_id = seed.status().ok().map(|s| s.peer_id);
    let zs = z.status().unwrap();
    assert!(
        zs.peers.iter().all(|p| Some(&p.id) != seed_id.as_ref()),
        "c must not be connected to the seed: {zs:?}"
    );
    // The seed exits only once it counts two complete nodes: c's notice can
    // reach it only as gossip relayed (validated, then forwarded) by a.
    let status = seed.wait_exit(Duration::from_secs(30)).unwrap_or_else(|e| {
        panic!(
            "{e}; seed log:\n{}\na log:\n{}",
            log_tail(&seed),
            log_tail(&a)
        )
    });
    assert!(status.success(), "{status}");
    a.kill();
    z.kill();
}
