//! Per-peer state of one fetch: connection, availability, lack marks, strikes.
//!
//! This is the per-peer half of the scheduler (the global half is
//! [`Fetch`](crate::Fetch)). A later issue grows it into the full per-connection
//! reconnect/retransmit state machine.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::ChunkIdx;
use crate::policy::Tier;

/// A fixed-size set of chunk indices.
#[derive(Clone, Debug, Default)]
pub(crate) struct ChunkSet {
    words: Vec<u64>,
}

impl ChunkSet {
    pub(crate) fn insert(&mut self, c: ChunkIdx) {
        let (w, b) = (c.0 as usize / 64, c.0 % 64);
        if self.words.len() <= w {
            self.words.resize(w + 1, 0);
        }
        self.words[w] |= 1 << b;
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
}

/// What one fetch knows about one peer. Kept after a disconnect (strikes, bans
/// and announcements outlive a connection within one fetch).
#[derive(Clone, Debug, Default)]
pub(crate) struct PeerState {
    pub(crate) connected: bool,
    pub(crate) origin: bool,
    pub(crate) banned: bool,
    /// Corrupt chunks received from this peer.
    pub(crate) strikes: u32,
    /// Requests to this peer that expired.
    pub(crate) timeouts: u32,
    /// Set by a timeout, cleared by any answer: a suspect peer gets at most one
    /// request at a time, so a silent peer does not swallow a full pipeline
    /// every `request_timeout`.
    pub(crate) suspect: bool,
    /// The peer announced the whole version.
    pub(crate) has_all: bool,
    /// Chunks the peer announced.
    pub(crate) has: ChunkSet,
    /// Chunk -> instant until which we do not ask this peer for it.
    pub(crate) lacks: BTreeMap<ChunkIdx, Instant>,
    /// Chunks currently requested from this peer.
    pub(crate) in_flight: BTreeSet<ChunkIdx>,
}

impl PeerState {
    /// Connected and not banned: may be asked for chunks.
    pub(crate) fn usable(&self) -> bool {
        self.connected && !self.banned
    }

    /// The current in-flight cap of this peer.
    pub(crate) fn cap(&self, max_per_peer: usize) -> usize {
        if self.suspect { 1 } else { max_per_peer }
    }

    /// Usable and under its cap.
    pub(crate) fn free(&self, max_per_peer: usize) -> bool {
        self.usable() && self.in_flight.len() < self.cap(max_per_peer)
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
        } else if self.has_all || self.has.contains(c) {
            Tier::KnownHolder
        } else {
            Tier::Unknown
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_set_basics() {
        let mut s = ChunkSet::default();
        assert!(!s.contains(ChunkIdx(130)));
        s.insert(ChunkIdx(130));
        s.insert(ChunkIdx(0));
        assert!(s.contains(ChunkIdx(130)) && s.contains(ChunkIdx(0)));
        assert!(!s.contains(ChunkIdx(129)));
        s.remove(ChunkIdx(130));
        s.remove(ChunkIdx(9999));
        assert!(!s.contains(ChunkIdx(130)));
    }

    #[test]
    fn tiers() {
        let mut p = PeerState::default();
        assert_eq!(p.tier(ChunkIdx(1), true), Tier::Unknown);
        p.has.insert(ChunkIdx(1));
        assert_eq!(p.tier(ChunkIdx(1), true), Tier::KnownHolder);
        p.origin = true;
        assert_eq!(p.tier(ChunkIdx(2), true), Tier::Origin);
        assert_eq!(p.tier(ChunkIdx(2), false), Tier::KnownHolder);
    }
}
