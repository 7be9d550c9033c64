//! Node configuration: the YAML file, its defaults, and validation.
//!
//! Every key is documented on [`NodeConfig`] and in `docs/operations.md`.
//! Unknown keys are rejected (serde `deny_unknown_fields`), and every value is
//! checked by [`NodeConfig::validate`], whose errors name the offending key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use libp2p::pnet::PreSharedKey;
use libp2p::{Multiaddr, PeerId};
use merkle::{ChunkerConfig, ed25519_dalek::VerifyingKey};
use serde::Deserialize;

/// A configuration problem, always naming the key and how to fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The config path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The YAML did not parse, or held an unknown key or a value of the wrong type.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The config path.
        path: PathBuf,
        /// serde's message, which names the key and its line.
        message: String,
    },
    /// A key had a value of the right type but an invalid content.
    #[error("invalid value for `{key}`: {message}")]
    Value {
        /// The dotted key, e.g. `trusted_publishers[1]`.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

fn value_err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Value {
        key: key.into(),
        message: message.into(),
    }
}

/// The daemon's configuration (`syncnode run --config node.yaml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Where chunks, manifests and materialized versions live. Default `./syncnode-data`.
    pub data_dir: PathBuf,
    /// libp2p listen addresses. Default `["/ip4/0.0.0.0/tcp/7411"]`.
    pub listen: Vec<String>,
    /// Peers dialled at start and re-dialled while disconnected, as multiaddrs
    /// (`/ip4/10.0.0.5/tcp/7411`, optionally ending in `/p2p/<peer id>`).
    pub bootstrap: Vec<String>,
    /// Channels this node follows. Default `["default"]`.
    pub channels: Vec<String>,
    /// Hex-encoded ed25519 public keys whose signed roots are accepted. Required for `run`.
    pub trusted_publishers: Vec<String>,
    /// Address of the Prometheus `/metrics` and `/healthz` endpoint; `null` disables it.
    /// Default `127.0.0.1:9464`.
    pub metrics_listen: Option<String>,
    /// Path of the control socket. Default `<data_dir>/.syncnode/control.sock`.
    pub control_socket: Option<PathBuf>,
    /// Chunk requests outstanding at once, over all peers. Default 64.
    pub max_in_flight: usize,
    /// Chunk requests outstanding at once to one peer. Default 16.
    pub max_in_flight_per_peer: usize,
    /// Seconds before an unanswered chunk request is retried elsewhere. Default 10.
    pub request_timeout_secs: u64,
    /// Milliseconds without a heartbeat answer or any bytes from a connected
    /// peer after which its link is declared cut: the connection is closed,
    /// its outstanding requests move to other peers at once, and it is
    /// redialled with backoff. Heartbeats (libp2p ping) go every quarter of
    /// this. Default 2000.
    pub peer_timeout_ms: u64,
    /// Offences (corrupt chunks; every `3` chunks it announced but answered
    /// `NotFound` for) after which a peer is banned. Default 3.
    pub ban_after: u32,
    /// Seconds a banned peer stays banned (not asked, not dialled, its
    /// connections closed), across versions. Default 600.
    pub ban_secs: u64,
    /// Most peers kept connected; peers learned through exchange beyond this are not dialled. Default 64.
    pub max_peers: usize,
    /// Chunk uploads served at once; further requests are answered `Busy` at
    /// once, so requesters go to another holder instead of queueing. A slot
    /// frees once its response is written into the connection, at once with
    /// the default `stream_window_kib`, so `upload_backlog_kib` is the bound
    /// that usually binds. Default 2.
    pub max_uploads: usize,
    /// Chunk downloads outstanding at once (not counting endgame duplicates).
    /// Default 6. Fewer downloads at once let each chunk finish, verify and
    /// be served on early; but every request costs a round trip, the
    /// server's read and a new yamux stream that starts at a 256 KiB
    /// window, so with 2 a node's link idles between chunks (the flow
    /// simulator, bench-8 at 200 Mbit/s: 1.53 x S/B with 2, 1.16 with 4,
    /// 1.17 with 6, 1.28 with 8). Fan-out benchmark, 8 hosts at 50 Mbit/s, 128 MiB: 1.96 x S/B
    /// with 2, 1.54 with 4, 1.45 with 6, 1.44 with 8, 1.42 with 16
    /// (`docs/performance.md`).
    pub max_downloads: usize,
    /// Receive window, KiB, granted at once on every stream this node opens
    /// (each chunk request is one). Default 1088: a whole default chunk (at
    /// most 1 MiB) comes at once instead of waiting, after yamux's own 256
    /// KiB, one round trip for a window update, a round trip that under load
    /// crosses the requester's own busy upload queue. An uploader's slot then
    /// frees as soon as its response is written, so `upload_backlog_kib` is
    /// what bounds its transfers; the two together are 0.1 x S/B faster on
    /// the 8-host fan-out benchmark at 128 MiB and 1 GiB (`docs/performance.md`,
    /// "Session of 2026-12-03"). 256 is upstream yamux's behaviour.
    /// Process-wide (the yamux patch). 256-65536.
    pub stream_window_kib: u32,
    /// Most bytes of chunk responses, KiB, that may wait on this node's
    /// uplink (handed to its connections, not yet acknowledged by the
    /// receivers' TCP) before further chunk requests are answered `Busy`;
    /// 0 = no bound (only `max_uploads`). A slot of `max_uploads` frees once
    /// its response is written into the connection, which with a large
    /// `stream_window_kib` is at once: this bound is what then keeps each
    /// transfer short. Default 2048 (8 hosts at 200 Mbit/s: 1024 gave
    /// 1.36-1.41 x S/B, 2048 1.27-1.32; `docs/performance.md`). 0-1048576.
    pub upload_backlog_kib: u32,
    /// How often newly verified chunks are announced to peers (`Have`), ms.
    /// A chunk is relayable only once announced, so shorter is a faster
    /// fan-out (simulator: 100 nodes at 1.44 x S/B with 100 ms, 1.18 with
    /// 5 ms), at the cost of more messages (one per peer per interval with
    /// news: measurable CPU when many daemons share few cores). Default 100.
    pub have_interval_ms: u64,
    /// Make stored data durable: the chunk store syncs its pack every 64 MiB
    /// appended, before a version is materialized and on stop (group commit:
    /// after a power loss a node refetches at most that much; a sync per
    /// chunk cost a quarter of the daemon's CPU on the fan-out benchmark), and
    /// every materialized file is fsynced before `current` moves. Default
    /// true; turn off only for throwaway tests.
    pub fsync: bool,
    /// Threads of the daemon's async runtime (networking, Noise, yamux, the
    /// swarm). 0, the default, is one per CPU core (or `TOKIO_WORKER_THREADS`).
    /// Hashing and disk work run on separate blocking threads either way.
    /// Set it to bound the daemon's footprint on a busy host (a training
    /// node) or when several daemons share one.
    pub worker_threads: usize,
    /// Node labels (region, zone, rack, host); used for topology-aware selection by later versions.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Chunker parameters used by `seed` (min/avg/max bytes).
    pub chunker: ChunkerConfig,
    /// Reed-Solomon parity a publisher adds (`seed`): `{data: K, parity: M}`
    /// = M parity pieces per stripe of K data chunks; `--erasure K+M`
    /// overrides it. Default none. Ignored by `run`.
    pub erasure: Option<merkle::ErasureConfig>,
    /// libp2p peer ids allowed to connect to or from this node; empty (the
    /// default) allows any peer. Print a node's id with `syncnode peer-id`.
    pub allowed_peers: Vec<String>,
    /// A pre-shared private-network key file (`/key/swarm/psk/1.0.0/`
    /// format, from `syncnode keygen --psk`): only nodes holding the same key
    /// can connect. Default none.
    pub private_network_key_file: Option<PathBuf>,
    /// Bandwidth limit in Mbit/s: one number for both directions, or
    /// `{upload: N, download: N}` (a missing direction is unlimited); 0 or
    /// absent means unlimited. Changeable at run time (`syncnode limit`).
    pub bandwidth_limit_mbps: BandwidthLimit,
    /// `fixed` (default): run at the limits; `adaptive`: upload backs off when
    /// RTT or loss rises and grows while the path is clean, up to the limit.
    pub bandwidth_mode: crate::ratelimit::Mode,
}

/// The `bandwidth_limit_mbps` key: per-direction limits in Mbit/s (`None` or 0 = unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BandwidthLimit {
    /// Upload limit.
    pub upload: Option<f64>,
    /// Download limit.
    pub download: Option<f64>,
}

impl<'de> Deserialize<'de> for BandwidthLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BandwidthVisitor)
    }
}

struct BandwidthVisitor;

impl<'de> serde::de::Visitor<'de> for BandwidthVisitor {
    type Value = BandwidthLimit;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a number of Mbit/s for both directions, or {upload: N, download: N}")
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<BandwidthLimit, E> {
        Ok(BandwidthLimit {
            upload: Some(v),
            download: Some(v),
        })
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<BandwidthLimit, E> {
        self.visit_f64(v as f64)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<BandwidthLimit, E> {
        self.visit_f64(v as f64)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<BandwidthLimit, E> {
        Ok(BandwidthLimit::default())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<BandwidthLimit, A::Error> {
        let mut out = BandwidthLimit::default();
        while let Some(k) = m.next_key::<String>()? {
            match k.as_str() {
                "upload" => out.upload = m.next_value()?,
                "download" => out.download = m.next_value()?,
                other => {
                    return Err(serde::de::Error::unknown_field(
                        other,
                        &["upload", "download"],
                    ));
                }
            }
        }
        Ok(out)
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("syncnode-data"),
            listen: vec!["/ip4/0.0.0.0/tcp/7411".into()],
            bootstrap: Vec::new(),
            channels: vec!["default".into()],
            trusted_publishers: Vec::new(),
            metrics_listen: Some("127.0.0.1:9464".into()),
            control_socket: None,
            max_in_flight: 64,
            max_in_flight_per_peer: 16,
            request_timeout_secs: 10,
            peer_timeout_ms: 2000,
            ban_after: 3,
            ban_secs: 600,
            max_peers: 64,
            max_uploads: 2,
            max_downloads: 6,
            stream_window_kib: 1088,
            upload_backlog_kib: 2048,
            have_interval_ms: 100,
            fsync: true,
            worker_threads: 0,
            labels: Default::default(),
            chunker: ChunkerConfig::default(),
            erasure: None,
            bandwidth_limit_mbps: BandwidthLimit::default(),
            bandwidth_mode: crate::ratelimit::Mode::Fixed,
            allowed_peers: Vec::new(),
            private_network_key_file: None,
        }
    }
}

/// The configuration after validation, with parsed values.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The raw config.
    pub raw: NodeConfig,
    /// Parsed listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Parsed bootstrap addresses.
    pub bootstrap: Vec<Multiaddr>,
    /// Parsed trusted keys.
    pub trusted: Vec<VerifyingKey>,
    /// Parsed metrics address.
    pub metrics_listen: Option<SocketAddr>,
    /// The control socket path.
    pub control_socket: PathBuf,
    /// Parsed bandwidth limits.
    pub limits: crate::ratelimit::Limits,
    /// Parsed `allowed_peers` (empty: any peer).
    pub allowed_peers: Vec<PeerId>,
    /// The private-network key read from `private_network_key_file`.
    pub psk: Option<PreSharedKey>,
}

impl NodeConfig {
    /// Reads and parses a YAML file; does not validate.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses YAML text (an empty document gives the defaults).
    pub fn parse(path: &Path, text: &str) -> Result<NodeConfig, ConfigError> {
        if text.trim().is_empty() {
            return Ok(NodeConfig::default());
        }
        serde_norway::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Checks every value; the error names the key.
    pub fn validate(self, need_trust: bool) -> Result<Validated, ConfigError> {
        let listen = parse_addrs("listen", &self.listen)?;
        let bootstrap = parse_addrs("bootstrap", &self.bootstrap)?;
        if self.channels.is_empty() {
            return Err(value_err("channels", "list at least one channel to follow"));
        }
        for (i, c) in self.channels.iter().enumerate() {
            merkle::validate_name("channel", c)
                .map_err(|e| value_err(format!("channels[{i}]"), e.to_string()))?;
        }
        let trusted = self
            .trusted_publishers
            .iter()
            .enumerate()
            .map(|(i, k)| {
                parse_public_key(k).map_err(|m| value_err(format!("trusted_publishers[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if need_trust && trusted.is_empty() {
            return Err(value_err(
                "trusted_publishers",
                "no publisher key is trusted, so no version would ever be accepted; add the \
                 hex public key printed by `syncnode keygen`",
            ));
        }
        let metrics_listen = match &self.metrics_listen {
            None => None,
            Some(s) => Some(s.parse::<SocketAddr>().map_err(|e| {
                value_err(
                    "metrics_listen",
                    format!("`{s}` is not a socket address like 127.0.0.1:9464 ({e})"),
                )
            })?),
        };
        for (key, v) in [
            ("max_in_flight", self.max_in_flight),
            ("max_in_flight_per_peer", self.max_in_flight_per_peer),
            ("max_peers", self.max_peers),
            ("max_uploads", self.max_uploads),
            ("max_downloads", self.max_downloads),
        ] {
            if v == 0 || v > 100_000 {
                return Err(value_err(key, format!("{v} is out of range 1..=100000")));
            }
        }
        if !(256..=65536).contains(&self.stream_window_kib) {
            return Err(value_err(
                "stream_window_kib",
                format!(
                    "{} is out of range 256..=65536 (KiB; 256 is yamux's own window)",
                    self.stream_window_kib
                ),
            ));
        }
        if self.upload_backlog_kib > 1 << 20 {
            return Err(value_err(
                "upload_backlog_kib",
                format!(
                    "{} is out of range 0..=1048576 (KiB; 0 = no bound)",
                    self.upload_backlog_kib
                ),
            ));
        }
        if self.worker_threads > 1024 {
            return Err(value_err(
                "worker_threads",
                format!(
                    "{} is out of range 0..=1024 (0 = one per CPU core)",
                    self.worker_threads
                ),
            ));
        }
        if !(1..=10_000).contains(&self.have_interval_ms) {
            return Err(value_err(
                "have_interval_ms",
                format!(
                    "{} is out of range 1..=10000 (milliseconds)",
                    self.have_interval_ms
                ),
            ));
        }
        if self.request_timeout_secs == 0 || self.request_timeout_secs > 3600 {
            return Err(value_err(
                "request_timeout_secs",
                format!("{} is out of range 1..=3600", self.request_timeout_secs),
            ));
        }
        if !(100..=600_000).contains(&self.peer_timeout_ms) {
            return Err(value_err(
                "peer_timeout_ms",
                format!("{} is out of range 100..=600000", self.peer_timeout_ms),
            ));
        }
        if self.ban_after == 0 || self.ban_after > 1000 {
            return Err(value_err(
                "ban_after",
                format!("{} is out of range 1..=1000", self.ban_after),
            ));
        }
        if self.ban_secs > 30 * 86_400 {
            return Err(value_err(
                "ban_secs",
                format!("{} is out of range 0..=2592000 (30 days)", self.ban_secs),
            ));
        }
        self.chunker
            .validate()
            .map_err(|e| value_err("chunker", e.to_string()))?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(value_err("data_dir", "must not be empty"));
        }
        let control_socket = self
            .control_socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join(".syncnode").join("control.sock"));
        let limits = parse_limits(&self.bandwidth_limit_mbps)?;
        if let Some(e) = &self.erasure {
            e.validate().map_err(|why| {
                value_err(
                    "erasure",
                    format!("{why} (e.g. `erasure: {{data: 8, parity: 2}}`)"),
                )
            })?;
        }
        let allowed_peers = parse_peer_ids("allowed_peers", &self.allowed_peers)?;
        let psk = match &self.private_network_key_file {
            None => None,
            Some(p) => Some(
                crate::security::read_psk(p)
                    .map_err(|e| value_err("private_network_key_file", e.to_string()))?,
            ),
        };
        Ok(Validated {
            limits,
            raw: self,
            listen,
            bootstrap,
            trusted,
            metrics_listen,
            control_socket,
            allowed_peers,
            psk,
        })
    }
}

fn parse_addrs(key: &str, list: &[String]) -> Result<Vec<Multiaddr>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<Multiaddr>().map_err(|e| {
                value_err(
                    format!("{key}[{i}]"),
                    format!("`{s}` is not a multiaddr like /ip4/127.0.0.1/tcp/7411 ({e})"),
                )
            })
        })
        .collect()
}

fn parse_limits(b: &BandwidthLimit) -> Result<crate::ratelimit::Limits, ConfigError> {
    let one = |dir: &str, v: Option<f64>| {
        crate::ratelimit::rate_from_mbps(v.unwrap_or(0.0))
            .map_err(|e| value_err(format!("bandwidth_limit_mbps.{dir}"), e.to_string()))
    };
    Ok(crate::ratelimit::Limits {
        upload: one("upload", b.upload)?,
        download: one("download", b.download)?,
    })
}

fn parse_peer_ids(key: &str, list: &[String]) -> Result<Vec<PeerId>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            s.trim().parse::<PeerId>().map_err(|e| {
                value_err(
                    format!("{key}[{i}]"),
                    format!(
                        "`{s}` is not a libp2p peer id like 12D3KooW... ({e}); print a node's id \
                         with `syncnode peer-id --data-dir DIR`"
                    ),
                )
            })
        })
        .collect()
}

/// Parses a 64-hex-digit ed25519 public key.
pub fn parse_public_key(s: &str) -> Result<VerifyingKey, String> {
    let bytes = hex::decode(s.trim())
        .map_err(|e| format!("`{s}` is not hex ({e}); expected 64 hex digits"))?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("key has {} bytes, expected 32 (64 hex digits)", b.len()))?;
    VerifyingKey::from_bytes(&arr).map_err(|e| format!("not a valid ed25519 public key: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    fn parse(text: &str) -> Result<Validated, ConfigError> {
        NodeConfig::parse(Path::new("t.yaml"), text)?.validate(true)
    }

    #[test]
    fn full_config_parses() {
        let v = parse(&format!(
            "data_dir: /tmp/x\nlisten: [/ip4/127.0.0.1/tcp/0]\nbootstrap: [/ip4/127.0.0.1/tcp/9]\n\
             channels: [llama]\ntrusted_publishers: [{KEY}]\nmetrics_listen: null\n\
             labels: {{rack: r1}}\nchunker: {{min_size: 4096, avg_size: 16384, max_size: 65536}}\n"
        ))
        .unwrap();
        assert_eq!(v.bootstrap.len(), 1);
        assert_eq!(v.trusted.len(), 1);
        assert!(v.metrics_listen.is_none());
        assert_eq!(v.raw.chunker.avg_size, 16384);
        assert_eq!(
            v.control_socket,
            PathBuf::from("/tmp/x/.syncnode/control.sock")
        );
    }

    #[test]
    fn bandwidth_limit_takes_one_number_or_one_per_direction() {
        use crate::ratelimit::{Limits, Mode};
        use swarm::rate::Rate;
        let v = parse(&format!("trusted_publishers: [{KEY}]\n")).unwrap();
        assert_eq!(v.limits, Limits::UNLIMITED);
        assert_eq!(v.raw.bandwidth_mode, Mode::Fixed);
        let v = parse(&format!(
            "trusted_publishers: [{KEY}]\nbandwidth_limit_mbps: 100\nbandwidth_mode: adaptive\n"
        ))
        .unwrap();
        assert_eq!(v.limits.upload, Rate::from_bytes_per_sec(12_500_000));
        assert_eq!(v.limits.download, Rate::from_bytes_per_sec(12_500_000));
        assert_eq!(v.raw.bandwidth_mode, Mode::Adaptive);
        let v = parse(&format!(
            "trusted_publishers: [{KEY}]\nbandwidth_limit_mbps: {{upload: 2.5}}\n"
        ))
        .unwrap();
        assert_eq!(v.limits.upload, Rate::from_bytes_per_sec(312_500));
        assert_eq!(v.limits.download, Rate::Unlimited);
        let v = parse(&format!(
            "trusted_publishers: [{KEY}]\nbandwidth_limit_mbps: 0\n"
        ))
        .unwrap();
        assert_eq!(v.limits, Limits::UNLIMITED, "0 means unlimited");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse(&format!("trusted_publishers: [{KEY}]\nlisten_addr: x\n")).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("listen_addr"), "{m}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("trusted_publishers: [abc]\n", "trusted_publishers[0]"),
            (
                &format!("trusted_publishers: [{KEY}]\nbootstrap: [nonsense]\n"),
                "bootstrap[0]",
            ),
            (
                &format!("trusted_publishers: [{KEY}]\nmetrics_listen: 'x:y'\n"),
                "metrics_listen",
            ),
            (
                &format!("trusted_publishers: [{KEY}]\nchannels: ['../x']\n"),
                "channels[0]",
            ),
            (
                &format!("trusted_publishers: [{KEY}]\nmax_in_flight: 0\n"),
                "max_in_flight",
            ),
            (
                &format!("trusted_publishers: [{KEY}]\nstream_window_kib: 64\n"),
                "stream_window_kib",
            ),
            ("channels: [a]\n", "trusted_publishers"),
            (
                &format!("trusted_publishers: [{KEY}]\nmax_peers: many\n"),
                "max_peers",
            ),
            (
                &format!("trusted_publishers: [{KEY}]\npeer_timeout_ms: 5\n"),
                "peer_timeout_ms",
            ),
            (
                &format!("trusted_publishers: [{KEY}]\nban_after: 0\n"),
                "ban_after",
            ),
            (
                &format!("trusted_publishers: [{KEY}]\nworker_threads: 5000\n"),
                "worker_threads",
            ),
            (
                &format!("trusted_publishers: [{KEY}]\nban_secs: 99999999\n"),
                "ban_secs",
            ),
            (
                &format!("trusted_publishers: [{KEY}]\nbandwidth_limit_mbps: -5\n"),
                "bandwidth_limit_mbps.upload",
            ),
            (
                &format!(
                    "trusted_publishers: [{KEY}]\nbandwidth_limit_mbps: {{upload: 10, download: 2e9}}\n"
                ),
                "bandwidth_limit_mbps.download",
            ),
            (
                &format!("trusted_publishers: [{KEY}]\nbandwidth_limit_mbps: {{up: 10}}\n"),
                "bandwidth_limit_mbps",
            ),
            (
                &format!("trusted_publishers: [{KEY}]\nbandwidth_limit_mbps: fast\n"),
                "bandwidth_limit_mbps",
            ),
            (
                &format!("trusted_publishers: [{KEY}]\nbandwidth_mode: turbo\n"),
                "bandwidth_mode",
            ),
            (
                &format!("trusted_publishers: [{KEY}]\nerasure: {{data: 0, parity: 2}}\n"),
                "erasure",
            ),
            (
                &format!(
                    "trusted_publishers: [{KEY}]\nerasure: {{data: 4, parity: 2, spare: 1}}\n"
                ),
                "spare",
            ),
        ];
        for (text, key) in cases {
            let m = parse(text).unwrap_err().to_string();
            assert!(m.contains(key), "error for {text:?} should name {key}: {m}");
        }
    }

    #[test]
    fn allowed_peers_are_parsed_and_bad_ids_named() {
        let a = PeerId::random();
        let b = PeerId::random();
        let v = parse(&format!(
            "trusted_publishers: [{KEY}]\nallowed_peers: [{a}, ' {b} ']\n"
        ))
        .unwrap();
        assert_eq!(v.allowed_peers, vec![a, b]);
        assert!(
            parse(&format!("trusted_publishers: [{KEY}]\n"))
                .unwrap()
                .allowed_peers
                .is_empty()
        );
        let m = parse(&format!(
            "trusted_publishers: [{KEY}]\nallowed_peers: [{a}, 12D3KooWnotapeer]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            m.contains("allowed_peers[1]") && m.contains("12D3KooWnotapeer"),
            "{m}"
        );
        assert!(m.contains("syncnode peer-id"), "{m}");
    }

    #[test]
    fn private_network_key_file_is_read_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("swarm.key");
        let k = crate::security::write_psk(&good).unwrap();
        let v = parse(&format!(
            "trusted_publishers: [{KEY}]\nprivate_network_key_file: {}\n",
            good.display()
        ))
        .unwrap();
        assert_eq!(
            v.psk.unwrap().fingerprint().to_string(),
            k.fingerprint().to_string()
        );
        let bad = dir.path().join("bad.key");
        std::fs::write(&bad, "not a key\n").unwrap();
        for path in [bad, dir.path().join("missing.key")] {
            let m = parse(&format!(
                "trusted_publishers: [{KEY}]\nprivate_network_key_file: {}\n",
                path.display()
            ))
            .unwrap_err()
            .to_string();
            assert!(
                m.contains("`private_network_key_file`") && m.contains(&path.display().to_string()),
                "{m}"
            );
        }
    }
}
