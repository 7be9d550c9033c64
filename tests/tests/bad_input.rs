//! Bad input gives a quick, clear error instead of a crash or a hang: invalid
//! configs, unreadable or missing source folders, a missing publisher key,
//! and a disk that fills up while chunks are stored.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{current_link, log_tail, run_bounded, wait_for};
use syncnode_tests::{checkpoint, cluster, latest, syncnode_bin, wait_complete};

const CH: &str = "ckpt";
/// Commands that fail on bad input must do so at once, not after a timeout.
const QUICK: Duration = Duration::from_secs(10);

fn run_config(dir: &Path, name: &str, yaml: &str) -> common::Output {
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    run_bounded(
        Command::new(syncnode_bin())
            .arg("run")
            .arg("--config")
            .arg(&path),
        Duration::from_secs(30),
    )
}

#[test]
fn run_rejects_bad_config_naming_the_key() {
    let (c, _tmp) = cluster();
    let data = c.root.join("data");
    let base = format!(
        "data_dir: \"{}\"\nlisten: [/ip4/127.0.0.1/tcp/0]\nmetrics_listen: null\n",
        data.display()
    );
    let key = &c.publisher;
    let cases: [(&str, String, &str); 6] = [
        (
            "unknown key",
            format!("{base}trusted_publishers: [{key}]\nlisten_adr: x\n"),
            "listen_adr",
        ),
        (
            "zero window",
            format!("{base}trusted_publishers: [{key}]\nmax_in_flight: 0\n"),
            "max_in_flight",
        ),
        (
            "bad key hex",
            format!("{base}trusted_publishers: [zz]\n"),
            "trusted_publishers[0]",
        ),
        (
            "second key bad",
            format!("{base}trusted_publishers: [{key}, abcd]\n"),
            "trusted_publishers[1]",
        ),
        ("no trusted key", base.clone(), "trusted_publishers"),
        (
            "bad bootstrap",
            format!("{base}trusted_publishers: [{key}]\nbootstrap: [not-an-addr]\n"),
            "bootstrap[0]",
        ),
    ];
    for (i, (what, yaml, want)) in cases.iter().enumerate() {
        let out = run_config(&c.root, &format!("bad{i}.yaml"), yaml);
        assert!(!out.status.success(), "{what}: must fail: {out:?}");
        assert!(out.elapsed < QUICK, "{what}: took {:?}", out.elapsed);
        assert!(
            out.stderr.contains(want),
            "{what}: stderr must name `{want}`:\n{}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{what}: {}", out.stderr);
    }
    // A config that fails validation must not have started anything.
    assert!(!data.join(".syncnode/control.sock").exists());

    // A missing config file names the file.
    let missing = c.root.join("nope.yaml");
    let out = run_bounded(
        Command::new(syncnode_bin())
            .arg("run")
            .arg("--config")
            .arg(&missing),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    assert!(
        out.stderr.contains(&missing.display().to_string()),
        "{}",
        out.stderr
    );
}

fn seed_cmd(key: &Path, dir: &Path, data: &Path) -> Command {
    let mut cmd = Command::new(syncnode_bin());
    cmd.arg("seed")
        .arg(dir)
        .args(["--channel", CH, "--version", "v1", "--key"])
        .arg(key)
        .arg("--data-dir")
        .arg(data)
        .args([
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--metrics-listen",
            "none",
        ]);
    cmd
}

fn assert_fails_naming(what: &str, out: &common::Output, path: &Path) {
    assert!(!out.status.success(), "{what}: must fail: {out:?}");
    assert!(out.elapsed < QUICK, "{what}: took {:?}", out.elapsed);
    assert!(
        out.stderr.contains(&path.display().to_string()),
        "{what}: the error must name {}:\n{}",
        path.display(),
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{what}: {}", out.stderr);
}

#[test]
fn seed_of_unreadable_or_missing_folder_names_the_path() {
    let (c, _tmp) = cluster();
    let data = c.root.join("seed-data");

    // Missing folder.
    let missing = c.root.join("no-such-checkpoint");
    let out = run_bounded(
        &mut seed_cmd(&c.key_file, &missing, &data),
        Duration::from_secs(30),
    );
    assert_fails_naming("missing folder", &out, &missing);

    // A dangling symlink inside the folder cannot be read.
    let dangling_src = c.root.join("src-dangling");
    checkpoint::write_v1(&dangling_src, 1 << 20, 1).unwrap();
    let link = dangling_src.join("weights.bin");
    std::os::unix::fs::symlink(c.root.join("gone.bin"), &link).unwrap();
    let out = run_bounded(
        &mut seed_cmd(&c.key_file, &dangling_src, &data),
        Duration::from_secs(30),
    );
    assert_fails_naming("dangling symlink", &out, &link);

    // A file without read permission (meaningless when running as root).
    let src = c.root.join("src-unreadable");
    checkpoint::write_v1(&src, 1 << 20, 1).unwrap();
    let locked = src.join("data/train.jsonl");
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    if std::fs::File::open(&locked).is_ok() {
        println!(
            "SKIPPED chmod-000 sub-case: this user can read a mode-000 file (root or \
             CAP_DAC_OVERRIDE); the dangling-symlink case covers unreadable input"
        );
    } else {
        let out = run_bounded(
            &mut seed_cmd(&c.key_file, &src, &data),
            Duration::from_secs(30),
        );
        assert_fails_naming("mode 000 file", &out, &locked);
    }
    // Let the temp dir be removed.
    let _ = std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o644));

    // A file instead of a folder.
    let file = src.join("config.json");
    let out = run_bounded(
        &mut seed_cmd(&c.key_file, &file, &data),
        Duration::from_secs(30),
    );
    assert_fails_naming("file instead of folder", &out, &file);
}

#[test]
fn seed_with_missing_key_names_it_and_suggests_keygen() {
    let (c, _tmp) = cluster();
    let src = c.root.join("src");
    checkpoint::write_v1(&src, 1 << 20, 1).unwrap();
    let key = c.root.join("missing.key");
    let out = run_bounded(
        &mut seed_cmd(&key, &src, &c.root.join("seed-data")),
        Duration::from_secs(30),
    );
    assert_fails_naming("missing key", &out, &key);
    assert!(out.stderr.contains("syncnode keygen"), "{}", out.stderr);

    // A key file holding garbage names the file too.
    let garbage = c.root.join("garbage.key");
    std::fs::write(&garbage, "not a key\n").unwrap();
    let out = run_bounded(
        &mut seed_cmd(&garbage, &src, &c.root.join("seed-data")),
        Duration::from_secs(30),
    );
    assert_fails_naming("garbage key", &out, &garbage);
}

/// A tmpfs mounted for the test, always unmounted on drop (also on panic).
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Result<Mount, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Mount(at.to_owned()))
    }

    /// Changes the size limit of the mounted tmpfs.
    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "remount {} to {size} failed",
            self.0.display()
        );
    }

    /// Bytes used on the tmpfs.
    fn used(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=used"])
            .arg(&self.0)
            .output()
            .expect("run df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df output")
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Busy (a process still holds a file): detach it now, freed when released.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

#[test]
fn full_disk_while_storing_chunks_keeps_the_node_up_and_current_untouched() {
    let (c, _tmp) = cluster();
    let src = c.root.join("src");
    checkpoint::write_v1(&src, 6 << 20, 9).unwrap();
    let name = "full";
    let data_dir = c.root.join(name);
    let _mount = match Mount::tmpfs(&data_dir, "2m") {
        Ok(m) => m,
        Err(why) => {
            println!("SKIPPED full-disk test: {why}");
            return;
        }
    };
    let mut seed = c.seed("seed", &src, CH, "v1", &[], &[]).unwrap();
    seed.wait_ready(Duration::from_secs(30)).unwrap();
    let mut n = c
        .node(name, CH, &[seed.addr().unwrap()], &[&c.publisher], &[])
        .unwrap();
    assert_eq!(n.data_dir, data_dir);
    n.wait_ready(Duration::from_secs(30)).unwrap();

    let v = wait_for(
        Duration::from_secs(60),
        "the node to report the full disk",
        || {
            let v = latest(&n, CH)?;
            v.error.is_some().then_some(v)
        },
    );
    println!("full disk reported: {v:?}");
    assert_eq!(v.state, "failed", "{v:?}");
    let err = v.error.clone().unwrap();
    assert!(
        err.contains("disk is full"),
        "status error must say the disk is full: {err}"
    );
    let log = n.log_text();
    assert!(
        log.contains("disk is full") && log.contains("cannot store chunks"),
        "the log must explain the full disk:\n{}",
        log_tail(&n)
    );
    assert!(
        log.contains("No space left on device") || log.contains("os error 28"),
        "the OS error should be kept:\n{}",
        log_tail(&n)
    );
    // Still alive and answering, through at least one 10 s retry.
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        n.is_running(),
        "the node must not crash on a full disk:\n{}",
        log_tail(&n)
    );
    let s = n.status().expect("control socket still answers");
    assert_eq!(s.channels[0].current, None, "{s:?}");
    let v = latest(&n, CH).unwrap();
    assert_ne!(v.state, "complete", "{v:?}");
    assert!(v.chunks_done < v.chunks_total, "{v:?}");
    assert!(std::fs::symlink_metadata(current_link(&n, CH)).is_err());
    // No partial version folder, no staging leftovers, no partial chunk files.
    let ch_dir = data_dir.join(CH);
    if let Ok(rd) = std::fs::read_dir(&ch_dir) {
        let names: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
        assert!(names.is_empty(), "nothing may be materialized: {names:?}");
    }
    let tmp_files: Vec<_> = std::fs::read_dir(data_dir.join(".syncnode/tmp"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        tmp_files.is_empty(),
        "partial chunk files left behind: {tmp_files:?}"
    );
    common::assert_store_verified(&data_dir);

    // Once space is freed, the paused version is retried and completes.
    _mount.resize("64m");
    wait_complete(&[&n], CH, "v1", Duration::from_secs(40)).unwrap();
    assert_eq!(checkpoint::diff_trees(&src, &current_link(&n, CH)), None);
    n.kill();
    seed.kill();
}

#[test]
fn full_disk_while_materializing_keeps_the_previous_current() {
    let (c, _tmp) = cluster();
    let v1 = c.root.join("src-v1");
    let size = 2 << 20;
    checkpoint::write_v1(&v1, size, 4).unwrap();
    let name = "full";
    let data_dir = c.root.join(name);
    let mount = match Mount::tmpfs(&data_dir, "64m") {
        Ok(m) => m,
        Err(why) => {
            println!("SKIPPED full-disk test: {why}");
            return;
        }
    };
    let mut s1 = c.seed("seed1", &v1, CH, "v1", &[], &[]).unwrap();
    s1.wait_ready(Duration::from_secs(30)).unwrap();
    let mut n = c
        .node(name, CH, &[s1.addr().unwrap()], &[&c.publisher], &[])
        .unwrap();
    n.wait_ready(Duration::from_secs(30)).unwrap();
    let st1 = wait_complete(&[&n], CH, "v1", Duration::from_secs(60))
        .unwrap()
        .remove(0);
    s1.kill();

    // Room for v2's new chunks (well under a full copy) but not also for a
    // second materialized copy.
    let used = mount.used();
    let room = used + st1.bytes_total;
    mount.resize(&room.to_string());
    let v2 = c.root.join("src-v2");
    checkpoint::copy_tree(&v1, &v2).unwrap();
    checkpoint::edit_to_v2(&v2, size, 4).unwrap();
    let mut s2 = c
        .seed("seed2", &v2, CH, "v2", &[n.addr().unwrap()], &[])
        .unwrap();
    s2.wait_ready(Duration::from_secs(30)).unwrap();

    let v = wait_for(Duration::from_secs(60), "v2 to fail", || {
        let v = latest(&n, CH)?;
        (v.version == "v2" && v.error.is_some()).then_some(v)
    });
    println!("used {used} of a {room}-byte tmpfs after v1; v2: {v:?}");
    assert_ne!(v.state, "complete", "{v:?}");
    let err = v.error.clone().unwrap();
    assert!(err.contains("disk full"), "{err}");
    assert!(
        err.starts_with("materialize:"),
        "the test means to fill the disk while materializing: {err}"
    );
    assert!(
        n.log_text()
            .contains("materialization failed; previous `current` kept"),
        "{}",
        log_tail(&n)
    );
    assert!(n.is_running(), "{}", log_tail(&n));
    let s = n.status().unwrap();
    assert_eq!(s.channels[0].current.as_deref(), Some("v1"), "{s:?}");
    assert_eq!(
        std::fs::read_link(current_link(&n, CH)).unwrap().to_str(),
        Some("v1")
    );
    assert_eq!(checkpoint::diff_trees(&v1, &current_link(&n, CH)), None);
    let names: Vec<String> = std::fs::read_dir(data_dir.join(CH))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names
            .iter()
            .any(|f| f == "v2" || f.starts_with(".staging") || f.starts_with(".old")),
        "a partial v2 was left behind: {names:?}"
    );
    n.kill();
    s2.kill();
}
