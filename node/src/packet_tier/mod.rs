//! The simulator's **packet tier**: the whole daemon on simulated hosts.
//!
//! Each host of a [`sim::Scenario`] is a turmoil host running the real
//! [`Daemon`](crate::daemon::Daemon) (swarm core, sessions, availability,
//! verification, chunk store, staging and materialization, gossipsub,
//! request-response, Noise and yamux) over turmoil's TCP ([`net`]). The
//! flow tier (crate `sim`) runs only the swarm core, for thousands of nodes;
//! this tier is for up to [`MAX_HOSTS`] hosts and answers whether the code
//! that ships does what the flow tier's model says.
//!
//! What is simulated, and how:
//! - **Time**: turmoil steps every host 1 ms at a time on paused tokio
//!   clocks; the daemon reads only tokio's clock, and libp2p's timers run on
//!   it through the workspace's `futures-timer` patch.
//! - **Link rate**: each host's NIC is the daemon's own bandwidth limiter
//!   with upload and download set to the scenario's link rate (times a slow
//!   node's factor), shared by every connection of the host.
//! - **Latency**: per host pair by topology class (`topology.latency_ms`),
//!   rounded up to the 1 ms step.
//! - **Disk**: real files in a temporary folder per host; blocking work runs
//!   inline, so it takes no simulated time (`fsync` is off).
//! - **Faults**: partition and heal (turmoil drops the packets: no reset),
//!   crash with the disk kept or lost (the host's runtime is dropped, its
//!   sockets reset; a lost disk also means a new node identity), silent
//!   crash (partitioned first, so peers see no reset), loss (turmoil breaks
//!   links at that rate per message, as its TCP has no retransmission, so
//!   loss here means connections that die and must be healed), slow nodes,
//!   Byzantine nodes (`corrupt-serve`), the origin dying once `after_copies`
//!   nodes hold the whole version, and new versions (the origin restarts as
//!   the publisher of version k+1, a copy of version k with a fraction of
//!   its tensors rewritten).
//!
//! Checks: after every step each node's `current` is read from its disk;
//! whenever it changed, it must be byte-identical to the source of that
//! version (no half-written version is current);
//! at the end every record of every host's chunk store must hash to its
//! name and belong to a published version (no unverified byte stored, hence
//! none served); liveness as in the flow tier. The trace hash covers every
//! write on the simulated network (time, endpoints, length) and every
//! completion time.
//!
//! Deterministic by construction: node keys and RNG seeds come from the
//! seed, the daemon's maps iterate in a fixed order and its event loop is
//! `biased`, gossipsub's mesh holds every peer (its choices use the thread
//! RNG), and yamux's auto-tuning is off. `tests` runs a scenario twice and
//! compares the hashes.

pub mod net;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash as _, Hasher};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use merkle::ed25519_dalek::SigningKey;
use merkle::{ChunkerConfig, Hash, Manifest, SignedRoot};
use sim::scenario::{Disk, Fault, Scenario, Select};
use sim::world::Counters;

use crate::checkpoint::SplitMix;
use crate::config::NodeConfig;
use crate::control::Status;
use crate::daemon::{Daemon, Env, SeedSpec, SimHost};
use crate::publish::SourceIndex;

/// The simulation step, µs: turmoil's tick and the NIC's. Not finer: tokio's
/// timer has 1 ms resolution, so a host's clock would run ahead of the
/// simulation's.
pub const fn step_us() -> u64 {
    1000
}

/// Most hosts (origin included) a packet-tier scenario may have.
pub const MAX_HOSTS: u32 = 64;
/// How often each host's status is read, simulated ms.
const OBSERVE_MS: u64 = 5;
const CHANNEL: &str = "sim";
const PORT: u16 = 7411;

/// Why a packet-tier run could not be set up or finished.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// The scenario is beyond this tier.
    #[error("{0}")]
    Unsupported(String),
    /// Files of the run.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A host's software failed (the daemon returned an error or panicked).
    #[error("simulation stopped: {0}")]
    Sim(String),
    /// Building a version.
    #[error("cannot publish version {version}: {reason}")]
    Publish {
        /// Version name.
        version: String,
        /// Why.
        reason: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PacketError {
    let what = what.into();
    move |source| PacketError::Io { what, source }
}

/// One published version.
struct Published {
    name: String,
    at_s: f64,
    dir: PathBuf,
    signed: SignedRoot,
    manifest: Arc<Manifest>,
    source: Arc<SourceIndex>,
}

/// What the driver knows about one host.
#[derive(Clone)]
struct HostSpec {
    name: String,
    origin: bool,
    rack: u32,
    zone: u32,
    region: u32,
    mbps: f64,
    faults: String,
    /// Bumped when the disk is lost: a new identity.
    generation: u32,
    /// Bumped at every start.
    incarnation: u32,
}

/// What a host's observer saw.
#[derive(Default)]
struct Obs {
    status: Option<Status>,
    /// Version name → first time (s) it was `current`.
    current_at: BTreeMap<String, f64>,
    /// Version name → first time (s) its signed root was known.
    learned_at: BTreeMap<String, f64>,
    /// Version name → first time (s) its manifest was held.
    fetching_at: BTreeMap<String, f64>,
    /// Version name → first time (s) some of its bytes were held.
    first_byte_at: BTreeMap<String, f64>,
}

struct Shared {
    sc: Scenario,
    seed: u64,
    root: PathBuf,
    traffic: Arc<net::Traffic>,
    trusted: String,
    hosts: RefCell<Vec<HostSpec>>,
    published: RefCell<Vec<Published>>,
    obs: RefCell<Vec<Obs>>,
}

fn mix(a: u64, b: u64) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    (a, b).hash(&mut h);
    h.finish()
}

fn key32(seed: u64, what: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    SplitMix(mix(seed, what)).fill(&mut out);
    out
}

/// Writes version `k` (0-based) of the generated checkpoint: `model.bin`
/// of 64 equal tensors and a small `config.json`. Version j ≥ 1 rewrites
/// the fraction `rewrites[j-1]` of the tensors (a spread, seed-chosen set).
fn write_version(dir: &Path, size: u64, seed: u64, rewrites: &[f64]) -> std::io::Result<()> {
    const TENSORS: u64 = 64;
    std::fs::create_dir_all(dir)?;
    let tensor = (size / TENSORS).max(1024);
    let mut data = vec![0u8; (tensor * TENSORS) as usize];
    for t in 0..TENSORS {
        let mut s = mix(seed, t);
        for (j, f) in rewrites.iter().enumerate() {
            // A cyclic window of round(f × 64) tensors at a seed-chosen offset.
            let n = (f * TENSORS as f64).round() as u64;
            let off = mix(seed, 1000 + j as u64) % TENSORS;
            if (t + off) % TENSORS < n {
                s = mix(s, 2000 + j as u64);
            }
        }
        let start = (t * tensor) as usize;
        SplitMix(s).fill(&mut data[start..start + tensor as usize]);
    }
    std::fs::write(dir.join("model.bin"), &data)?;
    std::fs::write(
        dir.join("config.json"),
        format!("{{\"tensors\":{TENSORS},\"version\":{}}}\n", rewrites.len()),
    )
}

impl Shared {
    fn publish(&self, k: usize, at_s: f64) -> Result<(), PacketError> {
        let name = format!("v{}", k + 1);
        let dir = self.root.join(format!("src-{name}"));
        let size = (self.sc.checkpoint.size_mib * 1048576.0) as u64;
        let rewrites: Vec<f64> = self.sc.versions[..k].iter().map(|v| v.rewrite).collect();
        write_version(&dir, size, self.seed, &rewrites).map_err(io_err("cannot write source"))?;
        let avg = (self.sc.checkpoint.chunk_kib * 1024).next_power_of_two();
        let chunker = ChunkerConfig {
            min_size: avg / 4,
            avg_size: avg,
            max_size: avg * 4,
        };
        let fail = |reason: String| PacketError::Publish {
            version: name.clone(),
            reason,
        };
        let (manifest, source) = crate::publish::scan(&dir, CHANNEL, &name, k as u64 + 1, chunker)
            .map_err(|e| fail(e.to_string()))?;
        let key = SigningKey::from_bytes(&key32(self.seed, u64::MAX));
        let signed = SignedRoot::sign(&key, CHANNEL, &name, manifest.root(), k as u64 + 1);
        self.published.borrow_mut().push(Published {
            name,
            at_s,
            dir,
            signed,
            manifest: Arc::new(manifest),
            source: Arc::new(source),
        });
        Ok(())
    }

    fn config(&self, i: usize) -> Result<crate::config::Validated, PacketError> {
        let h = self.hosts.borrow()[i].clone();
        let k = &self.sc.swarm;
        let me = turmoil::lookup(h.name.as_str());
        let origin = turmoil::lookup("origin");
        let data_dir = self.root.join(&h.name);
        let bootstrap = if h.origin {
            "[]".to_owned()
        } else {
            format!("[\"/ip4/{origin}/tcp/{PORT}\"]")
        };
        let text = format!(
            "data_dir: \"{}\"\nlisten: [\"/ip4/{me}/tcp/{PORT}\"]\nbootstrap: {bootstrap}\n\
             channels: [\"{CHANNEL}\"]\ntrusted_publishers: [\"{}\"]\nmetrics_listen: null\n\
             fsync: false\nmax_peers: {}\nmax_uploads: {}\nmax_downloads: {}\n\
             have_interval_ms: {}\npeer_timeout_ms: {}\n\
             stream_window_kib: {}\nupload_backlog_kib: {}\n\
             labels: {{region: \"r{}\", zone: \"z{}\", rack: \"k{}\", host: \"{}\"}}\n",
            data_dir.display(),
            self.trusted,
            k.max_peers,
            k.upload_slots,
            k.download_slots,
            k.announce_interval_ms.round().max(1.0),
            k.peer_timeout_ms.round().max(1.0),
            k.stream_window_kib,
            k.upload_backlog_kib,
            h.region,
            h.zone,
            h.rack,
            h.name,
        );
        let path = self.root.join(format!("{}.yaml", h.name));
        let cfg = NodeConfig::parse(&path, &text)
            .and_then(|c| c.validate(!h.origin))
            .map_err(|e| PacketError::Unsupported(format!("host {}: {e}", h.name)))?;
        Ok(cfg)
    }
}

async fn host_main(sh: Rc<Shared>, i: usize) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = sh.config(i)?;
    let h = sh.hosts.borrow()[i].clone();
    let seed = if h.origin {
        let p = sh.published.borrow();
        let v = p
            .last()
            .expect("a version is published before the origin starts");
        Some(SeedSpec {
            manifest: v.manifest.clone(),
            signed: v.signed.clone(),
            source: v.source.clone(),
            until_complete: None,
        })
    } else {
        None
    };
    let mut id = key32(sh.seed, (i as u64) << 32 | u64::from(h.generation));
    let identity = libp2p::identity::Keypair::ed25519_from_bytes(&mut id)?;
    let traffic = sh.traffic.clone();
    let env = Env {
        sim: Some(SimHost {
            identity,
            rng_seed: mix(sh.seed, (i as u64) << 32 | u64::from(h.incarnation)),
            transport: Box::new(move |key, limiter| {
                net::transport(key, net::Nic::start(h.mbps, traffic, limiter))
            }),
            faults: h.faults.clone(),
            mesh_peers: sh.hosts.borrow().len(),
        }),
    };
    let daemon = Daemon::start_in(cfg, seed, env).await?;
    let status = daemon.status_sender();
    let observe = async {
        loop {
            tokio::time::sleep(Duration::from_millis(OBSERVE_MS)).await;
            let (tx, rx) = tokio::sync::oneshot::channel();
            if status
                .send(crate::control::StatusRequest {
                    reply: tx,
                    brief: true,
                })
                .await
                .is_err()
            {
                return;
            }
            let Ok(s) = rx.await else { return };
            let now = turmoil::sim_elapsed().unwrap_or_default().as_secs_f64();
            let mut obs = sh.obs.borrow_mut();
            let o = &mut obs[i];
            let cur = s
                .channels
                .iter()
                .find(|c| c.channel == CHANNEL)
                .and_then(|c| c.current.clone());
            if let Some(c) = &cur {
                o.current_at.entry(c.clone()).or_insert(now);
            }
            if let Some(l) = s
                .channels
                .iter()
                .find(|c| c.channel == CHANNEL)
                .and_then(|c| c.latest.as_ref())
            {
                o.learned_at.entry(l.version.clone()).or_insert(now);
                if l.state != "manifest" {
                    o.fetching_at.entry(l.version.clone()).or_insert(now);
                }
                if l.bytes_done > 0 {
                    o.first_byte_at.entry(l.version.clone()).or_insert(now);
                }
            }
            o.status = Some(s);
        }
    };
    tokio::select! {
        biased;
        r = daemon.run_until(std::future::pending()) => r?,
        () = observe => {}
    }
    Ok(())
}

/// Log timestamps in simulated seconds.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(t) => write!(w, "{:9.4}s", t.as_secs_f64()),
            None => write!(w, "    -    "),
        }
    }
}

/// Which hosts (1-based node ids) a selection names.
fn resolve(sel: &Select, sc: &Scenario, rng: &mut SplitMix) -> Vec<usize> {
    let mut out: BTreeSet<usize> = sel.ids.iter().map(|&i| i as usize).collect();
    let racks = sc.racks();
    for h in 1..=sc.nodes {
        if sel.racks.contains(&((h - 1) % racks)) {
            out.insert(h as usize);
        }
    }
    if let Some(n) = sel.count {
        let mut pool: Vec<usize> = (1..=sc.nodes as usize)
            .filter(|h| !out.contains(h))
            .collect();
        for _ in 0..n.min(pool.len() as u32) {
            let j = (rng.next_u64() % pool.len() as u64) as usize;
            out.insert(pool.swap_remove(j));
        }
    }
    out.into_iter().collect()
}

/// What the driver does at a simulated time.
#[derive(Debug, Clone)]
enum Act {
    Partition(Vec<usize>),
    Heal(Vec<usize>),
    Crash {
        host: usize,
        silent: bool,
    },
    Restart {
        host: usize,
        lost: bool,
        silent: bool,
    },
    Loss(f64),
    Publish(usize),
}

/// Runs `sc` with `seed` in the packet tier.
pub fn run(sc: &Scenario, seed: u64) -> Result<sim::Report, PacketError> {
    if sc.nodes + 1 > MAX_HOSTS {
        return Err(PacketError::Unsupported(format!(
            "the packet tier runs at most {MAX_HOSTS} hosts (the origin and {} nodes); \
             this scenario has {} nodes: use the flow tier (`--tier flow`)",
            MAX_HOSTS - 1,
            sc.nodes
        )));
    }
    if sc.machine.is_some() {
        return Err(PacketError::Unsupported(
            "`machine:` (one CPU shared by every host) is modelled by the flow tier only: \
             the packet tier runs each daemon in simulated time, where CPU work is free. \
             Use `--tier flow`, or remove `machine:` for the packet tier"
                .into(),
        ));
    }
    let root = std::env::temp_dir().join(format!(
        "syncnode-sim-{}-{}-{seed}",
        std::process::id(),
        sc.name
    ));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).map_err(io_err(format!("cannot create {}", root.display())))?;
    let started = std::time::Instant::now();
    // Quiet unless asked: then every line carries the simulated time and
    // the host (turmoil's `node` span).
    let result = if std::env::var_os("SYNCNODE_SIM_LOG").is_none() {
        tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
            run_in(sc, seed, &root, started)
        })
    } else {
        let sub = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_timer(SimTime)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .finish();
        tracing::subscriber::with_default(sub, || run_in(sc, seed, &root, started))
    };
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn run_in(
    sc: &Scenario,
    seed: u64,
    root: &Path,
    started: std::time::Instant,
) -> Result<sim::Report, PacketError> {
    let mut rng = SplitMix(mix(seed, 77));
    let t = &sc.topology;
    let racks = sc.racks();
    let place = |r: u32| {
        (
            r,
            r / t.racks_per_zone,
            r / (t.zones_per_region * t.racks_per_zone),
        )
    };
    let mut hosts: Vec<HostSpec> = (0..=sc.nodes as usize)
        .map(|i| {
            let origin = i == 0;
            let (rack, zone, region) = if origin {
                (racks, 0, 0)
            } else {
                place((i as u32 - 1) % racks)
            };
            HostSpec {
                name: if origin {
                    "origin".into()
                } else {
                    format!("n{i}")
                },
                origin,
                rack,
                zone,
                region,
                mbps: if origin {
                    sc.link.origin_mbps.unwrap_or(sc.link.mbps)
                } else {
                    sc.link.mbps
                },
                faults: String::new(),
                generation: 0,
                incarnation: 0,
            }
        })
        .collect();

    // The fault schedule.
    let mut acts: Vec<(f64, Act)> = Vec::new();
    let mut origin_dies: Option<u32> = None;
    let mut quiet_s: f64 = 0.0;
    let mut slow: BTreeMap<usize, f64> = BTreeMap::new();
    let mut down_for_good: BTreeSet<usize> = BTreeSet::new();
    for f in &sc.faults {
        match f {
            Fault::Partition {
                at_s,
                until_s,
                select,
            } => {
                let set = resolve(select, sc, &mut rng);
                acts.push((*at_s, Act::Partition(set.clone())));
                acts.push((*until_s, Act::Heal(set)));
                quiet_s = quiet_s.max(*until_s);
            }
            Fault::Crash {
                at_s,
                restart_s,
                disk,
                silent,
                select,
            } => {
                for host in resolve(select, sc, &mut rng) {
                    acts.push((
                        *at_s,
                        Act::Crash {
                            host,
                            silent: *silent,
                        },
                    ));
                    match restart_s {
                        Some(r) => {
                            acts.push((
                                *r,
                                Act::Restart {
                                    host,
                                    lost: *disk == Disk::Lost,
                                    silent: *silent,
                                },
                            ));
                            quiet_s = quiet_s.max(*r);
                        }
                        None => {
                            down_for_good.insert(host);
                            quiet_s = quiet_s.max(*at_s);
                        }
                    }
                }
            }
            Fault::Loss {
                rate,
                at_s,
                until_s,
            } => {
                acts.push((*at_s, Act::Loss(*rate)));
                if let Some(u) = until_s {
                    acts.push((*u, Act::Loss(0.0)));
                    quiet_s = quiet_s.max(*u);
                } else {
                    quiet_s = f64::INFINITY;
                }
            }
            Fault::Slow { factor, select } => {
                for h in resolve(select, sc, &mut rng) {
                    hosts[h].mbps *= factor;
                    slow.insert(h, *factor);
                }
            }
            Fault::Byzantine { select } => {
                for h in resolve(select, sc, &mut rng) {
                    hosts[h].faults = "corrupt-serve".into();
                }
            }
            Fault::OriginDies { after_copies } => origin_dies = Some(*after_copies),
        }
    }
    for (k, v) in sc.versions.iter().enumerate() {
        acts.push((v.at_s, Act::Publish(k + 1)));
        quiet_s = quiet_s.max(v.at_s);
    }
    acts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut acts = std::collections::VecDeque::from(acts);

    let publisher = SigningKey::from_bytes(&key32(seed, u64::MAX));
    let sh = Rc::new(Shared {
        sc: sc.clone(),
        seed,
        root: root.to_owned(),
        traffic: Arc::new(net::Traffic::default()),
        trusted: hex::encode(publisher.verifying_key().as_bytes()),
        obs: RefCell::new((0..hosts.len()).map(|_| Obs::default()).collect()),
        hosts: RefCell::new(hosts),
        published: RefCell::new(Vec::new()),
    });
    sh.publish(0, 0.0)?;

    let lat = &sc.topology.latency_ms;
    let step = Duration::from_micros(step_us());
    let max_s = sc.checks.max_sim_s;
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs_f64(max_s + 1.0))
        .tick_duration(step)
        .min_message_latency(Duration::from_secs_f64(lat.rack / 1e3))
        .max_message_latency(Duration::from_secs_f64(lat.rack / 1e3))
        .rng_seed(seed)
        .build();
    let n = sh.hosts.borrow().len();
    for i in 0..n {
        let name = sh.hosts.borrow()[i].name.clone();
        let sh2 = sh.clone();
        sim.host(name.as_str(), move || host_main(sh2.clone(), i));
    }
    let names: Vec<String> = sh.hosts.borrow().iter().map(|h| h.name.clone()).collect();
    let class = |a: &HostSpec, b: &HostSpec| -> usize {
        if a.rack == b.rack {
            1
        } else if a.zone == b.zone {
            2
        } else if a.region == b.region {
            3
        } else {
            4
        }
    };
    {
        let hs = sh.hosts.borrow();
        for a in 0..n {
            for b in a + 1..n {
                let ms = match class(&hs[a], &hs[b]) {
                    1 => lat.rack,
                    2 => lat.zone,
                    3 => lat.region,
                    _ => lat.cross_region,
                };
                sim.set_link_latency(
                    names[a].as_str(),
                    names[b].as_str(),
                    Duration::from_secs_f64(ms / 1e3),
                );
            }
        }
    }

    let mut violations: Vec<String> = Vec::new();
    let mut safety_checks: u64 = 0;
    let mut alive: Vec<bool> = vec![true; n];
    let mut last_current: Vec<Option<String>> = vec![None; n];
    let mut origin_dead = false;
    let others = |set: &[usize]| -> Vec<&str> {
        (0..n)
            .filter(|h| !set.contains(h))
            .map(|h| names[h].as_str())
            .collect()
    };
    let sim_err = |e: Box<dyn std::error::Error>| PacketError::Sim(e.to_string());
    loop {
        let now = sim.elapsed().as_secs_f64();
        while acts.front().is_some_and(|(at, _)| *at <= now) {
            let (_, act) = acts.pop_front().expect("front");
            match act {
                Act::Partition(set) => {
                    for &h in &set {
                        for o in others(&set) {
                            sim.partition(names[h].as_str(), o);
                        }
                    }
                }
                Act::Heal(set) => {
                    for &h in &set {
                        for o in others(&set) {
                            sim.repair(names[h].as_str(), o);
                        }
                    }
                }
                Act::Crash { host, silent } => {
                    if silent {
                        for o in others(&[host]) {
                            sim.partition(names[host].as_str(), o);
                        }
                    }
                    sim.crash(names[host].as_str());
                    alive[host] = false;
                }
                Act::Restart { host, lost, silent } => {
                    if lost {
                        let _ = std::fs::remove_dir_all(root.join(&names[host]));
                        sh.hosts.borrow_mut()[host].generation += 1;
                        last_current[host] = None;
                    }
                    if silent {
                        for o in others(&[host]) {
                            sim.repair(names[host].as_str(), o);
                        }
                    }
                    sh.hosts.borrow_mut()[host].incarnation += 1;
                    sim.bounce(names[host].as_str());
                    alive[host] = true;
                }
                Act::Loss(rate) => sim.set_fail_rate(rate),
                Act::Publish(k) => {
                    if !origin_dead {
                        sh.publish(k, now)?;
                        sh.hosts.borrow_mut()[0].incarnation += 1;
                        sim.bounce("origin");
                    }
                }
            }
        }
        sim.step().map_err(sim_err)?;
        let now = sim.elapsed().as_secs_f64();

        // Safety: a node's `current` is always a whole, verified version.
        // Read from each host's disk after every step: materialization runs
        // inline on a simulated host (`env::offload`), so a `current` switch
        // happens within one step and none goes unchecked.
        let published = sh.published.borrow();
        {
            for h in 1..n {
                let now_current =
                    crate::materialize::current_version(&root.join(&names[h]), CHANNEL);
                if now_current != last_current[h] {
                    last_current[h] = now_current;
                    if let Some(v) = &last_current[h] {
                        sh.obs.borrow_mut()[h]
                            .current_at
                            .entry(v.clone())
                            .or_insert(now);
                        safety_checks += 1;
                        let cur = root.join(&names[h]).join(CHANNEL).join("current");
                        match published.iter().find(|p| &p.name == v) {
                            None => violations.push(format!(
                                "{} at {now:.3} s: current is {v}, which was never published",
                                names[h]
                            )),
                            Some(p) => {
                                if let Some(d) = crate::checkpoint::diff_trees(&cur, &p.dir) {
                                    violations.push(format!(
                                        "{} at {now:.3} s: current ({v}) differs from its source: {d}",
                                        names[h]
                                    ));
                                }
                            }
                        }
                    }
                }
            }
        }
        let latest = published.last().expect("published").name.clone();
        drop(published);
        let done = |h: usize| sh.obs.borrow()[h].current_at.contains_key(latest.as_str());
        if let Some(k) = origin_dies
            && !origin_dead
            && (1..n).filter(|&h| done(h)).count() as u32 >= k
        {
            sim.crash("origin");
            alive[0] = false;
            origin_dead = true;
        }
        let all_done = (1..n).filter(|&h| alive[h]).all(done)
            && (1..n).all(|h| alive[h] || down_for_good.contains(&h));
        if (all_done && acts.is_empty()) || now >= max_s {
            break;
        }
    }
    let sim_s = sim.elapsed().as_secs_f64();
    let ip_of: BTreeMap<IpAddr, usize> =
        (0..n).map(|h| (sim.lookup(names[h].as_str()), h)).collect();
    drop(sim);

    // Safety: every stored record hashes to its name and belongs to a
    // published version.
    let published = sh.published.borrow();
    let known: BTreeSet<Hash> = published
        .iter()
        .flat_map(|p| p.manifest.unique_chunks().into_iter().map(|c| c.hash))
        .collect();
    for name in &names {
        match audit_store(&root.join(name).join(".syncnode"), &known) {
            Ok(c) => safety_checks += c,
            Err(e) => violations.push(format!("{name}: {e}")),
        }
    }

    // Report.
    let latest = published.last().expect("published");
    let obs = sh.obs.borrow();
    let hs = sh.hosts.borrow();
    let live: Vec<usize> = (1..n).filter(|&h| alive[h]).collect();
    let mut completion: Vec<f64> = live
        .iter()
        .filter_map(|&h| obs[h].current_at.get(&latest.name))
        .map(|t| t - latest.at_s)
        .collect();
    completion.sort_by(f64::total_cmp);
    if std::env::var_os("SYNCNODE_SIM_TIMELINE").is_some() {
        for (h, o) in obs.iter().enumerate() {
            eprintln!(
                "{}: learned {:?} manifest {:?} first byte {:?} current {:?}",
                names[h], o.learned_at, o.fetching_at, o.first_byte_at, o.current_at
            );
        }
    }
    let link_bps = sc.link.mbps * 1e6 / 8.0;
    let version_bytes = latest.manifest.total_size();
    let s_over_b = version_bytes as f64 / link_bps;
    let quiet = if quiet_s.is_finite() { quiet_s } else { sim_s };
    let bound_base = quiet + (sc.swarm.peer_timeout_ms + sc.swarm.reconnect_ms) / 1e3;
    let mut late = Vec::new();
    for &h in &live {
        let factor = slow.get(&h).copied().unwrap_or(1.0);
        let bound = bound_base + sc.checks.liveness_factor * s_over_b / factor;
        match obs[h].current_at.get(&latest.name) {
            Some(t) if *t <= bound => {}
            Some(t) => late.push(format!("{} at {t:.3} s (bound {bound:.3} s)", names[h])),
            None => late.push(format!("{} never", names[h])),
        }
    }
    let liveness = if late.is_empty() {
        Ok(())
    } else {
        let k = late.len();
        late.truncate(5);
        Err(format!(
            "{k} live node(s) missed the bound: {}",
            late.join(", ")
        ))
    };
    let mut published_bytes = 0u64;
    let mut seen: BTreeSet<Hash> = BTreeSet::new();
    for p in published.iter() {
        for c in p.manifest.unique_chunks() {
            if seen.insert(c.hash) {
                published_bytes += u64::from(c.len);
            }
        }
    }
    let mut counters = Counters {
        into_rack: vec![0; racks as usize + 1],
        ..Counters::default()
    };
    for ((from, to), bytes) in sh.traffic.bytes() {
        let (Some(&a), Some(&b)) = (ip_of.get(&from), ip_of.get(&to)) else {
            continue;
        };
        counters.delivered += bytes;
        counters.by_class[class(&hs[a], &hs[b])] += bytes;
        if a == 0 {
            counters.origin_egress += bytes;
        }
        if hs[a].rack != hs[b].rack {
            counters.into_rack[hs[b].rack as usize] += bytes;
        }
    }
    let (wire_trace, writes) = sh.traffic.trace();
    counters.events = writes;
    counters.safety_checks = safety_checks;
    for o in obs.iter() {
        if let Some(s) = &o.status {
            counters.rejected += s.chunks_rejected;
            counters.busy += s.answers_busy;
            counters.not_found += s.answers_not_found;
        }
    }
    let mut th = std::hash::DefaultHasher::new();
    wire_trace.hash(&mut th);
    for o in obs.iter() {
        for (v, t) in &o.current_at {
            (v, t.to_bits()).hash(&mut th);
        }
    }
    Ok(sim::Report {
        scenario: sc.name.clone(),
        tier: "packet",
        seed,
        nodes: sc.nodes,
        version_bytes,
        published_bytes,
        link_bps,
        completion,
        counters,
        violations,
        liveness,
        liveness_bound_s: bound_base + sc.checks.liveness_factor * s_over_b,
        liveness_factor: sc.checks.liveness_factor,
        quiet_s: quiet,
        trace: th.finish(),
        sim_s,
        wall_s: started.elapsed().as_secs_f64(),
        live: live.len() as u32,
    })
}

/// Walks a chunk store's pack files (format in `crate::store`): every
/// record must hash to its name and be a chunk of a published version.
/// Returns the number of records checked.
fn audit_store(state_dir: &Path, known: &BTreeSet<Hash>) -> Result<u64, String> {
    let Ok(rd) = std::fs::read_dir(state_dir.join("packs")) else {
        return Ok(0);
    };
    let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    paths.sort();
    let mut checked = 0;
    for p in paths {
        let data = std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        let mut at = 0usize;
        while at + 40 <= data.len() {
            let magic = &data[at..at + 4];
            if magic != b"SNCK" && magic != b"SNRF" {
                return Err(format!("{}: bad record magic at {at}", p.display()));
            }
            let len = u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4")) as usize;
            let name = Hash(data[at + 8..at + 40].try_into().expect("32"));
            let body = data
                .get(at + 40..at + 40 + len)
                .ok_or_else(|| format!("{}: torn record at {at}", p.display()))?;
            let referenced;
            let body = if magic == b"SNRF" {
                // A chunk kept in a version's file: read it from there (final
                // path, else staged path); one whose file is gone is no longer
                // stored.
                match read_ref(state_dir, body) {
                    Ok(Some(b)) => {
                        referenced = b;
                        &referenced[..]
                    }
                    Ok(None) => {
                        at += 40 + len;
                        continue;
                    }
                    Err(e) => return Err(format!("{}: record {name} at {at}: {e}", p.display())),
                }
            } else {
                body
            };
            if Hash::of(body) != name {
                return Err(format!(
                    "{}: record {name} at {at} does not hash to its name: an unverified chunk was stored",
                    p.display()
                ));
            }
            if !known.contains(&name) {
                return Err(format!(
                    "{}: record {name} is no chunk of any published version",
                    p.display()
                ));
            }
            checked += 1;
            at += 40 + len;
        }
    }
    Ok(checked)
}

/// The bytes a reference record (format in `crate::store`) points at, read
/// independently of the store's code; `None` if neither path exists.
fn read_ref(state_dir: &Path, body: &[u8]) -> Result<Option<Vec<u8>>, String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileExt;
    let bad = || "malformed reference".to_string();
    let u16_at = |i: usize| -> Result<usize, String> {
        Ok(usize::from(u16::from_le_bytes(
            body.get(i..i + 2).ok_or_else(bad)?.try_into().expect("2"),
        )))
    };
    let len = u32::from_le_bytes(body.get(..4).ok_or_else(bad)?.try_into().expect("4"));
    let offset = u64::from_le_bytes(body.get(4..12).ok_or_else(bad)?.try_into().expect("8"));
    let pl = u16_at(12)?;
    let path = body.get(14..14 + pl).ok_or_else(bad)?;
    let sl = u16_at(14 + pl)?;
    let staged = body.get(16 + pl..16 + pl + sl).ok_or_else(bad)?;
    let base = state_dir.parent().unwrap_or(state_dir);
    for rel in [path, staged] {
        let p = base.join(std::ffi::OsStr::from_bytes(rel));
        if let Ok(f) = std::fs::File::open(&p) {
            let mut out = vec![0u8; len as usize];
            f.read_exact_at(&mut out, offset)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            return Ok(Some(out));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(data: &[u8]) -> Vec<u8> {
        let mut r = b"SNCK".to_vec();
        r.extend_from_slice(&(data.len() as u32).to_le_bytes());
        r.extend_from_slice(&Hash::of(data).0);
        r.extend_from_slice(data);
        r
    }

    #[test]
    fn the_store_audit_catches_tampered_unknown_and_torn_records() {
        let dir = tempfile::tempdir().unwrap();
        let packs = dir.path().join("packs");
        std::fs::create_dir_all(&packs).unwrap();
        let (a, b) = (b"first chunk".to_vec(), b"second chunk".to_vec());
        let known: BTreeSet<Hash> = [Hash::of(&a), Hash::of(&b)].into_iter().collect();
        let pack = packs.join("pack-000001.snp");
        let good = [record(&a), record(&b)].concat();
        std::fs::write(&pack, &good).unwrap();
        assert_eq!(audit_store(dir.path(), &known), Ok(2));

        let mut tampered = good.clone();
        *tampered.last_mut().unwrap() ^= 1;
        std::fs::write(&pack, &tampered).unwrap();
        let e = audit_store(dir.path(), &known).unwrap_err();
        assert!(e.contains("does not hash to its name"), "{e}");

        std::fs::write(&pack, [good.clone(), record(b"not published")].concat()).unwrap();
        let e = audit_store(dir.path(), &known).unwrap_err();
        assert!(e.contains("no chunk of any published version"), "{e}");

        std::fs::write(&pack, &good[..good.len() - 3]).unwrap();
        let e = audit_store(dir.path(), &known).unwrap_err();
        assert!(e.contains("torn record"), "{e}");
    }

    #[test]
    fn later_versions_rewrite_about_their_fraction() {
        let dir = tempfile::tempdir().unwrap();
        let (v1, v2) = (dir.path().join("v1"), dir.path().join("v2"));
        write_version(&v1, 64 * 4096, 9, &[]).unwrap();
        write_version(&v2, 64 * 4096, 9, &[0.25]).unwrap();
        let (a, b) = (
            std::fs::read(v1.join("model.bin")).unwrap(),
            std::fs::read(v2.join("model.bin")).unwrap(),
        );
        assert_eq!(a.len(), b.len());
        let changed = a
            .chunks(4096)
            .zip(b.chunks(4096))
            .filter(|(x, y)| x != y)
            .count();
        assert_eq!(changed, 16, "a quarter of 64 tensors");
        // The same inputs give the same bytes.
        write_version(&dir.path().join("v1b"), 64 * 4096, 9, &[]).unwrap();
        assert_eq!(a, std::fs::read(dir.path().join("v1b/model.bin")).unwrap());
    }
}
