//! In-memory harness: one [`Fetch`] against simulated peers, in virtual time.
//!
//! Each step drains the fetch's actions (checking the in-flight caps and the
//! invariants after every one), then jumps virtual time to the next event: a
//! simulated peer's answer, a peer gaining a chunk or disconnecting, or the
//! fetch's own `poll_timeout()`. Everything is seeded, so a run is a pure
//! function of its seed.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use swarm::rng::SplitMix64;
use swarm::{Action, ChunkIdx, Fetch, FetchConfig, Input};

/// A simulated peer's id.
pub type PeerId = u32;

/// How a simulated peer behaves.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Holds every chunk and answers every request.
    Full,
    /// The origin: holds every chunk, connects with `origin: true`.
    Origin,
    /// Starts empty and gains one chunk (in a seeded order) every `every`;
    /// announces each gain with `PeerHas` when `announce` is set. Answers
    /// `NotFound` for chunks it does not hold yet.
    Growing {
        /// Time between two gains.
        every: Duration,
        /// Send `PeerHas` on each gain.
        announce: bool,
    },
    /// Holds every chunk but every chunk it sends fails verification.
    Corrupt,
    /// Announces everything and never answers.
    Silent,
    /// Holds every chunk and disconnects `after` the start; answers in flight are lost.
    DisconnectsAfter(Duration),
}

struct SimPeer {
    behaviour: Behaviour,
    latency: Duration,
    holds: BTreeSet<ChunkIdx>,
    connected: bool,
}

enum Event {
    Deliver(Input<PeerId>),
    Gain { peer: PeerId, chunk: ChunkIdx },
    Disconnect(PeerId),
}

/// The simulation.
pub struct Sim {
    /// The fetch under test.
    pub fetch: Fetch<PeerId>,
    /// Virtual now.
    pub now: Instant,
    /// Virtual start.
    pub start: Instant,
    peers: BTreeMap<PeerId, SimPeer>,
    events: BTreeMap<(Instant, u64), Event>,
    seq: u64,
    rng: SplitMix64,
    /// Every action the fetch emitted, with its virtual time.
    pub log: Vec<(Duration, Action<PeerId>)>,
    /// Highest in-flight count seen per peer.
    pub max_per_peer: BTreeMap<PeerId, usize>,
    /// Highest total in-flight count seen.
    pub max_total: usize,
    /// In-flight count of each peer at the moment it disconnected.
    pub in_flight_at_disconnect: BTreeMap<PeerId, usize>,
}

impl Sim {
    /// A fetch of `n_chunks` chunks of 1 KiB each.
    pub fn new(config: FetchConfig, n_chunks: u32, seed: u64) -> Self {
        let start = Instant::now();
        Self {
            fetch: Fetch::new(config, vec![1024; n_chunks as usize], seed),
            now: start,
            start,
            peers: BTreeMap::new(),
            events: BTreeMap::new(),
            seq: 0,
            rng: SplitMix64::new(seed ^ 0x5157_0000),
            log: Vec::new(),
            max_per_peer: BTreeMap::new(),
            max_total: 0,
            in_flight_at_disconnect: BTreeMap::new(),
        }
    }

    fn schedule(&mut self, at: Instant, ev: Event) {
        self.seq += 1;
        self.events.insert((at, self.seq), ev);
    }

    /// Adds a peer that connects now, with a base answer latency.
    pub fn add_peer(&mut self, id: PeerId, behaviour: Behaviour, latency: Duration) {
        let n = self.fetch.progress().chunks_total;
        let all: BTreeSet<ChunkIdx> = (0..n).map(ChunkIdx).collect();
        let holds = match &behaviour {
            Behaviour::Growing { every, .. } => {
                let mut order: Vec<ChunkIdx> = all.into_iter().collect();
                self.rng.shuffle(&mut order);
                for (k, chunk) in order.into_iter().enumerate() {
                    let at = self.now + *every * (k as u32 + 1);
                    self.schedule(at, Event::Gain { peer: id, chunk });
                }
                BTreeSet::new()
            }
            Behaviour::DisconnectsAfter(after) => {
                self.schedule(self.now + *after, Event::Disconnect(id));
                all
            }
            _ => all,
        };
        let origin = matches!(behaviour, Behaviour::Origin);
        let announces_all = !matches!(behaviour, Behaviour::Growing { .. });
        self.peers.insert(
            id,
            SimPeer {
                behaviour,
                latency,
                holds,
                connected: true,
            },
        );
        let now = self.now;
        self.fetch
            .handle(now, Input::PeerConnected { peer: id, origin });
        if announces_all && !origin {
            self.fetch.handle(now, Input::PeerHasAll { peer: id });
        }
    }

    /// Feeds an input directly to the fetch.
    pub fn input(&mut self, input: Input<PeerId>) {
        let now = self.now;
        self.fetch.handle(now, input);
    }

    fn check_caps(&mut self) {
        let cfg = self.fetch.config().clone();
        let total = self.fetch.progress().in_flight;
        assert!(
            total <= cfg.max_in_flight_total,
            "total cap broken: {total}"
        );
        self.max_total = self.max_total.max(total);
        for &id in self.peers.keys() {
            let n = self.fetch.in_flight_to(&id);
            assert!(n <= cfg.max_in_flight_per_peer, "peer {id} cap broken: {n}");
            let m = self.max_per_peer.entry(id).or_default();
            *m = (*m).max(n);
        }
        self.fetch.check_invariants();
    }

    fn drain(&mut self) {
        let now = self.now;
        while let Some(action) = self.fetch.poll_action(now) {
            self.check_caps();
            if let Action::Request { peer, chunk } = &action {
                self.answer(*peer, *chunk);
            }
            self.log.push((now - self.start, action));
        }
        self.check_caps();
    }

    fn answer(&mut self, id: PeerId, chunk: ChunkIdx) {
        let jitter = Duration::from_micros(self.rng.below(1000));
        let p = &self.peers[&id];
        assert!(p.connected, "request to disconnected peer {id}");
        let input = match p.behaviour {
            Behaviour::Silent => return,
            Behaviour::Corrupt => Input::Rejected { peer: id, chunk },
            _ if p.holds.contains(&chunk) => Input::Verified { peer: id, chunk },
            _ => Input::NotFound { peer: id, chunk },
        };
        let at = self.now + p.latency + jitter;
        self.schedule(at, Event::Deliver(input));
    }

    fn apply(&mut self, ev: Event) {
        let now = self.now;
        match ev {
            Event::Deliver(input) => {
                let from = match &input {
                    Input::Verified { peer, .. }
                    | Input::Rejected { peer, .. }
                    | Input::NotFound { peer, .. } => *peer,
                    _ => unreachable!(),
                };
                if self.peers[&from].connected {
                    self.fetch.handle(now, input);
                }
            }
            Event::Gain { peer, chunk } => {
                let p = self.peers.get_mut(&peer).expect("peer");
                p.holds.insert(chunk);
                let announce = matches!(p.behaviour, Behaviour::Growing { announce: true, .. });
                if announce && p.connected {
                    self.fetch.handle(
                        now,
                        Input::PeerHas {
                            peer,
                            chunks: vec![chunk],
                        },
                    );
                }
            }
            Event::Disconnect(peer) => {
                self.in_flight_at_disconnect
                    .insert(peer, self.fetch.in_flight_to(&peer));
                self.peers.get_mut(&peer).expect("peer").connected = false;
                self.fetch.handle(now, Input::PeerDisconnected { peer });
            }
        }
    }

    /// One step: drain actions, jump to the next event or timer, apply it.
    /// Returns false when nothing is left to happen.
    pub fn step(&mut self) -> bool {
        self.drain();
        let next_event = self.events.first_key_value().map(|((t, _), _)| *t);
        let timer = self.fetch.poll_timeout();
        let next = match (next_event, timer) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => return false,
            },
        };
        self.now = self.now.max(next);
        while let Some(entry) = self.events.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let ev = entry.remove();
            self.apply(ev);
        }
        if self.fetch.poll_timeout().is_some_and(|t| t <= self.now) {
            let now = self.now;
            self.fetch.handle_timeout(now);
        }
        self.drain();
        true
    }

    /// Steps until the fetch completes (true) or `max_steps` pass / nothing is left (false).
    pub fn run(&mut self, max_steps: usize) -> bool {
        for _ in 0..max_steps {
            if self.fetch.is_complete() {
                self.drain();
                return true;
            }
            if !self.step() {
                return self.fetch.is_complete();
            }
        }
        self.fetch.is_complete()
    }

    /// Requests sent to `peer`.
    pub fn requests_to(&self, peer: PeerId) -> usize {
        self.log
            .iter()
            .filter(|(_, a)| matches!(a, Action::Request { peer: p, .. } if *p == peer))
            .count()
    }

    /// Positions in the log of actions matching `f`.
    pub fn positions(&self, f: impl Fn(&Action<PeerId>) -> bool) -> Vec<usize> {
        self.log
            .iter()
            .enumerate()
            .filter(|(_, (_, a))| f(a))
            .map(|(i, _)| i)
            .collect()
    }
}
