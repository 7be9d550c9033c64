//! Faults and connections: partitions, crashes and restarts, loss, slow and
//! Byzantine nodes, the origin dying; connection loss and reconnection.

use swarm::Input;
use swarm::serve::UploadGate;

use super::*;

impl World {
    pub(crate) fn schedule_faults(&mut self) {
        for f in self.sc.faults.clone() {
            match f {
                Fault::Partition {
                    at_s,
                    until_s,
                    select,
                } => {
                    let hosts = self.select(&select);
                    self.push(secs(at_s), Ev::PartitionStart(hosts.clone()));
                    self.push(secs(until_s), Ev::PartitionEnd(hosts));
                }
                Fault::Crash {
                    at_s,
                    restart_s,
                    disk,
                    silent,
                    select,
                } => {
                    for host in self.select(&select) {
                        self.push(secs(at_s), Ev::Crash { host, silent });
                        if let Some(r) = restart_s {
                            self.pending_restarts += 1;
                            self.push(secs(r), Ev::Restart { host, disk });
                        }
                    }
                }
                Fault::Loss {
                    rate,
                    at_s,
                    until_s,
                } => {
                    self.push(secs(at_s), Ev::LossStart(rate));
                    if let Some(u) = until_s {
                        self.push(secs(u), Ev::LossEnd);
                    }
                }
                Fault::Slow { factor, select } => {
                    for h in self.select(&select) {
                        let host = &mut self.hosts[h as usize];
                        host.slow = factor;
                        let bps = host.base_bps * factor;
                        self.net.set_caps(h as usize, bps, bps);
                    }
                }
                Fault::Byzantine { select } => {
                    for h in self.select(&select) {
                        self.hosts[h as usize].byzantine = true;
                    }
                }
                Fault::OriginDies { after_copies } => self.origin_dies_after = Some(after_copies),
            }
        }
    }

    pub(crate) fn apply_fault(&mut self, ev: Ev) {
        match ev {
            Ev::ConnDown { a, b, timeout } => self.conn_down(a, b, timeout),
            Ev::ConnUp { a, b } => self.conn_up(a, b),
            Ev::Crash { host, silent } => self.crash(host, silent),
            Ev::Restart { host, disk } => {
                self.pending_restarts -= 1;
                self.restart(host, disk);
            }
            Ev::PartitionStart(hosts) => self.partition(&hosts, true),
            Ev::PartitionEnd(hosts) => self.partition(&hosts, false),
            Ev::LossStart(rate) => self.loss = rate,
            Ev::LossEnd => {
                self.loss = 0.0;
                self.quiet_at = self.quiet_at.max(self.t);
            }
            other => unreachable!("not a fault event: {other:?}"),
        }
    }

    fn set_up(&mut self, a: HostId, b: HostId, up: bool) {
        for (x, y) in [(a, b), (b, a)] {
            if let Some(i) = self.nbr_pos(x, y) {
                self.hosts[x as usize].up[i] = up;
            }
        }
    }

    /// The transfers between `a` and `b`, either way.
    fn flows_between(&self, a: HostId, b: HostId) -> Vec<crate::bandwidth::FlowId> {
        let (a, b) = (a as usize, b as usize);
        self.net
            .flows_of(a)
            .into_iter()
            .filter(|id| {
                self.net
                    .get(*id)
                    .is_some_and(|f| (f.from, f.to) == (a, b) || (f.from, f.to) == (b, a))
            })
            .collect()
    }

    fn drop_flows_between(&mut self, a: HostId, b: HostId) {
        self.drop_waiting(a, b, |_| true);
        self.drop_waiting(b, a, |_| true);
        for id in self.flows_between(a, b) {
            self.drop_flow(id);
        }
    }

    /// The connection is declared dead on both sides (a crash's reset, or
    /// the peer timeout of a partition that is still in force).
    fn conn_down(&mut self, a: HostId, b: HostId, timeout: bool) {
        let (ga, gb) = (self.hosts[a as usize].group, self.hosts[b as usize].group);
        if timeout && ga == gb {
            return; // healed in time: the connection survived
        }
        self.parked.retain(|e| {
            e.endpoints()
                .is_none_or(|(x, y)| !((x == a && y == b) || (x == b && y == a)))
        });
        let was_up = self
            .nbr_pos(a, b)
            .is_some_and(|i| self.hosts[a as usize].up[i]);
        self.set_up(a, b, false);
        self.drop_flows_between(a, b);
        if was_up {
            for (x, y) in [(a, b), (b, a)] {
                if self.hosts[x as usize].alive {
                    self.feed(x, None, Input::PeerDisconnected { peer: y });
                }
            }
        }
        self.maybe_redial(a, b, ms(self.sc.swarm.reconnect_ms));
    }

    fn maybe_redial(&mut self, a: HostId, b: HostId, delay: u64) {
        let (ha, hb) = (&self.hosts[a as usize], &self.hosts[b as usize]);
        if ha.alive && hb.alive && ha.group == hb.group {
            let jitter = self.rand_below(delay / 4 + 1);
            self.push(self.t + delay + jitter, Ev::ConnUp { a, b });
        }
    }

    fn conn_up(&mut self, a: HostId, b: HostId) {
        let (ha, hb) = (&self.hosts[a as usize], &self.hosts[b as usize]);
        let already = self.nbr_pos(a, b).is_some_and(|i| ha.up[i]);
        if already || !ha.alive || !hb.alive || ha.group != hb.group {
            return;
        }
        self.set_up(a, b, true);
        for (x, y) in [(a, b), (b, a)] {
            if x != ORIGIN {
                self.peer_up_in_fetch(x, y);
            }
            // Hello carries the latest roots: a peer behind learns of newer versions.
            let (kx, ky) = (self.hosts[x as usize].known, self.hosts[y as usize].known);
            if let Some(k) = kx
                && ky.is_none_or(|v| v < k)
                && y != ORIGIN
            {
                let at = self.t + 2 * self.latency(x, y);
                self.push(
                    at,
                    Ev::Learn {
                        host: y,
                        version: k,
                    },
                );
            }
        }
    }

    fn crash(&mut self, host: HostId, silent: bool) {
        let h = &mut self.hosts[host as usize];
        if !h.alive {
            return;
        }
        h.alive = false;
        h.incarnation += 1;
        h.fetch = None;
        h.timer = None;
        h.tick_pending = false;
        for (g, tok) in h.store.iter().enumerate() {
            if *tok != 0 {
                self.copies[g] -= 1;
            }
        }
        let conns: Vec<(HostId, HostId)> = self
            .pairs
            .keys()
            .filter(|(s, c)| *s == host || *c == host)
            .copied()
            .collect();
        for (s, c) in conns {
            self.drop_waiting(s, c, |_| true);
        }
        for id in self.net.flows_of(host as usize) {
            self.drop_flow(id);
        }
        self.hosts[host as usize].gate = UploadGate::new(self.sc.swarm.upload_slots as usize);
        // The kernel resets the connections: peers notice after one latency
        // (a dead host resets nothing: they notice after the peer timeout).
        let timeout = ms(self.sc.swarm.peer_timeout_ms);
        for p in self.hosts[host as usize].nbrs.clone() {
            let at = self.t
                + if silent {
                    timeout
                } else {
                    self.latency(host, p)
                };
            self.push(
                at,
                Ev::ConnDown {
                    a: p,
                    b: host,
                    timeout: false,
                },
            );
        }
        self.quiet_at = self.quiet_at.max(self.t);
    }

    fn restart(&mut self, host: HostId, disk: Disk) {
        let h = &mut self.hosts[host as usize];
        if h.alive {
            return;
        }
        h.alive = true;
        if disk == Disk::Lost {
            h.store.iter_mut().for_each(|t| *t = 0);
            h.log.iter_mut().for_each(Vec::clear);
            h.known = None;
            h.current = None;
            h.done_at.iter_mut().for_each(|d| *d = None);
        }
        for (g, tok) in h.store.iter().enumerate() {
            if *tok != 0 {
                self.copies[g] += 1;
            }
        }
        // A kept disk keeps the saved roots: resume the latest known version.
        if let Some(k) = self.hosts[host as usize].known
            && self.hosts[host as usize].current != Some(k)
        {
            self.hosts[host as usize].known = None;
            self.learn(host, k);
        }
        for p in self.hosts[host as usize].nbrs.clone() {
            let d = 2 * self.latency(host, p);
            self.maybe_redial(host, p, d.max(1));
        }
        self.quiet_at = self.quiet_at.max(self.t);
    }

    fn partition(&mut self, hosts: &[HostId], start: bool) {
        let group = if start {
            1 + self.rand_below(u64::from(u32::MAX - 1)) as u32
        } else {
            0
        };
        for h in hosts {
            self.hosts[*h as usize].group = group;
        }
        let timeout = ms(self.sc.swarm.peer_timeout_ms);
        let reconnect = ms(self.sc.swarm.reconnect_ms);
        for &a in hosts {
            for b in self.hosts[a as usize].nbrs.clone() {
                if hosts.contains(&b) {
                    continue;
                }
                self.stall_flows_between(a, b, start);
                if start {
                    // Nothing gets through; the session notices after the peer timeout.
                    self.push(
                        self.t + timeout,
                        Ev::ConnDown {
                            a,
                            b,
                            timeout: true,
                        },
                    );
                } else if self
                    .nbr_pos(a, b)
                    .is_some_and(|i| !self.hosts[a as usize].up[i])
                {
                    self.maybe_redial(a, b, reconnect);
                }
            }
        }
        if !start {
            self.quiet_at = self.quiet_at.max(self.t);
            // Held-up messages of surviving connections are delivered now.
            let parked = std::mem::take(&mut self.parked);
            for ev in parked {
                let (x, y) = ev.endpoints().expect("parked messages have endpoints");
                let at = self.t + self.latency(x, y);
                self.push(at, ev);
            }
        }
    }

    /// Stalls (or resumes) the transfers between `a` and `b`.
    fn stall_flows_between(&mut self, a: HostId, b: HostId, stall: bool) {
        let cap = if stall { 0.0 } else { self.path_cap(a, b) };
        let t = self.t;
        for id in self.flows_between(a, b) {
            self.net.set_flow_cap(t, id, cap);
        }
    }

    /// The origin dies once every chunk of the latest version has enough live copies.
    pub(crate) fn check_origin_death(&mut self) {
        let Some(k) = self.origin_dies_after else {
            return;
        };
        let Some(latest) = self.published.checked_sub(1) else {
            return;
        };
        if !self.hosts[ORIGIN as usize].alive {
            return;
        }
        let vd = Arc::clone(&self.versions[latest]);
        if vd.chunks.iter().all(|g| self.copies[*g as usize] >= k) {
            self.origin_dies_after = None;
            self.crash(ORIGIN, false);
        }
    }
}
