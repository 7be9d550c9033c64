//! The flow-level world: every node runs the real [`swarm::Fetch`]; the
//! network is [`crate::bandwidth::Network`] (fluid flows, max-min fair per
//! NIC) plus latency by topology, and the node's I/O behaviour (serving with
//! `Busy` beyond its upload slots, `Have` pushes every announce interval,
//! verification before storing, materialization, supersession by newer
//! versions, reconnects) is modelled here, event by event, in virtual time.
//!
//! Chunk content is modelled by a 64-bit token per chunk: the manifest knows
//! the true token, an honest server sends what it stored, a Byzantine one
//! flips it, and the receiver compares before storing (the model of the
//! BLAKE3-against-Merkle-leaf check). The safety checks then look at what
//! every host stored, served and materialized.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use swarm::rng::SplitMix64;
use swarm::serve::{Admission, DEFAULT_RESEND_AFTER, UploadGate};
use swarm::{Action, ChunkIdx, Fetch, FetchConfig, Input};

use crate::bandwidth::Network;
use crate::scenario::{Disk, Fault, Scenario, Select};

mod events;
mod faults;

/// Host index: 0 is the origin, `1..=nodes` the nodes.
pub type HostId = u32;
/// The origin.
pub const ORIGIN: HostId = 0;

/// One version: its chunks (global ids) and their index in the version.
#[derive(Debug)]
pub(crate) struct VersionData {
    pub(crate) at: u64,
    pub(crate) chunks: Vec<u32>,
    pub(crate) index: HashMap<u32, ChunkIdx>,
    pub(crate) bytes: u64,
}

/// Where a host sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Place {
    pub(crate) region: u32,
    pub(crate) zone: u32,
    pub(crate) rack: u32,
}

/// The fetch a node runs for its latest known version.
struct NodeFetch {
    version: usize,
    fetch: Fetch<HostId>,
}

pub(crate) struct Host {
    pub(crate) place: Place,
    pub(crate) alive: bool,
    pub(crate) incarnation: u32,
    base_bps: f64,
    pub(crate) slow: f64,
    pub(crate) byzantine: bool,
    /// Stored token per global chunk id (0 = not held).
    pub(crate) store: Vec<u64>,
    /// Neighbours in the mesh and whether the connection is up.
    pub(crate) nbrs: Vec<HostId>,
    pub(crate) up: Vec<bool>,
    /// Chunk indices held, per version, in the order they were stored.
    pub(crate) log: Vec<Vec<u32>>,
    cursor: usize,
    tick_pending: bool,
    phase: u64,
    fetch: Option<NodeFetch>,
    /// Latest version this host knows (and would fetch).
    pub(crate) known: Option<usize>,
    /// The materialized version (`current`).
    pub(crate) current: Option<usize>,
    /// Completion time per version (virtual ns).
    pub(crate) done_at: Vec<Option<u64>>,
    timer: Option<(u64, u64)>,
    timer_gen: u64,
    /// Partition group (hosts talk only within their group).
    pub(crate) group: u32,
    /// Bytes delivered to this host.
    pub(crate) received: u64,
    /// Upload admission (the core's `UploadGate`, as the daemon uses it).
    pub(crate) gate: UploadGate<u32>,
}

/// What an event carries.
#[derive(Debug)]
pub(crate) enum Ev {
    Publish(usize),
    Learn {
        host: HostId,
        version: usize,
    },
    Request {
        client: HostId,
        server: HostId,
        gid: u32,
        inc: (u32, u32),
    },
    Reply {
        client: HostId,
        server: HostId,
        gid: u32,
        busy: bool,
        inc: (u32, u32),
    },
    Cancel {
        client: HostId,
        server: HostId,
        gid: u32,
    },
    Arrive {
        client: HostId,
        server: HostId,
        gid: u32,
        token: u64,
        inc: (u32, u32),
    },
    Tick(HostId),
    /// One push to every recipient at the same latency (unpacked on arrival).
    HaveBatch {
        to: Vec<(HostId, u32)>,
        from: HostId,
        from_inc: u32,
        version: usize,
        chunks: Arc<[u32]>,
        all: bool,
    },
    Have {
        to: HostId,
        from: HostId,
        version: usize,
        chunks: Vec<u32>,
        all: bool,
        inc: (u32, u32),
    },
    Timer {
        host: HostId,
        generation: u64,
    },
    ConnDown {
        a: HostId,
        b: HostId,
        timeout: bool,
    },
    ConnUp {
        a: HostId,
        b: HostId,
    },
    Crash {
        host: HostId,
        silent: bool,
    },
    Restart {
        host: HostId,
        disk: Disk,
    },
    PartitionStart(Vec<HostId>),
    PartitionEnd(Vec<HostId>),
    LossStart(f64),
    LossEnd,
}

impl Ev {
    /// The two hosts of a message between hosts (none for local events).
    pub(crate) fn endpoints(&self) -> Option<(HostId, HostId)> {
        match self {
            Ev::Request { client, server, .. }
            | Ev::Reply { client, server, .. }
            | Ev::Cancel { client, server, .. }
            | Ev::Arrive { client, server, .. } => Some((*client, *server)),
            Ev::Have { to, from, .. } => Some((*to, *from)),
            _ => None,
        }
    }
}

struct Entry {
    t: u64,
    seq: u64,
    ev: Ev,
}
impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.t, self.seq) == (o.t, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.t, self.seq).cmp(&(o.t, o.seq))
    }
}

/// A transfer in the network.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Transfer {
    client: HostId,
    gid: u32,
    token: u64,
    inc: (u32, u32),
    /// This flow holds the server's upload slot.
    slot: bool,
    /// Bytes of the chunk that follow this flow (the part that crosses
    /// after the slot is freed; see `SwarmKnobs::slot_release_kib`).
    tail: u32,
}

/// One connection's transfers, server to client: its bytes leave in order
/// (one TCP connection per peer pair), so one transfer crosses at a time.
#[derive(Debug, Default)]
pub(crate) struct Pair {
    pub(crate) active: bool,
    pub(crate) queue: std::collections::VecDeque<Transfer>,
}

/// Counters the report prints.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Bytes delivered by link class: same host, rack, zone, region, cross-region.
    pub by_class: [u64; 5],
    /// Bytes the origin sent (delivered).
    pub origin_egress: u64,
    /// Bytes delivered into each rack from outside it (index = rack; the origin's rack last).
    pub into_rack: Vec<u64>,
    /// Bytes delivered in total.
    pub delivered: u64,
    /// Bytes of transfers cut off (crash, partition, cancel).
    pub wasted: u64,
    /// Chunks rejected by verification.
    pub rejected: u64,
    /// Penalise actions.
    pub penalised: u64,
    /// Ban actions.
    pub banned: u64,
    /// Busy answers.
    pub busy: u64,
    /// NotFound answers.
    pub not_found: u64,
    /// Events processed.
    pub events: u64,
    /// Safety checks run (each is one host's stored, served or materialized state).
    pub safety_checks: u64,
}

/// The simulation.
pub struct World {
    pub(crate) sc: Scenario,
    pub(crate) seed: u64,
    rng: SplitMix64,
    pub(crate) hosts: Vec<Host>,
    pub(crate) net: Network<Transfer>,
    /// Per connection (server, client): whether a transfer is crossing,
    /// and the admitted ones waiting behind it (see `World::pump_pair`).
    pub(crate) pairs: std::collections::BTreeMap<(HostId, HostId), Pair>,
    queue: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    pub(crate) t: u64,
    epoch: Instant,
    pub(crate) lens: Vec<u32>,
    pub(crate) tokens: Vec<u64>,
    pub(crate) versions: Vec<Arc<VersionData>>,
    /// Versions published so far.
    pub(crate) published: usize,
    pub(crate) loss: f64,
    pub(crate) origin_dies_after: Option<u32>,
    /// Live holders per global chunk id.
    pub(crate) copies: Vec<u32>,
    /// When the network last changed because of a fault (virtual ns).
    pub(crate) quiet_at: u64,
    pub(crate) trace: u64,
    /// Counters for the report.
    pub counters: Counters,
    /// Safety violations found (empty on a correct run).
    pub violations: Vec<String>,
    dirty: Vec<HostId>,
    is_dirty: Vec<bool>,
    fetch_config: FetchConfig,
    /// Verify chunks before storing them (off only in tests that prove the checks catch it).
    verify: bool,
    /// `SYNCNODE_SIM_ARRIVALS` is set: print every verified arrival to stderr.
    pub(crate) dump_arrivals: bool,
    drains: u64,
    /// Messages held up by a partition on a connection not yet declared dead
    /// (TCP would deliver them after the heal).
    parked: Vec<Ev>,
    /// Scheduled restarts not yet applied (the run goes on until they are).
    pub(crate) pending_restarts: usize,
}

pub(crate) fn ms(v: f64) -> u64 {
    (v * 1e6).round() as u64
}
pub(crate) fn secs(v: f64) -> u64 {
    (v * 1e9).round() as u64
}

impl World {
    /// Builds the world of a (validated) scenario with a seed.
    pub fn new(sc: Scenario, seed: u64) -> World {
        let mut rng = SplitMix64::new(seed ^ 0x5eed_5eed_5eed_5eed);
        let mean = u64::from(sc.checkpoint.chunk_kib) * 1024;
        let n_chunks = ((sc.checkpoint.size_mib * 1048576.0) / mean as f64)
            .ceil()
            .max(1.0) as usize;
        let mut lens = Vec::new();
        let mut tokens = Vec::new();
        let new_chunk = |rng: &mut SplitMix64, lens: &mut Vec<u32>, tokens: &mut Vec<u64>| {
            let len = mean - mean / 4 + rng.below(mean / 2 + 1);
            lens.push(len as u32);
            tokens.push(rng.next_u64() | 1);
            (lens.len() - 1) as u32
        };
        let first: Vec<u32> = (0..n_chunks)
            .map(|_| new_chunk(&mut rng, &mut lens, &mut tokens))
            .collect();
        let mut chunk_lists = vec![(0u64, first)];
        for v in &sc.versions {
            let mut next = chunk_lists.last().expect("first version").1.clone();
            let k = ((next.len() as f64) * v.rewrite).round().max(1.0) as usize;
            // Rewrite a contiguous run of chunks (a set of tensors), from the seed.
            let start = rng.below((next.len() - k.min(next.len()) + 1) as u64) as usize;
            for c in next.iter_mut().skip(start).take(k) {
                *c = new_chunk(&mut rng, &mut lens, &mut tokens);
            }
            chunk_lists.push((secs(v.at_s), next));
        }
        let versions = chunk_lists
            .into_iter()
            .map(|(at, chunks)| {
                let index = chunks
                    .iter()
                    .enumerate()
                    .map(|(i, g)| (*g, ChunkIdx(i as u32)))
                    .collect();
                let bytes = chunks.iter().map(|g| u64::from(lens[*g as usize])).sum();
                Arc::new(VersionData {
                    at,
                    chunks,
                    index,
                    bytes,
                })
            })
            .collect();
        let hosts = Self::build_hosts(&sc, &mut rng, lens.len());
        let bps = |h: &Host| h.base_bps;
        let caps: Vec<f64> = hosts.iter().map(bps).collect();
        let defaults = FetchConfig::default();
        let fetch_config = FetchConfig {
            download_slots: sc.swarm.download_slots as usize,
            cover_round_trip: sc.swarm.cover_round_trip,
            remote_wait: sc
                .swarm
                .remote_wait_ms
                .map_or(defaults.remote_wait, |v| Duration::from_nanos(ms(v))),
            ..defaults
        };
        let n = hosts.len();
        let mut net = Network::new(caps.clone(), caps);
        if let Some(m) = &sc.machine {
            net.set_shared_cap(Some(m.bytes_per_s()));
        }
        let mut w = World {
            net,
            pairs: std::collections::BTreeMap::new(),
            hosts,
            rng,
            seed,
            queue: BinaryHeap::new(),
            seq: 0,
            t: 0,
            epoch: Instant::now(),
            copies: vec![0; lens.len()],
            lens,
            tokens,
            versions,
            published: 0,
            loss: 0.0,
            origin_dies_after: None,
            quiet_at: 0,
            trace: 0xcbf2_9ce4_8422_2325,
            counters: Counters {
                into_rack: vec![0; sc.racks() as usize + 1],
                ..Counters::default()
            },
            violations: Vec::new(),
            dirty: Vec::new(),
            is_dirty: vec![false; n],
            fetch_config,
            verify: true,
            dump_arrivals: std::env::var_os("SYNCNODE_SIM_ARRIVALS").is_some(),
            drains: 0,
            parked: Vec::new(),
            pending_restarts: 0,
            sc,
        };
        w.schedule_faults();
        for v in 0..w.versions.len() {
            let at = w.versions[v].at;
            w.push(at, Ev::Publish(v));
        }
        w
    }

    fn build_hosts(sc: &Scenario, rng: &mut SplitMix64, chunks: usize) -> Vec<Host> {
        let t = &sc.topology;
        let racks = sc.racks();
        let place_of = |r: u32| Place {
            region: r / (t.zones_per_region * t.racks_per_zone),
            zone: r / t.racks_per_zone,
            rack: r,
        };
        let interval = ms(sc.swarm.announce_interval_ms);
        let mut hosts: Vec<Host> = (0..=sc.nodes)
            .map(|h| {
                let origin = h == ORIGIN;
                let place = if origin {
                    // A rack of its own in region 0, zone 0.
                    Place {
                        region: 0,
                        zone: 0,
                        rack: racks,
                    }
                } else {
                    place_of((h - 1) % racks)
                };
                let mbps = if origin {
                    sc.link.origin_mbps.unwrap_or(sc.link.mbps)
                } else {
                    sc.link.mbps
                };
                Host {
                    place,
                    alive: true,
                    incarnation: 0,
                    base_bps: mbps * 1e6 / 8.0,
                    slow: 1.0,
                    byzantine: false,
                    store: vec![0; chunks],
                    nbrs: Vec::new(),
                    up: Vec::new(),
                    log: vec![Vec::new(); sc.versions.len() + 1],
                    cursor: 0,
                    tick_pending: false,
                    phase: rng.below(interval.max(1)),
                    fetch: None,
                    known: None,
                    current: None,
                    done_at: vec![None; sc.versions.len() + 1],
                    timer: None,
                    timer_gen: 0,
                    group: 0,
                    received: 0,
                    gate: UploadGate::new(sc.swarm.upload_slots as usize),
                }
            })
            .collect();
        // The origin is connected to every node; nodes to about `max_peers` random others.
        let n = sc.nodes;
        let mut edges = std::collections::BTreeSet::new();
        for h in 1..=n {
            edges.insert((ORIGIN, h));
        }
        let half = (sc.swarm.max_peers / 2).max(1);
        for h in 1..=n {
            if n - 1 <= sc.swarm.max_peers {
                for p in (h + 1)..=n {
                    edges.insert((h, p));
                }
                continue;
            }
            for _ in 0..half {
                let p = 1 + rng.below(u64::from(n)) as u32;
                if p != h {
                    edges.insert((h.min(p), h.max(p)));
                }
            }
        }
        for (a, b) in edges {
            for (x, y) in [(a, b), (b, a)] {
                hosts[x as usize].nbrs.push(y);
                hosts[x as usize].up.push(true);
            }
        }
        hosts
    }

    pub(crate) fn push(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Entry {
            t,
            seq: self.seq,
            ev,
        }));
    }

    pub(crate) fn now(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.t)
    }

    pub(crate) fn rand_below(&mut self, n: u64) -> u64 {
        self.rng.below(n)
    }

    /// Resolves a fault's node selection (seeded).
    pub(crate) fn select(&mut self, s: &Select) -> Vec<HostId> {
        let n = self.sc.nodes;
        let mut v: Vec<HostId> = if let Some(c) = s.count {
            let mut all: Vec<HostId> = (1..=n).collect();
            self.rng.shuffle(&mut all);
            all.truncate(c as usize);
            all
        } else if !s.ids.is_empty() {
            s.ids.clone()
        } else {
            let racks = self.sc.racks();
            (1..=n)
                .filter(|h| s.racks.contains(&((h - 1) % racks)))
                .collect()
        };
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Link class of two hosts: 0 same host, 1 rack, 2 zone, 3 region, 4 cross-region.
    pub(crate) fn class(&self, a: HostId, b: HostId) -> usize {
        let (p, q) = (self.hosts[a as usize].place, self.hosts[b as usize].place);
        if a == b {
            0
        } else if p.rack == q.rack {
            1
        } else if p.zone == q.zone {
            2
        } else if p.region == q.region {
            3
        } else {
            4
        }
    }

    /// One-way latency between two hosts, ns.
    pub(crate) fn latency(&self, a: HostId, b: HostId) -> u64 {
        let l = &self.sc.topology.latency_ms;
        ms(match self.class(a, b) {
            0 => 0.0,
            1 => l.rack,
            2 => l.zone,
            3 => l.region,
            _ => l.cross_region,
        })
    }

    /// What the FIFOs of `a`'s upload and `b`'s download add now, ns: the
    /// scenario's `link.queue_ms` for each that is saturated.
    pub(crate) fn queue_delay(&self, a: HostId, b: HostId) -> u64 {
        let q = self.sc.link.queue_ms;
        if q <= 0.0 || a == b {
            return 0;
        }
        let full = u64::from(self.net.saturated(a as usize, true))
            + u64::from(self.net.saturated(b as usize, false));
        full * ms(q)
    }

    /// Latency and queueing from `a` to `b` now, ns.
    pub(crate) fn path_delay(&self, a: HostId, b: HostId) -> u64 {
        self.latency(a, b) + self.queue_delay(a, b)
    }

    /// Path delay plus, with loss, one retransmission timeout now and then.
    pub(crate) fn msg_delay(&mut self, a: HostId, b: HostId) -> u64 {
        let mut d = self.path_delay(a, b);
        if self.loss > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < self.loss {
            d += ms(200.0);
        }
        d
    }

    /// The Mathis TCP ceiling of a path under the current loss, bytes/s.
    pub(crate) fn path_cap(&self, a: HostId, b: HostId) -> f64 {
        if self.loss <= 0.0 {
            return f64::INFINITY;
        }
        let rtt = (2 * self.latency(a, b)).max(ms(0.05)) as f64 / 1e9;
        1.22 * 1448.0 / (rtt * self.loss.sqrt())
    }

    pub(crate) fn nbr_pos(&self, a: HostId, b: HostId) -> Option<usize> {
        self.hosts[a as usize].nbrs.iter().position(|x| *x == b)
    }

    /// Whether `a` and `b` are both up and connected (a partition may still
    /// hold their messages up: see `stalled`).
    pub(crate) fn linked(&self, a: HostId, b: HostId) -> bool {
        let (ha, hb) = (&self.hosts[a as usize], &self.hosts[b as usize]);
        ha.alive && hb.alive && self.nbr_pos(a, b).is_some_and(|i| ha.up[i])
    }

    /// Connected and on the same side of every partition.
    pub(crate) fn reachable(&self, a: HostId, b: HostId) -> bool {
        self.linked(a, b) && self.hosts[a as usize].group == self.hosts[b as usize].group
    }

    pub(crate) fn inc(&self, a: HostId, b: HostId) -> (u32, u32) {
        (
            self.hosts[a as usize].incarnation,
            self.hosts[b as usize].incarnation,
        )
    }

    pub(crate) fn inc_ok(&self, a: HostId, b: HostId, inc: (u32, u32)) -> bool {
        self.inc(a, b) == inc && self.hosts[a as usize].alive && self.hosts[b as usize].alive
    }

    pub(crate) fn mix(&mut self, words: [u64; 3]) {
        for w in words {
            self.trace = (self.trace ^ w).wrapping_mul(0x100_0000_01b3);
        }
    }

    /// Hands an input to a node's fetch (if it has one for `version`).
    pub(crate) fn feed(&mut self, host: HostId, version: Option<usize>, input: Input<HostId>) {
        let now = self.now();
        let h = &mut self.hosts[host as usize];
        let Some(nf) = h.fetch.as_mut() else { return };
        if version.is_some_and(|v| v != nf.version) {
            return;
        }
        nf.fetch.handle(now, input);
        self.mark(host);
    }

    pub(crate) fn mark(&mut self, host: HostId) {
        if !std::mem::replace(&mut self.is_dirty[host as usize], true) {
            self.dirty.push(host);
        }
    }

    /// The index of a global chunk in the host's current fetch.
    pub(crate) fn fetch_idx(&self, host: HostId, gid: u32) -> Option<(usize, ChunkIdx)> {
        let nf = self.hosts[host as usize].fetch.as_ref()?;
        let idx = *self.versions[nf.version].index.get(&gid)?;
        Some((nf.version, idx))
    }

    /// Starts (or restarts) a node's fetch of `version`.
    pub(crate) fn start_fetch(&mut self, host: HostId, version: usize) {
        let vd = Arc::clone(&self.versions[version]);
        let lens = vd.chunks.iter().map(|g| self.lens[*g as usize]).collect();
        let seed = self.seed ^ (u64::from(host) << 32) ^ version as u64;
        let mut fetch = Fetch::new(self.fetch_config.clone(), lens, seed);
        let now = self.now();
        let h = &self.hosts[host as usize];
        let have: Vec<ChunkIdx> = vd
            .chunks
            .iter()
            .enumerate()
            .filter(|(_, g)| h.store[**g as usize] != 0)
            .map(|(i, _)| ChunkIdx(i as u32))
            .collect();
        let racks = self.sc.racks();
        let rack_members: Vec<HostId> = (1..=self.sc.nodes)
            .filter(|m| (m - 1) % racks == (host - 1) % racks)
            .collect();
        let rank = rack_members.iter().position(|m| *m == host).unwrap_or(0) as u32;
        fetch.handle(
            now,
            Input::LocalGroup {
                rank,
                size: rack_members.len() as u32,
            },
        );
        fetch.handle(
            now,
            Input::AlreadyHave {
                chunks: have.clone(),
            },
        );
        let log = &mut self.hosts[host as usize].log[version];
        log.clear();
        log.extend(have.iter().map(|c| c.0));
        self.hosts[host as usize].cursor = 0;
        self.hosts[host as usize].fetch = Some(NodeFetch { version, fetch });
        let nbrs = self.hosts[host as usize].nbrs.clone();
        for p in nbrs {
            if self.linked(host, p) {
                self.peer_up_in_fetch(host, p);
            }
        }
        self.mark(host);
        self.schedule_tick(host);
    }

    /// Tells `host`'s fetch that `peer` is connected, how far, and what it holds.
    pub(crate) fn peer_up_in_fetch(&mut self, host: HostId, peer: HostId) {
        let Some(version) = self.hosts[host as usize].fetch.as_ref().map(|f| f.version) else {
            return;
        };
        let distance = if peer == ORIGIN {
            4
        } else {
            self.class(host, peer).min(4) as u8
        };
        self.feed(
            host,
            None,
            Input::PeerConnected {
                peer,
                origin: peer == ORIGIN,
            },
        );
        if peer == ORIGIN {
            return;
        }
        self.feed(host, None, Input::PeerTopology { peer, distance });
        let p = &self.hosts[peer as usize];
        let input = if p.done_at[version].is_some() || p.current == Some(version) {
            Input::PeerHasAll { peer }
        } else {
            Input::PeerHas {
                peer,
                chunks: p.log[version].iter().map(|c| ChunkIdx(*c)).collect(),
            }
        };
        self.feed(host, None, input);
    }

    /// Drains the actions of every node touched since the last drain.
    fn drain(&mut self) {
        while let Some(host) = self.dirty.pop() {
            self.is_dirty[host as usize] = false;
            let now = self.now();
            while let Some(nf) = self.hosts[host as usize].fetch.as_mut() {
                let Some(a) = nf.fetch.poll_action(now) else {
                    break;
                };
                let version = nf.version;
                self.on_action(host, version, a);
            }
            self.refresh_timer(host);
            self.check_fetch(host);
        }
    }

    /// The core's own invariants (swarm/STATE.md), on every touched node in
    /// swarms of up to 16 nodes and on every 16th touch in larger ones
    /// (they cost O(chunks + peers) each).
    fn check_fetch(&mut self, host: HostId) {
        self.drains += 1;
        if self.sc.nodes > 16 && !self.drains.is_multiple_of(16) {
            return;
        }
        if let Some(nf) = self.hosts[host as usize].fetch.as_ref() {
            nf.fetch.check_invariants();
            self.counters.safety_checks += 1;
        }
    }

    /// The end-of-run sweep: every stored chunk of every host matches the
    /// manifest, and every `current` version is whole.
    pub fn final_checks(&mut self) {
        for (i, h) in self.hosts.iter().enumerate() {
            self.counters.safety_checks += 1;
            if let Some(g) = h
                .store
                .iter()
                .enumerate()
                .position(|(g, t)| *t != 0 && *t != self.tokens[g])
            {
                self.violations.push(format!(
                    "end: host {i} holds chunk {g} with the wrong bytes"
                ));
            }
            if let Some(v) = h.current
                && self.versions[v]
                    .chunks
                    .iter()
                    .any(|g| h.store[*g as usize] != self.tokens[*g as usize])
            {
                self.violations.push(format!(
                    "end: host {i} has version {v} current without all of its chunks"
                ));
            }
        }
    }

    /// Turns chunk verification off, to prove the safety checks catch it.
    #[cfg(test)]
    pub(crate) fn break_verification(&mut self) {
        self.verify = false;
    }

    fn refresh_timer(&mut self, host: HostId) {
        let epoch = self.epoch;
        let t = self.t;
        let h = &mut self.hosts[host as usize];
        let next = h
            .fetch
            .as_ref()
            .and_then(|f| f.fetch.poll_timeout())
            .map(|i| (i.saturating_duration_since(epoch).as_nanos() as u64).max(t));
        if next != h.timer.map(|x| x.0) {
            h.timer_gen += 1;
            h.timer = next.map(|at| (at, h.timer_gen));
            if let Some((at, generation)) = h.timer {
                self.push(at, Ev::Timer { host, generation });
            }
        }
    }

    fn on_action(&mut self, host: HostId, version: usize, a: Action<HostId>) {
        let (kind, peer, chunk) = match &a {
            Action::Request { peer, chunk } => (1, *peer, chunk.0),
            Action::Cancel { peer, chunk } => (2, *peer, chunk.0),
            Action::Penalise { peer, .. } => (3, *peer, 0),
            Action::Ban { peer } => (4, *peer, 0),
            Action::Complete => (5, 0, 0),
        };
        self.mix([
            self.t,
            u64::from(host) << 8 | kind,
            u64::from(peer) << 32 | u64::from(chunk),
        ]);
        let gid = |c: ChunkIdx| self.versions[version].chunks[c.0 as usize];
        match a {
            Action::Request { peer, chunk } => {
                let gid = gid(chunk);
                if self.linked(host, peer) {
                    let at = self.t + self.msg_delay(host, peer);
                    let inc = self.inc(host, peer);
                    self.push(
                        at,
                        Ev::Request {
                            client: host,
                            server: peer,
                            gid,
                            inc,
                        },
                    );
                }
            }
            Action::Cancel { peer, chunk } => {
                let gid = gid(chunk);
                let at = self.t + self.path_delay(host, peer);
                self.push(
                    at,
                    Ev::Cancel {
                        client: host,
                        server: peer,
                        gid,
                    },
                );
            }
            Action::Penalise { .. } => self.counters.penalised += 1,
            Action::Ban { .. } => self.counters.banned += 1,
            Action::Complete => self.materialize(host, version),
        }
    }

    /// All chunks held: check them (the SHA-256 pass) and switch `current`.
    fn materialize(&mut self, host: HostId, version: usize) {
        let vd = Arc::clone(&self.versions[version]);
        let h = &self.hosts[host as usize];
        let whole = vd
            .chunks
            .iter()
            .all(|g| h.store[*g as usize] == self.tokens[*g as usize]);
        self.counters.safety_checks += 1;
        if !whole {
            self.violations.push(format!(
                "t={:.3}s node {host}: fetch of version {version} completed without every chunk verified",
                self.t as f64 / 1e9
            ));
            return;
        }
        let t = self.t;
        let h = &mut self.hosts[host as usize];
        h.current = Some(version);
        h.done_at[version] = Some(t);
        self.schedule_tick(host);
    }

    pub(crate) fn schedule_tick(&mut self, host: HostId) {
        let mut interval = ms(self.sc.swarm.announce_interval_ms).max(1);
        let h = &mut self.hosts[host as usize];
        if self.sc.swarm.announce_follows_rate
            && let Some(f) = &h.fetch
        {
            let d = f
                .fetch
                .announce_interval(Duration::from_millis(1), Duration::from_nanos(interval));
            interval = (d.as_nanos() as u64).max(1);
        }
        if h.tick_pending || !h.alive {
            return;
        }
        h.tick_pending = true;
        // The host's phase was drawn below the configured interval; a
        // shorter one (announce_follows_rate) keeps its offset in it.
        let phase = h.phase % interval;
        let k = (self.t.saturating_sub(phase)) / interval + 1;
        let at = phase + k * interval;
        self.push(at, Ev::Tick(host));
    }

    /// Runs until every live node holds the latest version, or the time limit.
    pub fn run(&mut self) {
        let limit = secs(self.sc.checks.max_sim_s);
        loop {
            self.drain();
            self.net.settle(self.t);
            if self.published == self.versions.len()
                && self.pending_restarts == 0
                && self.all_current()
            {
                return;
            }
            let ev_t = self.queue.peek().map(|e| e.0.t);
            let flow = self.net.next_finish();
            let next = match (ev_t, flow) {
                (Some(a), Some((b, _))) => a.min(b),
                (Some(a), None) => a,
                (None, Some((b, _))) => b,
                (None, None) => return,
            };
            if next > limit {
                return;
            }
            self.t = next.max(self.t);
            if let Some((b, id)) = flow
                && b <= self.t
            {
                self.finish_flow(id);
                continue;
            }
            let Reverse(e) = self.queue.pop().expect("peeked");
            self.counters.events += 1;
            self.apply(e.ev);
        }
    }

    /// Whether every live node has materialized the latest published version.
    pub fn all_current(&self) -> bool {
        let latest = self.published.checked_sub(1);
        self.hosts[1..]
            .iter()
            .all(|h| !h.alive || h.current == latest)
    }
}

#[cfg(test)]
mod tests;
