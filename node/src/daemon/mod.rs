//! The daemon: one tokio task owning the libp2p swarm, the per-version
//! [`swarm::Fetch`] state machines and the bookkeeping; blocking work (chunk
//! store writes and reads, materialization) runs on tokio's blocking pool and
//! reports back over bounded channels.
//!
//! The same loop runs `syncnode run` (a node following channels) and
//! `syncnode seed` (a publisher serving one version from its source files).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, DefaultHasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use futures::{FutureExt, StreamExt};
use libp2p::request_response::{
    self, InboundRequestId, OutboundRequestId, ProtocolSupport, ResponseChannel,
};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identity};
use merkle::{ChunkRef, Hash, Manifest, SignedRoot};
use swarm::serve::{Admission, DEFAULT_RESEND_AFTER, UploadGate};
use swarm::{Action, ChunkIdx, Fetch, FetchConfig, Input};
use tokio::sync::mpsc;

use crate::config::Validated;
use crate::control::{self, ChannelStatus, PeerStatus, Status, VersionStatus};
use crate::materialize;
use crate::metrics::Metrics;
use crate::publish::SourceIndex;
use crate::ratelimit::Limiter;
use crate::security;
use crate::store::{ChunkStore, StoreError};
use crate::wire::{self, Gossip, Hello, HelloReply, PeerRecord, Request, Response};

mod availability;
mod env;
mod serving;
mod sessions;
mod stripes;
mod versions;

pub use env::{Env, SimHost, TransportFn};

/// A hash map with a fixed hasher: iteration order is a function of the
/// keys, so the daemon acts in the same order run after run (the
/// simulator's packet tier replays runs to the event). Keys are peer ids,
/// content hashes and request ids, none chosen freely by a remote peer
/// without also costing it a connection or a signed version.
pub(crate) type Map<K, V> = HashMap<K, V, BuildHasherDefault<DefaultHasher>>;
/// The set counterpart of [`Map`].
pub(crate) type Set<K> = HashSet<K, BuildHasherDefault<DefaultHasher>>;

/// The daemon's clock: tokio's, which is the real monotonic clock in
/// production and simulated time under turmoil or a paused test runtime.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// What `syncnode seed` adds to the daemon.
pub struct SeedSpec {
    /// The published manifest.
    pub manifest: Arc<Manifest>,
    /// Its signed root.
    pub signed: SignedRoot,
    /// Where its chunks live.
    pub source: Arc<SourceIndex>,
    /// Exit once this many peers report the version complete.
    pub until_complete: Option<usize>,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    /// `allowed_peers` (disabled when the list is empty).
    allow: libp2p::swarm::behaviour::toggle::Toggle<
        libp2p::allow_block_list::Behaviour<libp2p::allow_block_list::AllowedPeers>,
    >,
    gossipsub: gossipsub::Behaviour,
    rr: request_response::Behaviour<wire::Codec>,
    ping: libp2p::ping::Behaviour,
}

#[derive(Debug)]
enum VState {
    /// Waiting for the manifest; `asked` are peers tried in this round;
    /// `since`: when the request in flight went out.
    Manifest {
        asked: Set<PeerId>,
        in_flight: bool,
        since: Option<Instant>,
    },
    Fetching,
    Materializing,
    Complete,
    Failed {
        retry_at: Instant,
    },
}

struct Version {
    signed: SignedRoot,
    manifest: Option<Arc<Manifest>>,
    manifest_bytes: Option<Arc<Vec<u8>>>,
    chunks: Vec<ChunkRef>,
    fetch: Option<Fetch<PeerId>>,
    state: VState,
    started: Instant,
    finished: Option<Instant>,
    /// When every chunk was held and materialization began.
    materializing_since: Option<Instant>,
    bytes_fetched: u64,
    bytes_reused: u64,
    complete_peers: Set<PeerId>,
    error: Option<String>,
    /// Availability bookkeeping (see `availability.rs`).
    have: availability::VersionHave,
    /// The staging folder filled while fetching (`materialize::Stager`).
    stager: Option<Arc<materialize::Stager>>,
}

enum Pending {
    Hello,
    Have {
        root: Hash,
    },
    Manifest {
        root: Hash,
    },
    Chunk {
        root: Hash,
        idx: ChunkIdx,
        hash: Hash,
        len: u32,
    },
}

struct Stored {
    root: Hash,
    idx: ChunkIdx,
    peer: PeerId,
    len: u32,
    result: Result<bool, StoreError>,
}

#[derive(Default)]
struct PeerInfo {
    addrs: Vec<Multiaddr>,
    connections: usize,
    /// Open connections: id, whether we dialled it, when it came up.
    conns: Vec<(libp2p::swarm::ConnectionId, bool, Instant)>,
    /// Topology distance from us (0 same host … 4 elsewhere or unknown).
    distance: Option<u8>,
}

impl PeerInfo {
    /// Remembers an address of the peer, without its `/p2p/<id>` suffix, so
    /// one socket address is listed (and dialled) once.
    fn add_addr(&mut self, mut a: Multiaddr) {
        if matches!(a.iter().last(), Some(libp2p::multiaddr::Protocol::P2p(_))) {
            a.pop();
        }
        if !self.addrs.contains(&a) {
            self.addrs.push(a);
        }
    }
}

/// Fault switches for tests, from `SYNCNODE_FAULT` (comma-separated):
/// `corrupt-serve` flips a byte of every chunk this process serves;
/// `notfound-serve` answers `NotFound` for every chunk it holds (while still
/// announcing them: a lying `Have`);
/// `serve-delay-ms=N` delays every chunk it serves by N ms;
/// `materialize-delay-ms=N` sleeps N ms before each file it materializes;
/// `withhold-data=K:N` (publisher) answers `NotFound` for unique chunk `i`
/// when `i % K >= K - N` (the last N data chunks of every K);
/// `serve-once` (publisher) serves each piece at most once, then `NotFound`.
/// Logged loudly at start.
#[derive(Debug, Default, Clone, Copy)]
struct Faults {
    corrupt_serve: bool,
    notfound_serve: bool,
    serve_delay: Option<Duration>,
    materialize_delay: Option<Duration>,
    withhold_data: Option<(u32, u32)>,
    serve_once: bool,
}

impl Faults {
    fn from_env() -> Faults {
        Faults::parse(&std::env::var("SYNCNODE_FAULT").unwrap_or_default())
    }

    /// Parses a `SYNCNODE_FAULT` value.
    fn parse(spec: &str) -> Faults {
        let mut f = Faults::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "corrupt-serve" {
                f.corrupt_serve = true;
            } else if part == "notfound-serve" {
                f.notfound_serve = true;
            } else if part == "serve-once" {
                f.serve_once = true;
            } else if let Some((k, n)) = part
                .strip_prefix("withhold-data=")
                .and_then(|v| v.split_once(':'))
                .and_then(|(k, n)| Some((k.parse().ok()?, n.parse().ok()?)))
            {
                f.withhold_data = Some((k, n));
            } else if let Some(ms) = part
                .strip_prefix("serve-delay-ms=")
                .and_then(|v| v.parse().ok())
            {
                f.serve_delay = Some(Duration::from_millis(ms));
            } else if let Some(ms) = part
                .strip_prefix("materialize-delay-ms=")
                .and_then(|v| v.parse().ok())
            {
                f.materialize_delay = Some(Duration::from_millis(ms));
            } else {
                tracing::warn!(fault = part, "unknown SYNCNODE_FAULT entry ignored");
            }
        }
        if f.corrupt_serve
            || f.notfound_serve
            || f.serve_delay.is_some()
            || f.materialize_delay.is_some()
            || f.withhold_data.is_some()
            || f.serve_once
        {
            tracing::warn!(
                ?f,
                "FAULT INJECTION active (SYNCNODE_FAULT); never use in production"
            );
        }
        f
    }
}

/// How many further ready swarm events one loop turn takes before it pumps
/// the fetches (see `run_until`). Far above the requests one connection holds.
const SWARM_BATCH: usize = 1024;

/// The running daemon.
pub struct Daemon {
    swarm: Swarm<Behaviour>,
    cfg: Validated,
    state_dir: PathBuf,
    store: Arc<ChunkStore>,
    seed: Option<SeedSpec>,
    metrics: Arc<Metrics>,
    metrics_addr: Option<std::net::SocketAddr>,
    /// Bandwidth limits, shared with every TCP stream and the control socket.
    limiter: Arc<Limiter>,
    versions: Map<Hash, Version>,
    latest: Map<String, Hash>,
    peers: Map<PeerId, PeerInfo>,
    origins: Set<PeerId>,
    pending: Map<OutboundRequestId, Pending>,
    /// Chunk requests that failed in this loop turn, fed to their fetch in
    /// sorted order before the next `pump` (see `run_until`).
    failed: Vec<(Hash, ChunkIdx, PeerId)>,
    /// Chunk uploads in progress (admitted by `gate`).
    uploads: Set<InboundRequestId>,
    /// Upload admission: `max_uploads` at once; a publisher spreads distinct
    /// chunks first (`swarm::serve`).
    gate: UploadGate<Hash>,
    have_interval: Duration,
    stored_tx: mpsc::Sender<Stored>,
    stored_rx: mpsc::Receiver<Stored>,
    served_tx: mpsc::Sender<(ResponseChannel<Response>, Response)>,
    served_rx: mpsc::Receiver<(ResponseChannel<Response>, Response)>,
    mat_tx: mpsc::Sender<(Hash, Result<PathBuf, String>)>,
    mat_rx: mpsc::Receiver<(Hash, Result<PathBuf, String>)>,
    status_tx: mpsc::Sender<control::StatusRequest>,
    status_rx: mpsc::Receiver<control::StatusRequest>,
    faults: Faults,
    /// Blocking work runs on the daemon's own thread (simulated host; see [`Env`]).
    inline: bool,
    /// Under simulation: no signals, control socket, metrics endpoint or sampler.
    simulated: bool,
    /// Pieces a publisher refuses (`withhold-data`) or already served once (`serve-once`).
    fault_refused: Set<Hash>,
    /// Stripes with a rebuild job in flight (see `stripes.rs`).
    rebuilding: Set<(Hash, usize)>,
    rebuilt_tx: mpsc::Sender<stripes::Rebuilt>,
    rebuilt_rx: mpsc::Receiver<stripes::Rebuilt>,
    last_announce: Option<Instant>,
    backoff: Map<Multiaddr, (Instant, Duration)>,
    rng_seed: u64,
    /// One liveness/reconnect/ban session per peer ever connected (see `sessions.rs`).
    sessions: Map<PeerId, swarm::Session>,
    session_cfg: swarm::SessionConfig,
    /// Allowlist and private-network settings, for connection log lines.
    access: security::Access,
}

/// Loads the node's libp2p identity from `path` (`<data_dir>/.syncnode/node.key`),
/// creating a new one (mode 0600) if the file does not exist.
pub fn load_or_create_identity(path: &std::path::Path) -> anyhow::Result<identity::Keypair> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(bytes) = std::fs::read(path) {
        return identity::Keypair::from_protobuf_encoding(&bytes).with_context(|| {
            format!(
                "node identity {} is damaged; delete it to get a new peer id",
                path.display()
            )
        });
    }
    let key = identity::Keypair::generate_ed25519();
    let bytes = key.to_protobuf_encoding()?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::io::Write::write_all(&mut f, &bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(key)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Daemon {
    /// Builds the daemon: opens the store, loads state, binds listeners,
    /// metrics and the control socket.
    pub async fn start(cfg: Validated, seed: Option<SeedSpec>) -> anyhow::Result<Daemon> {
        Daemon::start_in(cfg, seed, Env::default()).await
    }

    /// [`Daemon::start`] in an environment: the real process, or a simulated
    /// host of the simulator's packet tier ([`Env`]).
    pub async fn start_in(
        cfg: Validated,
        seed: Option<SeedSpec>,
        env: Env,
    ) -> anyhow::Result<Daemon> {
        let state_dir = cfg.raw.data_dir.join(".syncnode");
        std::fs::create_dir_all(state_dir.join("versions"))
            .with_context(|| format!("cannot create data_dir {}", state_dir.display()))?;
        let simulated = env.sim.is_some();
        let (d, fsync) = (state_dir.clone(), cfg.raw.fsync);
        let store = Arc::new(if simulated {
            ChunkStore::open(&d, fsync)?
        } else {
            tokio::task::spawn_blocking(move || ChunkStore::open(&d, fsync)).await??
        });
        let (n, bytes) = store.stats();
        tracing::info!(chunks = n, bytes, "chunk store opened");
        let metrics = Arc::new(Metrics::default());
        let limiter = Limiter::new(cfg.limits, cfg.raw.bandwidth_mode, metrics.clone());
        let (swarm, faults, rng_seed) = match env.sim {
            Some(host) => {
                let mesh = Some(host.mesh_peers);
                let swarm =
                    build_swarm(host.identity, &cfg, limiter.clone(), host.transport, mesh)?;
                (swarm, Faults::parse(&host.faults), host.rng_seed)
            }
            None => {
                let key = load_or_create_identity(&state_dir.join("node.key"))?;
                crate::ratelimit::spawn_sampler(limiter.clone());
                let tcp = env::tcp_transport(&cfg);
                let swarm = build_swarm(key, &cfg, limiter.clone(), tcp, None)?;
                (swarm, Faults::from_env(), rand::random())
            }
        };
        let access = security::Access::new(&cfg.allowed_peers, cfg.psk.as_ref());
        access.log_startup(swarm.local_peer_id());
        let metrics_addr = match cfg.metrics_listen {
            Some(a) if !simulated => Some(
                crate::metrics::serve(a, metrics.clone())
                    .await
                    .with_context(|| format!("cannot bind metrics_listen {a}"))?,
            ),
            _ => None,
        };
        let (status_tx, status_rx) = mpsc::channel(16);
        if !simulated {
            control::serve(&cfg.control_socket, status_tx.clone(), limiter.clone()).with_context(
                || {
                    format!(
                        "cannot open control socket {}",
                        cfg.control_socket.display()
                    )
                },
            )?;
        }
        let (stored_tx, stored_rx) = mpsc::channel(1024);
        let (served_tx, served_rx) = mpsc::channel(1024);
        let (mat_tx, mat_rx) = mpsc::channel(16);
        let (rebuilt_tx, rebuilt_rx) = mpsc::channel(64);
        let mut gate = UploadGate::new(cfg.raw.max_uploads);
        if cfg.raw.upload_backlog_kib > 0 {
            let limit = u64::from(cfg.raw.upload_backlog_kib) << 10;
            gate = gate.with_backlog_limit(limit, now(), limiter.settled().settled);
        }
        if let Some(sp) = &seed {
            gate.spread_anew(sp.manifest.unique_chunks().len(), DEFAULT_RESEND_AFTER);
        }
        let have_interval = Duration::from_millis(cfg.raw.have_interval_ms);
        let mut d = Daemon {
            gate,
            have_interval,
            swarm,
            cfg,
            state_dir,
            store,
            seed,
            metrics,
            metrics_addr,
            limiter,
            versions: Map::default(),
            latest: Map::default(),
            peers: Map::default(),
            origins: Set::default(),
            pending: Map::default(),
            failed: Vec::new(),
            uploads: Set::default(),
            stored_tx,
            stored_rx,
            served_tx,
            served_rx,
            mat_tx,
            mat_rx,
            status_tx,
            status_rx,
            faults,
            inline: simulated,
            simulated,
            fault_refused: Set::default(),
            rebuilding: Set::default(),
            rebuilt_tx,
            rebuilt_rx,
            last_announce: None,
            backoff: Map::default(),
            rng_seed,
            sessions: Map::default(),
            session_cfg: swarm::SessionConfig::default(),
            access,
        };
        d.session_cfg = sessions::session_config(&d.cfg);
        for addr in d.cfg.listen.clone() {
            d.swarm
                .listen_on(addr.clone())
                .with_context(|| format!("cannot listen on {addr}"))?;
        }
        for ch in d.followed_channels() {
            d.swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&wire::topic(&ch))?;
        }
        if d.seed.is_some() {
            d.install_seed_version();
        } else {
            d.load_saved_versions();
        }
        d.dial_bootstrap();
        Ok(d)
    }

    fn followed_channels(&self) -> Vec<String> {
        match &self.seed {
            Some(s) => vec![s.manifest.channel.clone()],
            None => self.cfg.raw.channels.clone(),
        }
    }

    fn install_seed_version(&mut self) {
        let seed = self.seed.as_ref().expect("seed mode");
        let m = seed.manifest.clone();
        let root = seed.signed.root;
        let chunks = m.pieces();
        let total: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
        if let Some((k, n)) = self.faults.withhold_data {
            let unique = m.unique_chunks();
            let k = k.max(1) as usize;
            let withheld = unique
                .iter()
                .enumerate()
                .filter(|(i, _)| i % k + n as usize >= k);
            self.fault_refused.extend(withheld.map(|(_, c)| c.hash));
        }
        self.latest.insert(m.channel.clone(), root);
        self.versions.insert(
            root,
            Version {
                signed: seed.signed.clone(),
                manifest_bytes: Some(Arc::new(m.encode())),
                manifest: Some(m),
                chunks,
                fetch: None,
                state: VState::Complete,
                started: now(),
                finished: Some(now()),
                materializing_since: None,
                bytes_fetched: 0,
                bytes_reused: total,
                complete_peers: Set::default(),
                error: None,
                have: Default::default(),
                stager: None,
            },
        );
        Metrics::add(&self.metrics.versions_complete, 1);
    }

    /// On restart: reload the newest saved root per channel and resume it.
    fn load_saved_versions(&mut self) {
        let dir = self.state_dir.join("versions");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut best: Map<String, SignedRoot> = Map::default();
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "root") {
                continue;
            }
            let Ok(signed) = std::fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| SignedRoot::decode(&b).map_err(|e| e.to_string()))
            else {
                tracing::warn!(path = %p.display(), "ignoring unreadable saved root");
                continue;
            };
            if self.check_root(&signed).is_err() {
                continue;
            }
            let newer = best.get(&signed.channel).is_none_or(|b| {
                (signed.created_unix, &signed.version) > (b.created_unix, &b.version)
            });
            if newer {
                best.insert(signed.channel.clone(), signed);
            }
        }
        for (_, signed) in best {
            let root = signed.root;
            let manifest = std::fs::read(dir.join(format!("{}.manifest", root.to_hex())))
                .ok()
                .and_then(|b| Manifest::decode(&b).ok())
                .filter(|m| m.root() == root);
            tracing::info!(channel = %signed.channel, version = %signed.version, %root, "resuming saved version");
            self.insert_version(signed);
            if let Some(m) = manifest {
                self.start_fetch(root, Arc::new(m));
            }
        }
    }

    /// Dials bootstrap peers that are not connected, with per-address
    /// exponential backoff (1 s doubling to 30 s) so an unreachable peer is
    /// retried without flooding.
    fn dial_bootstrap(&mut self) {
        let now = now();
        let connected: Set<Multiaddr> = self
            .peers
            .values()
            .filter(|p| p.connections > 0)
            .flat_map(|p| p.addrs.iter().cloned())
            .collect();
        let banned: Set<Multiaddr> = self
            .banned_peers()
            .iter()
            .filter_map(|p| self.peers.get(p))
            .flat_map(|i| i.addrs.iter().cloned())
            .collect();
        for addr in self.cfg.bootstrap.clone() {
            if banned.contains(&addr) {
                continue;
            }
            let by_id = matches!(addr.iter().last(),
                Some(libp2p::multiaddr::Protocol::P2p(id)) if self.swarm.is_connected(&id));
            if connected.contains(&addr) || by_id {
                self.backoff.remove(&addr);
                continue;
            }
            let (next, delay) = self
                .backoff
                .entry(addr.clone())
                .or_insert((now, Duration::from_secs(1)));
            if *next > now {
                continue;
            }
            *next = now + *delay;
            *delay = (*delay * 2).min(Duration::from_secs(30));
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
            }
        }
    }

    /// A handle for status requests (what the control socket asks).
    pub fn status_sender(&self) -> mpsc::Sender<control::StatusRequest> {
        self.status_tx.clone()
    }

    /// This node's libp2p peer id.
    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Runs until SIGINT/SIGTERM, or (seed) until enough peers are complete.
    pub async fn run(self) -> anyhow::Result<()> {
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let stop = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, stopping"),
                _ = sigterm.recv() => tracing::info!("terminated, stopping"),
            }
        };
        self.run_until(stop).await
    }

    /// Runs until `stop` completes, or (seed) until enough peers are complete.
    ///
    /// Events are taken in a fixed order of priority (`biased`), not at
    /// random: a run is then a function of its inputs, which the simulator
    /// relies on. Local completions (stored chunks, responses ready,
    /// materialization, rebuilds) come first, as each is bounded by work the
    /// network already delivered; timers next; the swarm last, which cannot
    /// starve because every local event stems from a swarm event.
    pub async fn run_until(
        mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Availability is pushed to peers in batches at this pace
        // (`have_interval_ms`; see its doc for the trade-off).
        let mut have_tick = tokio::time::interval(self.have_interval);
        have_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = std::pin::pin!(stop);
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                _ = &mut stop => break,
                Some(s) = self.stored_rx.recv() => self.on_stored(s),
                Some((ch, resp)) = self.served_rx.recv() => {
                    if let Response::Chunk(d) = &resp {
                        self.gate.queued(now(), d.len() as u64);
                    }
                    let _ = self.swarm.behaviour_mut().rr.send_response(ch, resp);
                }
                Some(r) = self.rebuilt_rx.recv() => self.on_rebuilt(r),
                Some((root, r)) = self.mat_rx.recv() => self.on_materialized(root, r),
                Some(req) = self.status_rx.recv() => { let _ = req.reply.send(self.status(req.brief)); }
                _ = tick.tick() => self.housekeeping(),
                _ = have_tick.tick() => self.flush_have(),
                _ = tokio::time::sleep_until(deadline.into()) => self.on_timeout(),
                ev = self.swarm.select_next_some() => {
                    self.on_swarm_event(ev);
                    // Take every event the swarm already holds before the
                    // next `pump`. A closed connection fails all its requests
                    // at once, in the order of a `HashSet` inside libp2p; the
                    // batch is then fed in sorted order, so what is requested
                    // next does not depend on that order (and a simulated run
                    // replays). Bounded, so local work cannot starve.
                    for _ in 0..SWARM_BATCH {
                        match self.swarm.next().now_or_never() {
                            Some(Some(ev)) => self.on_swarm_event(ev),
                            _ => break,
                        }
                    }
                }
            }
            self.pump();
            if self.seed_done() {
                break;
            }
        }
        if !self.simulated {
            let _ = std::fs::remove_file(&self.cfg.control_socket);
        }
        // The store syncs in batches; a clean stop leaves nothing to refetch.
        if let Err(e) = self.store.sync() {
            tracing::warn!(error = %e, "could not sync the chunk store on stop");
        }
        Ok(())
    }

    fn seed_done(&self) -> bool {
        let Some(seed) = &self.seed else { return false };
        let Some(n) = seed.until_complete else {
            return false;
        };
        let have = self
            .versions
            .get(&seed.signed.root)
            .map_or(0, |v| v.complete_peers.len());
        if have >= n {
            tracing::info!(
                peers = have,
                "{have} peers report the version complete; seed exiting"
            );
            true
        } else {
            false
        }
    }

    fn next_deadline(&self) -> Instant {
        let far = now() + Duration::from_secs(3600);
        self.versions
            .values()
            .filter_map(|v| v.fetch.as_ref()?.poll_timeout())
            .chain(self.sessions_deadline())
            .min()
            .unwrap_or(far)
    }

    fn on_timeout(&mut self) {
        let now = now();
        for v in self.versions.values_mut() {
            if let Some(f) = v.fetch.as_mut() {
                f.handle_timeout(now);
            }
        }
        self.sessions_timeout();
    }

    fn housekeeping(&mut self) {
        self.dial_bootstrap();
        let now = now();
        // Publisher: re-announce every 2 s, so late joiners and new mesh peers hear it.
        if let Some(seed) = &self.seed
            && self
                .last_announce
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(2))
        {
            let msg = Gossip::Announce(seed.signed.clone()).encode();
            let topic = wire::topic(&seed.signed.channel);
            match self.swarm.behaviour_mut().gossipsub.publish(topic, msg) {
                Ok(_) => tracing::debug!("announced root"),
                Err(e) => tracing::debug!(error = %e, "announce not sent"),
            }
            self.last_announce = Some(now);
        }
        // Nodes: repeat completion every few seconds (cheap; lets the seed count).
        if self.seed.is_none()
            && self
                .last_announce
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(3))
        {
            self.last_announce = Some(now);
            let done: Vec<(String, Hash)> = self
                .latest
                .iter()
                .filter(|(_, r)| {
                    self.versions
                        .get(r)
                        .is_some_and(|v| matches!(v.state, VState::Complete))
                })
                .map(|(c, r)| (c.clone(), *r))
                .collect();
            for (ch, root) in done {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(wire::topic(&ch), Gossip::Complete(root).encode());
            }
        }
        // Retry failed versions and manifest rounds.
        let hedge = Duration::from_millis(self.cfg.raw.peer_timeout_ms.max(500));
        let roots: Vec<Hash> = self.versions.keys().copied().collect();
        for root in roots {
            let v = self.versions.get_mut(&root).expect("listed");
            match &mut v.state {
                VState::Failed { retry_at } if *retry_at <= now => {
                    if let Some(m) = v.manifest.clone() {
                        self.start_fetch(root, m);
                    } else {
                        v.state = VState::Manifest {
                            asked: Set::default(),
                            in_flight: false,
                            since: None,
                        };
                    }
                }
                VState::Manifest {
                    in_flight: false, ..
                } => self.request_manifest(root),
                // A manifest is small: one unanswered for a peer timeout is
                // probably on a dead connection (a peer that restarted
                // behind a half-open one), where it would wait out the
                // whole request timeout. Ask the next peer as well; the
                // first valid answer wins.
                VState::Manifest {
                    in_flight: true,
                    since: Some(t),
                    ..
                } if now.saturating_duration_since(*t) >= hedge => {
                    if let VState::Manifest { in_flight, .. } = &mut v.state {
                        *in_flight = false;
                    }
                    tracing::debug!(%root, "manifest request unanswered; asking another peer too");
                    self.request_manifest(root);
                }
                _ => {}
            }
        }
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, peer_id = %self.swarm.local_peer_id(), "listening");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let me = *self.swarm.local_peer_id();
                let info = self.peers.entry(peer_id).or_default();
                info.connections += 1;
                let t = now();
                info.conns.push((connection_id, endpoint.is_dialer(), t));
                // Both peers dialled each other at once: keep one. Only the
                // peer with the lower id acts, and it keeps the connection
                // it dialled, so the two sides never close different ones.
                // (An older connection is left alone: it may be half-open
                // to a peer that restarted; its heartbeat closes it.)
                if me < peer_id {
                    let twins: Vec<_> = info
                        .conns
                        .iter()
                        .filter(|(_, _, at)| {
                            t.saturating_duration_since(*at) < Duration::from_secs(1)
                        })
                        .copied()
                        .collect();
                    if twins.iter().any(|c| c.1) && twins.iter().any(|c| !c.1) {
                        for (id, dialer, _) in twins {
                            if !dialer {
                                tracing::debug!(peer = %peer_id, "closing the duplicate of a simultaneous dial");
                                self.swarm.close_connection(id);
                            }
                        }
                    }
                }
                // Two dials of ours to the peer, both up (a redial and a
                // peer-exchange dial crossing): we alone see both as ours,
                // so we close the newer one.
                if endpoint.is_dialer() {
                    let ours = info
                        .conns
                        .iter()
                        .filter(|(_, dialer, at)| {
                            *dialer && t.saturating_duration_since(*at) < Duration::from_secs(1)
                        })
                        .count();
                    if ours > 1 {
                        tracing::debug!(peer = %peer_id, "closing a second connection we dialled");
                        self.swarm.close_connection(connection_id);
                    }
                }
                if endpoint.is_dialer() {
                    info.add_addr(endpoint.get_remote_address().clone());
                }
                // The peer dialled us while an older connection to it is
                // up: it dials only when it has no connection to us (every
                // dial is `PeerCondition::Disconnected`, or a redial after
                // it closed a cut link), so it has lost that one: it
                // restarted, or the link broke silently. Such a half-open
                // connection would otherwise carry requests (and a
                // heartbeat whose stream never opens) until libp2p's 10 s
                // negotiation timeout, while the new connection keeps the
                // session alive. Crossing dials (under 1 s apart) are the
                // twin rule's above.
                if !endpoint.is_dialer() {
                    let stale: Vec<_> = info
                        .conns
                        .iter()
                        .filter(|(id, _, at)| {
                            *id != connection_id
                                && t.saturating_duration_since(*at) >= Duration::from_secs(1)
                        })
                        .map(|(id, _, _)| *id)
                        .collect();
                    if !stale.is_empty() {
                        tracing::info!(
                            peer = %peer_id,
                            closing = stale.len(),
                            "peer dialled in anew; closing our older connection to it, which it has lost (restart or a silently broken link)"
                        );
                        for id in stale {
                            self.swarm.close_connection(id);
                        }
                    }
                }
                if num_established.get() == 1 {
                    tracing::info!(peer = %peer_id, "peer connected");
                    Metrics::add(&self.metrics.peers, 1);
                }
                self.session_connected(peer_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if let Some(i) = self.peers.get_mut(&peer_id) {
                    i.connections = i.connections.saturating_sub(1);
                    i.conns.retain(|c| c.0 != connection_id);
                }
                if num_established == 0 {
                    tracing::info!(peer = %peer_id, "peer disconnected");
                    self.metrics.peers.fetch_sub(1, Relaxed);
                    self.session_input(peer_id, swarm::SessionInput::Disconnected);
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                self.access.log_outgoing_error(peer_id, &error);
                if let Some(p) = peer_id
                    && !self.swarm.is_connected(&p)
                {
                    self.session_input(p, swarm::SessionInput::DialFailed);
                }
            }
            SwarmEvent::IncomingConnectionError {
                peer_id,
                send_back_addr,
                error,
                ..
            } => self
                .access
                .log_incoming_error(peer_id, &send_back_addr, &error),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ev)) => self.on_ping(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.on_gossip(propagation_source, message_id, message),
            SwarmEvent::Behaviour(BehaviourEvent::Rr(ev)) => self.on_rr(ev),
            _ => {}
        }
    }
}

/// Builds the libp2p swarm over `transport`. `mesh_peers` (simulation)
/// raises gossipsub's mesh degree to at least that many peers, so the mesh
/// holds every peer and its random choices (drawn from the thread RNG,
/// which cannot be seeded) never decide anything.
fn build_swarm(
    key: identity::Keypair,
    cfg: &Validated,
    limiter: Arc<Limiter>,
    transport: TransportFn,
    mesh_peers: Option<usize>,
) -> anyhow::Result<Swarm<Behaviour>> {
    let request_timeout = Duration::from_secs(cfg.raw.request_timeout_secs * 3);
    // Read by the yamux config the transport makes (process-wide; see
    // `stream_window_kib`).
    yamux::set_default_outbound_stream_window(cfg.raw.stream_window_kib << 10);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        // TCP + (private network) + Noise + yamux as `with_tcp` builds it,
        // with the bandwidth limiter wrapped around each TCP stream (see
        // `ratelimit`, `security`); or the simulator's transport.
        .with_other_transport(|key| transport(key, limiter))?
        .with_behaviour(|key| {
            let mut gs = gossipsub::ConfigBuilder::default();
            if let Some(n) = mesh_peers {
                gs.mesh_n(n)
                    .mesh_n_low(n)
                    .mesh_n_high(2 * n)
                    .mesh_outbound_min(0)
                    .gossip_lazy(0)
                    .gossip_factor(0.0);
            }
            let gs_config = gs
                .heartbeat_interval(Duration::from_millis(700))
                .validation_mode(gossipsub::ValidationMode::Strict)
                // Forward a message only once it decodes (see `on_gossip`).
                .validate_messages()
                .max_transmit_size(256 * 1024)
                .build()
                .map_err(|e| anyhow::anyhow!("gossipsub config: {e}"))?;
            let gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gs_config,
            )
            .map_err(|e| anyhow::anyhow!("gossipsub: {e}"))?;
            let rr = request_response::Behaviour::with_codec(
                wire::Codec,
                [(wire::PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(request_timeout)
                    .with_max_concurrent_streams(1024),
            );
            let ping = libp2p::ping::Behaviour::new(sessions::ping_config(cfg));
            Ok(Behaviour {
                allow: security::allowlist(&cfg.allowed_peers),
                gossipsub,
                rr,
                ping,
            })
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    Ok(swarm)
}

/// Writes a small state file atomically (temp, fsync, rename).
pub fn write_atomic(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Seconds since the Unix epoch (for `created_unix`).
pub fn unix_now() -> u64 {
    now_unix()
}
