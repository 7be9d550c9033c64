//! Peer-selection policies: which of the eligible peers gets a request for a chunk.
//!
//! [`Fetch`](crate::Fetch) does the bookkeeping (which peers are connected, under
//! their in-flight caps, not banned, not marked as lacking the chunk) and hands
//! the policy a list of [`Candidate`]s; the policy only ranks them. This keeps
//! policies pure and testable in isolation, and lets later versions plug in
//! topology-aware (nearest first) or load-aware choices without touching the
//! state machine.

use std::fmt;
use std::time::Duration;

use crate::ChunkIdx;
use crate::rng::SplitMix64;

/// How much we know about a candidate peer holding a chunk; lower is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// The peer announced the chunk (`PeerHas`) or the whole version
    /// (`PeerHasAll`), or it is the origin and `origin_last` is off.
    KnownHolder,
    /// The peer never said whether it holds the chunk; asking may get `NotFound`.
    Unknown,
    /// The origin (publisher) while `origin_last` is on: used only when no
    /// other candidate is free, to offload the origin to the swarm.
    Origin,
}

/// One eligible peer for a chunk, as seen by a [`SelectionPolicy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// What we know about the peer holding the chunk.
    pub tier: Tier,
    /// Requests currently outstanding to this peer.
    pub in_flight: usize,
    /// Network distance: 0 same host, 1 same rack, 2 same zone, 3 same region,
    /// 4 elsewhere (the default for peers without topology).
    pub distance: u8,
    /// Expected time for this peer to deliver one more chunk, from its
    /// measured rate and queue; `None` until measured.
    pub expected: Option<Duration>,
}

impl Candidate {
    /// The preference key of [`TieredRandom`]: nearest first, then the best
    /// [`Tier`], then the fastest expected delivery (unmeasured peers count as
    /// instant, so that they get measured).
    pub fn key(&self) -> (u8, Tier, Duration) {
        (
            self.distance,
            self.tier,
            self.expected.unwrap_or(Duration::ZERO),
        )
    }
}

/// Chooses a peer for one chunk among eligible candidates.
pub trait SelectionPolicy: fmt::Debug + Send {
    /// Returns the index into `candidates` (never empty) of the peer to ask
    /// for `chunk`, or `None` to leave the chunk unrequested for now. All
    /// randomness must come from `rng` so that runs stay reproducible.
    fn pick_peer(
        &mut self,
        chunk: ChunkIdx,
        candidates: &[Candidate],
        rng: &mut SplitMix64,
    ) -> Option<usize>;
}

/// The default policy: the best [`Candidate::key`] wins (nearest, then best
/// [`Tier`], then fastest); ties are broken uniformly at random (the random
/// draw is skipped when only one candidate is best).
#[derive(Clone, Copy, Debug, Default)]
pub struct TieredRandom;

impl SelectionPolicy for TieredRandom {
    fn pick_peer(
        &mut self,
        _chunk: ChunkIdx,
        candidates: &[Candidate],
        rng: &mut SplitMix64,
    ) -> Option<usize> {
        let best = candidates.iter().map(Candidate::key).min()?;
        let ties = candidates.iter().filter(|c| c.key() == best).count();
        let nth = if ties > 1 {
            rng.below(ties as u64) as usize
        } else {
            0
        };
        candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.key() == best)
            .nth(nth)
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(tier: Tier) -> Candidate {
        Candidate {
            tier,
            in_flight: 0,
            distance: 4,
            expected: None,
        }
    }

    #[test]
    fn nearest_then_fastest() {
        let mut rng = SplitMix64::new(1);
        let far = Candidate {
            distance: 3,
            ..cand(Tier::KnownHolder)
        };
        let near_slow = Candidate {
            distance: 1,
            expected: Some(Duration::from_millis(9)),
            ..cand(Tier::KnownHolder)
        };
        let near_fast = Candidate {
            expected: Some(Duration::from_millis(3)),
            ..near_slow
        };
        let cands = [far, near_slow, near_fast];
        assert_eq!(
            TieredRandom.pick_peer(ChunkIdx(0), &cands, &mut rng),
            Some(2)
        );
        assert_eq!(
            TieredRandom.pick_peer(ChunkIdx(0), &cands[..2], &mut rng),
            Some(1)
        );
    }

    #[test]
    fn best_tier_always_wins() {
        let mut rng = SplitMix64::new(1);
        let cands = [
            cand(Tier::Origin),
            cand(Tier::Unknown),
            cand(Tier::KnownHolder),
        ];
        for _ in 0..100 {
            assert_eq!(
                TieredRandom.pick_peer(ChunkIdx(0), &cands, &mut rng),
                Some(2)
            );
        }
        let cands = [cand(Tier::Origin), cand(Tier::Unknown)];
        assert_eq!(
            TieredRandom.pick_peer(ChunkIdx(0), &cands, &mut rng),
            Some(1)
        );
        let cands = [cand(Tier::Origin)];
        assert_eq!(
            TieredRandom.pick_peer(ChunkIdx(0), &cands, &mut rng),
            Some(0)
        );
    }

    #[test]
    fn ties_are_spread_and_reproducible() {
        let cands = [
            cand(Tier::KnownHolder),
            cand(Tier::Origin),
            cand(Tier::KnownHolder),
            cand(Tier::KnownHolder),
        ];
        let run = |seed| {
            let mut rng = SplitMix64::new(seed);
            (0..300)
                .map(|_| {
                    TieredRandom
                        .pick_peer(ChunkIdx(0), &cands, &mut rng)
                        .unwrap()
                })
                .collect::<Vec<_>>()
        };
        let picks = run(9);
        assert_eq!(picks, run(9));
        for i in [0, 2, 3] {
            let n = picks.iter().filter(|p| **p == i).count();
            assert!(n > 50, "candidate {i} picked only {n} times");
        }
        assert!(!picks.contains(&1));
    }

    #[test]
    fn empty_candidates_pick_nothing() {
        let mut rng = SplitMix64::new(0);
        assert_eq!(TieredRandom.pick_peer(ChunkIdx(0), &[], &mut rng), None);
    }
}
