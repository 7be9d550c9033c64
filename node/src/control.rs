//! The local control API: a Unix socket speaking one JSON object per line.
//!
//! Request `{"cmd":"status"}` → one line with a [`Status`] object. Unknown
//! commands get `{"error": "..."}`. The socket file is created with mode 0600
//! inside `data_dir/.syncnode/` by default, so only the node's user can use it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

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

/// A status request from the socket to the daemon loop.
pub type StatusRequest = oneshot::Sender<Status>;

/// Serves the control socket, forwarding status requests to the daemon.
pub fn serve(path: &Path, tx: mpsc::Sender<StatusRequest>) -> std::io::Result<PathBuf> {
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
            let tx = tx.clone();
            tokio::spawn(handle(sock, tx));
        }
    });
    Ok(path.to_owned())
}

async fn handle(sock: UnixStream, tx: mpsc::Sender<StatusRequest>) {
    let (r, mut w) = sock.into_split();
    let mut lines = BufReader::new(r.take(64 * 1024)).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        #[derive(Deserialize)]
        struct Cmd {
            cmd: String,
        }
        let reply = match serde_json::from_str::<Cmd>(&line) {
            Ok(c) if c.cmd == "status" => {
                let (otx, orx) = oneshot::channel();
                if tx.send(otx).await.is_err() {
                    break;
                }
                match orx.await {
                    Ok(s) => serde_json::to_string(&s).expect("status serializes"),
                    Err(_) => break,
                }
            }
            Ok(c) => {
                serde_json::json!({"error": format!("unknown command `{}`; try status", c.cmd)})
                    .to_string()
            }
            Err(e) => serde_json::json!({"error": format!("bad request: {e}")}).to_string(),
        };
        if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
            break;
        }
    }
}

/// Asks a running daemon for its status (blocking; used by `syncnode status`,
/// the demo and the tests, none of which needs an async runtime for it).
pub fn query_blocking(path: &Path, timeout: std::time::Duration) -> anyhow::Result<Status> {
    use anyhow::Context;
    use std::io::{BufRead, Write};
    let sock = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("cannot reach control socket {}", path.display()))?;
    sock.set_read_timeout(Some(timeout))?;
    sock.set_write_timeout(Some(timeout))?;
    (&sock).write_all(b"{\"cmd\":\"status\"}\n")?;
    let mut line = String::new();
    std::io::BufReader::new(&sock).read_line(&mut line)?;
    let v: serde_json::Value = serde_json::from_str(&line).context("bad reply from daemon")?;
    if let Some(e) = v.get("error") {
        anyhow::bail!("daemon: {e}");
    }
    Ok(serde_json::from_value(v)?)
}
