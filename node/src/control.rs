//! The local control API: a Unix socket speaking one JSON object per line.
//!
//! Request `{"cmd":"status"}` → one line with a [`Status`] object.
//! `{"cmd":"limit","upload_mbps":100,"download_mbps":0,"mode":"adaptive"}`
//! changes the bandwidth limits at run time (every field optional: absent
//! keeps the value, `0` means unlimited) and answers the new
//! [`BandwidthStatus`]. Unknown commands and bad values get `{"error": "..."}`. The socket file is created with mode 0600
//! inside `data_dir/.syncnode/` by default, so only the node's user can use it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::ratelimit::{self, Limiter, Limits, Mode};

/// What the daemon reports.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Status {
    /// `node` or `seed`.
    pub role: String,
    /// Our libp2p peer id.
    pub peer_id: String,
    /// Our listen addresses.
    pub listen_addrs: Vec<String>,
    /// The metrics endpoint, if enabled.
    pub metrics_addr: Option<String>,
    /// Connected peers.
    pub peers: Vec<PeerStatus>,
    /// One entry per followed channel.
    pub channels: Vec<ChannelStatus>,
    /// Chunk bytes sent to peers since start.
    pub bytes_served: u64,
    /// Chunk bytes fetched from peers and verified since start.
    pub bytes_fetched: u64,
    /// Chunks rejected (failed verification) since start.
    pub chunks_rejected: u64,
    /// Signed roots refused since start.
    pub roots_rejected: u64,
    /// Our chunk requests answered `Busy` since start.
    #[serde(default)]
    pub answers_busy: u64,
    /// Our chunk requests answered `NotFound` since start.
    #[serde(default)]
    pub answers_not_found: u64,
    /// Bandwidth limits and wire byte counts.
    #[serde(default)]
    pub bandwidth: BandwidthStatus,
}

/// Bandwidth limits and what crossed the wire (also the reply to `limit`).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct BandwidthStatus {
    /// `fixed` or `adaptive`.
    pub mode: String,
    /// Configured upload limit in Mbit/s; `None` = unlimited.
    pub upload_limit_mbps: Option<f64>,
    /// Configured download limit in Mbit/s; `None` = unlimited.
    pub download_limit_mbps: Option<f64>,
    /// Upload rate enforced now (the adaptive rate in adaptive mode); `None` = unlimited.
    pub upload_rate_mbps: Option<f64>,
    /// Download rate enforced now; `None` = unlimited.
    pub download_rate_mbps: Option<f64>,
    /// Bytes written to peer TCP connections since start.
    pub wire_bytes_sent: u64,
    /// Bytes read from peer TCP connections since start.
    pub wire_bytes_received: u64,
}

/// A connected peer.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PeerStatus {
    /// Peer id.
    pub id: String,
    /// Its listen addresses, as far as known.
    pub addrs: Vec<String>,
}

/// A channel's state.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ChannelStatus {
    /// Channel name.
    pub channel: String,
    /// The version `current` points at.
    pub current: Option<String>,
    /// The newest version known, complete or in progress.
    pub latest: Option<VersionStatus>,
}

/// Progress of one version.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct VersionStatus {
    /// Version name.
    pub version: String,
    /// Version root (hex).
    pub root: String,
    /// `manifest`, `fetching`, `materializing`, `complete` or `failed`.
    pub state: String,
    /// Distinct chunks held.
    pub chunks_done: u64,
    /// Distinct chunks in the version.
    pub chunks_total: u64,
    /// Bytes of distinct chunks held.
    pub bytes_done: u64,
    /// Bytes of distinct chunks in the version.
    pub bytes_total: u64,
    /// Bytes fetched from peers for this version.
    pub bytes_fetched: u64,
    /// Bytes already held when the version arrived (delta).
    pub bytes_reused: u64,
    /// Milliseconds from hearing the root to complete (or until now).
    pub elapsed_ms: u64,
    /// Peers known to hold the whole version.
    pub complete_peers: usize,
    /// The last error, if the version failed.
    pub error: Option<String>,
}

/// A status request from the socket (or an embedding harness) to the daemon loop.
#[derive(Debug)]
pub struct StatusRequest {
    /// Where the answer goes.
    pub reply: oneshot::Sender<Status>,
    /// Leave out the per-peer list and the listen addresses (every peer id
    /// formatted in base58, every address as text): for callers that poll
    /// progress often, like the simulator's observer every 5 ms of
    /// simulated time on every host.
    pub brief: bool,
}

/// A `limit` command: new limits in Mbit/s (0 = unlimited) and/or mode;
/// `None` keeps the current value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitRequest {
    /// New upload limit, Mbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_mbps: Option<f64>,
    /// New download limit, Mbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_mbps: Option<f64>,
    /// New mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
}

impl LimitRequest {
    /// Validates and applies the request; the error names the bad field.
    pub fn apply(&self, limiter: &Limiter) -> Result<BandwidthStatus, String> {
        let check = |key: &str, v: Option<f64>, old| match v {
            None => Ok(old),
            Some(v) => ratelimit::rate_from_mbps(v).map_err(|e| format!("`{key}`: {e}")),
        };
        let old = limiter.limits();
        let limits = Limits {
            upload: check("upload_mbps", self.upload_mbps, old.upload)?,
            download: check("download_mbps", self.download_mbps, old.download)?,
        };
        Ok(limiter.set(Some(limits), self.mode))
    }
}

/// Serves the control socket, forwarding status requests to the daemon and
/// applying `limit` commands to `limiter`.
pub fn serve(
    path: &Path,
    tx: mpsc::Sender<StatusRequest>,
    limiter: std::sync::Arc<Limiter>,
) -> std::io::Result<PathBuf> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // A socket left by a killed daemon: remove it (connect fails if nobody listens).
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "another syncnode daemon is running on control socket {}; stop it or use \
                     another data_dir",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(handle(sock, tx.clone(), limiter.clone()));
        }
    });
    Ok(path.to_owned())
}

async fn handle(
    sock: UnixStream,
    tx: mpsc::Sender<StatusRequest>,
    limiter: std::sync::Arc<Limiter>,
) {
    let (r, mut w) = sock.into_split();
    let mut lines = BufReader::new(r.take(64 * 1024)).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        #[derive(Deserialize)]
        struct Cmd {
            cmd: String,
            #[serde(flatten)]
            limit: LimitRequest,
        }
        let reply = match serde_json::from_str::<Cmd>(&line) {
            Ok(c) if c.cmd == "limit" => match c.limit.apply(&limiter) {
                Ok(b) => serde_json::to_string(&b).expect("status serializes"),
                Err(e) => serde_json::json!({ "error": e }).to_string(),
            },
            Ok(c) if c.cmd == "status" => {
                let (otx, orx) = oneshot::channel();
                if tx.send(StatusRequest { reply: otx, brief: false }).await.is_err() {
                    break;
                }
                match orx.await {
                    Ok(s) => serde_json::to_string(&s).expect("status serializes"),
                    Err(_) => break,
                }
            }
            Ok(c) => {
                serde_json::json!({"error": format!("unknown command `{}`; try status or limit", c.cmd)})
                    .to_string()
            }
            Err(e) => serde_json::json!({"error": format!("bad request: {e}")}).to_string(),
        };
        if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
            break;
        }
    }
}

/// Sends one request line and reads one reply (blocking; used by the CLI,
/// the demo and the tests, none of which needs an async runtime for it).
fn request_blocking(
    path: &Path,
    request: &serde_json::Value,
    timeout: std::time::Duration,
) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context;
    use std::io::{BufRead, Write};
    let sock = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("cannot reach control socket {}", path.display()))?;
    sock.set_read_timeout(Some(timeout))?;
    sock.set_write_timeout(Some(timeout))?;
    (&sock).write_all(format!("{request}\n").as_bytes())?;
    let mut line = String::new();
    std::io::BufReader::new(&sock).read_line(&mut line)?;
    let v: serde_json::Value = serde_json::from_str(&line).context("bad reply from daemon")?;
    if let Some(e) = v.get("error") {
        anyhow::bail!(
            "daemon: {}",
            e.as_str().map_or_else(|| e.to_string(), str::to_owned)
        );
    }
    Ok(v)
}

/// Asks a running daemon for its status.
pub fn query_blocking(path: &Path, timeout: std::time::Duration) -> anyhow::Result<Status> {
    let v = request_blocking(path, &serde_json::json!({"cmd": "status"}), timeout)?;
    Ok(serde_json::from_value(v)?)
}

/// Changes a running daemon's bandwidth limits; returns what it now enforces.
pub fn set_limit_blocking(
    path: &Path,
    req: &LimitRequest,
    timeout: std::time::Duration,
) -> anyhow::Result<BandwidthStatus> {
    let mut v = serde_json::to_value(req)?;
    v["cmd"] = "limit".into();
    let v = request_blocking(path, &v, timeout)?;
    Ok(serde_json::from_value(v)?)
}
