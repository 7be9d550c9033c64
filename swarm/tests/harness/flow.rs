//! Flow-level multi-node harness: N nodes each running a real [`Fetch`] for
//! the same version, plus one origin holding everything, in virtual time.
//!
//! Each host has an upload and a download capacity (bytes/s) and serves at
//! most `upload_slots` requests at once; further requests are answered
//! `Busy` after the link latency (or, with `busy` off, wait in a FIFO queue). Transfers
//! are fluid flows sharing each host's upload and download max-min fairly
//! (progressive filling), recomputed whenever the set of flows changes.
//! Virtual time jumps to the next event: a flow completing, a message
//! arriving after its link latency, or a fetch deadline. A node announces
//! each verified chunk to every peer (`PeerHas`) after the link latency and
//! serves it from the moment it verified it. Everything is a pure function of
//! the seed; `trace` hashes every action of every node.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use swarm::rng::SplitMix64;
use swarm::{Action, ChunkIdx, Fetch, FetchConfig, Input};

/// Host id: 0 is the origin, 1..=nodes are the nodes.
pub type Host = u32;
/// The origin's host id.
pub const ORIGIN: Host = 0;

/// The knobs of one flow simulation.
#[derive(Clone, Debug)]
pub struct FlowConfig {
    /// Nodes fetching the version (besides the origin).
    pub nodes: u32,
    /// Racks the nodes are spread over (node `i` is in rack `(i - 1) % racks`);
    /// the origin sits in a rack of its own.
    pub racks: u32,
    /// Chunks in the version.
    pub chunks: u32,
    /// Bytes per chunk (lengths vary by up to ±25 % with `vary_lens`).
    pub chunk_len: u32,
    /// Vary chunk lengths from the seed.
    pub vary_lens: bool,
    /// Upload and download capacity of every host, bytes/s.
    pub link_bps: f64,
    /// One-way latency within a rack.
    pub latency_rack: Duration,
    /// One-way latency between racks (and to the origin).
    pub latency_cross: Duration,
    /// Concurrent uploads per host; further requests are answered `Busy`
    /// (after the link latency) with `busy`, or wait in a FIFO queue without.
    pub upload_slots: usize,
    /// Answer requests beyond `upload_slots` with `Input::Busy` (as the
    /// daemon does with `max_uploads`) instead of queueing them.
    pub busy: bool,
    /// Tell each fetch its rack (`PeerTopology`, `LocalGroup`).
    pub topology: bool,
    /// The fetch configuration of every node.
    pub fetch: FetchConfig,
    /// Seeds chunk lengths and every fetch.
    pub seed: u64,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            nodes: 50,
            racks: 1,
            chunks: 128,
            chunk_len: 1 << 20,
            vary_lens: true,
            link_bps: 100e6,
            latency_rack: Duration::from_micros(100),
            latency_cross: Duration::from_millis(1),
            upload_slots: 4,
            busy: true,
            topology: true,
            fetch: FetchConfig::default(),
            seed: 1,
        }
    }
}

struct Flow {
    from: Host,
    to: Host,
    chunk: ChunkIdx,
    remaining: f64,
    rate: f64,
}

enum Ev {
    /// A request reaches its server.
    Request {
        client: Host,
        server: Host,
        chunk: ChunkIdx,
    },
    /// An input reaches a node's fetch.
    Deliver { to: Host, input: Input<Host> },
    /// `from` announces `chunk` to the nodes in (`same_rack`) or outside its rack.
    Announce {
        from: Host,
        chunk: ChunkIdx,
        same_rack: bool,
    },
    /// The host leaves; `silent`: peers are not told (they time out).
    Leave { host: Host, silent: bool },
}

/// The simulation.
pub struct FlowSim {
    /// The configuration.
    pub cfg: FlowConfig,
    /// Chunk lengths.
    pub lens: Vec<u32>,
    /// Index `h - 1`: node `h`'s fetch.
    pub fetches: Vec<Fetch<Host>>,
    start: Instant,
    /// Virtual nanoseconds since the start.
    pub t: u64,
    holds: Vec<Vec<bool>>,
    alive: Vec<bool>,
    flows: Vec<Flow>,
    queues: Vec<VecDeque<(Host, ChunkIdx)>>,
    events: BTreeMap<(u64, u64), Ev>,
    seq: u64,
    /// When each node completed (virtual ns), index `h - 1`.
    pub done_at: Vec<Option<u64>>,
    /// Bytes sent per (from, to).
    pub bytes: BTreeMap<(Host, Host), u64>,
    /// Bytes into each rack from outside it (the origin's rack is last).
    pub cross_into_rack: Vec<u64>,
    /// Hash of every action of every node, with its time.
    pub trace: u64,
    /// Requests answered `NotFound`.
    pub not_found: u64,
    /// Requests answered `Busy`.
    pub busy: u64,
    /// When every chunk was first held by some node (virtual ns).
    pub injected_at: Option<u64>,
    /// Virtual ns during which the origin uploaded nothing (before `injected_at`).
    pub origin_idle: u64,
    /// Chunks held by at least one node.
    copies: Vec<u32>,
}

impl FlowSim {
    /// Builds the swarm and connects every node to every other host.
    pub fn new(cfg: FlowConfig) -> Self {
        let mut rng = SplitMix64::new(cfg.seed);
        let lens: Vec<u32> = (0..cfg.chunks)
            .map(|_| {
                let jitter = if cfg.vary_lens {
                    rng.below(u64::from(cfg.chunk_len / 2)) as u32
                } else {
                    cfg.chunk_len / 4
                };
                cfg.chunk_len - cfg.chunk_len / 4 + jitter
            })
            .collect();
        let hosts = cfg.nodes as usize + 1;
        let mut holds = vec![vec![false; lens.len()]; hosts];
        holds[0] = vec![true; lens.len()];
        let fetches = (1..=cfg.nodes)
            .map(|h| {
                Fetch::new(
                    cfg.fetch.clone(),
                    lens.clone(),
                    cfg.seed ^ (u64::from(h) << 32),
                )
            })
            .collect();
        let mut sim = Self {
            lens,
            fetches,
            start: Instant::now(),
            t: 0,
            holds,
            alive: vec![true; hosts],
            flows: Vec::new(),
            queues: vec![VecDeque::new(); hosts],
            events: BTreeMap::new(),
            seq: 0,
            done_at: vec![None; cfg.nodes as usize],
            bytes: BTreeMap::new(),
            cross_into_rack: vec![0; cfg.racks as usize + 1],
            trace: 0xcbf2_9ce4_8422_2325,
            not_found: 0,
            busy: 0,
            injected_at: None,
            origin_idle: 0,
            copies: vec![0; cfg.chunks as usize],
            cfg,
        };
        sim.connect_all();
        sim
    }

    /// The rack of a host (the origin's is `racks`).
    pub fn rack(&self, h: Host) -> u32 {
        if h == ORIGIN {
            self.cfg.racks
        } else {
            (h - 1) % self.cfg.racks
        }
    }

    fn latency(&self, a: Host, b: Host) -> u64 {
        let d = if self.rack(a) == self.rack(b) {
            self.cfg.latency_rack
        } else {
            self.cfg.latency_cross
        };
        d.as_nanos() as u64
    }

    fn now(&self) -> Instant {
        self.start + Duration::from_nanos(self.t)
    }

    fn connect_all(&mut self) {
        let now = self.now();
        let n = self.cfg.nodes;
        for h in 1..=n {
            let rack = self.rack(h);
            let members: Vec<Host> = (1..=n).filter(|m| self.rack(*m) == rack).collect();
            let f = &mut self.fetches[h as usize - 1];
            if self.cfg.topology {
                let rank = members.iter().position(|m| *m == h).expect("member") as u32;
                f.handle(
                    now,
                    Input::LocalGroup {
                        rank,
                        size: members.len() as u32,
                    },
                );
            }
            f.handle(
                now,
                Input::PeerConnected {
                    peer: ORIGIN,
                    origin: true,
                },
            );
            for p in (1..=n).filter(|p| *p != h) {
                f.handle(
                    now,
                    Input::PeerConnected {
                        peer: p,
                        origin: false,
                    },
                );
                // Nodes announce every chunk they get: an empty announcement says so.
                f.handle(
                    now,
                    Input::PeerHas {
                        peer: p,
                        chunks: Vec::new(),
                    },
                );
                if self.cfg.topology {
                    let distance = if (p - 1) % self.cfg.racks == rack {
                        1
                    } else {
                        3
                    };
                    f.handle(now, Input::PeerTopology { peer: p, distance });
                }
            }
        }
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.events.insert((at, self.seq), ev);
    }

    /// Makes `host` leave at virtual time `at`.
    pub fn leave_at(&mut self, host: Host, at: Duration, silent: bool) {
        self.push(at.as_nanos() as u64, Ev::Leave { host, silent });
    }

    fn mix(&mut self, words: [u64; 4]) {
        for w in words {
            self.trace = (self.trace ^ w).wrapping_mul(0x100_0000_01b3);
        }
    }

    /// Drains every live node's actions.
    fn drain(&mut self) {
        let now = self.now();
        for h in 1..=self.cfg.nodes {
            if !self.alive[h as usize] {
                continue;
            }
            while let Some(a) = self.fetches[h as usize - 1].poll_action(now) {
                self.on_action(h, a);
            }
        }
    }

    fn on_action(&mut self, h: Host, a: Action<Host>) {
        let (kind, peer, chunk) = match &a {
            Action::Request { peer, chunk } => (1, *peer, chunk.0),
            Action::Cancel { peer, chunk } => (2, *peer, chunk.0),
            Action::Penalise { peer, .. } => (3, *peer, 0),
            Action::Ban { peer } => (4, *peer, 0),
            Action::Complete => (5, 0, 0),
        };
        self.mix([
            self.t,
            u64::from(h),
            kind,
            u64::from(peer) << 32 | u64::from(chunk),
        ]);
        match a {
            Action::Request { peer, chunk } => {
                let at = self.t + self.latency(h, peer);
                self.push(
                    at,
                    Ev::Request {
                        client: h,
                        server: peer,
                        chunk,
                    },
                );
            }
            Action::Cancel { peer, chunk } => {
                self.queues[peer as usize].retain(|q| *q != (h, chunk));
                let before = self.flows.len();
                self.flows
                    .retain(|f| !(f.from == peer && f.to == h && f.chunk == chunk));
                if self.flows.len() < before {
                    self.start_queued(peer);
                    self.reshare();
                }
            }
            Action::Complete => self.done_at[h as usize - 1] = Some(self.t),
            Action::Penalise { .. } | Action::Ban { .. } => {}
        }
    }

    fn active(&self, server: Host) -> usize {
        self.flows.iter().filter(|f| f.from == server).count()
    }

    fn start_queued(&mut self, server: Host) {
        while self.active(server) < self.cfg.upload_slots {
            let Some((client, chunk)) = self.queues[server as usize].pop_front() else {
                return;
            };
            let remaining = f64::from(self.lens[chunk.0 as usize]);
            self.flows.push(Flow {
                from: server,
                to: client,
                chunk,
                remaining,
                rate: 0.0,
            });
        }
    }

    /// Max-min fair rates by progressive filling over uploads and downloads.
    fn reshare(&mut self) {
        let hosts = self.alive.len();
        // Resource r < hosts: upload of host r; r >= hosts: download of host r - hosts.
        let mut cap = vec![self.cfg.link_bps; 2 * hosts];
        let mut users: Vec<Vec<usize>> = vec![Vec::new(); 2 * hosts];
        for (i, f) in self.flows.iter().enumerate() {
            users[f.from as usize].push(i);
            users[hosts + f.to as usize].push(i);
        }
        let mut frozen = vec![false; self.flows.len()];
        let mut left: Vec<usize> = users.iter().map(Vec::len).collect();
        loop {
            let best = (0..2 * hosts)
                .filter(|r| left[*r] > 0)
                .map(|r| (cap[r] / left[r] as f64, r))
                .min_by(|a, b| a.0.total_cmp(&b.0));
            let Some((share, r)) = best else { break };
            for &i in &users[r] {
                if frozen[i] {
                    continue;
                }
                frozen[i] = true;
                self.flows[i].rate = share;
                let f = &self.flows[i];
                for res in [f.from as usize, hosts + f.to as usize] {
                    cap[res] = (cap[res] - share).max(0.0);
                    left[res] -= 1;
                }
            }
        }
    }

    fn next_time(&self) -> Option<u64> {
        let ev = self.events.first_key_value().map(|((t, _), _)| *t);
        let flow = self
            .flows
            .iter()
            .filter(|f| f.rate > 0.0)
            .map(|f| self.t + (f.remaining / f.rate * 1e9).ceil() as u64)
            .min();
        let timer = (1..=self.cfg.nodes)
            .filter(|h| self.alive[*h as usize])
            .filter_map(|h| self.fetches[h as usize - 1].poll_timeout())
            .map(|i| (i.saturating_duration_since(self.start).as_nanos() as u64).max(self.t))
            .min();
        [ev, flow, timer].into_iter().flatten().min()
    }

    /// Advances flows to `t`, completing the finished ones.
    fn advance(&mut self, t: u64) {
        let dt = (t - self.t) as f64 / 1e9;
        if self.injected_at.is_none() && self.active(ORIGIN) == 0 {
            self.origin_idle += t - self.t;
        }
        self.t = t;
        let mut finished = Vec::new();
        self.flows.retain_mut(|f| {
            f.remaining -= f.rate * dt;
            let done = f.remaining < 1.0;
            if done {
                finished.push((f.from, f.to, f.chunk));
            }
            !done
        });
        for (from, to, chunk) in &finished {
            let len = u64::from(self.lens[chunk.0 as usize]);
            *self.bytes.entry((*from, *to)).or_default() += len;
            if self.rack(*from) != self.rack(*to) {
                let r = self.rack(*to) as usize;
                self.cross_into_rack[r] += len;
            }
            let at = self.t + self.latency(*from, *to);
            let input = Input::Verified {
                peer: *from,
                chunk: *chunk,
            };
            self.push(at, Ev::Deliver { to: *to, input });
        }
        for (from, _, _) in &finished {
            self.start_queued(*from);
        }
        if !finished.is_empty() {
            self.reshare();
        }
    }

    fn apply(&mut self, ev: Ev) {
        let now = self.now();
        match ev {
            Ev::Request {
                client,
                server,
                chunk,
            } => {
                if !self.alive[server as usize] || !self.alive[client as usize] {
                    return;
                }
                let held = self.holds[server as usize][chunk.0 as usize];
                if held && self.cfg.busy && self.active(server) >= self.cfg.upload_slots {
                    self.busy += 1;
                    let at = self.t + self.latency(client, server);
                    let input = Input::Busy {
                        peer: server,
                        chunk,
                    };
                    self.push(at, Ev::Deliver { to: client, input });
                } else if held {
                    self.queues[server as usize].push_back((client, chunk));
                    self.start_queued(server);
                    self.reshare();
                } else {
                    self.not_found += 1;
                    let at = self.t + self.latency(client, server);
                    let input = Input::NotFound {
                        peer: server,
                        chunk,
                    };
                    self.push(at, Ev::Deliver { to: client, input });
                }
            }
            Ev::Deliver { to, input } => {
                if !self.alive[to as usize] {
                    return;
                }
                if let Input::Verified { chunk, .. } = &input {
                    let chunk = *chunk;
                    if !std::mem::replace(&mut self.holds[to as usize][chunk.0 as usize], true) {
                        let i = chunk.0 as usize;
                        self.copies[i] += 1;
                        if self.copies[i] == 1 && self.copies.iter().all(|c| *c > 0) {
                            self.injected_at = Some(self.t);
                        }
                        let (near, far) = (self.cfg.latency_rack, self.cfg.latency_cross);
                        let t = self.t;
                        self.push(
                            t + near.as_nanos() as u64,
                            Ev::Announce {
                                from: to,
                                chunk,
                                same_rack: true,
                            },
                        );
                        self.push(
                            t + far.as_nanos() as u64,
                            Ev::Announce {
                                from: to,
                                chunk,
                                same_rack: false,
                            },
                        );
                    }
                }
                self.fetches[to as usize - 1].handle(now, input);
            }
            Ev::Announce {
                from,
                chunk,
                same_rack,
            } => {
                for h in 1..=self.cfg.nodes {
                    let ok = h != from && self.alive[h as usize] && self.alive[from as usize];
                    if ok && (self.rack(h) == self.rack(from)) == same_rack {
                        let input = Input::PeerHas {
                            peer: from,
                            chunks: vec![chunk],
                        };
                        self.fetches[h as usize - 1].handle(now, input);
                    }
                }
            }
            Ev::Leave { host, silent } => self.leave(host, silent),
        }
    }

    fn leave(&mut self, host: Host, silent: bool) {
        let now = self.now();
        self.alive[host as usize] = false;
        self.queues[host as usize].clear();
        let servers: Vec<Host> = self
            .flows
            .iter()
            .filter(|f| f.to == host)
            .map(|f| f.from)
            .collect();
        self.flows.retain(|f| f.from != host && f.to != host);
        for q in &mut self.queues {
            q.retain(|(c, _)| *c != host);
        }
        for s in servers {
            self.start_queued(s);
        }
        self.reshare();
        if !silent {
            for h in (1..=self.cfg.nodes).filter(|h| self.alive[*h as usize]) {
                self.fetches[h as usize - 1].handle(now, Input::PeerDisconnected { peer: host });
            }
        }
    }

    /// Runs until every live node completed (true) or `max_steps` / nothing left (false).
    pub fn run(&mut self, max_steps: usize) -> bool {
        for _ in 0..max_steps {
            self.drain();
            if self.all_done() {
                return true;
            }
            let Some(t) = self.next_time() else {
                return false;
            };
            self.advance(t.max(self.t));
            while let Some(entry) = self.events.first_entry() {
                if entry.key().0 > self.t {
                    break;
                }
                let ev = entry.remove();
                self.apply(ev);
            }
            let now = self.now();
            for h in (1..=self.cfg.nodes).filter(|h| self.alive[*h as usize]) {
                let f = &mut self.fetches[h as usize - 1];
                if f.poll_timeout().is_some_and(|d| d <= now) {
                    f.handle_timeout(now);
                }
            }
        }
        false
    }

    fn all_done(&self) -> bool {
        (1..=self.cfg.nodes)
            .all(|h| !self.alive[h as usize] || self.done_at[h as usize - 1].is_some())
    }

    /// Bytes of the version.
    pub fn version_bytes(&self) -> u64 {
        self.lens.iter().map(|l| u64::from(*l)).sum()
    }

    /// S / B in seconds.
    pub fn ideal_secs(&self) -> f64 {
        self.version_bytes() as f64 / self.cfg.link_bps
    }

    /// When the last live node completed, seconds.
    pub fn completion_secs(&self) -> f64 {
        let last = self.done_at.iter().flatten().max().copied().unwrap_or(0);
        last as f64 / 1e9
    }

    /// Bytes the origin sent.
    pub fn origin_egress(&self) -> u64 {
        self.bytes
            .iter()
            .filter(|((f, _), _)| *f == ORIGIN)
            .map(|(_, b)| *b)
            .sum()
    }

    /// Checks every fetch's invariants.
    pub fn check(&self) {
        for f in &self.fetches {
            f.check_invariants();
        }
    }
}
