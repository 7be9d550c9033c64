//! The daemon: one tokio task owning the libp2p swarm, the per-version
//! [`swarm::Fetch`] state machines and the bookkeeping; blocking work (chunk
//! store writes and reads, materialization) runs on tokio's blocking pool and
//! reports back over bounded channels.
//!
//! The same loop runs `syncnode run` (a node following channels) and
//! `syncnode seed` (a publisher serving one version from its source files).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identity, noise, tcp, yamux};
use merkle::{ChunkRef, Hash, Manifest, SignedRoot};
use swarm::{Action, ChunkIdx, Fetch, FetchConfig, Input};
use tokio::sync::mpsc;

use crate::config::Validated;
use crate::control::{self, ChannelStatus, PeerStatus, Status, VersionStatus};
use crate::materialize;
use crate::metrics::Metrics;
use crate::publish::SourceIndex;
use crate::store::{ChunkStore, StoreError};
use crate::wire::{self, Gossip, Hello, HelloReply, PeerRecord, Request, Response};

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
    gossipsub: gossipsub::Behaviour,
    rr: request_response::Behaviour<wire::Codec>,
}

#[derive(Debug)]
enum VState {
    /// Waiting for the manifest; `asked` are peers tried in this round.
    Manifest {
        asked: HashSet<PeerId>,
        in_flight: bool,
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
    bytes_fetched: u64,
    bytes_reused: u64,
    complete_peers: HashSet<PeerId>,
    error: Option<String>,
}

enum Pending {
    Hello,
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
    result: Result<(), StoreError>,
}

#[derive(Default)]
struct PeerInfo {
    addrs: Vec<Multiaddr>,
    connections: usize,
}

/// Fault switches for tests, from `SYNCNODE_FAULT` (comma-separated):
/// `corrupt-serve` flips a byte of every chunk this process serves;
/// `serve-delay-ms=N` delays every chunk it serves by N ms. Logged loudly at start.
#[derive(Debug, Default, Clone, Copy)]
struct Faults {
    corrupt_serve: bool,
    serve_delay: Option<Duration>,
}

impl Faults {
    fn from_env() -> Faults {
        let mut f = Faults::default();
        let spec = std::env::var("SYNCNODE_FAULT").unwrap_or_default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "corrupt-serve" {
                f.corrupt_serve = true;
            } else if let Some(ms) = part
                .strip_prefix("serve-delay-ms=")
                .and_then(|v| v.parse().ok())
            {
                f.serve_delay = Some(Duration::from_millis(ms));
            } else {
                tracing::warn!(fault = part, "unknown SYNCNODE_FAULT entry ignored");
            }
        }
        if f.corrupt_serve || f.serve_delay.is_some() {
            tracing::warn!(
                ?f,
                "FAULT INJECTION active (SYNCNODE_FAULT); never use in production"
            );
        }
        f
    }
}

/// The running daemon.
pub struct Daemon {
    swarm: Swarm<Behaviour>,
    cfg: Validated,
    state_dir: PathBuf,
    store: Arc<ChunkStore>,
    seed: Option<SeedSpec>,
    metrics: Arc<Metrics>,
    metrics_addr: Option<std::net::SocketAddr>,
    versions: HashMap<Hash, Version>,
    latest: HashMap<String, Hash>,
    peers: HashMap<PeerId, PeerInfo>,
    origins: HashSet<PeerId>,
    pending: HashMap<OutboundRequestId, Pending>,
    stored_tx: mpsc::Sender<Stored>,
    stored_rx: mpsc::Receiver<Stored>,
    served_tx: mpsc::Sender<(ResponseChannel<Response>, Response)>,
    served_rx: mpsc::Receiver<(ResponseChannel<Response>, Response)>,
    mat_tx: mpsc::Sender<(Hash, Result<PathBuf, String>)>,
    mat_rx: mpsc::Receiver<(Hash, Result<PathBuf, String>)>,
    status_rx: mpsc::Receiver<control::StatusRequest>,
    faults: Faults,
    last_announce: Option<Instant>,
    backoff: HashMap<Multiaddr, (Instant, Duration)>,
    rng_seed: u64,
}

fn load_or_create_identity(path: &std::path::Path) -> anyhow::Result<identity::Keypair> {
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
        let state_dir = cfg.raw.data_dir.join(".syncnode");
        std::fs::create_dir_all(state_dir.join("versions"))
            .with_context(|| format!("cannot create data_dir {}", state_dir.display()))?;
        let store = Arc::new(
            tokio::task::spawn_blocking({
                let d = state_dir.clone();
                let fsync = cfg.raw.fsync;
                move || ChunkStore::open(&d, fsync)
            })
            .await??,
        );
        let (n, bytes) = store.stats();
        tracing::info!(chunks = n, bytes, "chunk store opened");
        let key = load_or_create_identity(&state_dir.join("node.key"))?;
        let swarm = build_swarm(key, &cfg)?;
        let metrics = Arc::new(Metrics::default());
        let metrics_addr = match cfg.metrics_listen {
            Some(a) => Some(
                crate::metrics::serve(a, metrics.clone())
                    .await
                    .with_context(|| format!("cannot bind metrics_listen {a}"))?,
            ),
            None => None,
        };
        let (status_tx, status_rx) = mpsc::channel(16);
        control::serve(&cfg.control_socket, status_tx).with_context(|| {
            format!(
                "cannot open control socket {}",
                cfg.control_socket.display()
            )
        })?;
        let (stored_tx, stored_rx) = mpsc::channel(1024);
        let (served_tx, served_rx) = mpsc::channel(1024);
        let (mat_tx, mat_rx) = mpsc::channel(16);
        let faults = Faults::from_env();
        let mut d = Daemon {
            swarm,
            cfg,
            state_dir,
            store,
            seed,
            metrics,
            metrics_addr,
            versions: HashMap::new(),
            latest: HashMap::new(),
            peers: HashMap::new(),
            origins: HashSet::new(),
            pending: HashMap::new(),
            stored_tx,
            stored_rx,
            served_tx,
            served_rx,
            mat_tx,
            mat_rx,
            status_rx,
            faults,
            last_announce: None,
            backoff: HashMap::new(),
            rng_seed: rand::random(),
        };
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
        let chunks = m.unique_chunks();
        let total: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
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
                started: Instant::now(),
                finished: Some(Instant::now()),
                bytes_fetched: 0,
                bytes_reused: total,
                complete_peers: HashSet::new(),
                error: None,
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
        let mut best: HashMap<String, SignedRoot> = HashMap::new();
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
        let now = Instant::now();
        let connected: HashSet<Multiaddr> = self
            .peers
            .values()
            .filter(|p| p.connections > 0)
            .flat_map(|p| p.addrs.iter().cloned())
            .collect();
        for addr in self.cfg.bootstrap.clone() {
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

    /// Runs until SIGINT/SIGTERM, or (seed) until enough peers are complete.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                Some(s) = self.stored_rx.recv() => self.on_stored(s),
                Some((ch, resp)) = self.served_rx.recv() => {
                    let _ = self.swarm.behaviour_mut().rr.send_response(ch, resp);
                }
                Some((root, r)) = self.mat_rx.recv() => self.on_materialized(root, r),
                Some(req) = self.status_rx.recv() => { let _ = req.send(self.status()); }
                _ = tick.tick() => self.housekeeping(),
                _ = tokio::time::sleep_until(deadline.into()) => self.on_timeout(),
                _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted, stopping"); break; }
                _ = sigterm.recv() => { tracing::info!("terminated, stopping"); break; }
            }
            self.pump();
            if self.seed_done() {
                break;
            }
        }
        let _ = std::fs::remove_file(&self.cfg.control_socket);
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
        let far = Instant::now() + Duration::from_secs(3600);
        self.versions
            .values()
            .filter_map(|v| v.fetch.as_ref()?.poll_timeout())
            .min()
            .unwrap_or(far)
    }

    fn on_timeout(&mut self) {
        let now = Instant::now();
        for v in self.versions.values_mut() {
            if let Some(f) = v.fetch.as_mut() {
                f.handle_timeout(now);
            }
        }
    }

    fn housekeeping(&mut self) {
        self.dial_bootstrap();
        let now = Instant::now();
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
        let roots: Vec<Hash> = self.versions.keys().copied().collect();
        for root in roots {
            let v = self.versions.get_mut(&root).expect("listed");
            match &mut v.state {
                VState::Failed { retry_at } if *retry_at <= now => {
                    if let Some(m) = v.manifest.clone() {
                        self.start_fetch(root, m);
                    } else {
                        v.state = VState::Manifest {
                            asked: HashSet::new(),
                            in_flight: false,
                        };
                    }
                }
                VState::Manifest {
                    in_flight: false, ..
                } => self.request_manifest(root),
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
                endpoint,
                num_established,
                ..
            } => {
                let info = self.peers.entry(peer_id).or_default();
                info.connections += 1;
                if endpoint.is_dialer() {
                    let a = endpoint.get_remote_address().clone();
                    if !info.addrs.contains(&a) {
                        info.addrs.push(a);
                    }
                }
                if num_established.get() == 1 {
                    tracing::info!(peer = %peer_id, "peer connected");
                    Metrics::add(&self.metrics.peers, 1);
                    let hello = Request::Hello(self.hello());
                    let id = self.swarm.behaviour_mut().rr.send_request(&peer_id, hello);
                    self.pending.insert(id, Pending::Hello);
                    self.feed_all(Input::PeerConnected {
                        peer: peer_id,
                        origin: self.origins.contains(&peer_id),
                    });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                if let Some(i) = self.peers.get_mut(&peer_id) {
                    i.connections = i.connections.saturating_sub(1);
                }
                if num_established == 0 {
                    tracing::info!(peer = %peer_id, "peer disconnected");
                    self.metrics.peers.fetch_sub(1, Relaxed);
                    self.feed_all(Input::PeerDisconnected { peer: peer_id });
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::warn!(peer = ?peer_id, %error, "cannot connect to peer; will retry with backoff");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message,
                ..
            })) => self.on_gossip(propagation_source, message),
            SwarmEvent::Behaviour(BehaviourEvent::Rr(ev)) => self.on_rr(ev),
            _ => {}
        }
    }

    fn hello(&self) -> Hello {
        Hello {
            listen_addrs: self.swarm.listeners().map(|a| a.to_vec()).collect(),
        }
    }

    fn feed_all(&mut self, input: Input<PeerId>) {
        let now = Instant::now();
        for v in self.versions.values_mut() {
            if let Some(f) = v.fetch.as_mut() {
                f.handle(now, input.clone());
            }
        }
    }

    fn on_gossip(&mut self, via: PeerId, message: gossipsub::Message) {
        let Ok(msg) = Gossip::decode(&message.data) else {
            tracing::debug!(peer = %via, "undecodable gossip message");
            return;
        };
        match msg {
            Gossip::Announce(signed) => {
                if let Some(src) = message.source {
                    self.origins.insert(src);
                }
                self.offer_root(signed, Some(via));
            }
            Gossip::Complete(root) => {
                if let Some(src) = message.source {
                    self.mark_complete(src, root);
                }
            }
        }
    }

    fn mark_complete(&mut self, peer: PeerId, root: Hash) {
        if let Some(v) = self.versions.get_mut(&root)
            && v.complete_peers.insert(peer)
        {
            tracing::debug!(%peer, %root, "peer holds version");
            if let Some(f) = v.fetch.as_mut() {
                f.handle(Instant::now(), Input::PeerHasAll { peer });
            }
        }
    }

    /// Checks signature and trust of a root.
    fn check_root(&self, signed: &SignedRoot) -> Result<(), String> {
        signed.verify().map_err(|e| format!("bad signature: {e}"))?;
        let trusted = match &self.seed {
            Some(s) => s.signed.publisher == signed.publisher,
            None => self
                .cfg
                .trusted
                .iter()
                .any(|k| k.as_bytes() == &signed.publisher),
        };
        if !trusted {
            return Err(format!(
                "signed by untrusted publisher key {}; add it to trusted_publishers to accept it",
                hex::encode(signed.publisher)
            ));
        }
        Ok(())
    }

    fn offer_root(&mut self, signed: SignedRoot, from: Option<PeerId>) {
        if !self.followed_channels().contains(&signed.channel) || self.seed.is_some() {
            return;
        }
        if self.versions.contains_key(&signed.root) {
            return;
        }
        if let Err(why) = self.check_root(&signed) {
            Metrics::add(&self.metrics.roots_rejected, 1);
            tracing::warn!(channel = %signed.channel, version = %signed.version, peer = ?from, "refusing root: {why}");
            return;
        }
        if let Some(cur) = self
            .latest
            .get(&signed.channel)
            .and_then(|r| self.versions.get(r))
            && (signed.created_unix, &signed.version)
                <= (cur.signed.created_unix, &cur.signed.version)
        {
            tracing::debug!(version = %signed.version, "ignoring root older than the latest");
            return;
        }
        tracing::info!(channel = %signed.channel, version = %signed.version, root = %signed.root, "new version announced");
        let path = self
            .state_dir
            .join("versions")
            .join(format!("{}.root", signed.root.to_hex()));
        if let Err(e) = write_atomic(&path, &signed.encode()) {
            tracing::error!(path = %path.display(), error = %e, "cannot save root");
        }
        let root = signed.root;
        self.insert_version(signed);
        self.request_manifest(root);
    }

    fn insert_version(&mut self, signed: SignedRoot) {
        let root = signed.root;
        if let Some(old) = self.latest.insert(signed.channel.clone(), root)
            && let Some(v) = self.versions.get_mut(&old)
            && v.fetch.take().is_some()
        {
            tracing::info!(version = %v.signed.version, "superseded by a newer version; its chunks stay in the store");
        }
        self.versions.insert(
            root,
            Version {
                signed,
                manifest: None,
                manifest_bytes: None,
                chunks: Vec::new(),
                fetch: None,
                state: VState::Manifest {
                    asked: HashSet::new(),
                    in_flight: false,
                },
                started: Instant::now(),
                finished: None,
                bytes_fetched: 0,
                bytes_reused: 0,
                complete_peers: HashSet::new(),
                error: None,
            },
        );
    }

    fn request_manifest(&mut self, root: Hash) {
        let Some(v) = self.versions.get_mut(&root) else {
            return;
        };
        let VState::Manifest { asked, in_flight } = &mut v.state else {
            return;
        };
        if *in_flight {
            return;
        }
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        // Prefer peers known complete, then origins, then anyone not yet asked this round.
        let mut candidates: Vec<PeerId> = connected
            .iter()
            .filter(|p| !asked.contains(p))
            .copied()
            .collect();
        candidates.sort_by_key(|p| (!v.complete_peers.contains(p), !self.origins.contains(p), *p));
        let Some(peer) = candidates.first().copied() else {
            asked.clear(); // next housekeeping round starts over
            return;
        };
        asked.insert(peer);
        *in_flight = true;
        let id = self
            .swarm
            .behaviour_mut()
            .rr
            .send_request(&peer, Request::GetManifest { root });
        self.pending.insert(id, Pending::Manifest { root });
    }

    fn on_manifest(&mut self, peer: PeerId, root: Hash, resp: Option<Response>) {
        let Some(v) = self.versions.get_mut(&root) else {
            return;
        };
        if let VState::Manifest { in_flight, .. } = &mut v.state {
            *in_flight = false;
        } else {
            return;
        }
        let bytes = match resp {
            Some(Response::Manifest(b)) => b,
            _ => {
                self.request_manifest(root);
                return;
            }
        };
        // Decoding validates paths and sizes; verify_manifest recomputes the
        // version root and checks it, the channel and the version against the
        // signed root.
        let checked = Manifest::decode(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|m| {
                v.signed
                    .verify_manifest(&m)
                    .map(|()| m)
                    .map_err(|e| e.to_string())
            });
        match checked {
            Ok(m) => {
                let path = self
                    .state_dir
                    .join("versions")
                    .join(format!("{}.manifest", root.to_hex()));
                if let Err(e) = write_atomic(&path, &bytes) {
                    tracing::error!(path = %path.display(), error = %e, "cannot save manifest");
                }
                tracing::info!(%peer, version = %m.version, files = m.files.len(), bytes = m.total_size(), "manifest verified");
                self.start_fetch(root, Arc::new(m));
            }
            Err(why) => {
                tracing::warn!(%peer, %root, "rejecting manifest: {why}");
                Metrics::add(&self.metrics.chunks_rejected, 1);
                self.request_manifest(root);
            }
        }
    }

    fn start_fetch(&mut self, root: Hash, m: Arc<Manifest>) {
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        let Some(v) = self.versions.get_mut(&root) else {
            return;
        };
        let chunks = m.unique_chunks();
        let have: Vec<ChunkIdx> = chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| self.store.contains(&c.hash))
            .map(|(i, _)| ChunkIdx(i as u32))
            .collect();
        let reused: u64 = have
            .iter()
            .map(|i| u64::from(chunks[i.0 as usize].len))
            .sum();
        let total: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
        let config = FetchConfig {
            max_in_flight_per_peer: self.cfg.raw.max_in_flight_per_peer,
            max_in_flight_total: self.cfg.raw.max_in_flight,
            request_timeout: Duration::from_secs(self.cfg.raw.request_timeout_secs),
            ..FetchConfig::default()
        };
        let mut fetch = Fetch::new(
            config,
            chunks.iter().map(|c| c.len).collect(),
            self.rng_seed ^ u64::from_le_bytes(root.0[..8].try_into().expect("8 bytes")),
        );
        let now = Instant::now();
        fetch.handle(now, Input::AlreadyHave { chunks: have });
        for p in connected {
            fetch.handle(
                now,
                Input::PeerConnected {
                    peer: p,
                    origin: self.origins.contains(&p),
                },
            );
        }
        for p in &v.complete_peers {
            fetch.handle(now, Input::PeerHasAll { peer: *p });
        }
        tracing::info!(
            version = %m.version,
            chunks = chunks.len(),
            need_bytes = total - reused,
            reused_bytes = reused,
            "fetching version"
        );
        Metrics::add(
            &self.metrics.bytes_reused,
            reused.saturating_sub(v.bytes_reused),
        );
        v.bytes_reused = reused;
        v.chunks = chunks;
        v.manifest = Some(m);
        v.fetch = Some(fetch);
        v.state = VState::Fetching;
        v.error = None;
    }

    /// Drains every fetch's actions into requests.
    fn pump(&mut self) {
        let now = Instant::now();
        let mut requests = Vec::new();
        let mut complete = Vec::new();
        for (root, v) in self.versions.iter_mut() {
            let Some(f) = v.fetch.as_mut() else { continue };
            while let Some(a) = f.poll_action(now) {
                match a {
                    Action::Request { peer, chunk } => {
                        let c = v.chunks[chunk.0 as usize];
                        requests.push((peer, *root, chunk, c));
                    }
                    Action::Cancel { .. } => {}
                    Action::Penalise { peer, reason } => {
                        tracing::warn!(%peer, reason, version = %v.signed.version, "penalising peer");
                    }
                    Action::Ban { peer } => {
                        tracing::warn!(%peer, version = %v.signed.version, "peer sent too many bad chunks; no longer asking it for this version");
                    }
                    Action::Complete => complete.push(*root),
                }
            }
        }
        for (peer, root, idx, c) in requests {
            let id = self
                .swarm
                .behaviour_mut()
                .rr
                .send_request(&peer, Request::GetChunk { hash: c.hash });
            self.pending.insert(
                id,
                Pending::Chunk {
                    root,
                    idx,
                    hash: c.hash,
                    len: c.len,
                },
            );
        }
        for root in complete {
            self.begin_materialize(root);
        }
    }

    fn begin_materialize(&mut self, root: Hash) {
        let Some(v) = self.versions.get_mut(&root) else {
            return;
        };
        v.fetch = None;
        v.state = VState::Materializing;
        let m = v.manifest.clone().expect("fetching implies a manifest");
        let store = self.store.clone();
        let data_dir = self.cfg.raw.data_dir.clone();
        let fsync = self.cfg.raw.fsync;
        let tx = self.mat_tx.clone();
        tokio::task::spawn_blocking(move || {
            let r = materialize::materialize(&data_dir, &m, &root, &store, fsync)
                .map_err(|e| e.to_string());
            let _ = tx.blocking_send((root, r));
        });
    }

    fn on_materialized(&mut self, root: Hash, r: Result<PathBuf, String>) {
        let Some(v) = self.versions.get_mut(&root) else {
            return;
        };
        match r {
            Ok(path) => {
                let elapsed = v.started.elapsed();
                v.state = VState::Complete;
                v.finished = Some(Instant::now());
                Metrics::add(&self.metrics.versions_complete, 1);
                tracing::info!(
                    channel = %v.signed.channel,
                    version = %v.signed.version,
                    path = %path.display(),
                    elapsed_ms = elapsed.as_millis() as u64,
                    fetched_bytes = v.bytes_fetched,
                    reused_bytes = v.bytes_reused,
                    "version complete and current"
                );
                let ch = v.signed.channel.clone();
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(wire::topic(&ch), Gossip::Complete(root).encode());
            }
            Err(e) => {
                tracing::error!(version = %v.signed.version, error = %e, "materialization failed; previous `current` kept; retrying in 10 s");
                v.error = Some(e);
                v.state = VState::Failed {
                    retry_at: Instant::now() + Duration::from_secs(10),
                };
            }
        }
    }

    fn on_rr(&mut self, ev: request_response::Event<Request, Response>) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.on_request(peer, request, channel),
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => match self.pending.remove(&request_id) {
                Some(Pending::Hello) => {
                    if let Response::Hello(h) = response {
                        self.on_hello_reply(peer, h);
                    }
                }
                Some(Pending::Manifest { root }) => self.on_manifest(peer, root, Some(response)),
                Some(Pending::Chunk {
                    root,
                    idx,
                    hash,
                    len,
                }) => self.on_chunk(peer, root, idx, hash, len, response),
                None => {}
            },
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => match self.pending.remove(&request_id) {
                Some(Pending::Chunk { root, idx, .. }) => {
                    tracing::debug!(%peer, %error, "chunk request failed");
                    self.feed(root, Input::Failed { peer, chunk: idx });
                }
                Some(Pending::Manifest { root }) => self.on_manifest(peer, root, None),
                _ => {}
            },
            _ => {}
        }
    }

    fn feed(&mut self, root: Hash, input: Input<PeerId>) {
        if let Some(f) = self.versions.get_mut(&root).and_then(|v| v.fetch.as_mut()) {
            f.handle(Instant::now(), input);
        }
    }

    fn on_chunk(
        &mut self,
        peer: PeerId,
        root: Hash,
        idx: ChunkIdx,
        hash: Hash,
        len: u32,
        resp: Response,
    ) {
        match resp {
            Response::Chunk(data) => {
                let tx = self.stored_tx.clone();
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || {
                    let result = if data.len() != len as usize {
                        Err(StoreError::HashMismatch {
                            expected: hash,
                            actual: Hash::of(&data),
                        })
                    } else {
                        store.put(&hash, &data)
                    };
                    let _ = tx.blocking_send(Stored {
                        root,
                        idx,
                        peer,
                        len,
                        result,
                    });
                });
            }
            Response::NotFound => self.feed(root, Input::NotFound { peer, chunk: idx }),
            other => {
                tracing::debug!(%peer, ?other, "unexpected reply to a chunk request");
                self.feed(root, Input::Failed { peer, chunk: idx });
            }
        }
    }

    fn on_stored(&mut self, s: Stored) {
        match s.result {
            Ok(()) => {
                Metrics::add(&self.metrics.chunks_verified, 1);
                Metrics::add(&self.metrics.bytes_fetched, u64::from(s.len));
                if let Some(v) = self.versions.get_mut(&s.root) {
                    v.bytes_fetched += u64::from(s.len);
                }
                self.feed(
                    s.root,
                    Input::Verified {
                        peer: s.peer,
                        chunk: s.idx,
                    },
                );
            }
            Err(StoreError::HashMismatch { expected, actual }) => {
                Metrics::add(&self.metrics.chunks_rejected, 1);
                tracing::warn!(peer = %s.peer, chunk = %expected, got = %actual, "rejected a chunk that failed BLAKE3 verification; fetching it elsewhere");
                self.feed(
                    s.root,
                    Input::Rejected {
                        peer: s.peer,
                        chunk: s.idx,
                    },
                );
            }
            Err(e) => {
                // Local failure (disk full, permissions): stop this version, retry later.
                if let Some(v) = self.versions.get_mut(&s.root)
                    && v.fetch.take().is_some()
                {
                    tracing::error!(version = %v.signed.version, error = %e, "cannot store chunks; pausing this version for 10 s (previous `current` kept)");
                    v.error = Some(e.to_string());
                    v.state = VState::Failed {
                        retry_at: Instant::now() + Duration::from_secs(10),
                    };
                }
            }
        }
    }

    fn on_request(&mut self, peer: PeerId, req: Request, channel: ResponseChannel<Response>) {
        match req {
            Request::Hello(h) => {
                let info = self.peers.entry(peer).or_default();
                for a in h.listen_addrs {
                    if let Ok(a) = Multiaddr::try_from(a)
                        && !info.addrs.contains(&a)
                    {
                        info.addrs.push(a);
                    }
                }
                let reply = Response::Hello(self.hello_reply(peer));
                let _ = self.swarm.behaviour_mut().rr.send_response(channel, reply);
            }
            Request::GetManifest { root } => {
                let resp = match self.versions.get_mut(&root) {
                    Some(Version {
                        manifest: Some(m),
                        manifest_bytes,
                        ..
                    }) => {
                        let bytes = manifest_bytes.get_or_insert_with(|| Arc::new(m.encode()));
                        Response::Manifest(bytes.to_vec())
                    }
                    _ => Response::NotFound,
                };
                let _ = self.swarm.behaviour_mut().rr.send_response(channel, resp);
            }
            Request::GetChunk { hash } => {
                let store = self.store.clone();
                let source = self.seed.as_ref().map(|s| s.source.clone());
                let tx = self.served_tx.clone();
                let metrics = self.metrics.clone();
                let faults = self.faults;
                tokio::task::spawn_blocking(move || {
                    if let Some(d) = faults.serve_delay {
                        std::thread::sleep(d);
                    }
                    let read = match store.get(&hash) {
                        Ok(Some(d)) => Ok(Some(d)),
                        Ok(None) => match source {
                            Some(s) => s.read(&hash).map_err(|e| e.to_string()),
                            None => Ok(None),
                        },
                        Err(e) => Err(e.to_string()),
                    };
                    let resp = match read {
                        Ok(Some(mut d)) => {
                            Metrics::add(&metrics.chunks_served, 1);
                            Metrics::add(&metrics.bytes_served, d.len() as u64);
                            if faults.corrupt_serve && !d.is_empty() {
                                d[0] ^= 0xff;
                            }
                            Response::Chunk(d)
                        }
                        Ok(None) => Response::NotFound,
                        Err(e) => {
                            tracing::error!(%peer, chunk = %hash, error = %e, "cannot serve chunk");
                            Response::Error(e)
                        }
                    };
                    let _ = tx.blocking_send((channel, resp));
                });
            }
        }
    }

    fn hello_reply(&self, asker: PeerId) -> HelloReply {
        let peers = self
            .peers
            .iter()
            .filter(|(id, i)| **id != asker && i.connections > 0 && !i.addrs.is_empty())
            .take(64)
            .map(|(id, i)| PeerRecord {
                id: id.to_bytes(),
                addrs: i.addrs.iter().map(|a| a.to_vec()).collect(),
            })
            .collect();
        let roots = self
            .latest
            .values()
            .filter_map(|r| self.versions.get(r))
            .map(|v| v.signed.clone())
            .collect();
        let complete = self
            .versions
            .iter()
            .filter(|(_, v)| matches!(v.state, VState::Complete))
            .map(|(r, _)| *r)
            .collect();
        HelloReply {
            listen_addrs: self.hello().listen_addrs,
            peers,
            roots,
            complete,
        }
    }

    fn on_hello_reply(&mut self, peer: PeerId, h: HelloReply) {
        let me = *self.swarm.local_peer_id();
        {
            let info = self.peers.entry(peer).or_default();
            for a in h
                .listen_addrs
                .iter()
                .filter_map(|a| Multiaddr::try_from(a.clone()).ok())
            {
                if !info.addrs.contains(&a) {
                    info.addrs.push(a);
                }
            }
        }
        let connected = self.swarm.connected_peers().count();
        let mut budget = self.cfg.raw.max_peers.saturating_sub(connected);
        for rec in h.peers {
            let Ok(id) = PeerId::from_bytes(&rec.id) else {
                continue;
            };
            if id == me || self.swarm.is_connected(&id) || budget == 0 {
                continue;
            }
            let addrs: Vec<Multiaddr> = rec
                .addrs
                .into_iter()
                .filter_map(|a| Multiaddr::try_from(a).ok())
                .collect();
            if addrs.is_empty() {
                continue;
            }
            budget -= 1;
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(id)
                .addresses(addrs)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(peer = %id, error = %e, "peer-exchange dial failed");
            }
        }
        for signed in h.roots {
            self.offer_root(signed, Some(peer));
        }
        for root in h.complete {
            self.mark_complete(peer, root);
        }
    }

    fn status(&self) -> Status {
        let now = Instant::now();
        let channels = self
            .followed_channels()
            .into_iter()
            .map(|ch| {
                let latest = self
                    .latest
                    .get(&ch)
                    .and_then(|r| self.versions.get(r))
                    .map(|v| {
                        let total_chunks = v.chunks.len() as u64;
                        let total_bytes: u64 = v.chunks.iter().map(|c| u64::from(c.len)).sum();
                        let (chunks_done, bytes_done) = match (&v.state, &v.fetch) {
                            (_, Some(f)) => {
                                let p = f.progress();
                                (u64::from(p.chunks_done), p.bytes_done)
                            }
                            (VState::Complete | VState::Materializing, None) => {
                                (total_chunks, total_bytes)
                            }
                            _ => (0, 0),
                        };
                        VersionStatus {
                            version: v.signed.version.clone(),
                            root: v.signed.root.to_hex(),
                            state: match v.state {
                                VState::Manifest { .. } => "manifest",
                                VState::Fetching => "fetching",
                                VState::Materializing => "materializing",
                                VState::Complete => "complete",
                                VState::Failed { .. } => "failed",
                            }
                            .into(),
                            chunks_done,
                            chunks_total: total_chunks,
                            bytes_done,
                            bytes_total: total_bytes,
                            bytes_fetched: v.bytes_fetched,
                            bytes_reused: v.bytes_reused,
                            elapsed_ms: v
                                .finished
                                .unwrap_or(now)
                                .duration_since(v.started)
                                .as_millis() as u64,
                            complete_peers: v.complete_peers.len(),
                            error: v.error.clone(),
                        }
                    });
                ChannelStatus {
                    current: materialize::current_version(&self.cfg.raw.data_dir, &ch),
                    channel: ch,
                    latest,
                }
            })
            .collect();
        Status {
            role: if self.seed.is_some() { "seed" } else { "node" }.into(),
            peer_id: self.swarm.local_peer_id().to_string(),
            listen_addrs: self.swarm.listeners().map(|a| a.to_string()).collect(),
            metrics_addr: self.metrics_addr.map(|a| a.to_string()),
            peers: self
                .swarm
                .connected_peers()
                .map(|p| PeerStatus {
                    id: p.to_string(),
                    addrs: self
                        .peers
                        .get(p)
                        .map(|i| i.addrs.iter().map(|a| a.to_string()).collect())
                        .unwrap_or_default(),
                })
                .collect(),
            channels,
            bytes_served: self.metrics.bytes_served.load(Relaxed),
            bytes_fetched: self.metrics.bytes_fetched.load(Relaxed),
            chunks_rejected: self.metrics.chunks_rejected.load(Relaxed),
            roots_rejected: self.metrics.roots_rejected.load(Relaxed),
        }
    }
}

fn build_swarm(key: identity::Keypair, cfg: &Validated) -> anyhow::Result<Swarm<Behaviour>> {
    let request_timeout = Duration::from_secs(cfg.raw.request_timeout_secs * 3);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| {
            let gs_config = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(700))
                .validation_mode(gossipsub::ValidationMode::Strict)
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
            Ok(Behaviour { gossipsub, rr })
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
