//! The fetch scheduler: downloads one version's chunks from many peers.
//!
//! See `swarm/STATE.md` for the state of each chunk and the invariants that
//! [`Fetch::check_invariants`] asserts.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::ChunkIdx;
use crate::peer::PeerState;
use crate::policy::{Candidate, SelectionPolicy, TieredRandom};
use crate::rng::SplitMix64;

/// Tunables of one [`Fetch`].
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// Requests outstanding to one peer at most (default 8). Values below 1 are treated as 1.
    pub max_in_flight_per_peer: usize,
    /// Requests outstanding in total at most (default 64). Values below 1 are treated as 1.
    pub max_in_flight_total: usize,
    /// How long a request may stay unanswered (default 10 s); a timed-out
    /// request is retried elsewhere.
    pub request_timeout: Duration,
    /// After a peer says it lacks a chunk (or fails, times out or sends it
    /// corrupt), do not ask it again for that chunk for this long (default 1 s;
    /// peers gain chunks over time).
    pub lack_ttl: Duration,
    /// Corrupt chunks from one peer before it is banned for this fetch (default 3).
    pub max_strikes: u32,
    /// Prefer non-origin peers that may hold a chunk; the origin is used when
    /// no other candidate is free (default true).
    pub origin_last: bool,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            max_in_flight_per_peer: 8,
            max_in_flight_total: 64,
            request_timeout: Duration::from_secs(10),
            lack_ttl: Duration::from_secs(1),
            max_strikes: 3,
            origin_last: true,
        }
    }
}

/// An event the driver reports to a [`Fetch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input<P> {
    /// A connection to `peer` is up; `origin` marks the publisher of the version,
    /// which is assumed to hold every chunk.
    PeerConnected {
        /// The peer.
        peer: P,
        /// Whether the peer is the origin (publisher).
        origin: bool,
    },
    /// The connection is gone; its in-flight requests are reissued elsewhere.
    PeerDisconnected {
        /// The peer.
        peer: P,
    },
    /// The peer announced it holds the whole version.
    PeerHasAll {
        /// The peer.
        peer: P,
    },
    /// The peer announced it holds these chunks (incremental: adds to what it announced before).
    PeerHas {
        /// The peer.
        peer: P,
        /// The chunks it holds; out-of-range indices are ignored.
        chunks: Vec<ChunkIdx>,
    },
    /// Chunks already present locally (resume/delta): never requested.
    AlreadyHave {
        /// The chunks; out-of-range indices are ignored.
        chunks: Vec<ChunkIdx>,
    },
    /// The chunk arrived from `peer` and matched its hash: it is done.
    Verified {
        /// The peer that sent it.
        peer: P,
        /// The chunk.
        chunk: ChunkIdx,
    },
    /// The chunk arrived but failed verification: strike the peer, refetch elsewhere.
    Rejected {
        /// The peer that sent it.
        peer: P,
        /// The chunk.
        chunk: ChunkIdx,
    },
    /// The peer does not hold the chunk (yet).
    NotFound {
        /// The peer that answered.
        peer: P,
        /// The chunk.
        chunk: ChunkIdx,
    },
    /// The request failed in transport.
    Failed {
        /// The peer that was asked.
        peer: P,
        /// The chunk.
        chunk: ChunkIdx,
    },
}

/// What the driver should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<P> {
    /// Ask `peer` for `chunk`.
    Request {
        /// The peer to ask.
        peer: P,
        /// The chunk to ask for.
        chunk: ChunkIdx,
    },
    /// The request is no longer needed (the chunk arrived from elsewhere, the
    /// request timed out, or the peer was banned): the driver may cancel it.
    Cancel {
        /// The peer that was asked.
        peer: P,
        /// The chunk that was asked for.
        chunk: ChunkIdx,
    },
    /// The peer sent corrupt data or misbehaved.
    Penalise {
        /// The peer.
        peer: P,
        /// A static reason for logs and metrics.
        reason: &'static str,
    },
    /// The peer reached `max_strikes`: it is no longer used for this fetch
    /// (the driver may disconnect it).
    Ban {
        /// The peer.
        peer: P,
    },
    /// Every chunk is verified or was already present. Emitted exactly once.
    Complete,
}

/// A snapshot of a fetch's progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Chunks verified or already present.
    pub chunks_done: u32,
    /// Chunks in the version.
    pub chunks_total: u32,
    /// Bytes of the done chunks.
    pub bytes_done: u64,
    /// Bytes of all chunks.
    pub bytes_total: u64,
    /// Requests outstanding.
    pub in_flight: usize,
}

/// The state of one chunk: exactly one of these at any time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkState<P> {
    /// Not present and not requested.
    Needed,
    /// Requested from `peer`; the request expires at `deadline`.
    InFlight {
        /// The peer that was asked.
        peer: P,
        /// When the request times out.
        deadline: Instant,
    },
    /// Verified or already present.
    Done,
}

/// [`Action::Penalise`] reason for a chunk that failed verification.
pub const REASON_CORRUPT: &str = "corrupt chunk";

/// Sans-IO scheduler for the download of one version by one node.
///
/// Feed it [`Input`]s with [`handle`](Self::handle), call
/// [`handle_timeout`](Self::handle_timeout) at [`poll_timeout`](Self::poll_timeout),
/// and after each of those drain [`poll_action`](Self::poll_action) until `None`.
pub struct Fetch<P> {
    config: FetchConfig,
    lens: Vec<u32>,
    states: Vec<ChunkState<P>>,
    /// Chunk -> its rank in the seeded request order.
    rank_of: Vec<u32>,
    /// Rank -> chunk (inverse of `rank_of`).
    by_rank: Vec<ChunkIdx>,
    /// Ranks of the `Needed` chunks.
    needed: BTreeSet<u32>,
    /// `(deadline, chunk)` of every `InFlight` chunk.
    deadlines: BTreeSet<(Instant, ChunkIdx)>,
    peers: BTreeMap<P, PeerState>,
    in_flight: usize,
    chunks_done: u32,
    bytes_done: u64,
    bytes_total: u64,
    /// Actions decided by `handle*` and not yet polled (cancels, penalties,
    /// bans, completion); bounded by the in-flight total plus a few per input.
    actions: VecDeque<Action<P>>,
    complete_emitted: bool,
    /// Something changed since the last scan that found nothing to request.
    rescan: bool,
    rng: SplitMix64,
    policy: Box<dyn SelectionPolicy>,
}

impl<P: Clone + Eq + Hash + Ord + fmt::Debug> fmt::Debug for Fetch<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetch")
            .field("progress", &self.progress())
            .field("peers", &self.peers.len())
            .field("complete_emitted", &self.complete_emitted)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<P> Fetch<P>
where
    P: Clone + Eq + Hash + Ord + fmt::Debug,
{
    /// A fetch of the chunks whose byte lengths are `chunk_lens` (`chunk_lens[i]`
    /// is the length of `ChunkIdx(i)`), with the default [`TieredRandom`] policy.
    /// `seed` drives the request order and random tie-breaks.
    ///
    /// # Panics
    /// If there are more than `u32::MAX` chunks.
    pub fn new(config: FetchConfig, chunk_lens: Vec<u32>, seed: u64) -> Self {
        Self::with_policy(config, chunk_lens, seed, Box::new(TieredRandom))
    }

    /// Like [`new`](Self::new), with a custom peer-selection policy.
    ///
    /// # Panics
    /// If there are more than `u32::MAX` chunks.
    pub fn with_policy(
        mut config: FetchConfig,
        chunk_lens: Vec<u32>,
        seed: u64,
        policy: Box<dyn SelectionPolicy>,
    ) -> Self {
        let n = u32::try_from(chunk_lens.len()).expect("at most u32::MAX chunks");
        config.max_in_flight_per_peer = config.max_in_flight_per_peer.max(1);
        config.max_in_flight_total = config.max_in_flight_total.max(1);
        let mut rng = SplitMix64::new(seed);
        let mut by_rank: Vec<ChunkIdx> = (0..n).map(ChunkIdx).collect();
        rng.shuffle(&mut by_rank);
        let mut rank_of = vec![0; by_rank.len()];
        for (rank, c) in by_rank.iter().enumerate() {
            rank_of[c.0 as usize] = rank as u32;
        }
        let mut fetch = Self {
            config,
            bytes_total: chunk_lens.iter().map(|l| u64::from(*l)).sum(),
            states: vec![ChunkState::Needed; chunk_lens.len()],
            lens: chunk_lens,
            rank_of,
            by_rank,
            needed: (0..n).collect(),
            deadlines: BTreeSet::new(),
            peers: BTreeMap::new(),
            in_flight: 0,
            chunks_done: 0,
            bytes_done: 0,
            actions: VecDeque::new(),
            complete_emitted: false,
            rescan: true,
            rng,
            policy,
        };
        fetch.maybe_complete();
        fetch
    }

    /// Applies one event from the driver.
    pub fn handle(&mut self, now: Instant, input: Input<P>) {
        self.rescan = true;
        match input {
            Input::PeerConnected { peer, origin } => {
                let st = self.peers.entry(peer).or_default();
                st.connected = true;
                st.origin = origin;
            }
            Input::PeerDisconnected { peer } => self.on_disconnect(&peer),
            Input::PeerHasAll { peer } => self.peers.entry(peer).or_default().has_all = true,
            Input::PeerHas { peer, chunks } => {
                let n = self.states.len();
                let st = self.peers.entry(peer).or_default();
                for c in chunks.into_iter().filter(|c| (c.0 as usize) < n) {
                    st.has.insert(c);
                    st.lacks.remove(&c);
                }
            }
            Input::AlreadyHave { chunks } => {
                for c in chunks {
                    self.mark_done(c, None);
                }
            }
            Input::Verified { peer, chunk } => self.on_verified(peer, chunk),
            Input::Rejected { peer, chunk } => self.on_rejected(now, peer, chunk),
            Input::NotFound { peer, chunk } => self.on_not_found(now, peer, chunk),
            Input::Failed { peer, chunk } => self.on_failed(now, peer, chunk),
        }
    }

    /// Expires requests whose deadline passed (they become retryable elsewhere;
    /// the peer gets a timeout mark: a lack mark for that chunk, and it becomes
    /// suspect, limited to one request, until it answers again) and drops
    /// expired lack marks.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.rescan = true;
        while let Some(&(deadline, chunk)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            let Some(peer) = self.release(chunk) else {
                unreachable!("deadline for a chunk not in flight");
            };
            let until = now + self.config.lack_ttl;
            if let Some(st) = self.peers.get_mut(&peer) {
                st.timeouts += 1;
                st.suspect = true;
                st.mark_lack(chunk, until);
            }
            self.actions.push_back(Action::Cancel { peer, chunk });
        }
        for st in self.peers.values_mut() {
            st.lacks.retain(|_, until| *until > now);
        }
    }

    /// The next action for the driver; call until `None` after every
    /// [`handle`](Self::handle) and [`handle_timeout`](Self::handle_timeout).
    pub fn poll_action(&mut self, now: Instant) -> Option<Action<P>> {
        if let Some(a) = self.actions.pop_front() {
            return Some(a);
        }
        self.schedule(now)
    }

    /// The earliest instant at which [`handle_timeout`](Self::handle_timeout)
    /// should be called: the first request deadline, or the first lack-mark
    /// expiry (of a usable peer, for a needed chunk) that could unblock a chunk.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadline = self.deadlines.first().map(|(d, _)| *d);
        let lack = self
            .peers
            .values()
            .filter(|st| st.usable())
            .flat_map(|st| st.lacks.iter())
            .filter(|(c, _)| self.states[c.0 as usize] == ChunkState::Needed)
            .map(|(_, until)| *until)
            .min();
        match (deadline, lack) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Every chunk is verified or was already present.
    pub fn is_complete(&self) -> bool {
        self.chunks_done as usize == self.states.len()
    }

    /// Chunks and bytes done and total, and requests in flight.
    pub fn progress(&self) -> Progress {
        Progress {
            chunks_done: self.chunks_done,
            chunks_total: self.states.len() as u32,
            bytes_done: self.bytes_done,
            bytes_total: self.bytes_total,
            in_flight: self.in_flight,
        }
    }

    /// The state of `chunk`, or `None` if it is out of range.
    pub fn chunk_state(&self, chunk: ChunkIdx) -> Option<&ChunkState<P>> {
        self.states.get(chunk.0 as usize)
    }

    /// Requests currently outstanding to `peer`.
    pub fn in_flight_to(&self, peer: &P) -> usize {
        self.peers.get(peer).map_or(0, |st| st.in_flight.len())
    }

    /// The peer was banned during this fetch.
    pub fn is_banned(&self, peer: &P) -> bool {
        self.peers.get(peer).is_some_and(|st| st.banned)
    }

    /// The configuration in use (in-flight caps clamped to at least 1).
    pub fn config(&self) -> &FetchConfig {
        &self.config
    }

    /// Asserts the invariants written down in `swarm/STATE.md` (with
    /// `debug_assert!`, so it is free in release builds). O(chunks + peers);
    /// meant for tests.
    pub fn check_invariants(&self) {
        let mut in_flight = 0;
        let mut done = 0u32;
        let mut bytes = 0u64;
        for (i, state) in self.states.iter().enumerate() {
            let c = ChunkIdx(i as u32);
            let is_needed = self.needed.contains(&self.rank_of[i]);
            debug_assert_eq!(self.by_rank[self.rank_of[i] as usize], c);
            match state {
                ChunkState::Needed => debug_assert!(is_needed, "{c:?} Needed but not queued"),
                ChunkState::InFlight { peer, deadline } => {
                    in_flight += 1;
                    debug_assert!(!is_needed, "{c:?} InFlight and queued");
                    debug_assert!(self.deadlines.contains(&(*deadline, c)));
                    let st = self.peers.get(peer);
                    debug_assert!(st.is_some_and(|st| st.in_flight.contains(&c)));
                    debug_assert!(st.is_some_and(PeerState::usable), "{peer:?} unusable");
                }
                ChunkState::Done => {
                    debug_assert!(!is_needed, "{c:?} Done and queued");
                    done += 1;
                    bytes += u64::from(self.lens[i]);
                }
            }
        }
        debug_assert_eq!(
            self.needed.len() + in_flight + done as usize,
            self.states.len()
        );
        debug_assert_eq!(in_flight, self.in_flight);
        debug_assert_eq!(in_flight, self.deadlines.len());
        debug_assert_eq!(done, self.chunks_done);
        debug_assert_eq!(bytes, self.bytes_done);
        debug_assert!(self.in_flight <= self.config.max_in_flight_total);
        let per_peer: usize = self.peers.values().map(|st| st.in_flight.len()).sum();
        debug_assert_eq!(per_peer, self.in_flight);
        for (peer, st) in &self.peers {
            debug_assert!(st.in_flight.len() <= self.config.max_in_flight_per_peer);
            for c in &st.in_flight {
                debug_assert!(
                    matches!(&self.states[c.0 as usize], ChunkState::InFlight { peer: p, .. } if p == peer),
                    "{peer:?} lists {c:?} which is not in flight to it"
                );
            }
            debug_assert!(!st.banned || st.strikes >= self.config.max_strikes);
        }
        debug_assert!(!self.complete_emitted || self.is_complete());
        debug_assert!(!self.is_complete() || self.complete_emitted);
    }

    fn schedule(&mut self, now: Instant) -> Option<Action<P>> {
        if !self.rescan || self.needed.is_empty() {
            return None;
        }
        let cap = self.config.max_in_flight_per_peer;
        let free: Vec<&P> = if self.in_flight < self.config.max_in_flight_total {
            self.peers
                .iter()
                .filter(|(_, st)| st.free(cap))
                .map(|(p, _)| p)
                .collect()
        } else {
            Vec::new()
        };
        let mut pick = None;
        let mut cands = Vec::new();
        let mut cand_peers = Vec::new();
        for &rank in &self.needed {
            if free.is_empty() {
                break;
            }
            let chunk = self.by_rank[rank as usize];
            cands.clear();
            cand_peers.clear();
            for &p in &free {
                let st = &self.peers[p];
                if !st.lacks(chunk, now) {
                    cands.push(Candidate {
                        tier: st.tier(chunk, self.config.origin_last),
                        in_flight: st.in_flight.len(),
                    });
                    cand_peers.push(p);
                }
            }
            if cands.is_empty() {
                continue;
            }
            let choice = self.policy.pick_peer(chunk, &cands, &mut self.rng);
            if let Some(&peer) = choice.and_then(|i| cand_peers.get(i)) {
                pick = Some((chunk, peer.clone()));
                break;
            }
        }
        let Some((chunk, peer)) = pick else {
            self.rescan = false;
            return None;
        };
        self.assign(now, chunk, peer.clone());
        Some(Action::Request { peer, chunk })
    }

    fn assign(&mut self, now: Instant, chunk: ChunkIdx, peer: P) {
        let i = chunk.0 as usize;
        debug_assert_eq!(self.states[i], ChunkState::Needed);
        let deadline = now + self.config.request_timeout;
        self.needed.remove(&self.rank_of[i]);
        self.deadlines.insert((deadline, chunk));
        self.peers
            .get_mut(&peer)
            .expect("candidate peers exist")
            .in_flight
            .insert(chunk);
        self.in_flight += 1;
        self.states[i] = ChunkState::InFlight { peer, deadline };
    }

    /// Removes the in-flight bookkeeping of `chunk`, leaving it in `next`
    /// state's hands; returns the peer it was in flight to.
    fn take_in_flight(&mut self, chunk: ChunkIdx, next: ChunkState<P>) -> Option<P> {
        let i = chunk.0 as usize;
        if !matches!(self.states[i], ChunkState::InFlight { .. }) {
            return None;
        }
        let ChunkState::InFlight { peer, deadline } = std::mem::replace(&mut self.states[i], next)
        else {
            unreachable!()
        };
        self.deadlines.remove(&(deadline, chunk));
        if let Some(st) = self.peers.get_mut(&peer) {
            st.in_flight.remove(&chunk);
        }
        self.in_flight -= 1;
        Some(peer)
    }

    /// Returns an in-flight chunk to `Needed`; returns the peer it was in flight to.
    fn release(&mut self, chunk: ChunkIdx) -> Option<P> {
        let peer = self.take_in_flight(chunk, ChunkState::Needed)?;
        self.needed.insert(self.rank_of[chunk.0 as usize]);
        self.rescan = true;
        Some(peer)
    }

    /// Marks `chunk` done (ignoring out-of-range and already-done chunks). If
    /// it was in flight to a peer other than `source`, that request gets an
    /// [`Action::Cancel`].
    fn mark_done(&mut self, chunk: ChunkIdx, source: Option<&P>) {
        let i = chunk.0 as usize;
        match self.states.get(i) {
            None | Some(ChunkState::Done) => return,
            Some(ChunkState::Needed) => {
                self.needed.remove(&self.rank_of[i]);
                self.states[i] = ChunkState::Done;
            }
            Some(ChunkState::InFlight { .. }) => {
                let peer = self.take_in_flight(chunk, ChunkState::Done);
                if let Some(peer) = peer.filter(|p| Some(p) != source) {
                    self.actions.push_back(Action::Cancel { peer, chunk });
                }
            }
        }
        self.chunks_done += 1;
        self.bytes_done += u64::from(self.lens[i]);
        self.maybe_complete();
    }

    fn maybe_complete(&mut self) {
        if self.is_complete() && !self.complete_emitted {
            self.complete_emitted = true;
            self.actions.push_back(Action::Complete);
        }
    }

    /// Whether `chunk` is in flight to `peer`.
    fn in_flight_with(&self, chunk: ChunkIdx, peer: &P) -> bool {
        matches!(self.states.get(chunk.0 as usize), Some(ChunkState::InFlight { peer: p, .. }) if p == peer)
    }

    fn on_disconnect(&mut self, peer: &P) {
        let Some(st) = self.peers.get_mut(peer) else {
            return;
        };
        st.connected = false;
        st.suspect = false;
        let chunks = std::mem::take(&mut st.in_flight);
        for c in chunks {
            self.release(c);
        }
    }

    fn on_verified(&mut self, peer: P, chunk: ChunkIdx) {
        if chunk.0 as usize >= self.states.len() {
            return;
        }
        // A late answer (after a timeout, or from a peer not asked) still
        // counts: the data was verified against its hash.
        self.mark_done(chunk, Some(&peer));
        if let Some(st) = self.peers.get_mut(&peer) {
            st.suspect = false;
            st.has.insert(chunk);
        }
    }

    fn on_rejected(&mut self, now: Instant, peer: P, chunk: ChunkIdx) {
        if chunk.0 as usize >= self.states.len() {
            return;
        }
        if self.in_flight_with(chunk, &peer) {
            self.release(chunk);
        }
        let until = now + self.config.lack_ttl;
        let max_strikes = self.config.max_strikes;
        let Some(st) = self.peers.get_mut(&peer) else {
            return;
        };
        if st.banned {
            return;
        }
        st.suspect = false;
        st.strikes += 1;
        st.mark_lack(chunk, until);
        self.actions.push_back(Action::Penalise {
            peer: peer.clone(),
            reason: REASON_CORRUPT,
        });
        if st.strikes >= max_strikes {
            self.ban(peer);
        }
    }

    fn ban(&mut self, peer: P) {
        let Some(st) = self.peers.get_mut(&peer) else {
            return;
        };
        st.banned = true;
        let chunks = std::mem::take(&mut st.in_flight);
        for chunk in chunks {
            self.release(chunk);
            self.actions.push_back(Action::Cancel {
                peer: peer.clone(),
                chunk,
            });
        }
        self.actions.push_back(Action::Ban { peer });
    }

    fn on_not_found(&mut self, now: Instant, peer: P, chunk: ChunkIdx) {
        if chunk.0 as usize >= self.states.len() {
            return;
        }
        if self.in_flight_with(chunk, &peer) {
            self.release(chunk);
        }
        let until = now + self.config.lack_ttl;
        if let Some(st) = self.peers.get_mut(&peer) {
            st.suspect = false;
            st.has.remove(chunk);
            st.mark_lack(chunk, until);
        }
    }

    fn on_failed(&mut self, now: Instant, peer: P, chunk: ChunkIdx) {
        if !self.in_flight_with(chunk, &peer) {
            return;
        }
        self.release(chunk);
        let until = now + self.config.lack_ttl;
        if let Some(st) = self.peers.get_mut(&peer) {
            st.mark_lack(chunk, until);
        }
    }
}

#[cfg(test)]
mod tests;
