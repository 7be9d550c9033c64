//! [`Fetch::check_invariants`]: the invariants of `swarm/STATE.md`, asserted.

use std::fmt;
use std::hash::Hash;

use super::{ChunkState, Fetch};
use crate::ChunkIdx;

impl<P> Fetch<P>
where
    P: Clone + Eq + Hash + Ord + fmt::Debug,
{
    /// Asserts the invariants written down in `swarm/STATE.md` (with
    /// `debug_assert!`, so it is free in release builds). O(chunks × holders
    /// + peers); meant for tests.
    pub fn check_invariants(&self) {
        let mut requests = 0;
        let mut done = 0u32;
        let mut bytes = 0u64;
        let mut needed = 0;
        for (i, state) in self.states.iter().enumerate() {
            let c = ChunkIdx(i as u32);
            debug_assert_eq!(self.by_rank[self.rank_of[i] as usize], c);
            let key = (self.holders[i].len() as u32, self.rank_of[i]);
            let queued = self.needed.contains(&key);
            match state {
                ChunkState::Needed => {
                    debug_assert!(queued, "{c:?} Needed but not queued");
                    needed += 1;
                }
                ChunkState::InFlight { peers } => {
                    debug_assert!(!queued, "{c:?} InFlight and queued");
                    debug_assert!(!peers.is_empty(), "{c:?} InFlight to nobody");
                    debug_assert!(peers.len() <= self.config.endgame_max_dup.max(1));
                    requests += peers.len();
                    for (k, o) in peers.iter().enumerate() {
                        let s = self.slot_of[&o.peer];
                        let st = &self.peers[s as usize];
                        debug_assert!(self.deadlines.contains(&(o.deadline, c, s)));
                        debug_assert!(st.in_flight.contains(&c));
                        debug_assert!(st.usable(), "{:?} unusable", o.peer);
                        debug_assert!(peers[..k].iter().all(|p| p.peer != o.peer));
                    }
                }
                ChunkState::Done => {
                    debug_assert!(!queued, "{c:?} Done and queued");
                    debug_assert!(self.holders[i].is_empty() && self.near[i] == 0);
                    done += 1;
                    bytes += u64::from(self.lens[i]);
                }
            }
            self.check_holders(c);
        }
        debug_assert_eq!(needed, self.needed.len());
        debug_assert_eq!(requests, self.in_flight);
        debug_assert_eq!(requests, self.deadlines.len());
        debug_assert_eq!(done, self.chunks_done);
        debug_assert_eq!(bytes, self.bytes_done);
        debug_assert!(self.in_flight <= self.config.max_in_flight_total);
        self.check_peers();
        debug_assert!(!self.complete_emitted || self.is_complete());
        debug_assert!(!self.is_complete() || self.complete_emitted);
    }

    /// The availability index of a chunk not done matches the announcements.
    fn check_holders(&self, c: ChunkIdx) {
        let i = c.0 as usize;
        if self.states[i] == ChunkState::Done {
            return;
        }
        let mut want: Vec<u32> = (0..self.peers.len() as u32)
            .filter(|s| {
                let st = &self.peers[*s as usize];
                st.counted && st.holds(c)
            })
            .collect();
        let mut have = self.holders[i].clone();
        have.sort_unstable();
        want.sort_unstable();
        debug_assert_eq!(have, want, "{c:?} holders");
        let near = have
            .iter()
            .filter(|s| self.peers[**s as usize].distance <= 1)
            .count();
        debug_assert_eq!(near, self.near[i] as usize, "{c:?} near holders");
    }

    fn check_peers(&self) {
        let per_peer: usize = self.peers.iter().map(|st| st.in_flight.len()).sum();
        debug_assert_eq!(per_peer, self.in_flight);
        for (s, st) in self.peers.iter().enumerate() {
            let s = s as u32;
            debug_assert_eq!(self.slot_of[&st.id], s);
            debug_assert_eq!(st.counted, st.should_count());
            debug_assert_eq!(self.unknown.contains(&s), st.unknown());
            debug_assert_eq!(self.origins.contains(&s), st.usable() && st.origin);
            debug_assert!(st.in_flight.len() <= self.config.max_in_flight_per_peer);
            for c in &st.in_flight {
                let ok = matches!(&self.states[c.0 as usize],
                    ChunkState::InFlight { peers } if peers.iter().any(|o| o.peer == st.id));
                debug_assert!(ok, "{:?} lists {c:?} which is not in flight to it", st.id);
            }
            debug_assert!(!st.banned || st.strikes >= self.config.max_strikes);
        }
    }
}
