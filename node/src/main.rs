//! The `syncnode` command: daemon, publisher, status, key generation and demo.

mod demo;
mod simulate;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use node::config::{NodeConfig, Validated};
use node::daemon::{Daemon, SeedSpec};

const EXAMPLES: &str = "\
Examples:
  # See it work: a publisher and three nodes on loopback, v1 then a delta v2
  syncnode demo

  # Create a publisher key (prints the public key to put in trusted_publishers)
  syncnode keygen --out publisher.key

  # Restrict the swarm: a shared private-network key, and a node's peer id for allowed_peers
  syncnode keygen --psk --out swarm.key
  syncnode peer-id --config /etc/syncnode/node.yaml

  # Run a node daemon
  syncnode run --config /etc/syncnode/node.yaml

  # Publish a checkpoint folder as a new version and serve it until 8 nodes have it
  syncnode seed /ckpt/step-12000 --channel llama-70b --version step-12000 \\
      --key publisher.key --listen /ip4/0.0.0.0/tcp/7412 --until-complete 8

  # Ask a running daemon what it holds
  syncnode status --config /etc/syncnode/node.yaml

  # Cap a running daemon's bandwidth (Mbit/s), or a publisher's upload at start
  syncnode limit --config /etc/syncnode/node.yaml --upload 100 --download 200
  syncnode seed /ckpt/step-12000 --channel llama-70b --upload-limit-mbps 500

  # Simulate 1,000 nodes (deterministic; the seed replays a run exactly)
  syncnode sim sim/scenarios/fanout-1000.yaml --seed 1";

#[derive(Parser, Debug)]
#[command(name = "syncnode", version, about = "Distribute model checkpoints to every node of a cluster, verified, incrementally, peer to peer.", after_help = EXAMPLES)]
struct Cli {
    /// Log format: `auto` (human-readable on a terminal, JSON lines otherwise), `human` or `json`.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    /// Log level or filter (`info`, `debug`, `node=debug,libp2p=info`, ...). RUST_LOG also works.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Auto,
    Human,
    Json,
}

#[derive(clap::Args, Debug, Default)]
struct NetArgs {
    /// YAML config file (see docs/operations.md); flags below override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Data folder (overrides `data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Listen multiaddr, repeatable (overrides `listen`).
    #[arg(long)]
    listen: Vec<String>,
    /// Bootstrap peer multiaddr, repeatable (added to `bootstrap`).
    #[arg(long)]
    bootstrap: Vec<String>,
    /// Metrics address, or `none` to disable (overrides `metrics_listen`).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Upload limit in Mbit/s, 0 = unlimited (overrides `bandwidth_limit_mbps.upload`).
    #[arg(long, value_name = "MBPS")]
    upload_limit_mbps: Option<f64>,
    /// Download limit in Mbit/s, 0 = unlimited (overrides `bandwidth_limit_mbps.download`).
    #[arg(long, value_name = "MBPS")]
    download_limit_mbps: Option<f64>,
    /// `fixed` or `adaptive` (overrides `bandwidth_mode`).
    #[arg(long, value_enum)]
    bandwidth_mode: Option<ModeArg>,
    /// Private-network key file (overrides `private_network_key_file`).
    #[arg(long, value_name = "FILE")]
    private_network_key: Option<PathBuf>,
    /// Peer id allowed to connect, repeatable (added to `allowed_peers`).
    #[arg(long, value_name = "PEER_ID")]
    allow_peer: Vec<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Fixed,
    Adaptive,
}

impl From<ModeArg> for node::ratelimit::Mode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Fixed => node::ratelimit::Mode::Fixed,
            ModeArg::Adaptive => node::ratelimit::Mode::Adaptive,
        }
    }
}

/// Where a running daemon's control socket is.
#[derive(clap::Args, Debug, Default)]
struct SocketArgs {
    /// Config file of the daemon (to find its socket).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Data folder of the daemon.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Control socket path.
    #[arg(long)]
    socket: Option<PathBuf>,
}

impl SocketArgs {
    fn path(self) -> anyhow::Result<PathBuf> {
        Ok(match (self.socket, self.data_dir, self.config) {
            (Some(s), _, _) => s,
            (None, Some(d), _) => d.join(".syncnode/control.sock"),
            (None, None, Some(c)) => NodeConfig::load(&c)?.validate(false)?.control_socket,
            (None, None, None) => NodeConfig::default().validate(false)?.control_socket,
        })
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the node daemon: follow channels, fetch and verify new versions, serve peers.
    #[command(after_help = "Example:\n  syncnode run --config node.yaml --log-format json")]
    Run {
        #[command(flatten)]
        net: NetArgs,
        /// Channel to follow, repeatable (overrides `channels`).
        #[arg(long)]
        channel: Vec<String>,
        /// Trusted publisher public key (hex), repeatable (added to `trusted_publishers`).
        #[arg(long)]
        trust: Vec<String>,
    },
    /// Publish a folder as a new version of a channel and serve its chunks.
    #[command(
        after_help = "Example:\n  syncnode seed ./ckpt --channel llama --version step-100 --key publisher.key --until-complete 3"
    )]
    Seed {
        /// The folder to publish.
        dir: PathBuf,
        /// Channel name.
        #[arg(long)]
        channel: String,
        /// Version name (default: UTC time, e.g. v20261124T051500Z).
        #[arg(long)]
        version: Option<String>,
        /// Publisher secret key file (from `syncnode keygen`).
        #[arg(long, default_value = "publisher.key")]
        key: PathBuf,
        /// Exit once this many peers report the version complete.
        #[arg(long)]
        until_complete: Option<usize>,
        /// Add Reed-Solomon parity: K data chunks + M parity pieces per
        /// stripe (e.g. 8+2); any K pieces of a stripe rebuild it
        /// (overrides the config's `erasure: {data: K, parity: M}`).
        #[arg(long, value_name = "K+M", value_parser = parse_erasure)]
        erasure: Option<merkle::ErasureConfig>,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Show what a running daemon holds: versions, progress, peers.
    #[command(after_help = "Example:\n  syncnode status --data-dir /var/lib/syncnode")]
    Status {
        #[command(flatten)]
        sock: SocketArgs,
        /// Print JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Change a running daemon's bandwidth limits (Mbit/s, 0 = unlimited) or mode.
    #[command(
        after_help = "Examples:\n  syncnode limit --config node.yaml --upload 100 --download 200\n  syncnode limit --config node.yaml --unlimited\n  syncnode limit --data-dir ./syncnode-seed-data --mode adaptive"
    )]
    Limit {
        #[command(flatten)]
        sock: SocketArgs,
        /// New upload limit in Mbit/s (0 = unlimited).
        #[arg(long, value_name = "MBPS")]
        upload: Option<f64>,
        /// New download limit in Mbit/s (0 = unlimited).
        #[arg(long, value_name = "MBPS")]
        download: Option<f64>,
        /// Remove both limits.
        #[arg(long, conflicts_with_all = ["upload", "download"])]
        unlimited: bool,
        /// New mode.
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        /// Print JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Create a publisher key pair (prints the public key for `trusted_publishers`),
    /// or with `--psk` a private-network key for `private_network_key_file`.
    #[command(
        after_help = "Examples:\n  syncnode keygen --out publisher.key\n  syncnode keygen --psk --out swarm.key   # copy to every node"
    )]
    Keygen {
        /// Where to write the secret key (created with mode 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Write a pre-shared private-network key (`/key/swarm/psk/1.0.0/` format) instead.
        #[arg(long)]
        psk: bool,
    },
    /// Print this node's libp2p peer id (for other nodes' `allowed_peers`),
    /// creating its identity if it has none yet.
    #[command(
        after_help = "Examples:\n  syncnode peer-id --config node.yaml\n  syncnode peer-id --data-dir syncnode-seed-data"
    )]
    PeerId {
        /// Config file of the node (to find its data folder).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Data folder of the node (overrides the config's `data_dir`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run the built-in example: a generated checkpoint, a publisher and nodes on loopback.
    #[command(after_help = "Example:\n  syncnode demo --nodes 3 --size-mib 64")]
    Demo(demo::DemoArgs),
    /// Run a scenario in the deterministic simulator (the real swarm core, simulated network).
    #[command(after_help = simulate::EXAMPLES)]
    Sim(simulate::SimArgs),
}

fn init_logs(format: LogFormat, level: &str) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => EnvFilter::try_new(f),
        _ => EnvFilter::try_new(level),
    }
    .with_context(|| format!("invalid --log-level `{level}`"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let tty = std::io::stderr().is_terminal();
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Auto if !tty => builder.json().init(),
        LogFormat::Human | LogFormat::Auto => builder.with_ansi(tty).init(),
    }
    Ok(())
}

fn load_config(net: &NetArgs) -> anyhow::Result<NodeConfig> {
    let mut cfg = match &net.config {
        Some(p) => NodeConfig::load(p)?,
        None => NodeConfig::default(),
    };
    if let Some(d) = &net.data_dir {
        cfg.data_dir = d.clone();
    }
    if !net.listen.is_empty() {
        cfg.listen = net.listen.clone();
    }
    cfg.bootstrap.extend(net.bootstrap.iter().cloned());
    if let Some(m) = &net.metrics_listen {
        cfg.metrics_listen = (m != "none").then(|| m.clone());
    }
    if let Some(v) = net.upload_limit_mbps {
        cfg.bandwidth_limit_mbps.upload = Some(v);
    }
    if let Some(v) = net.download_limit_mbps {
        cfg.bandwidth_limit_mbps.download = Some(v);
    }
    if let Some(m) = net.bandwidth_mode {
        cfg.bandwidth_mode = m.into();
    }
    if let Some(k) = &net.private_network_key {
        cfg.private_network_key_file = Some(k.clone());
    }
    cfg.allowed_peers.extend(net.allow_peer.iter().cloned());
    Ok(cfg)
}

fn default_version() -> String {
    let secs = node::daemon::unix_now();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant), UTC.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "v{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(cli.log_format, &cli.log_level)?;
    match cli.cmd {
        Cmd::Run {
            net,
            channel,
            trust,
        } => {
            let mut cfg = load_config(&net)?;
            if !channel.is_empty() {
                cfg.channels = channel;
            }
            cfg.trusted_publishers.extend(trust);
            let cfg = cfg.validate(true)?;
            runtime(cfg.raw.worker_threads)?
                .block_on(async { Daemon::start(cfg, None).await?.run().await })
        }
        Cmd::Seed {
            dir,
            channel,
            version,
            key,
            until_complete,
            erasure,
            net,
        } => {
            let mut cfg = load_config(&net)?;
            if net.config.is_none() && net.data_dir.is_none() {
                cfg.data_dir = PathBuf::from("syncnode-seed-data");
            }
            cfg.channels = vec![channel.clone()];
            let cfg = cfg.validate(false)?;
            let key = node::cluster::read_key(&key)?;
            let version = version.unwrap_or_else(default_version);
            let spec = PublishSpec {
                dir: &dir,
                channel: &channel,
                version: &version,
                erasure: erasure.or(cfg.raw.erasure),
            };
            seed(cfg, spec, key, until_complete)
        }
        Cmd::Status { sock, json } => {
            let path = sock.path()?;
            let s = node::control::query_blocking(&path, std::time::Duration::from_secs(10))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_status(&s);
            }
            Ok(())
        }
        Cmd::Limit {
            sock,
            upload,
            download,
            unlimited,
            mode,
            json,
        } => {
            let req = node::control::LimitRequest {
                upload_mbps: if unlimited { Some(0.0) } else { upload },
                download_mbps: if unlimited { Some(0.0) } else { download },
                mode: mode.map(Into::into),
            };
            limit(sock, &req, json)
        }
        Cmd::Keygen { out, psk: true } => {
            let key = node::security::write_psk(&out)?;
            println!("{}", key.fingerprint());
            eprintln!(
                "private network key written to {} (mode 0600); the line above is its \
                 fingerprint. Copy the file to every node and set private_network_key_file \
                 (or --private-network-key) on each",
                out.display()
            );
            Ok(())
        }
        Cmd::PeerId { config, data_dir } => {
            let mut cfg = match &config {
                Some(p) => NodeConfig::load(p)?,
                None => NodeConfig::default(),
            };
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            let state = cfg.data_dir.join(".syncnode");
            std::fs::create_dir_all(&state)
                .with_context(|| format!("cannot create {}", state.display()))?;
            let key = node::daemon::load_or_create_identity(&state.join("node.key"))?;
            println!("{}", key.public().to_peer_id());
            Ok(())
        }
        Cmd::Keygen { out, psk: false } => {
            let public = node::cluster::keygen(&out)?;
            println!("{public}");
            eprintln!(
                "secret key written to {} (mode 0600); add the public key above to \
                 trusted_publishers on every node",
                out.display()
            );
            Ok(())
        }
        Cmd::Demo(args) => demo::run(args),
        Cmd::Sim(args) => simulate::run(args),
    }
}

/// The daemon's runtime: `worker_threads` threads, or tokio's default (one
/// per core, `TOKIO_WORKER_THREADS`) for 0.
fn runtime(worker_threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        b.worker_threads(worker_threads);
    }
    Ok(b.enable_all().build()?)
}

fn parse_erasure(s: &str) -> Result<merkle::ErasureConfig, String> {
    merkle::ErasureConfig::parse(s).map_err(|e| e.to_string())
}

/// What `syncnode seed` publishes.
struct PublishSpec<'a> {
    dir: &'a std::path::Path,
    channel: &'a str,
    version: &'a str,
    erasure: Option<merkle::ErasureConfig>,
}

fn seed(
    cfg: Validated,
    spec: PublishSpec<'_>,
    key: merkle::ed25519_dalek::SigningKey,
    until_complete: Option<usize>,
) -> anyhow::Result<()> {
    let PublishSpec {
        dir,
        channel,
        version,
        erasure,
    } = spec;
    let started = std::time::Instant::now();
    let created = node::daemon::unix_now();
    let (mut manifest, mut source) =
        node::publish::scan(dir, channel, version, created, cfg.raw.chunker)
            .with_context(|| format!("cannot publish {}", dir.display()))?;
    if let Some(ec) = erasure {
        let path = cfg
            .raw
            .data_dir
            .join(".syncnode/parity")
            .join(format!("{channel}-{version}.bin"));
        node::publish::add_parity(&mut manifest, &mut source, ec, &path)
            .with_context(|| format!("cannot add parity {}+{}", ec.data, ec.parity))?;
        let parity = manifest.erasure.as_ref().map_or(0, |e| e.parity.len());
        tracing::info!(data = ec.data, parity = ec.parity, pieces = parity, path = %path.display(), "parity computed");
    }
    let root = manifest.root();
    let signed = merkle::SignedRoot::sign(&key, channel, version, root, created);
    tracing::info!(
        %channel,
        %version,
        %root,
        files = manifest.files.len(),
        bytes = manifest.total_size(),
        chunks = manifest.unique_chunks().len(),
        scan_ms = started.elapsed().as_millis() as u64,
        publisher = %hex::encode(signed.publisher),
        "version built and signed"
    );
    if until_complete == Some(0) {
        bail!("--until-complete must be at least 1");
    }
    let spec = SeedSpec {
        manifest: std::sync::Arc::new(manifest),
        signed,
        source: std::sync::Arc::new(source),
        until_complete,
    };
    runtime(cfg.raw.worker_threads)?
        .block_on(async { Daemon::start(cfg, Some(spec)).await?.run().await })
}

fn print_status(s: &node::control::Status) {
    println!(
        "{} {}  listening on {}",
        s.role,
        s.peer_id,
        s.listen_addrs.join(", ")
    );
    if let Some(m) = &s.metrics_addr {
        println!("metrics: http://{m}/metrics");
    }
    println!("{}", bandwidth_line(&s.bandwidth));
    println!("peers: {}", s.peers.len());
    for p in &s.peers {
        println!("  {} {}", p.id, p.addrs.join(" "));
    }
    for c in &s.channels {
        println!(
            "channel {}: current = {}",
            c.channel,
            c.current.as_deref().unwrap_or("(none)")
        );
        if let Some(v) = &c.latest {
            println!(
                "  latest {} [{}] {}/{} chunks, {}/{} bytes, fetched {} reused {}, {} ms, {} peers complete{}",
                v.version,
                v.state,
                v.chunks_done,
                v.chunks_total,
                v.bytes_done,
                v.bytes_total,
                v.bytes_fetched,
                v.bytes_reused,
                v.elapsed_ms,
                v.complete_peers,
                v.error
                    .as_ref()
                    .map(|e| format!(", error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
}

/// `syncnode limit`: sends the change, prints what the daemon now enforces.
fn limit(sock: SocketArgs, req: &node::control::LimitRequest, json: bool) -> anyhow::Result<()> {
    if *req == node::control::LimitRequest::default() {
        bail!("nothing to change: give --upload, --download, --unlimited or --mode");
    }
    let path = sock.path()?;
    let b = node::control::set_limit_blocking(&path, req, std::time::Duration::from_secs(10))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&b)?);
    } else {
        println!("{}", bandwidth_line(&b));
    }
    Ok(())
}

fn bandwidth_line(b: &node::control::BandwidthStatus) -> String {
    let f = |v: Option<f64>| v.map_or_else(|| "unlimited".to_owned(), |m| format!("{m} Mbit/s"));
    let adaptive = if b.mode == "adaptive" {
        format!(" (adaptive, now {})", f(b.upload_rate_mbps))
    } else {
        String::new()
    };
    format!(
        "bandwidth: upload {}{adaptive}, download {}; wire sent {} B, received {} B",
        f(b.upload_limit_mbps),
        f(b.download_limit_mbps),
        b.wire_bytes_sent,
        b.wire_bytes_received
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn worker_threads_sets_the_runtime_size() {
        assert_eq!(super::runtime(3).unwrap().metrics().num_workers(), 3);
        let default = super::runtime(0).unwrap().metrics().num_workers();
        assert!(default >= 1);
    }
}
