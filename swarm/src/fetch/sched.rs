//! The global half of the scheduler: the availability index (holders per
//! chunk, rarest-first queue), chunk and peer selection (topology, rack
//! responsibility, origin offload, endgame) and request bookkeeping.
//!
//! Costs are written down in `swarm/STATE.md` ("Selection").

use std::fmt;
use std::hash::Hash;
use std::time::{Duration, Instant};

use super::{Action, ChunkState, Fetch, Outstanding, responsible_rank};
use crate::ChunkIdx;
use crate::policy::Candidate;

/// Peers at this distance or nearer are "in the rack".
const NEAR: u8 = 1;

/// Eligible peers for one chunk, as the policy sees them and as slots.
#[derive(Default)]
struct Cands {
    list: Vec<Candidate>,
    slots: Vec<u32>,
}

impl Cands {
    fn clear(&mut self) {
        self.list.clear();
        self.slots.clear();
    }

    /// Keeps the candidates at distance ≤ 1; returns whether any far one was dropped.
    fn keep_near(&mut self) -> bool {
        let before = self.list.len();
        let mut i = 0;
        while i < self.list.len() {
            if self.list[i].distance > NEAR {
                self.list.swap_remove(i);
                self.slots.swap_remove(i);
            } else {
                i += 1;
            }
        }
        self.list.len() < before
    }
}

impl<P> Fetch<P>
where
    P: Clone + Eq + Hash + Ord + fmt::Debug,
{
    /// Brings the availability index in line with whether slot `s` should be
    /// counted (connected, unbanned, non-origin), and refreshes the
    /// `unknown` and `origins` sets. O(chunks it holds) when that changes.
    pub(super) fn sync_counted(&mut self, s: u32, now: Instant) {
        let st = &self.peers[s as usize];
        let (want, unknown) = (st.should_count(), st.unknown());
        let origin = st.usable() && st.origin;
        if unknown {
            self.unknown.insert(s);
        } else {
            self.unknown.remove(&s);
        }
        if !origin {
            self.origins.remove(&s);
        } else if self.origins.insert(s) {
            for since in &mut self.fetchable_since {
                since.get_or_insert(now);
            }
        }
        if want == st.counted {
            return;
        }
        let held: Vec<ChunkIdx> = if st.has_all {
            (0..self.states.len() as u32).map(ChunkIdx).collect()
        } else {
            st.has.iter().collect()
        };
        self.peers[s as usize].counted = want;
        for c in held {
            if want {
                self.add_holder(c, s, now);
            } else {
                self.remove_holder(c, s);
            }
        }
    }

    /// Records counted slot `s` as a holder of `c` (no-op for done chunks).
    pub(super) fn add_holder(&mut self, c: ChunkIdx, s: u32, now: Instant) {
        let i = c.0 as usize;
        if self.states[i] == ChunkState::Done {
            return;
        }
        let near = u32::from(self.peers[s as usize].distance <= NEAR);
        self.requeue(c, |f| {
            f.holders[i].push(s);
            f.near[i] += near;
        });
        self.fetchable_since[i].get_or_insert(now);
    }

    /// Forgets slot `s` as a holder of `c` (no-op for done chunks).
    pub(super) fn remove_holder(&mut self, c: ChunkIdx, s: u32) {
        let i = c.0 as usize;
        let Some(pos) = self.holders[i].iter().position(|h| *h == s) else {
            return;
        };
        let near = u32::from(self.peers[s as usize].distance <= NEAR);
        self.requeue(c, |f| {
            f.holders[i].swap_remove(pos);
            f.near[i] -= near;
        });
    }

    /// Applies `change` to `c`'s availability, keeping the rarest-first
    /// queue ordered if `c` is `Needed`.
    fn requeue(&mut self, c: ChunkIdx, change: impl FnOnce(&mut Self)) {
        let i = c.0 as usize;
        let key = (self.holders[i].len() as u32, self.rank_of[i]);
        let queued = self.needed.remove(&key);
        change(self);
        if queued {
            self.needed
                .insert((self.holders[i].len() as u32, self.rank_of[i]));
        }
    }

    /// Moves slot `s` to `distance`, fixing the near-holder counts.
    pub(super) fn set_distance(&mut self, s: u32, distance: u8) {
        let st = &self.peers[s as usize];
        let (was, is) = (st.distance <= NEAR, distance <= NEAR);
        if st.counted && was != is {
            for i in 0..self.holders.len() {
                if self.holders[i].contains(&s) {
                    self.near[i] = if is {
                        self.near[i] + 1
                    } else {
                        self.near[i] - 1
                    };
                }
            }
        }
        self.peers[s as usize].distance = distance;
    }

    /// This node is the rack member responsible for fetching `c` from afar.
    fn mine(&self, c: ChunkIdx) -> bool {
        responsible_rank(c, self.local_size) == self.local_rank % self.local_size
    }

    /// When `c` may be fetched from afar by a member not responsible for it.
    fn remote_ok_at(&self, c: ChunkIdx) -> Option<Instant> {
        self.fetchable_since[c.0 as usize].map(|t| t + self.config.remote_wait)
    }

    pub(super) fn schedule(&mut self, now: Instant) -> Option<Action<P>> {
        if self.is_complete() {
            return None;
        }
        let focus = if self.rescan {
            self.focus = None;
            None
        } else {
            Some(self.focus.take()?)
        };
        let cap = self.window();
        if self.in_flight < cap {
            let pick = match self.pick_needed(now, focus.as_deref()) {
                Some(p) => {
                    if !self.rescan {
                        self.focus = focus; // more of them may be pickable
                    }
                    Some(p)
                }
                None if focus.is_none() => self.pick_endgame(now),
                None => None,
            };
            if let Some((chunk, s)) = pick {
                self.assign(now, chunk, s);
                let peer = self.peers[s as usize].id.clone();
                return Some(Action::Request { peer, chunk });
            }
        }
        self.rescan = false;
        None
    }

    /// The eligible peers for `c`: free, not marked as lacking it, not asked
    /// for it already; known holders, peers of unknown availability, and the
    /// origin when no holder is usable for `c` (or `origin_last` is off).
    fn candidates(&self, c: ChunkIdx, now: Instant, out: &mut Cands) {
        out.clear();
        let i = c.0 as usize;
        let asked: &[Outstanding<P>] = match &self.states[i] {
            ChunkState::InFlight { peers } => peers,
            _ => &[],
        };
        let origin_ok = !self.config.origin_last
            || self.holders[i]
                .iter()
                .all(|s| self.peers[*s as usize].lacks(c, now));
        let origins = self.origins.iter().filter(|_| origin_ok);
        let all = self.holders[i].iter().chain(&self.unknown).chain(origins);
        for &s in all {
            let st = &self.peers[s as usize];
            let n = st.in_flight.len();
            if n >= self.cap(st)
                || st.busy(now)
                || st.lacks(c, now)
                || asked.iter().any(|o| o.peer == st.id)
            {
                continue;
            }
            let expected = st.rate_bps.filter(|r| *r > 0.0).map(|r| {
                Duration::from_secs_f64(((n + 1) as f64 * f64::from(self.lens[i]) / r).min(1e6))
            });
            out.list.push(Candidate {
                tier: st.tier(c, self.config.origin_last),
                in_flight: n,
                distance: st.distance,
                expected,
            });
            out.slots.push(s);
        }
    }

    /// Asks the policy to choose among `cands`.
    fn choose(&mut self, c: ChunkIdx, cands: &Cands) -> Option<u32> {
        if cands.list.is_empty() {
            return None;
        }
        let i = self.policy.pick_peer(c, &cands.list, &mut self.rng)?;
        cands.slots.get(i).copied()
    }

    /// Narrows `cands` to what the topology rules allow for `c`; returns
    /// whether far candidates were dropped only because `c` waits for its
    /// responsible rack member.
    fn apply_rack_rule(&self, c: ChunkIdx, now: Instant, cands: &mut Cands) -> bool {
        if self.near[c.0 as usize] > 0 {
            // Held in the rack: wait for a near holder rather than cross racks.
            cands.keep_near();
            return false;
        }
        let waited = self.remote_ok_at(c).is_some_and(|t| t <= now);
        if self.mine(c) || waited {
            return false;
        }
        cands.keep_near()
    }

    /// Slots that could take a request now: usable, under their cap, not
    /// backed off after `Busy`. Every candidate of every chunk is one of them.
    fn free_slots(&self, now: Instant) -> Vec<u32> {
        (0..self.peers.len() as u32)
            .filter(|s| {
                let st = &self.peers[*s as usize];
                st.usable() && st.in_flight.len() < self.cap(st) && !st.busy(now)
            })
            .collect()
    }

    /// One of the `rarest_window` rarest needed chunks with an allowed
    /// candidate (seeded uniform choice), and its peer. Also recomputes
    /// `remote_wakeup` when the walk covers the whole queue.
    ///
    /// Cost: the free slots are found first (O(peers)); with none the walk
    /// is skipped (nothing could be asked; whatever frees a slot, an answer
    /// or a backoff's end, comes with an input or a timer that rescans). A
    /// chunk none of whose announced holders is free is skipped in
    /// O(free) before its candidates are built (unless a free peer is of
    /// unknown availability, or is the origin and the chunk has no holder or
    /// some peer has a lack mark). With `focus` (only announcements
    /// since the last fruitless scan) only those chunks are walked, in
    /// rarest-first order; nothing else can have gained a candidate.
    fn pick_needed(&mut self, now: Instant, focus: Option<&[ChunkIdx]>) -> Option<(ChunkIdx, u32)> {
        let free = self.free_slots(now);
        if free.is_empty() {
            self.remote_wakeup = None;
            return None;
        }
        // (slot, near, unknown, origin) of each free slot, for the quick test below.
        let free: Vec<(u32, bool, bool, bool)> = free
            .iter()
            .map(|s| {
                let st = &self.peers[*s as usize];
                (*s, st.distance <= NEAR, self.unknown.contains(s), st.origin)
            })
            .collect();
        // With no lack marks anywhere, the origin is a candidate only for chunks without holders.
        let any_lacks = self.peers.iter().any(|st| !st.lacks.is_empty());
        let idle = self.in_flight == 0;
        let window = self.config.rarest_window.max(1);
        let near_unknown = self
            .unknown
            .iter()
            .any(|s| self.peers[*s as usize].distance <= NEAR);
        let mut wake: Option<Instant> = None;
        let mut fallback = None;
        let mut cands = Cands::default();
        let mut found: Vec<(ChunkIdx, Cands)> = Vec::new();
        let mut whole_walk = focus.is_none();
        let narrow: Option<Vec<(u32, u32)>> = focus.map(|f| {
            let mut keys: Vec<(u32, u32)> = f
                .iter()
                .filter(|c| self.states.get(c.0 as usize) == Some(&ChunkState::Needed))
                .map(|c| {
                    (
                        self.holders[c.0 as usize].len() as u32,
                        self.rank_of[c.0 as usize],
                    )
                })
                .collect();
            keys.sort_unstable();
            keys.dedup();
            keys
        });
        let keys: Box<dyn Iterator<Item = &(u32, u32)> + '_> = match &narrow {
            Some(v) => Box::new(v.iter()),
            None => Box::new(self.needed.iter()),
        };
        for key in keys {
            let c = self.by_rank[key.1 as usize];
            let i = c.0 as usize;
            let waiting =
                self.near[i] == 0 && !self.mine(c) && self.remote_ok_at(c).is_some_and(|t| t > now);
            if waiting {
                wake = wake.min(self.remote_ok_at(c)).or(self.remote_ok_at(c));
                if !near_unknown && (fallback.is_some() || !idle) {
                    continue; // O(1) skip: nothing but far peers could serve it now
                }
            }
            // Mirror of `candidates` + `apply_rack_rule`, as a necessary condition.
            let origin_ok = !self.config.origin_last || any_lacks || self.holders[i].is_empty();
            let rack_near_only = self.near[i] > 0
                || !(self.mine(c) || self.remote_ok_at(c).is_some_and(|t| t <= now));
            let near_only = self.near[i] > 0 || (rack_near_only && !(idle && fallback.is_none()));
            let could = free.iter().any(|&(s, near, unknown, origin)| {
                (near || !near_only)
                    && (unknown || (origin && origin_ok) || self.peers[s as usize].holds(c))
            });
            if !could {
                continue; // no free peer could serve it: no candidate
            }
            self.candidates(c, now, &mut cands);
            if self.apply_rack_rule(c, now, &mut cands) && idle && fallback.is_none() {
                fallback = Some(c);
            }
            if !cands.list.is_empty() {
                found.push((c, std::mem::take(&mut cands)));
                if found.len() >= window {
                    whole_walk = false;
                    break;
                }
            }
        }
        if whole_walk {
            self.remote_wakeup = wake;
        }
        while !found.is_empty() {
            let k = if found.len() > 1 {
                self.rng.below(found.len() as u64) as usize
            } else {
                0
            };
            let (c, cands) = found.swap_remove(k);
            if let Some(s) = self.choose(c, &cands) {
                return Some((c, s));
            }
        }
        // Nothing in flight and only far work left: use the idle capacity.
        let c = fallback?;
        self.candidates(c, now, &mut cands);
        self.choose(c, &cands).map(|s| (c, s))
    }

    /// Endgame: once nothing is `Needed`, a duplicate request for the oldest
    /// in-flight chunk with fewer than `endgame_max_dup` requests and a free
    /// allowed holder not asked yet.
    fn pick_endgame(&mut self, now: Instant) -> Option<(ChunkIdx, u32)> {
        if !self.config.endgame || !self.needed.is_empty() || self.config.endgame_max_dup < 2 {
            return None;
        }
        if self.free_slots(now).is_empty() {
            return None;
        }
        let max = self.config.endgame_max_dup;
        let mut cands = Cands::default();
        let oldest: Vec<ChunkIdx> = self.deadlines.iter().map(|(_, c, _)| *c).collect();
        for c in oldest {
            match &self.states[c.0 as usize] {
                ChunkState::InFlight { peers } if peers.len() < max => {}
                _ => continue,
            }
            self.candidates(c, now, &mut cands);
            self.apply_rack_rule(c, now, &mut cands);
            if let Some(s) = self.choose(c, &cands) {
                return Some((c, s));
            }
        }
        None
    }

    /// Sends a request for `chunk` to slot `s`.
    pub(super) fn assign(&mut self, now: Instant, chunk: ChunkIdx, s: u32) {
        let i = chunk.0 as usize;
        let st = &self.peers[s as usize];
        let deadline = now + st.timeout(self.config.request_timeout, self.lens[i]);
        let req = Outstanding {
            peer: st.id.clone(),
            sent: now,
            deadline,
        };
        match &mut self.states[i] {
            ChunkState::InFlight { peers } => peers.push(req),
            state => {
                debug_assert_eq!(*state, ChunkState::Needed);
                *state = ChunkState::InFlight { peers: vec![req] };
                self.needed
                    .remove(&(self.holders[i].len() as u32, self.rank_of[i]));
            }
        }
        self.deadlines.insert((deadline, chunk, s));
        self.peers[s as usize].in_flight.insert(chunk);
        self.in_flight += 1;
    }

    /// Removes the request for `chunk` outstanding to slot `s` (if any); the
    /// chunk returns to `Needed` when it was the last one.
    pub(super) fn take_request(&mut self, chunk: ChunkIdx, s: u32) -> Option<Outstanding<P>> {
        let i = chunk.0 as usize;
        let ChunkState::InFlight { peers } = &mut self.states[i] else {
            return None;
        };
        let id = &self.peers[s as usize].id;
        let pos = peers.iter().position(|o| &o.peer == id)?;
        let req = peers.remove(pos);
        if peers.is_empty() {
            self.states[i] = ChunkState::Needed;
            self.needed
                .insert((self.holders[i].len() as u32, self.rank_of[i]));
        }
        self.deadlines.remove(&(req.deadline, chunk, s));
        self.peers[s as usize].in_flight.remove(&chunk);
        self.in_flight -= 1;
        self.rescan = true;
        Some(req)
    }

    /// Marks `chunk` done (ignoring out-of-range and already-done chunks).
    /// Its requests to peers other than slot `source` get an [`Action::Cancel`].
    pub(super) fn mark_done(&mut self, chunk: ChunkIdx, source: Option<u32>) {
        let i = chunk.0 as usize;
        match self.states.get(i) {
            None | Some(ChunkState::Done) => return,
            Some(ChunkState::Needed) => {
                self.needed
                    .remove(&(self.holders[i].len() as u32, self.rank_of[i]));
            }
            Some(ChunkState::InFlight { peers }) => {
                let asked: Vec<P> = peers.iter().map(|o| o.peer.clone()).collect();
                for peer in asked {
                    let s = self.slot_of[&peer];
                    self.take_request(chunk, s);
                    if Some(s) != source {
                        self.actions.push_back(Action::Cancel { peer, chunk });
                    }
                }
                let queued = (self.holders[i].len() as u32, self.rank_of[i]);
                self.needed.remove(&queued);
            }
        }
        self.states[i] = ChunkState::Done;
        self.holders[i] = Vec::new();
        self.near[i] = 0;
        self.chunks_done += 1;
        self.bytes_done += u64::from(self.lens[i]);
        self.maybe_complete();
    }
}
