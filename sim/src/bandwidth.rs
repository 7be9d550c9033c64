//! Per-host NIC bandwidth: fluid flows sharing each host's egress and
//! ingress capacity max-min fairly.
//!
//! Every flow crosses two resources, the upload of its sender and the
//! download of its receiver, and may carry a cap of its own (a lossy path's
//! TCP ceiling). Rates are the max-min fair allocation (progressive
//! filling: repeatedly saturate the resource whose fair share is smallest and
//! freeze its flows at that share). A change (flow added or removed) only
//! recomputes the connected component of resources it touches, so the cost
//! of an event is proportional to the part of the swarm it can affect, not to
//! the whole swarm.
//!
//! Optionally every flow also crosses one resource shared by all of them
//! ([`Network::set_shared_cap`]): the CPU of a machine that runs every host,
//! as on the fan-out benchmark (8 network namespaces on 2 cores), where
//! moving a byte costs CPU time at both ends. It joins every flow into one
//! component, so it is meant for the small scenarios that model that machine.
//!
//! Time is virtual nanoseconds passed in by the caller; nothing here reads a
//! clock.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Identifies a flow while it exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(pub u32);

/// One transfer in progress.
#[derive(Clone, Debug)]
pub struct Flow<T> {
    /// Sending host.
    pub from: usize,
    /// Receiving host.
    pub to: usize,
    /// Bytes left at `updated`.
    remaining: f64,
    /// Current rate, bytes/s.
    pub rate: f64,
    /// Cap of this flow alone (bytes/s), `f64::INFINITY` for none.
    pub cap: f64,
    updated: u64,
    /// The fill that set `rate` (unique over the network's life, so a
    /// finish entry of an earlier flow in a reused slot never matches).
    generation: u64,
    /// When it finishes at `rate` (its live finish entry), if it moves.
    finish_at: Option<u64>,
    /// What the caller attached to the flow.
    pub payload: T,
}

impl<T> Flow<T> {
    /// Bytes left at time `t`.
    pub fn remaining_at(&self, t: u64) -> f64 {
        (self.remaining - self.rate * (t.saturating_sub(self.updated)) as f64 / 1e9).max(0.0)
    }
}

/// The flows of a simulated network and their max-min fair rates.
#[derive(Debug)]
pub struct Network<T> {
    up_cap: Vec<f64>,
    down_cap: Vec<f64>,
    flows: Vec<Option<Flow<T>>>,
    free: Vec<u32>,
    ups: Vec<Vec<u32>>,
    downs: Vec<Vec<u32>>,
    finish: BinaryHeap<Reverse<(u64, u32, u64)>>,
    /// Fills so far (the last one's generation).
    fills: u64,
    dirty: Vec<usize>,
    /// Per resource: the epoch of the last component walk that visited it.
    seen: Vec<u32>,
    epoch: u32,
    /// Per resource: its dense index in the current fill.
    local: Vec<u32>,
    live: usize,
    /// The capacity (bytes/s) of the resource every flow crosses, if any.
    shared_cap: Option<f64>,
    /// Resources visited by recomputations so far (a cost counter).
    pub work: u64,
}

/// A resource: the upload (`2h`) or download (`2h + 1`) of host `h`.
fn up(h: usize) -> usize {
    2 * h
}
fn down(h: usize) -> usize {
    2 * h + 1
}

impl<T> Network<T> {
    /// A network of `hosts` hosts, each with `up` / `down` capacity in bytes/s.
    pub fn new(up_cap: Vec<f64>, down_cap: Vec<f64>) -> Self {
        assert_eq!(up_cap.len(), down_cap.len(), "one capacity pair per host");
        let n = up_cap.len();
        Self {
            up_cap,
            down_cap,
            flows: Vec::new(),
            free: Vec::new(),
            ups: vec![Vec::new(); n],
            downs: vec![Vec::new(); n],
            finish: BinaryHeap::new(),
            fills: 0,
            dirty: Vec::new(),
            seen: vec![0; 2 * n + 1],
            epoch: 0,
            local: vec![0; 2 * n + 1],
            live: 0,
            shared_cap: None,
            work: 0,
        }
    }

    /// Flows in progress.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no flow is in progress.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Flows sent by `host`.
    pub fn uploads(&self, host: usize) -> usize {
        self.ups[host].len()
    }

    /// Bytes left to cross on the flows `host` sends, at time `t`.
    pub fn upload_remaining(&self, host: usize, t: u64) -> f64 {
        self.ups[host]
            .iter()
            .filter_map(|i| self.get(FlowId(*i)))
            .map(|f| f.remaining_at(t))
            .sum()
    }

    /// Flows received by `host`.
    pub fn downloads(&self, host: usize) -> usize {
        self.downs[host].len()
    }

    /// Whether `host`'s upload (`up`) or download carries at least 95 % of
    /// its capacity: a FIFO in front of it then holds a standing queue.
    pub fn saturated(&self, host: usize, up: bool) -> bool {
        let (list, cap) = if up {
            (&self.ups[host], self.up_cap[host])
        } else {
            (&self.downs[host], self.down_cap[host])
        };
        let load: f64 = list
            .iter()
            .filter_map(|i| self.flows[*i as usize].as_ref())
            .map(|f| f.rate)
            .sum();
        cap > 0.0 && load >= 0.95 * cap
    }

    /// The flow, if it still exists.
    pub fn get(&self, id: FlowId) -> Option<&Flow<T>> {
        self.flows.get(id.0 as usize).and_then(Option::as_ref)
    }

    /// Ids of the flows sent by or to `host`.
    pub fn flows_of(&self, host: usize) -> Vec<FlowId> {
        let mut v: Vec<FlowId> = self.ups[host]
            .iter()
            .chain(&self.downs[host])
            .map(|i| FlowId(*i))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Sets (or clears) a resource of `cap` bytes/s that every flow crosses
    /// besides its two NICs (module docs); effective at the next settle.
    pub fn set_shared_cap(&mut self, cap: Option<f64>) {
        self.shared_cap = cap;
        // Every component changes (joined or split again).
        self.dirty.extend(0..self.shared());
    }

    /// The shared resource's id, after every host's two.
    fn shared(&self) -> usize {
        self.up_cap.len() * 2
    }

    /// Changes the capacities of `host` (takes effect at the next [`Network::settle`]).
    pub fn set_caps(&mut self, host: usize, up_cap: f64, down_cap: f64) {
        self.up_cap[host] = up_cap;
        self.down_cap[host] = down_cap;
        self.dirty.push(up(host));
        self.dirty.push(down(host));
    }

    /// Changes one flow's own cap (0 stalls it), effective at the next [`Network::settle`].
    pub fn set_flow_cap(&mut self, t: u64, id: FlowId, cap: f64) {
        let Some(f) = self.flows.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        f.remaining = f.remaining_at(t);
        f.updated = t;
        f.cap = cap;
        let (a, b) = (up(f.from), down(f.to));
        self.dirty.push(a);
        self.dirty.push(b);
    }

    /// Starts a flow of `bytes` from `from` to `to` at time `t`; its rate is
    /// set by the next [`Network::settle`].
    pub fn add(
        &mut self,
        t: u64,
        from: usize,
        to: usize,
        bytes: f64,
        cap: f64,
        payload: T,
    ) -> FlowId {
        let flow = Flow {
            from,
            to,
            remaining: bytes.max(0.0),
            rate: 0.0,
            cap,
            updated: t,
            generation: 0,
            finish_at: None,
            payload,
        };
        let id = match self.free.pop() {
            Some(i) => {
                self.flows[i as usize] = Some(flow);
                i
            }
            None => {
                self.flows.push(Some(flow));
                (self.flows.len() - 1) as u32
            }
        };
        self.ups[from].push(id);
        self.downs[to].push(id);
        self.dirty.push(up(from));
        self.dirty.push(down(to));
        self.live += 1;
        FlowId(id)
    }

    /// Removes a flow (finished or cancelled) and returns it.
    pub fn remove(&mut self, t: u64, id: FlowId) -> Option<Flow<T>> {
        let mut f = self.flows.get_mut(id.0 as usize)?.take()?;
        f.remaining = f.remaining_at(t);
        f.updated = t;
        self.ups[f.from].retain(|i| *i != id.0);
        self.downs[f.to].retain(|i| *i != id.0);
        self.dirty.push(up(f.from));
        self.dirty.push(down(f.to));
        self.free.push(id.0);
        self.live -= 1;
        Some(f)
    }

    /// The earliest time a flow finishes at its current rate, with its id.
    pub fn next_finish(&mut self) -> Option<(u64, FlowId)> {
        while let Some(Reverse((at, id, generation))) = self.finish.peek().copied() {
            match self.get(FlowId(id)) {
                Some(f) if f.generation == generation && f.rate > 0.0 => {
                    return Some((at, FlowId(id)));
                }
                _ => {
                    self.finish.pop();
                }
            }
        }
        None
    }

    /// Recomputes the rates of every component touched since the last call, at time `t`.
    pub fn settle(&mut self, t: u64) {
        if self.dirty.is_empty() {
            return;
        }
        if self.shared_cap.is_some() {
            // The shared resource joins every flow into one component.
            self.dirty.clear();
            let all: Vec<u32> = (0..self.flows.len() as u32)
                .filter(|i| self.flows[*i as usize].is_some())
                .collect();
            self.work += all.len() as u64;
            self.fill(t, &all);
            return;
        }
        let comp = self.component();
        self.fill(t, &comp);
    }

    /// Flows of the components of the dirty resources.
    fn component(&mut self) -> Vec<u32> {
        self.epoch += 1;
        let epoch = self.epoch;
        let mut flows = Vec::new();
        let mut queue: VecDeque<usize> = self.dirty.drain(..).collect();
        while let Some(r) = queue.pop_front() {
            if std::mem::replace(&mut self.seen[r], epoch) == epoch {
                continue;
            }
            self.work += 1;
            let list = if r.is_multiple_of(2) {
                &self.ups[r / 2]
            } else {
                &self.downs[r / 2]
            };
            for &i in list {
                let f = self.flows[i as usize].as_ref().expect("listed flow exists");
                let other = if r.is_multiple_of(2) {
                    down(f.to)
                } else {
                    up(f.from)
                };
                if self.seen[other] != epoch {
                    queue.push_back(other);
                }
                flows.push(i);
            }
        }
        flows.sort_unstable();
        flows.dedup();
        flows
    }

    /// Progressive filling over the given flows (a union of whole components).
    ///
    /// Dense local indices, per resource its capacity left and its count of
    /// unfrozen flows, and a heap of fair shares whose stale entries are
    /// recognised by a per-resource version: O(F log F) for F flows.
    fn fill(&mut self, t: u64, comp: &[u32]) {
        self.fills += 1;
        let generation = self.fills;
        // Local resource index per global resource (valid where `mark` is this fill's epoch).
        self.epoch += 1;
        let epoch = self.epoch;
        let mut global: Vec<usize> = Vec::new();
        let shared = self.shared_cap.map(|_| self.shared());
        // Resources per flow: its two NICs, and the shared one if set.
        let k = 2 + usize::from(shared.is_some());
        let mut ends: Vec<[u32; 3]> = Vec::with_capacity(comp.len());
        for &i in comp {
            let f = self.flows[i as usize]
                .as_mut()
                .expect("component flow exists");
            f.remaining = f.remaining_at(t);
            f.updated = t;
            let mut e = [0u32; 3];
            for (k, r) in [up(f.from), down(f.to)]
                .into_iter()
                .chain(shared)
                .enumerate()
            {
                if self.seen[r] != epoch {
                    self.seen[r] = epoch;
                    self.local[r] = global.len() as u32;
                    global.push(r);
                }
                e[k] = self.local[r];
            }
            ends.push(e);
        }
        let nr = global.len();
        let mut cap: Vec<f64> = global
            .iter()
            .map(|&r| {
                if Some(r) == shared {
                    self.shared_cap.unwrap_or(f64::INFINITY)
                } else if r.is_multiple_of(2) {
                    self.up_cap[r / 2]
                } else {
                    self.down_cap[r / 2]
                }
            })
            .collect();
        // Flows of each resource, as compressed rows.
        let mut left = vec![0u32; nr];
        for e in &ends {
            for &r in &e[..k] {
                left[r as usize] += 1;
            }
        }
        let mut start = vec![0usize; nr + 1];
        for r in 0..nr {
            start[r + 1] = start[r] + left[r] as usize;
        }
        let mut fill_at = start.clone();
        let mut rows = vec![0u32; start[nr]];
        for (j, e) in ends.iter().enumerate() {
            for &r in &e[..k] {
                rows[fill_at[r as usize]] = j as u32;
                fill_at[r as usize] += 1;
            }
        }
        let mut version = vec![0u32; nr];
        let mut heap: BinaryHeap<Reverse<(Share, usize, u32)>> = (0..nr)
            .map(|r| Reverse((Share(cap[r] / f64::from(left[r])), r, 0)))
            .collect();
        // Per-flow caps: a flow whose own cap is below every share freezes at its cap.
        let mut capped: Vec<(Share, u32)> = comp
            .iter()
            .enumerate()
            .filter_map(|(j, i)| {
                let c = self.flows[*i as usize].as_ref().map(|f| f.cap)?;
                c.is_finite().then_some((Share(c), j as u32))
            })
            .collect();
        capped.sort();
        let mut capped = capped.into_iter().peekable();
        let mut rate: Vec<Option<f64>> = vec![None; comp.len()];
        let mut batch: Vec<(u32, f64)> = Vec::new();
        while let Some(Reverse((Share(share), r, v))) = heap.pop() {
            if v != version[r] || left[r] == 0 {
                continue;
            }
            batch.clear();
            if let Some((Share(c), j)) = capped.peek().copied()
                && c < share
            {
                capped.next();
                if rate[j as usize].is_none() {
                    batch.push((j, c));
                }
                heap.push(Reverse((Share(share), r, v)));
            } else {
                batch.extend(
                    rows[start[r]..start[r + 1]]
                        .iter()
                        .filter(|j| rate[**j as usize].is_none())
                        .map(|j| (*j, share)),
                );
            }
            for &(j, x) in &batch {
                rate[j as usize] = Some(x);
                for &rr in &ends[j as usize][..k] {
                    let rr = rr as usize;
                    cap[rr] = (cap[rr] - x).max(0.0);
                    left[rr] -= 1;
                    version[rr] += 1;
                    if left[rr] > 0 {
                        heap.push(Reverse((
                            Share(cap[rr] / f64::from(left[rr])),
                            rr,
                            version[rr],
                        )));
                    }
                }
            }
            self.work += 1;
        }
        for (j, &i) in comp.iter().enumerate() {
            let f = self.flows[i as usize].as_mut().expect("flow");
            let x = rate[j].unwrap_or(0.0);
            let at = (x > 0.0).then(|| t + (f.remaining / x * 1e9).ceil() as u64);
            if x == f.rate && f.generation != 0 && at == f.finish_at {
                // Unchanged: its finish entry still holds.
                continue;
            }
            f.rate = x;
            f.generation = generation;
            f.finish_at = at;
            if let Some(at) = at {
                self.finish.push(Reverse((at, i, f.generation)));
            }
        }
    }
}

/// A totally ordered non-negative share (bytes/s).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Share(f64);
impl Eq for Share {}
impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Share {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(n: &Network<()>) -> Vec<f64> {
        n.flows.iter().flatten().map(|f| f.rate).collect()
    }

    #[test]
    fn one_flow_gets_the_smaller_side() {
        let mut n = Network::new(vec![100.0, 100.0], vec![100.0, 40.0]);
        n.add(0, 0, 1, 1000.0, f64::INFINITY, ());
        n.settle(0);
        assert_eq!(rates(&n), vec![40.0]);
        assert_eq!(n.next_finish().map(|x| x.0), Some(25_000_000_000));
    }

    #[test]
    fn leftover_capacity_is_redistributed() {
        // Host 0 uploads to 1 and 2; host 2 also downloads from host 3.
        // Download of 2 (100) is shared by 0->2 and 3->2: 50 each; then 0->1
        // gets the rest of 0's upload: 100 - 50 = 50... unless 1's download
        // limits it. With 0's upload 120: 0->2 = 50, 0->1 = 70.
        let mut n = Network::new(vec![120.0, 100.0, 100.0, 100.0], vec![100.0; 4]);
        let a = n.add(0, 0, 1, 1e6, f64::INFINITY, ());
        let b = n.add(0, 0, 2, 1e6, f64::INFINITY, ());
        let c = n.add(0, 3, 2, 1e6, f64::INFINITY, ());
        n.settle(0);
        let r = |id| n.get(id).expect("flow").rate;
        assert!((r(b) - 50.0).abs() < 1e-9 && (r(c) - 50.0).abs() < 1e-9);
        assert!((r(a) - 70.0).abs() < 1e-9, "got {}", r(a));
    }

    #[test]
    fn a_flow_cap_frees_capacity_for_the_others() {
        let mut n = Network::new(vec![100.0, 100.0, 100.0], vec![100.0; 3]);
        let a = n.add(0, 0, 1, 1e6, 10.0, ());
        let b = n.add(0, 0, 2, 1e6, f64::INFINITY, ());
        n.settle(0);
        assert!((n.get(a).expect("a").rate - 10.0).abs() < 1e-9);
        assert!((n.get(b).expect("b").rate - 90.0).abs() < 1e-9);
    }

    #[test]
    fn a_shared_resource_caps_the_sum_of_all_flows() {
        // Three disjoint pairs, each could run at 100; the shared 150 splits
        // evenly, and a flow capped lower leaves its share to the others.
        let mut n = Network::new(vec![100.0; 6], vec![100.0; 6]);
        let a = n.add(0, 0, 1, 1e6, f64::INFINITY, ());
        let b = n.add(0, 2, 3, 1e6, f64::INFINITY, ());
        let c = n.add(0, 4, 5, 1e6, 20.0, ());
        n.settle(0);
        assert!((n.get(a).unwrap().rate - 100.0).abs() < 1e-9);
        n.set_shared_cap(Some(150.0));
        n.settle(0);
        let r: Vec<f64> = [a, b, c].iter().map(|f| n.get(*f).unwrap().rate).collect();
        assert!((r[2] - 20.0).abs() < 1e-9, "{r:?}");
        assert!(
            (r[0] - 65.0).abs() < 1e-9 && (r[1] - 65.0).abs() < 1e-9,
            "{r:?}"
        );
        n.set_shared_cap(None);
        n.settle(0);
        assert!((n.get(b).unwrap().rate - 100.0).abs() < 1e-9);
    }

    #[test]
    fn removing_a_flow_speeds_up_its_neighbours_and_keeps_progress() {
        let mut n = Network::new(vec![100.0, 100.0, 100.0], vec![100.0; 3]);
        let a = n.add(0, 0, 1, 100.0, f64::INFINITY, ());
        let b = n.add(0, 0, 2, 100.0, f64::INFINITY, ());
        n.settle(0);
        // Both at 50/s; after 1 s each has 50 bytes left.
        let gone = n.remove(1_000_000_000, a).expect("a");
        assert!((gone.remaining_at(1_000_000_000) - 50.0).abs() < 1e-6);
        n.settle(1_000_000_000);
        let f = n.get(b).expect("b");
        assert!((f.rate - 100.0).abs() < 1e-9);
        assert_eq!(n.next_finish(), Some((1_500_000_000, b)));
    }

    #[test]
    fn a_reused_flow_slot_does_not_inherit_the_old_finish_time() {
        // Flow a finishes at 1 s; its slot is reused at once by b (10x the
        // bytes). The heap still holds a's (1 s, slot, generation) entry:
        // b must finish at 11 s, not at once.
        let mut n = Network::new(vec![100.0, 100.0], vec![100.0, 100.0]);
        let a = n.add(0, 0, 1, 100.0, f64::INFINITY, ());
        n.settle(0);
        assert_eq!(n.next_finish(), Some((1_000_000_000, a)));
        n.remove(1_000_000_000, a).expect("a");
        let b = n.add(1_000_000_000, 0, 1, 1000.0, f64::INFINITY, ());
        assert_eq!(a, b, "the slot is reused");
        n.settle(1_000_000_000);
        assert_eq!(n.next_finish(), Some((11_000_000_000, b)));
    }

    #[test]
    fn a_flow_whose_rate_holds_keeps_its_finish_entry() {
        // Host 0 uploads to 1..=4 at 25 each (its upload is the limit);
        // 5 -> 6 shares nothing with them. Then 5 -> 1 joins 1's download
        // (100 - 25 left): 0's flows keep their rates, so none of them needs
        // a new finish entry, and the finish times stay right.
        let mut n = Network::new(vec![100.0; 7], vec![100.0; 7]);
        for to in 1..=4 {
            n.add(0, 0, to, 100.0, f64::INFINITY, ());
        }
        n.settle(0);
        assert_eq!(n.finish.len(), 4);
        for k in 1..=10u64 {
            let id = n.add(k, 5, 1, 1e9, 30.0, ());
            n.settle(k);
            n.remove(k, id);
            n.settle(k);
        }
        // One entry per added flow at most; none for the four unchanged.
        assert!(n.finish.len() <= 4 + 10, "{} entries", n.finish.len());
        assert_eq!(n.next_finish().map(|x| x.0), Some(4_000_000_000));
    }

    #[test]
    fn saturation_is_at_least_95_percent_of_the_rate() {
        let mut n = Network::new(vec![100.0; 3], vec![100.0; 3]);
        n.add(0, 0, 1, 1e6, 90.0, ());
        n.settle(0);
        assert!(!n.saturated(0, true) && !n.saturated(1, false));
        n.add(0, 0, 2, 1e6, f64::INFINITY, ());
        n.settle(0);
        // 0's upload is shared: 50 each (the cap of 90 does not bind).
        assert!(n.saturated(0, true), "0's upload carries 100");
        assert!(!n.saturated(1, false), "1 receives 50 of 100");
        assert!(!n.saturated(2, true), "2 sends nothing");
    }

    #[test]
    fn untouched_components_are_not_recomputed() {
        let mut n = Network::new(vec![100.0; 4], vec![100.0; 4]);
        n.add(0, 0, 1, 1e6, f64::INFINITY, ());
        n.settle(0);
        let before = n.work;
        n.add(0, 2, 3, 1e6, f64::INFINITY, ());
        n.settle(0);
        // Only host 2's upload and host 3's download were visited (+1 fill step).
        assert!(n.work - before <= 3, "visited {}", n.work - before);
    }

    proptest::proptest! {
        /// Max-min fairness: no resource is over capacity, and every flow is
        /// bottlenecked (it crosses a saturated resource where it has the
        /// largest rate, or sits at its own cap).
        #[test]
        fn allocation_is_feasible_and_max_min_fair(
            edges in proptest::collection::vec((0usize..6, 0usize..6, proptest::option::of(1.0f64..50.0)), 1..20),
            caps in proptest::collection::vec(10.0f64..200.0, 12),
        ) {
            let mut n = Network::new(caps[..6].to_vec(), caps[6..].to_vec());
            for (a, b, c) in &edges {
                n.add(0, *a, *b, 1e6, c.unwrap_or(f64::INFINITY), ());
            }
            n.settle(0);
            let flows: Vec<&Flow<()>> = n.flows.iter().flatten().collect();
            let load = |res: usize| -> f64 {
                flows.iter().filter(|f| if res.is_multiple_of(2) { up(f.from) == res } else { down(f.to) == res }).map(|f| f.rate).sum()
            };
            let cap = |res: usize| if res.is_multiple_of(2) { n.up_cap[res / 2] } else { n.down_cap[res / 2] };
            for res in 0..12 {
                proptest::prop_assert!(load(res) <= cap(res) * (1.0 + 1e-9) + 1e-9);
            }
            for f in &flows {
                let at_cap = (f.rate - f.cap).abs() < 1e-6;
                let bottleneck = [up(f.from), down(f.to)].into_iter().any(|res| {
                    let saturated = (load(res) - cap(res)).abs() < 1e-6 * cap(res);
                    let largest = flows.iter()
                        .filter(|g| if res.is_multiple_of(2) { up(g.from) == res } else { down(g.to) == res })
                        .all(|g| g.rate <= f.rate + 1e-6);
                    saturated && largest
                });
                proptest::prop_assert!(at_cap || bottleneck, "flow {}->{} at {} not bottlenecked", f.from, f.to, f.rate);
            }
        }
    }
}
