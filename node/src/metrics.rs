//! Prometheus metrics (`/metrics`, text format 0.0.4) and `/healthz`.
//!
//! The counters are plain atomics shared by the daemon's tasks; the HTTP side
//! is a minimal HTTP/1.1 responder on a tokio listener (two fixed paths, one
//! request per connection), which avoids pulling an HTTP stack into the daemon.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The daemon's counters and gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Chunk bytes received from peers and verified.
    pub bytes_fetched: AtomicU64,
    /// Chunk bytes of new versions already held locally (not fetched).
    pub bytes_reused: AtomicU64,
    /// Chunk bytes sent to peers.
    pub bytes_served: AtomicU64,
    /// Chunks that passed BLAKE3 verification.
    pub chunks_verified: AtomicU64,
    /// Chunks that failed verification (corrupt or wrong data from a peer).
    pub chunks_rejected: AtomicU64,
    /// Data chunks rebuilt from Reed-Solomon parity (and checked against their leaves).
    pub chunks_rebuilt: AtomicU64,
    /// Chunk requests answered.
    pub chunks_served: AtomicU64,
    /// Our chunk requests a peer answered `Busy` (all its upload slots taken).
    pub answers_busy: AtomicU64,
    /// Our chunk requests a peer answered `NotFound` (it did not hold the chunk).
    pub answers_not_found: AtomicU64,
    /// Versions fully materialized (or published, on a seed).
    pub versions_complete: AtomicU64,
    /// Roots refused (bad signature or untrusted publisher).
    pub roots_rejected: AtomicU64,
    /// Connected peers (gauge).
    pub peers: AtomicU64,
    /// Peer links declared cut (silent for `peer_timeout_ms`).
    pub links_cut: AtomicU64,
    /// Peers banned after repeated offences.
    pub peers_banned: AtomicU64,
    /// Bytes written to peer TCP connections (payload: Noise, yamux and all messages).
    pub wire_bytes_sent: AtomicU64,
    /// Bytes read from peer TCP connections.
    pub wire_bytes_received: AtomicU64,
    /// Configured upload limit, bytes/s, 0 = unlimited (gauge).
    pub upload_limit: AtomicU64,
    /// Configured download limit, bytes/s, 0 = unlimited (gauge).
    pub download_limit: AtomicU64,
    /// Upload rate enforced now (the adaptive rate in adaptive mode), bytes/s, 0 = unlimited (gauge).
    pub upload_rate: AtomicU64,
    /// Download rate enforced now, bytes/s, 0 = unlimited (gauge).
    pub download_rate: AtomicU64,
}

impl Metrics {
    /// Adds `v` to a counter.
    pub fn add(c: &AtomicU64, v: u64) {
        c.fetch_add(v, Relaxed);
    }

    /// Renders the Prometheus text exposition.
    pub fn render(&self) -> String {
        let rows: [(&str, &str, &str, &AtomicU64); 20] = [
            (
                "syncnode_links_cut_total",
                "counter",
                "Peer links declared cut after peer_timeout_ms of silence.",
                &self.links_cut,
            ),
            (
                "syncnode_peers_banned_total",
                "counter",
                "Peers banned after repeated offences.",
                &self.peers_banned,
            ),
            (
                "syncnode_bytes_fetched_total",
                "counter",
                "Chunk bytes received from peers and verified.",
                &self.bytes_fetched,
            ),
            (
                "syncnode_bytes_reused_total",
                "counter",
                "Chunk bytes of new versions already held locally.",
                &self.bytes_reused,
            ),
            (
                "syncnode_bytes_served_total",
                "counter",
                "Chunk bytes sent to peers.",
                &self.bytes_served,
            ),
            (
                "syncnode_chunks_verified_total",
                "counter",
                "Chunks that passed BLAKE3 verification.",
                &self.chunks_verified,
            ),
            (
                "syncnode_chunks_rebuilt_total",
                "counter",
                "Data chunks rebuilt from Reed-Solomon parity.",
                &self.chunks_rebuilt,
            ),
            (
                "syncnode_chunks_rejected_total",
                "counter",
                "Chunks that failed verification.",
                &self.chunks_rejected,
            ),
            (
                "syncnode_chunk_answers_busy_total",
                "counter",
                "Chunk requests of this node that a peer answered Busy.",
                &self.answers_busy,
            ),
            (
                "syncnode_chunk_answers_not_found_total",
                "counter",
                "Chunk requests of this node that a peer answered NotFound.",
                &self.answers_not_found,
            ),
            (
                "syncnode_chunks_served_total",
                "counter",
                "Chunk requests answered with data.",
                &self.chunks_served,
            ),
            (
                "syncnode_versions_complete_total",
                "counter",
                "Versions fully materialized or published.",
                &self.versions_complete,
            ),
            (
                "syncnode_roots_rejected_total",
                "counter",
                "Signed roots refused (bad signature or untrusted key).",
                &self.roots_rejected,
            ),
            ("syncnode_peers", "gauge", "Connected peers.", &self.peers),
            (
                "syncnode_wire_bytes_sent_total",
                "counter",
                "Bytes written to peer TCP connections (all protocol overhead above TCP included).",
                &self.wire_bytes_sent,
            ),
            (
                "syncnode_wire_bytes_received_total",
                "counter",
                "Bytes read from peer TCP connections.",
                &self.wire_bytes_received,
            ),
            (
                "syncnode_upload_limit_bytes_per_second",
                "gauge",
                "Configured upload limit (0 = unlimited).",
                &self.upload_limit,
            ),
            (
                "syncnode_download_limit_bytes_per_second",
                "gauge",
                "Configured download limit (0 = unlimited).",
                &self.download_limit,
            ),
            (
                "syncnode_upload_rate_bytes_per_second",
                "gauge",
                "Upload rate enforced now: the adaptive rate in adaptive mode (0 = unlimited).",
                &self.upload_rate,
            ),
            (
                "syncnode_download_rate_bytes_per_second",
                "gauge",
                "Download rate enforced now (0 = unlimited).",
                &self.download_rate,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, v) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Relaxed)
            );
        }
        out
    }
}

/// Binds the metrics endpoint; returns the bound address (port 0 picks one).
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                let mut n = 0;
                // Read until the end of the request line (bounded).
                while n < buf.len() {
                    match tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        sock.read(&mut buf[n..]),
                    )
                    .await
                    {
                        Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                        Ok(Ok(k)) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req.split_whitespace().nth(1).unwrap_or("");
                let (status, ctype, body) = match path {
                    "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
                    "/healthz" => ("200 OK", "text/plain", "ok\n".to_owned()),
                    _ => (
                        "404 Not Found",
                        "text/plain",
                        "try /metrics or /healthz\n".to_owned(),
                    ),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_metrics_and_health() {
        let m = Arc::new(Metrics::default());
        Metrics::add(&m.bytes_fetched, 42);
        let addr = serve("127.0.0.1:0".parse().unwrap(), m).await.unwrap();
        for (path, want) in [
            ("/metrics", "syncnode_bytes_fetched_total 42"),
            ("/healthz", "ok"),
            ("/nope", "404"),
        ] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert!(out.contains(want), "{path}: {out}");
        }
    }
}
