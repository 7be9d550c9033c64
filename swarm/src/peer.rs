//! Per-peer state of one fetch: connection, availability, lack marks, strikes,
//! distance and measured rate.
//!
//! This is the per-peer half of the scheduler (the global half is
//! [`Fetch`](crate::Fetch)); it lives as long as one fetch. What outlives a
//! fetch (the connection's liveness, reconnect backoff, and bans for a while)
//! is the [`Session`](crate::Session), whose actions the driver turns into
//! `PeerSuspect` / `PeerDisconnected` / `PeerConnected` / `PeerBanned` /
//! `PeerUnbanned` inputs here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::ChunkIdx;
use crate::policy::Tier;

/// Distance of a peer we have no topology for ("elsewhere").
pub(crate) const FAR: u8 = 4;

/// Weight of a new sample in the rate and latency EWMAs.
pub(crate) const EWMA_ALPHA: f64 = 0.25;

/// A fixed-size set of chunk indices.
#[derive(Clone, Debug, Default)]
pub(crate) struct ChunkSet {
    words: Vec<u64>,
}

impl ChunkSet {
    pub(crate) fn insert(&mut self, c: ChunkIdx) -> bool {
        let (w, b) = (c.0 as usize / 64, c.0 % 64);
        if self.words.len() <= w {
            self.words.resize(w + 1, 0);
        }
        let new = self.words[w] & (1 << b) == 0;
        self.words[w] |= 1 << b;
        new
    }

    pub(crate) fn remove(&mut self, c: ChunkIdx) {
        let (w, b) = (c.0 as usize / 64, c.0 % 64);
        if let Some(word) = self.words.get_mut(w) {
            *word &= !(1 << b);
        }
    }

    pub(crate) fn contains(&self, c: ChunkIdx) -> bool {
        let (w, b) = (c.0 as usize / 64, c.0 % 64);
        self.words.get(w).is_some_and(|word| word & (1 << b) != 0)
    }

    /// The members, ascending.
    pub(crate) fn iter(&self) -> impl Iterator<Item = ChunkIdx> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            (0..64u32)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| ChunkIdx(w as u32 * 64 + b))
        })
    }
}

/// What one fetch knows about one peer. Kept after a disconnect (strikes, bans
/// and announcements outlive a connection within one fetch).
#[derive(Clone, Debug)]
pub(crate) struct PeerState<P> {
    pub(crate) id: P,
    pub(crate) connected: bool,
    pub(crate) origin: bool,
    pub(crate) banned: bool,
    /// Its announcements are counted in the availability index (see
    /// `Fetch::sync_counted`): connected, unbanned, not the origin.
    pub(crate) counted: bool,
    /// Corrupt chunks received from this peer.
    pub(crate) strikes: u32,
    /// `NotFound` answers for announced chunks since the last lie strike.
    pub(crate) lies: u32,
    /// Requests to this peer that expired.
    pub(crate) timeouts: u32,
    /// Set by a timeout, cleared by any answer: a suspect peer gets at most one
    /// request at a time, so a silent peer does not swallow a full pipeline
    /// every `request_timeout`.
    pub(crate) suspect: bool,
    /// The peer sent at least one announcement (`PeerHas`, even empty, or
    /// `PeerHasAll`): it is taken at its word and asked only for what it announced.
    pub(crate) announced: bool,
    /// The peer announced the whole version.
    pub(crate) has_all: bool,
    /// Chunks the peer announced.
    pub(crate) has: ChunkSet,
    /// Chunk -> instant until which we do not ask this peer for it.
    pub(crate) lacks: BTreeMap<ChunkIdx, Instant>,
    /// Chunks currently requested from this peer.
    pub(crate) in_flight: BTreeSet<ChunkIdx>,
    /// 0 same host, 1 same rack, 2 same zone, 3 same region, 4 elsewhere.
    pub(crate) distance: u8,
    /// Delivery rate (bytes/s), once measured: `rate_bytes / rate_secs`.
    pub(crate) rate_bps: Option<f64>,
    /// EWMAs of the bytes of each answer and of the time it took (see
    /// [`PeerState::record_answer`]).
    rate_bytes: f64,
    rate_secs: f64,
    /// EWMA of request -> answer time, once measured.
    pub(crate) rtt: Option<Duration>,
    /// When the last answer arrived (start of the next delivery interval).
    pub(crate) last_answer: Option<Instant>,
    /// After `Busy`: not asked again before this instant, unless one of our
    /// requests to it completes first.
    pub(crate) busy_until: Option<Instant>,
}

impl<P> PeerState<P> {
    pub(crate) fn new(id: P) -> Self {
        Self {
            id,
            connected: false,
            origin: false,
            banned: false,
            counted: false,
            strikes: 0,
            lies: 0,
            timeouts: 0,
            suspect: false,
            announced: false,
            has_all: false,
            has: ChunkSet::default(),
            lacks: BTreeMap::new(),
            in_flight: BTreeSet::new(),
            distance: FAR,
            rate_bps: None,
            rate_bytes: 0.0,
            rate_secs: 0.0,
            rtt: None,
            last_answer: None,
            busy_until: None,
        }
    }

    /// Connected and not banned: may be asked for chunks.
    pub(crate) fn usable(&self) -> bool {
        self.connected && !self.banned
    }

    /// Whether its announcements should be counted in the availability index.
    pub(crate) fn should_count(&self) -> bool {
        self.usable() && !self.origin
    }

    /// Usable, not the origin, never announced anything: may hold any chunk.
    pub(crate) fn unknown(&self) -> bool {
        self.should_count() && !self.announced
    }

    /// The peer announced `c` (or everything).
    pub(crate) fn holds(&self, c: ChunkIdx) -> bool {
        self.has_all || self.has.contains(c)
    }

    /// The current in-flight cap: 1 while suspect; else
    /// `clamp(rate × target_queue / mean_len, min, max)`, `min` until measured.
    pub(crate) fn cap(
        &self,
        min: usize,
        max: usize,
        target_queue: Duration,
        mean_len: f64,
    ) -> usize {
        if self.suspect {
            return 1;
        }
        let Some(rate) = self.rate_bps else {
            return min;
        };
        let want = rate * target_queue.as_secs_f64() / mean_len.max(1.0);
        (want.min(max as f64) as usize).clamp(min, max)
    }

    /// The peer answered `Busy` and its backoff has not passed at `now`.
    pub(crate) fn busy(&self, now: Instant) -> bool {
        self.busy_until.is_some_and(|t| t > now)
    }

    /// The peer is marked as lacking `c` at `now`.
    pub(crate) fn lacks(&self, c: ChunkIdx, now: Instant) -> bool {
        self.lacks.get(&c).is_some_and(|until| *until > now)
    }

    /// Marks `c` as lacking until `until` (keeps the later mark).
    pub(crate) fn mark_lack(&mut self, c: ChunkIdx, until: Instant) {
        let e = self.lacks.entry(c).or_insert(until);
        *e = (*e).max(until);
    }

    /// How good this peer is as a source of `c`.
    pub(crate) fn tier(&self, c: ChunkIdx, origin_last: bool) -> Tier {
        if self.origin {
            if origin_last {
                Tier::Origin
            } else {
                Tier::KnownHolder
            }
        } else if self.holds(c) {
            Tier::KnownHolder
        } else {
            Tier::Unknown
        }
    }

    /// Records an answer to a request sent at `sent`, carrying `bytes` of
    /// payload (0 for `NotFound`). Each answer's delivery interval is
    /// `now - max(sent, last answer)`: with a full pipeline that is the
    /// interval between two deliveries, and time in which nothing was asked
    /// of the peer does not count. The rate is the ratio of the EWMAs of the
    /// bytes and of the intervals, i.e. bytes over time across the last few
    /// answers, not an average of per-answer rates: answers that arrive in a
    /// burst (a pipeline of responses queued behind each other at the
    /// uploader, then released together) have intervals near zero, and
    /// averaging their rates would credit the peer with many times what it
    /// sustains, and so grant it a pipeline deep enough to hold every
    /// request this node has (see `docs/performance.md`, "Session of
    /// 2026-12-04").
    pub(crate) fn record_answer(&mut self, now: Instant, sent: Instant, bytes: u64) {
        let rtt = now.saturating_duration_since(sent);
        self.rtt = Some(match self.rtt {
            None => rtt,
            Some(old) => old.mul_f64(1.0 - EWMA_ALPHA) + rtt.mul_f64(EWMA_ALPHA),
        });
        let from = self.last_answer.map_or(sent, |l| l.max(sent));
        self.last_answer = Some(now);
        if bytes == 0 {
            return;
        }
        let secs = now.saturating_duration_since(from).as_secs_f64();
        if self.rate_bytes == 0.0 && self.rate_secs == 0.0 {
            (self.rate_bytes, self.rate_secs) = (bytes as f64, secs);
        } else {
            self.rate_bytes = self.rate_bytes * (1.0 - EWMA_ALPHA) + bytes as f64 * EWMA_ALPHA;
            self.rate_secs = self.rate_secs * (1.0 - EWMA_ALPHA) + secs * EWMA_ALPHA;
        }
        if self.rate_secs > 0.0 {
            self.rate_bps = Some(self.rate_bytes / self.rate_secs);
        }
    }

    /// The request timeout for a chunk of `len` bytes:
    /// `max(floor, 4 × (in_flight + 1) × len / rate)` (just `floor` until measured).
    pub(crate) fn timeout(&self, floor: Duration, len: u32) -> Duration {
        let Some(rate) = self.rate_bps.filter(|r| *r > 0.0) else {
            return floor;
        };
        let expected = (self.in_flight.len() + 1) as f64 * f64::from(len) / rate;
        floor.max(Duration::from_secs_f64((4.0 * expected).min(1e6)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_set_basics() {
        let mut s = ChunkSet::default();
        assert!(!s.contains(ChunkIdx(130)));
        assert!(s.insert(ChunkIdx(130)));
        assert!(!s.insert(ChunkIdx(130)));
        s.insert(ChunkIdx(0));
        assert!(s.contains(ChunkIdx(130)) && s.contains(ChunkIdx(0)));
        assert!(!s.contains(ChunkIdx(129)));
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![ChunkIdx(0), ChunkIdx(130)]
        );
        s.remove(ChunkIdx(130));
        s.remove(ChunkIdx(9999));
        assert!(!s.contains(ChunkIdx(130)));
    }

    #[test]
    fn tiers() {
        let mut p = PeerState::new(());
        assert_eq!(p.tier(ChunkIdx(1), true), Tier::Unknown);
        p.has.insert(ChunkIdx(1));
        assert_eq!(p.tier(ChunkIdx(1), true), Tier::KnownHolder);
        p.origin = true;
        assert_eq!(p.tier(ChunkIdx(2), true), Tier::Origin);
        assert_eq!(p.tier(ChunkIdx(2), false), Tier::KnownHolder);
    }

    #[test]
    fn answers_released_in_a_burst_measure_the_sustained_rate() {
        // Four 100 kB answers to requests sent at t0: the first after 100 ms,
        // the other three 1 ms apart (queued at the uploader, released
        // together). 400 kB in 103 ms is about 3.9 MB/s; the average of the
        // per-answer rates (1 MB/s, then 100 MB/s three times) is ~50 MB/s.
        let t0 = Instant::now();
        let mut p = PeerState::new(());
        for (i, ms) in [100u64, 101, 102, 103].into_iter().enumerate() {
            p.record_answer(t0 + Duration::from_millis(ms), t0, 100_000);
            if i == 0 {
                assert_eq!(p.rate_bps, Some(1_000_000.0));
            }
        }
        let r = p.rate_bps.expect("measured");
        assert!((1e6..=4e6).contains(&r), "sustained rate, not burst: {r}");
        // A steady pipeline (one 100 kB answer every 10 ms) converges to 10 MB/s.
        for k in 1..=40u64 {
            let t = t0 + Duration::from_millis(103 + 10 * k);
            p.record_answer(t, t0, 100_000);
        }
        let r = p.rate_bps.expect("measured");
        assert!((9.5e6..=10.5e6).contains(&r), "steady rate: {r}");
    }

    #[test]
    fn cap_and_timeout_follow_the_measured_rate() {
        let t0 = Instant::now();
        let q = Duration::from_millis(250);
        let floor = Duration::from_secs(1);
        let mut p = PeerState::new(());
        assert_eq!(p.cap(2, 16, q, 1000.0), 2);
        assert_eq!(p.timeout(floor, 1000), floor);
        // 1000 bytes in 10 ms: 100 kB/s; 250 ms of it is 25 chunks -> max 16.
        p.record_answer(t0 + Duration::from_millis(10), t0, 1000);
        assert_eq!(p.rate_bps, Some(100_000.0));
        assert_eq!(p.rtt, Some(Duration::from_millis(10)));
        assert_eq!(p.cap(2, 16, q, 1000.0), 16);
        assert_eq!(p.cap(2, 16, q, 10_000.0), 2);
        // 1 MB at 100 kB/s is 10 s expected: timeout 40 s.
        assert_eq!(p.timeout(floor, 1_000_000), Duration::from_secs(40));
        p.suspect = true;
        assert_eq!(p.cap(2, 16, q, 1000.0), 1);
    }
}
