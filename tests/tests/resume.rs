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

/// A free loopback TCP port (bound and released; fine for a test).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// SplitMix64 for the kill schedule (seed printed; `RESUME_SEED` replays it).
struct Rng(u64);

impl Rng {
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        lo + (z ^ (z >> 31)) % (hi - lo + 1)
    }
}

fn assert_current_whole(n: &syncnode_tests::Proc, sources: &[(&str, &std::path::Path)]) {
    assert_current_whole_dir(&n.data_dir, sources);
}

/// Starts the node, waits until `phase` holds for version `v`, then a random
/// while more, and SIGKILLs it; returns the state it was last seen in.
fn kill_when(
    c: &syncnode_tests::Cluster,
    rng: &mut Rng,
    v: &str,
    phase: &str,
    extra_ms: (u64, u64),
) -> Option<String> {
    let env = [("SYNCNODE_FAULT", "materialize-delay-ms=250")];
    let mut n = c.restart_node("n", &env).unwrap();
    n.wait_ready(Duration::from_secs(30)).unwrap();
    let seen = wait_for(Duration::from_secs(60), phase, || {
        let st = latest(&n, CH)?;
        (st.version == v && (st.state == phase || st.state == "complete")).then_some(st.state)
    });
    std::thread::sleep(Duration::from_millis(rng.range(extra_ms.0, extra_ms.1)));
    let last = latest(&n, CH).map(|s| s.state);
    n.kill();
    println!("{v}: killed in {phase} (seen {seen}, last {last:?})");
    last
}

#[test]
fn node_killed_at_random_instants_never_exposes_a_half_version_nor_refetches() {
    let seed: u64 = std::env::var("RESUME_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("RESUME_SEED={seed}");
    let mut rng = Rng(seed);
    let (mut c, _tmp) = cluster();
    let src1 = c.root.join("src1");
    let src2 = c.root.join("src2");
    checkpoint::write_v1(&src1, 4 << 20, 9).unwrap();
    checkpoint::copy_tree(&src1, &src2).unwrap();
    checkpoint::edit_to_v2(&src2, 4 << 20, 10).unwrap();
    let chunker = c.root.join("chunker.yaml");
    std::fs::write(
        &chunker,
        "chunker: {min_size: 8192, avg_size: 16384, max_size: 65536}\n",
    )
    .unwrap();
    let chunker = chunker.display().to_string();
    let (node_port, seed2_port) = (free_port(), free_port());
    let node_addr = format!("/ip4/127.0.0.1/tcp/{node_port}");
    let seed2_addr = format!("/ip4/127.0.0.1/tcp/{seed2_port}");

    c.env = vec![("SYNCNODE_FAULT".into(), "serve-delay-ms=15".into())];
    let mut seed1 = c
        .seed("seed1", &src1, CH, "v1", &[], &["--config", &chunker])
        .unwrap();
    c.env.clear();
    seed1.wait_ready(Duration::from_secs(30)).unwrap();
    let seed1_addr = seed1.addr().unwrap();
    let data_dir = c.root.join("n");
    std::fs::write(
        c.root.join("n.yaml"),
        format!(
            "data_dir: \"{}\"\nlisten: [\"{node_addr}\"]\nbootstrap: [\"{seed1_addr}\", \"{seed2_addr}\"]\n\
             channels: [\"{CH}\"]\ntrusted_publishers: [\"{}\"]\nmetrics_listen: null\n\
             request_timeout_secs: 5\nmax_in_flight_per_peer: 2\nmax_in_flight: 2\n",
            data_dir.display(),
            c.publisher
        ),
    )
    .unwrap();
    let sources = [("v1", src1.as_path()), ("v2", src2.as_path())];
    let mut kills = 0u64;
    // v1: killed three times while fetching, once while materializing.
    for _ in 0..3 {
        kill_when(&c, &mut rng, "v1", "fetching", (100, 1500));
        kills += 1;
        assert_current_whole_dir(&data_dir, &sources);
    }
    let last = kill_when(&c, &mut rng, "v1", "materializing", (0, 600));
    kills += 1;
    assert_current_whole_dir(&data_dir, &sources);
    let mut n = c.restart_node("n", &[]).unwrap();
    n.wait_ready(Duration::from_secs(30)).unwrap();
    let v1 = wait_complete(&[&n], CH, "v1", CONVERGE).unwrap().remove(0);
    assert_current_whole(&n, &sources);
    n.kill();

    // v2 from a second publisher (and the first, for shared chunks).
    c.env = vec![("SYNCNODE_FAULT".into(), "serve-delay-ms=15".into())];
    let mut seed2 = c
        .seed(
            "seed2",
            &src2,
            CH,
            "v2",
            &[node_addr.clone(), seed1_addr.clone()],
            &["--config", &chunker, "--listen", &seed2_addr],
        )
        .unwrap();
    c.env.clear();
    seed2.wait_ready(Duration::from_secs(30)).unwrap();
    let mut v2_phases = vec![last];
    for _ in 0..2 {
        v2_phases.push(kill_when(&c, &mut rng, "v2", "fetching", (100, 1200)));
        kills += 1;
        assert_current_whole_dir(&data_dir, &sources);
    }
    v2_phases.push(kill_when(&c, &mut rng, "v2", "materializing", (0, 600)));
    kills += 1;
    assert_current_whole_dir(&data_dir, &sources);
    let mut n = c.restart_node("n", &[]).unwrap();
    n.wait_ready(Duration::from_secs(30)).unwrap();
    let v2 = wait_complete(&[&n], CH, "v2", CONVERGE).unwrap().remove(0);
    assert_eq!(checkpoint::diff_trees(&src2, &current_link(&n, CH)), None);
    assert_eq!(
        checkpoint::diff_trees(&src1, &data_dir.join(CH).join("v1")),
        None
    );

    // Byte counters: what the publishers sent is what the node needed once,
    // plus at most the requests in flight at each kill (2 × 64 KiB).
    let served = seed1.status().unwrap().bytes_served + seed2.status().unwrap().bytes_served;
    // Needed once: every distinct chunk of v1 and v2 (what the store holds).
    let distinct: std::collections::BTreeMap<merkle::Hash, u64> =
        chunk_files(&data_dir).into_iter().collect();
    let needed: u64 = distinct.values().sum();
    let slack = kills * 2 * 65_536;
    println!(
        "{kills} kills (last states {v2_phases:?}); publishers served {served} bytes; \
         v1 {} bytes, v2 {} bytes, {needed} distinct; slack allowed {slack}",
        v1.bytes_total, v2.bytes_total
    );
    assert!(
        served <= needed + slack,
        "served {served} > needed {needed} + {slack}: verified chunks were fetched again"
    );
    assert!(v2.bytes_reused > 0, "v2 reuses v1's chunks: {v2:?}");
    // No staging debris from the killed materializations is left behind.
    let debris: Vec<_> = std::fs::read_dir(data_dir.join(CH))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        debris.iter().all(|d| !d.starts_with(".staging")),
        "{debris:?}"
    );
}

/// `current`, if it exists, is a whole version: the folder it points to is
/// byte-identical to that version's source (every file's SHA-256 was checked
/// on the way in; comparing with the source checks it again here).
fn assert_current_whole_dir(data_dir: &std::path::Path, sources: &[(&str, &std::path::Path)]) {
    let link = data_dir.join(CH).join("current");
    let Ok(target) = std::fs::read_link(&link) else {
        return;
    };
    let name = target.file_name().unwrap().to_string_lossy().into_owned();
    let src = sources
        .iter()
        .find(|(v, _)| *v == name)
        .unwrap_or_else(|| panic!("`current` points to unknown {name}"))
        .1;
    assert_eq!(
        checkpoint::diff_trees(src, &link),
        None,
        "`current` -> {name} is not the whole version"
    );
}
