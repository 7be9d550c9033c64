//! Support for the integration tests in `tests/tests/`: they start real
//! `syncnode` processes (see `node::cluster`) on loopback.
//!
//! [`syncnode_bin`] builds the `syncnode` binary with the same cargo and
//! profile as the test itself (a no-op when it is fresh), so
//! `cargo nextest run --workspace` always tests the current code.

use std::path::PathBuf;
use std::sync::OnceLock;

pub mod netns;

pub use node::checkpoint;
pub use node::cluster::{self, Cluster, Proc, latest, wait_complete};

/// Path to a freshly built `syncnode` binary.
pub fn syncnode_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // target/<profile>/deps/<test exe> -> target/<profile>
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("test executable lives in target/<profile>/deps")
            .to_path_buf();
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_owned();
        let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "node", "--bin", "syncnode"])
            .arg("--target-dir")
            .arg(&target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile != "debug" {
            cmd.args([
                "--profile",
                if profile == "release" {
                    "release"
                } else {
                    &profile
                },
            ]);
        }
        let status = cmd.status().expect("run cargo build for syncnode");
        assert!(status.success(), "building syncnode failed");
        let bin = profile_dir.join("syncnode");
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
    .clone()
}

/// A cluster in a fresh temporary folder (removed on drop of the returned guard).
pub fn cluster() -> (Cluster, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("syncnode-it-")
        .tempdir()
        .expect("temp dir");
    let c = Cluster::new(syncnode_bin(), dir.path().join("c")).expect("cluster");
    (c, dir)
}
