//! The fetch scheduler: downloads one version's chunks from many peers.
//!
//! See `swarm/STATE.md` for the state of each chunk and the invariants that
//! [`Fetch::check_invariants`] asserts.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::ChunkIdx;
use crate::peer::{EWMA_ALPHA, FAR, PeerState};
use crate::policy::{SelectionPolicy, TieredRandom};
use crate::rng::SplitMix64;

mod invariants;
mod sched;

/// Mean chunks received between two announcements at the measured rate
/// ([`Fetch::announce_interval`]).
pub const ANNOUNCE_CHUNKS: f64 = 8.0;

/// Tunables of one [`Fetch`].
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// Requests outstanding to one peer at most (default 8), whatever its
    /// measured rate. Values below 1 are treated as 1.
    pub max_in_flight_per_peer: usize,
    /// Requests outstanding in total at most (default 64). Values below 1 are treated as 1.
    pub max_in_flight_total: usize,
    /// How long a request may stay unanswered at least (default 10 s); a
    /// timed-out request is retried elsewhere. Once a peer's rate is measured
    /// its timeout is `max(request_timeout, 4 × (in_flight + 1) × len / rate)`.
    pub request_timeout: Duration,
    /// After a peer says it lacks a chunk (or fails, times out or sends it
    /// corrupt), do not ask it again for that chunk for this long (default 1 s;
    /// peers gain chunks over time).
    pub lack_ttl: Duration,
    /// Corrupt chunks from one peer before it is banned for this fetch (default 3).
    pub max_strikes: u32,
    /// Offload the origin (default true): the origin is asked only for chunks
    /// that no connected non-origin peer announced (or whose every announcing
    /// peer is marked as lacking it), and ranks below every other candidate.
    /// When false the origin ranks like any holder of every chunk.
    pub origin_last: bool,
    /// Requests outstanding to one peer at least (default 2): the cap before the
    /// peer's rate is measured, and its floor afterwards. Clamped to
    /// `1..=max_in_flight_per_peer`.
    pub min_in_flight_per_peer: usize,
    /// Per-peer pipeline depth in time (default 250 ms): a peer's cap is
    /// `clamp(rate × target_queue / mean chunk length, min, max)`.
    pub target_queue: Duration,
    /// How long a chunk that no peer at distance ≤ 1 holds waits for the rack
    /// member responsible for it before this node fetches it from farther away
    /// (default 2 s), counted from when the chunk first had a source.
    pub remote_wait: Duration,
    /// Duplicate in-flight requests to other free holders once every chunk is
    /// done or in flight (default true).
    pub endgame: bool,
    /// Requests outstanding per chunk at most during the endgame (default 2).
    pub endgame_max_dup: usize,
    /// After [`Input::Busy`] from a peer whose rate is not measured yet, do
    /// not ask it again for this long (default 10 ms) unless one of our
    /// requests to it completes first. A measured peer backs off for one
    /// mean chunk-time at its measured rate instead (at most this long).
    pub busy_backoff: Duration,
    /// Request one of this many rarest needed chunks that have an eligible
    /// peer, chosen at random (default 4), so that nodes do not all rush to
    /// the single holder of the rarest chunk. 1 is strict rarest first.
    pub rarest_window: usize,
    /// Requests outstanding at once at most (default 2; the effective total
    /// cap is `min(download_slots, max_in_flight_total)`): few downloads at
    /// once, each at a large share of the link, so that every chunk
    /// completes (and becomes relayable) early instead of all completing
    /// late. Raise it for links with a large bandwidth-delay product.
    /// Values below 1 are treated as 1.
    pub download_slots: usize,
    /// Grow the window beyond `download_slots` by the requests that cover
    /// two round trips at the measured delivery rate (default true):
    /// `download_slots + round(2 × rate × round_trip / mean chunk length)`,
    /// at most `max_in_flight_total`. A request spends a round trip before
    /// its first byte moves: without this, a window of a few chunks caps
    /// the rate at about `window × chunk / round trip` on a path whose
    /// bandwidth-delay product is larger (deep switch buffers, far peers,
    /// fast links). Two round trips rather than one because the rate is
    /// measured under the current window, so one would only hold it. The
    /// round trip is measured on the answers that carry no chunk (`Busy`,
    /// `NotFound`), so it includes the queues a request crosses; the rate
    /// over the last 16 deliveries. Until both are measured the window is
    /// `download_slots`; on a short round trip the extra rounds to 0.
    pub cover_round_trip: bool,
    /// `NotFound` answers for chunks a peer announced (`PeerHas` /
    /// `PeerHasAll`: a lying announcement) that count as one strike
    /// ([`REASON_LYING`]) (default 3). An honest peer that garbage-collected
    /// a chunk says so rarely; one that announces what it lacks wastes a
    /// request each time. Values below 1 are treated as 1.
    pub max_lies: u32,
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
            min_in_flight_per_peer: 2,
            target_queue: Duration::from_millis(250),
            remote_wait: Duration::from_secs(2),
            endgame: true,
            endgame_max_dup: 2,
            busy_backoff: Duration::from_millis(10),
            rarest_window: 4,
            download_slots: 2,
            cover_round_trip: true,
            max_lies: 3,
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
    /// The peer holds the chunk but is serving as many uploads as it will
    /// (answered at once instead of queueing the request). The chunk is
    /// requested again at once, elsewhere if possible; the peer is not asked
    /// again until one of our requests to it completes or its backoff passes
    /// ([`FetchConfig::busy_backoff`]). Not a strike, not a lack mark.
    Busy {
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
    /// How far `peer` is: 0 same host, 1 same rack, 2 same zone, 3 same
    /// region, 4 elsewhere (larger values count as 4). Peers without topology
    /// are at 4. Nearer holders are preferred.
    PeerTopology {
        /// The peer.
        peer: P,
        /// Its distance.
        distance: u8,
    },
    /// This node is member `rank` of the `size` nodes of its rack (default
    /// rank 0 of 1). A chunk that no peer at distance ≤ 1 holds is fetched
    /// from farther away only by its responsible member
    /// ([`responsible_rank`]`(chunk, size) == rank`), by others after
    /// [`FetchConfig::remote_wait`], or at once when this node has nothing in
    /// flight.
    LocalGroup {
        /// This node's rank in its rack, `0..size`.
        rank: u32,
        /// Nodes in the rack (0 counts as 1).
        size: u32,
    },
    /// The peer's link looks unhealthy (a heartbeat was missed or it has
    /// been silent; see [`Session`](crate::Session)): it keeps what is in
    /// flight to it but gets at most one request until it answers, like a
    /// peer whose request timed out.
    PeerSuspect {
        /// The peer.
        peer: P,
    },
    /// The peer is banned by the driver (for a while, across fetches; see
    /// [`Session`](crate::Session)): its requests are cancelled and it is not
    /// asked again until [`Input::PeerUnbanned`]. No `Penalise` or `Ban`
    /// action is emitted (the driver already knows).
    PeerBanned {
        /// The peer.
        peer: P,
    },
    /// The driver's ban of the peer ended: strikes and lies are forgotten and
    /// it may be asked again once connected.
    PeerUnbanned {
        /// The peer.
        peer: P,
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

/// One outstanding request for a chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outstanding<P> {
    /// The peer that was asked.
    pub peer: P,
    /// When [`Fetch::poll_action`] emitted the request.
    pub sent: Instant,
    /// When the request times out.
    pub deadline: Instant,
}

/// The state of one chunk: exactly one of these at any time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkState<P> {
    /// Not present and not requested.
    Needed,
    /// Requested from one peer, or (endgame) from up to
    /// [`FetchConfig::endgame_max_dup`] distinct peers; never empty.
    InFlight {
        /// The outstanding requests, oldest first.
        peers: Vec<Outstanding<P>>,
    },
    /// Verified or already present.
    Done,
}

/// What a fetch has measured about one peer ([`Fetch::peer_stats`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeerStats {
    /// EWMA of the delivery rate in bytes/s; `None` until a chunk arrived.
    pub rate_bps: Option<f64>,
    /// EWMA of request -> answer time; `None` until an answer arrived.
    pub rtt: Option<Duration>,
    /// Requests outstanding to the peer.
    pub in_flight: usize,
    /// Its current in-flight cap.
    pub cap: usize,
    /// Corrupt chunks received from it.
    pub strikes: u32,
    /// Its network distance (0..=4).
    pub distance: u8,
}

/// The rack member responsible for bringing `chunk` into a rack of `size`
/// nodes: `hash(chunk index) % size`. A fixed hash (not seeded), so every
/// member of the rack agrees.
pub fn responsible_rank(chunk: ChunkIdx, size: u32) -> u32 {
    let mut z = u64::from(chunk.0).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % u64::from(size.max(1))) as u32
}

/// [`Action::Penalise`] reason for a chunk that failed verification.
pub const REASON_CORRUPT: &str = "corrupt chunk";

/// [`Action::Penalise`] reason for a peer that answered `NotFound` for
/// [`FetchConfig::max_lies`] chunks it had announced.
pub const REASON_LYING: &str = "announced chunks it does not have";

/// Deliveries over which a fetch measures its rate.
const DELIVERY_SPAN: usize = 16;

/// Sans-IO scheduler for the download of one version by one node.
///
/// Feed it [`Input`]s with [`handle`](Self::handle), call
/// [`handle_timeout`](Self::handle_timeout) at [`poll_timeout`](Self::poll_timeout),
/// and after each of those drain [`poll_action`](Self::poll_action) until `None`.
pub struct Fetch<P> {
    config: FetchConfig,
    lens: Vec<u32>,
    /// Mean chunk length in bytes (at least 1), for per-peer caps.
    mean_len: f64,
    states: Vec<ChunkState<P>>,
    /// Chunk -> its seeded random tie-break rank.
    rank_of: Vec<u32>,
    /// Rank -> chunk (inverse of `rank_of`).
    by_rank: Vec<ChunkIdx>,
    /// Per chunk not `Done`: slots of the counted peers (connected, unbanned,
    /// non-origin) that announced it. Empty for `Done` chunks.
    holders: Vec<Vec<u32>>,
    /// Per chunk not `Done`: how many of `holders` are at distance ≤ 1.
    near: Vec<u32>,
    /// Per chunk: when it first had a source (a holder or a connected origin).
    fetchable_since: Vec<Option<Instant>>,
    /// `(availability, rank)` of the `Needed` chunks: rarest first, seeded ties.
    needed: BTreeSet<(u32, u32)>,
    /// `(deadline, chunk, slot)` of every outstanding request.
    deadlines: BTreeSet<(Instant, ChunkIdx, u32)>,
    /// Peer state by slot; a slot is never reused within a fetch.
    peers: Vec<PeerState<P>>,
    slot_of: BTreeMap<P, u32>,
    /// Slots of usable non-origin peers that never announced anything.
    unknown: BTreeSet<u32>,
    /// Slots of usable origins.
    origins: BTreeSet<u32>,
    local_rank: u32,
    local_size: u32,
    /// Outstanding requests (endgame duplicates included).
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
    /// Since that scan, only announcements came in: only these chunks can
    /// have gained a candidate, so the next scan looks at them alone.
    focus: Option<Vec<ChunkIdx>>,
    /// When a chunk held only far away stops waiting for its rack's
    /// responsible member (computed by the last full scan).
    remote_wakeup: Option<Instant>,
    rng: SplitMix64,
    policy: Box<dyn SelectionPolicy>,
    /// The last [`DELIVERY_SPAN`] deliveries of requested chunks (time, length).
    deliveries: VecDeque<(Instant, u32)>,
    /// Round trip of answers without a chunk (EWMA).
    round_trip: Option<Duration>,
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
    /// `seed` drives the tie-break order and random tie-breaks.
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
        config.min_in_flight_per_peer = config
            .min_in_flight_per_peer
            .clamp(1, config.max_in_flight_per_peer);
        config.endgame_max_dup = config.endgame_max_dup.max(1);
        config.download_slots = config.download_slots.max(1);
        config.max_lies = config.max_lies.max(1);
        let mut rng = SplitMix64::new(seed);
        let mut by_rank: Vec<ChunkIdx> = (0..n).map(ChunkIdx).collect();
        rng.shuffle(&mut by_rank);
        let mut rank_of = vec![0; by_rank.len()];
        for (rank, c) in by_rank.iter().enumerate() {
            rank_of[c.0 as usize] = rank as u32;
        }
        let bytes_total: u64 = chunk_lens.iter().map(|l| u64::from(*l)).sum();
        let mut fetch = Self {
            config,
            mean_len: (bytes_total as f64 / f64::from(n.max(1))).max(1.0),
            bytes_total,
            states: vec![ChunkState::Needed; chunk_lens.len()],
            holders: vec![Vec::new(); chunk_lens.len()],
            near: vec![0; chunk_lens.len()],
            fetchable_since: vec![None; chunk_lens.len()],
            lens: chunk_lens,
            rank_of,
            by_rank,
            needed: (0..n).map(|r| (0, r)).collect(),
            deadlines: BTreeSet::new(),
            peers: Vec::new(),
            slot_of: BTreeMap::new(),
            unknown: BTreeSet::new(),
            origins: BTreeSet::new(),
            local_rank: 0,
            local_size: 1,
            in_flight: 0,
            chunks_done: 0,
            bytes_done: 0,
            actions: VecDeque::new(),
            complete_emitted: false,
            rescan: true,
            focus: None,
            remote_wakeup: None,
            rng,
            policy,
            deliveries: VecDeque::new(),
            round_trip: None,
        };
        fetch.maybe_complete();
        fetch
    }

    /// Applies one event from the driver.
    pub fn handle(&mut self, now: Instant, input: Input<P>) {
        if let Input::PeerHas { chunks, .. } = &input
            && !self.rescan
        {
            // Only the announcing peer changed, for these chunks.
            self.focus
                .get_or_insert_with(Vec::new)
                .extend_from_slice(chunks);
        } else {
            self.rescan = true;
            self.focus = None;
        }
        match input {
            Input::PeerConnected { peer, origin } => {
                let s = self.slot(peer);
                self.peers[s as usize].connected = true;
                self.peers[s as usize].origin = origin;
                self.sync_counted(s, now);
            }
            Input::PeerDisconnected { peer } => self.on_disconnect(now, &peer),
            Input::PeerHasAll { peer } => self.on_has_all(now, peer),
            Input::PeerHas { peer, chunks } => self.on_has(now, peer, chunks),
            Input::AlreadyHave { chunks } => {
                for c in chunks {
                    self.mark_done(c, None);
                }
            }
            Input::Verified { peer, chunk } => self.on_verified(now, peer, chunk),
            Input::Rejected { peer, chunk } => self.on_rejected(now, peer, chunk),
            Input::NotFound { peer, chunk } => self.on_not_found(now, peer, chunk),
            Input::Failed { peer, chunk } => self.on_failed(now, peer, chunk),
            Input::Busy { peer, chunk } => self.on_busy(now, peer, chunk),
            Input::PeerTopology { peer, distance } => {
                let s = self.slot(peer);
                self.set_distance(s, distance.min(FAR));
            }
            Input::LocalGroup { rank, size } => {
                self.local_size = size.max(1);
                self.local_rank = rank;
            }
            Input::PeerSuspect { peer } => {
                let s = self.slot(peer);
                self.peers[s as usize].suspect = true;
            }
            Input::PeerBanned { peer } => {
                let s = self.slot(peer);
                let st = &mut self.peers[s as usize];
                if !st.banned {
                    st.strikes = st.strikes.max(self.config.max_strikes);
                    self.ban(now, s, false);
                }
            }
            Input::PeerUnbanned { peer } => {
                let s = self.slot(peer);
                let st = &mut self.peers[s as usize];
                st.banned = false;
                st.strikes = 0;
                st.lies = 0;
                self.sync_counted(s, now);
            }
        }
    }

    /// Expires requests whose deadline passed (they become retryable elsewhere;
    /// the peer gets a timeout mark: a lack mark for that chunk, and it becomes
    /// suspect, limited to one request, until it answers again) and drops
    /// expired lack marks.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.rescan = true;
        self.focus = None;
        if self.remote_wakeup.is_some_and(|t| t <= now) {
            self.remote_wakeup = None;
        }
        while let Some(&(deadline, chunk, s)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.take_request(chunk, s);
            let until = now + self.config.lack_ttl;
            let st = &mut self.peers[s as usize];
            st.timeouts += 1;
            st.suspect = true;
            st.mark_lack(chunk, until);
            let peer = st.id.clone();
            self.actions.push_back(Action::Cancel { peer, chunk });
        }
        for st in &mut self.peers {
            st.lacks.retain(|_, until| *until > now);
            if st.busy_until.is_some_and(|t| t <= now) {
                st.busy_until = None;
            }
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
    /// should be called: the first request deadline, the first lack-mark
    /// expiry (of a usable peer, for a needed chunk) that could unblock a
    /// chunk, or the end of a chunk's wait for its rack's responsible member.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadline = self.deadlines.first().map(|(d, _, _)| *d);
        let lack = self
            .peers
            .iter()
            .filter(|st| st.usable())
            .flat_map(|st| st.lacks.iter())
            .filter(|(c, _)| self.states[c.0 as usize] == ChunkState::Needed)
            .map(|(_, until)| *until)
            .min();
        let remote = self.remote_wakeup.filter(|_| !self.needed.is_empty());
        let busy = self
            .peers
            .iter()
            .filter(|st| st.usable() && !self.needed.is_empty())
            .filter_map(|st| st.busy_until)
            .min();
        [deadline, lack, remote, busy].into_iter().flatten().min()
    }

    /// Every chunk is verified or was already present.
    pub fn is_complete(&self) -> bool {
        self.chunks_done as usize == self.states.len()
    }

    /// Chunks and bytes done and total, and requests in flight (endgame
    /// duplicates included).
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
        self.peer(peer).map_or(0, |st| st.in_flight.len())
    }

    /// The peer was banned during this fetch.
    pub fn is_banned(&self, peer: &P) -> bool {
        self.peer(peer).is_some_and(|st| st.banned)
    }

    /// What this fetch measured about `peer`, or `None` if it never heard of it.
    pub fn peer_stats(&self, peer: &P) -> Option<PeerStats> {
        let st = self.peer(peer)?;
        Some(PeerStats {
            rate_bps: st.rate_bps,
            rtt: st.rtt,
            in_flight: st.in_flight.len(),
            cap: self.cap(st),
            strikes: st.strikes,
            distance: st.distance,
        })
    }

    /// How many connected, unbanned, non-origin peers announced `chunk`
    /// (0 once it is done, or out of range).
    pub fn availability(&self, chunk: ChunkIdx) -> u32 {
        self.holders
            .get(chunk.0 as usize)
            .map_or(0, |h| h.len() as u32)
    }

    /// The configuration in use (caps clamped as documented).
    pub fn config(&self) -> &FetchConfig {
        &self.config
    }

    fn peer(&self, peer: &P) -> Option<&PeerState<P>> {
        self.slot_of.get(peer).map(|s| &self.peers[*s as usize])
    }

    /// The slot of `peer`, created on first sight.
    fn slot(&mut self, peer: P) -> u32 {
        if let Some(s) = self.slot_of.get(&peer) {
            return *s;
        }
        let s = self.peers.len() as u32;
        self.peers.push(PeerState::new(peer.clone()));
        self.slot_of.insert(peer, s);
        s
    }

    fn cap(&self, st: &PeerState<P>) -> usize {
        let c = &self.config;
        st.cap(
            c.min_in_flight_per_peer,
            c.max_in_flight_per_peer,
            c.target_queue,
            self.mean_len,
        )
    }

    fn maybe_complete(&mut self) {
        if self.is_complete() && !self.complete_emitted {
            self.complete_emitted = true;
            self.actions.push_back(Action::Complete);
        }
    }

    /// The sent time of the request for `chunk` outstanding to slot `s`.
    fn sent_to(&self, chunk: ChunkIdx, s: u32) -> Option<Instant> {
        let ChunkState::InFlight { peers } = self.states.get(chunk.0 as usize)? else {
            return None;
        };
        let id = &self.peers[s as usize].id;
        peers.iter().find(|o| &o.peer == id).map(|o| o.sent)
    }

    fn on_has_all(&mut self, now: Instant, peer: P) {
        let s = self.slot(peer);
        let st = &mut self.peers[s as usize];
        st.announced = true;
        if !st.has_all {
            let missing: Vec<ChunkIdx> = (0..self.states.len() as u32)
                .map(ChunkIdx)
                .filter(|c| !st.has.contains(*c))
                .collect();
            st.has_all = true;
            if st.counted {
                for c in missing {
                    self.add_holder(c, s, now);
                }
            }
        }
        self.sync_counted(s, now);
    }

    fn on_has(&mut self, now: Instant, peer: P, chunks: Vec<ChunkIdx>) {
        let n = self.states.len();
        let s = self.slot(peer);
        self.peers[s as usize].announced = true;
        for c in chunks.into_iter().filter(|c| (c.0 as usize) < n) {
            let st = &mut self.peers[s as usize];
            st.lacks.remove(&c);
            if st.has_all || !st.has.insert(c) {
                continue;
            }
            if st.counted {
                self.add_holder(c, s, now);
            }
        }
        self.sync_counted(s, now);
    }

    fn on_disconnect(&mut self, now: Instant, peer: &P) {
        let Some(&s) = self.slot_of.get(peer) else {
            return;
        };
        let st = &mut self.peers[s as usize];
        st.connected = false;
        st.suspect = false;
        st.busy_until = None;
        let chunks: Vec<ChunkIdx> = st.in_flight.iter().copied().collect();
        for c in chunks {
            self.take_request(c, s);
        }
        self.sync_counted(s, now);
    }

    fn on_verified(&mut self, now: Instant, peer: P, chunk: ChunkIdx) {
        let i = chunk.0 as usize;
        if i >= self.states.len() {
            return;
        }
        let s = self.slot_of.get(&peer).copied();
        if let Some((s, sent)) = s.and_then(|s| Some((s, self.sent_to(chunk, s)?))) {
            self.peers[s as usize].record_answer(now, sent, u64::from(self.lens[i]));
            if self.deliveries.len() == DELIVERY_SPAN {
                self.deliveries.pop_front();
            }
            self.deliveries.push_back((now, self.lens[i]));
        }
        // A late answer (after a timeout, or from a peer not asked) still
        // counts: the data was verified against its hash.
        self.mark_done(chunk, s);
        if let Some(s) = s {
            let st = &mut self.peers[s as usize];
            st.suspect = false;
            st.busy_until = None;
            st.has.insert(chunk);
        }
    }

    /// Records the answer of slot `s` about `chunk` if a request was
    /// outstanding, and returns the chunk to `Needed` if it was the last one.
    fn answered(&mut self, now: Instant, s: u32, chunk: ChunkIdx, bytes: u64) {
        if let Some(sent) = self.sent_to(chunk, s) {
            if bytes == 0 {
                self.note_round_trip(now, sent);
            }
            self.peers[s as usize].record_answer(now, sent, bytes);
            self.take_request(chunk, s);
        }
    }

    fn on_rejected(&mut self, now: Instant, peer: P, chunk: ChunkIdx) {
        if chunk.0 as usize >= self.states.len() {
            return;
        }
        let Some(&s) = self.slot_of.get(&peer) else {
            return;
        };
        self.answered(now, s, chunk, u64::from(self.lens[chunk.0 as usize]));
        let until = now + self.config.lack_ttl;
        let max_strikes = self.config.max_strikes;
        let st = &mut self.peers[s as usize];
        if st.banned {
            return;
        }
        st.suspect = false;
        st.strikes += 1;
        st.mark_lack(chunk, until);
        self.actions.push_back(Action::Penalise {
            peer,
            reason: REASON_CORRUPT,
        });
        if st.strikes >= max_strikes {
            self.ban(now, s, true);
        }
    }

    /// Bans slot `s`: cancels its requests; `announce` emits [`Action::Ban`].
    fn ban(&mut self, now: Instant, s: u32, announce: bool) {
        let st = &mut self.peers[s as usize];
        st.banned = true;
        let peer = st.id.clone();
        let chunks: Vec<ChunkIdx> = st.in_flight.iter().copied().collect();
        for chunk in chunks {
            self.take_request(chunk, s);
            self.actions.push_back(Action::Cancel {
                peer: peer.clone(),
                chunk,
            });
        }
        if announce {
            self.actions.push_back(Action::Ban { peer });
        }
        self.sync_counted(s, now);
    }

    fn on_not_found(&mut self, now: Instant, peer: P, chunk: ChunkIdx) {
        if chunk.0 as usize >= self.states.len() {
            return;
        }
        let Some(&s) = self.slot_of.get(&peer) else {
            return;
        };
        let asked = self.sent_to(chunk, s).is_some();
        self.answered(now, s, chunk, 0);
        let until = now + self.config.lack_ttl;
        let st = &mut self.peers[s as usize];
        st.suspect = false;
        st.mark_lack(chunk, until);
        let lied = asked && st.holds(chunk);
        if !st.has_all && st.has.contains(chunk) {
            st.has.remove(chunk);
            if st.counted {
                self.remove_holder(chunk, s);
            }
        }
        if lied {
            self.on_lie(now, s);
        }
    }

    /// Slot `s` answered `NotFound` for a chunk it announced: every
    /// `max_lies` of those is a strike.
    fn on_lie(&mut self, now: Instant, s: u32) {
        let st = &mut self.peers[s as usize];
        if st.banned {
            return;
        }
        st.lies += 1;
        if st.lies < self.config.max_lies {
            return;
        }
        st.lies = 0;
        st.strikes += 1;
        self.actions.push_back(Action::Penalise {
            peer: st.id.clone(),
            reason: REASON_LYING,
        });
        if st.strikes >= self.config.max_strikes {
            self.ban(now, s, true);
        }
    }

    fn on_busy(&mut self, now: Instant, peer: P, chunk: ChunkIdx) {
        let Some(&s) = self.slot_of.get(&peer) else {
            return;
        };
        let Some(sent) = self.sent_to(chunk, s) else {
            return;
        };
        self.note_round_trip(now, sent);
        self.take_request(chunk, s);
        let max = self.config.busy_backoff;
        let st = &mut self.peers[s as usize];
        st.suspect = false;
        let backoff = st.rate_bps.filter(|r| *r > 0.0).map_or(max, |r| {
            Duration::from_secs_f64((self.mean_len / r).min(1e6)).min(max)
        });
        st.busy_until = Some(now + backoff);
    }

    /// An answer without a chunk to a request sent at `sent`.
    fn note_round_trip(&mut self, now: Instant, sent: Instant) {
        let rtt = now.saturating_duration_since(sent);
        self.round_trip = Some(self.round_trip.map_or(rtt, |old| {
            old.mul_f64(1.0 - EWMA_ALPHA) + rtt.mul_f64(EWMA_ALPHA)
        }));
    }

    /// How often to announce newly verified chunks: the time this node
    /// takes to receive [`ANNOUNCE_CHUNKS`] mean chunks at its measured
    /// delivery rate, within `min..=max`; `min` until the rate is measured
    /// (the first few chunks, which the swarm waits for most). A fixed
    /// interval is many chunk-times on a fast link (100 ms is 300 MB at
    /// 25 Gbit/s), and a chunk can be relayed only once announced.
    pub fn announce_interval(&self, min: Duration, max: Duration) -> Duration {
        match self.delivery_rate() {
            Some(r) if r > 0.0 => {
                Duration::from_secs_f64((ANNOUNCE_CHUNKS * self.mean_len / r).min(1e6))
                    .clamp(min, max.max(min))
            }
            _ => min.min(max),
        }
    }

    /// Requests outstanding at most now: `min(download_slots,
    /// max_in_flight_total)`, plus two round trips' worth at the measured
    /// delivery rate ([`FetchConfig::cover_round_trip`]).
    pub fn window(&self) -> usize {
        let c = &self.config;
        let base = c.max_in_flight_total.min(c.download_slots);
        let extra = match (c.cover_round_trip, self.delivery_rate(), self.round_trip) {
            (true, Some(r), Some(rtt)) => (2.0 * r * rtt.as_secs_f64() / self.mean_len)
                .round()
                .min(1e6) as usize,
            _ => 0,
        };
        (base + extra).min(c.max_in_flight_total)
    }

    /// Bytes per second over the last deliveries (at least 4 of them, over a
    /// span of time): the bytes after the first over the time they took.
    fn delivery_rate(&self) -> Option<f64> {
        if self.deliveries.len() < 4 {
            return None;
        }
        let (t0, _) = *self.deliveries.front()?;
        let (t1, _) = *self.deliveries.back()?;
        let secs = t1.saturating_duration_since(t0).as_secs_f64();
        let bytes: u64 = self.deliveries.iter().skip(1).map(|d| u64::from(d.1)).sum();
        (secs > 0.0).then(|| bytes as f64 / secs)
    }

    fn on_failed(&mut self, now: Instant, peer: P, chunk: ChunkIdx) {
        let Some(&s) = self.slot_of.get(&peer) else {
            return;
        };
        if self.sent_to(chunk, s).is_none() {
            return;
        }
        self.take_request(chunk, s);
        let until = now + self.config.lack_ttl;
        self.peers[s as usize].mark_lack(chunk, until);
    }
}

#[cfg(test)]
mod tests;
