//! A node killed with SIGKILL in the middle of a fetch resumes after a
//! restart: the chunks it had verified and stored are reused, not fetched
//! again, and the version completes byte-identical.

mod common;

use std::time::Duration;

use common::{CONVERGE, chunk_files, current_link, log_tail, wait_for};
use syncnode_tests::{checkpoint, cluster, latest, wait_complete};

const CH: &str = "ckpt";

#[test]
fn node_killed_mid_fetch_resumes_without_refetching() {
    let (mut c, _tmp) = cluster();
    let src = c.root.join("src");
    checkpoint::write_v1(&src, 4 << 20, 5).unwrap();

    // Small chunks (a few hundred of them) served slowly, so the fetch takes
    // seconds and can be interrupted part-way.
    let seed_cfg = c.root.join("seed.yaml");
    std::fs::write(
        &seed_cfg,
        "chunker: {min_size: 8192, avg_size: 16384, max_size: 65536}\n",
    )
    .unwrap();
    let seed_cfg = seed_cfg.display().to_string();
    c.env = vec![("SYNCNODE_FAULT".into(), "serve-delay-ms=30".into())];
    let mut seed = c
        .seed("seed", &src, CH, "v1", &[], &["--config", &seed_cfg])
        .unwrap();
    c.env.clear();
    seed.wait_ready(Duration::from_secs(30)).unwrap();
    let seed_addr = seed.addr().unwrap();

    // Node config written by hand (Cluster::node has no knob for the request
    // window): two requests in flight at a time keeps the fetch slow.
    let name = "n";
    let data_dir = c.root.join(name);
    std::fs::write(
        c.root.join(format!("{name}.yaml")),
        format!(
            "data_dir: \"{}\"\nlisten: [/ip4/127.0.0.1/tcp/0]\nbootstrap: [\"{seed_addr}\"]\n\
             channels: [\"{CH}\"]\ntrusted_publishers: [\"{}\"]\nmetrics_listen: null\n\
             request_timeout_secs: 5\nmax_in_flight_per_peer: 2\nmax_in_flight: 2\n",
            data_dir.display(),
            c.publisher
        ),
    )
    .unwrap();
    let mut n = c.restart_node(name, &[]).unwrap();
    n.wait_ready(Duration::from_secs(30)).unwrap();

    let before = wait_for(
        Duration::from_secs(60),
        "the fetch to be a third done",
        || {
            let v = latest(&n, CH)?;
            (v.chunks_total > 0 && v.chunks_done * 3 >= v.chunks_total).then_some(v)
        },
    );
    n.kill();
    assert!(
        before.chunks_total >= 100,
        "the test needs a checkpoint of a few hundred chunks: {before:?}"
    );
    assert!(
        before.chunks_done < before.chunks_total,
        "killed too late, the fetch had finished: {before:?}"
    );
    assert!(
        std::fs::symlink_metadata(current_link(&n, CH)).is_err(),
        "no `current` may exist before the version is complete"
    );
    assert!(
        !data_dir.join(CH).join("v1").exists(),
        "no version folder before completion"
    );
    let on_disk = chunk_files(&data_dir);
    let on_disk_bytes: u64 = on_disk.iter().map(|(_, l)| l).sum();
    assert!(
        on_disk.len() as u64 >= before.chunks_done,
        "{} chunk files on disk but status said {} chunks done",
        on_disk.len(),
        before.chunks_done
    );
    assert!(
        (on_disk.len() as u64) < before.chunks_total,
        "{} chunk files on disk of {}",
        on_disk.len(),
        before.chunks_total
    );

    let mut n = c.restart_node(name, &[]).unwrap();
    n.wait_ready(Duration::from_secs(30)).unwrap();
    let st = wait_complete(&[&n], CH, "v1", CONVERGE).unwrap().remove(0);
    assert_eq!(checkpoint::diff_trees(&src, &current_link(&n, CH)), None);
    assert!(
        st.bytes_reused >= on_disk_bytes,
        "after restart {} bytes were reused but {on_disk_bytes} bytes of verified chunks \
         were on disk: {st:?}\n{}",
        st.bytes_reused,
        log_tail(&n)
    );
    assert_eq!(st.bytes_fetched + st.bytes_reused, st.bytes_total, "{st:?}");
    let served = seed.status().unwrap().bytes_served;
    println!(
        "killed at {before:?}; {} chunk files ({on_disk_bytes} bytes) on disk; after restart \
         {st:?}; seed served {served}",
        on_disk.len()
    );
    assert!(
        served * 10 < st.bytes_total * 12,
        "the seed served {served} bytes for a {}-byte version: chunks verified before the \
         kill were fetched again",
        st.bytes_total
    );
    assert!(
        n.log_text().contains("resuming saved version"),
        "{}",
        log_tail(&n)
    );
    assert!(seed.is_running());
}
