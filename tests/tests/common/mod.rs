//! Helpers shared by the integration test files (each file includes this
//! module with `mod common;`, so not every helper is used by every file).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use syncnode_tests::Proc;

/// The bound used for every "wait for the cluster to converge" step.
pub const CONVERGE: Duration = Duration::from_secs(60);

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP/1.1 GET over a std `TcpStream`; returns the whole response (head and body).
pub fn http_get(addr: &str, path: &str) -> String {
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("read {addr}{path}: {e}"));
    out
}

/// The value of an unlabelled Prometheus sample `name` in a text exposition.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(name)).then(|| it.next()?.parse::<f64>().ok().map(|v| v as u64))?
    })
}

/// Output of a finished command.
#[derive(Debug)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

/// Runs `cmd` to completion with captured output, killing it (and panicking) after `timeout`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn command");
    // Drain the pipes on threads so a chatty child never blocks on a full pipe.
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {timeout:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
        elapsed: start.elapsed(),
    }
}

/// `<data_dir>/<channel>/current`.
pub fn current_link(p: &Proc, channel: &str) -> PathBuf {
    p.data_dir.join(channel).join("current")
}

/// Every chunk record in a node's store (`<data_dir>/.syncnode/packs/`):
/// its hash as named in the record and its bytes' length.
pub fn chunk_files(data_dir: &Path) -> Vec<(merkle::Hash, u64)> {
    node::store::read_all(&data_dir.join(".syncnode"))
        .unwrap()
        .into_iter()
        .map(|(h, d)| (h, d.len() as u64))
        .collect()
}

/// Asserts every chunk record in the store holds bytes that hash (BLAKE3) to
/// the hash it is stored under.
pub fn assert_store_verified(data_dir: &Path) {
    let records = node::store::read_all(&data_dir.join(".syncnode")).unwrap();
    assert!(!records.is_empty(), "no chunks in {}", data_dir.display());
    for (hash, data) in records {
        assert_eq!(
            merkle::Hash::of(&data),
            hash,
            "a stored chunk does not hold the bytes its hash promises"
        );
    }
}

/// The end of a process log, for assertion messages.
pub fn log_tail(p: &Proc) -> String {
    syncnode_tests::cluster::tail(&p.log_text(), 40)
}
