//! Event handlers of the flow world: requests, transfers, verification,
//! announcements and timers.

use swarm::{ChunkIdx, Input};

use super::*;

/// The fields of [`Ev::HaveBatch`].
pub(crate) struct HaveBatch {
    to: Vec<(HostId, u32)>,
    from: HostId,
    from_inc: u32,
    version: usize,
    chunks: Arc<[u32]>,
    all: bool,
}

impl World {
    pub(crate) fn apply(&mut self, ev: Ev) {
        if let Some((a, b)) = ev.endpoints()
            && self.stalled(a, b)
        {
            self.parked.push(ev);
            return;
        }
        match ev {
            Ev::Publish(v) => self.publish(v),
            Ev::Learn { host, version } => self.learn(host, version),
            Ev::Request {
                client,
                server,
                gid,
                inc,
            } => self.on_request(client, server, gid, inc),
            Ev::Reply {
                client,
                server,
                gid,
                busy,
                inc,
            } => {
                if self.inc_ok(client, server, inc)
                    && let Some((v, chunk)) = self.fetch_idx(client, gid)
                {
                    let input = if busy {
                        Input::Busy {
                            peer: server,
                            chunk,
                        }
                    } else {
                        Input::NotFound {
                            peer: server,
                            chunk,
                        }
                    };
                    self.feed(client, Some(v), input);
                }
            }
            Ev::Cancel {
                client,
                server,
                gid,
            } => {
                self.drop_waiting(server, client, |tr| tr.gid == gid);
                let hit: Vec<_> = self
                    .net
                    .flows_of(server as usize)
                    .into_iter()
                    .filter(|id| {
                        self.net.get(*id).is_some_and(|f| {
                            f.from == server as usize
                                && f.payload.client == client
                                && f.payload.gid == gid
                        })
                    })
                    .collect();
                for id in hit {
                    self.drop_flow(id);
                }
            }
            Ev::Arrive {
                client,
                server,
                gid,
                token,
                inc,
            } => self.on_arrive(client, server, gid, token, inc),
            Ev::Tick(host) => self.on_tick(host),
            Ev::HaveBatch {
                to,
                from,
                from_inc,
                version,
                chunks,
                all,
            } => self.on_have_batch(HaveBatch {
                to,
                from,
                from_inc,
                version,
                chunks,
                all,
            }),
            Ev::Have {
                to,
                from,
                version,
                chunks,
                all,
                inc,
            } => {
                if self.inc_ok(to, from, inc) && self.linked(to, from) {
                    let input = if all {
                        Input::PeerHasAll { peer: from }
                    } else {
                        Input::PeerHas {
                            peer: from,
                            chunks: chunks.into_iter().map(ChunkIdx).collect(),
                        }
                    };
                    self.feed(to, Some(version), input);
                }
            }
            Ev::Timer { host, generation } => {
                let now = self.now();
                let h = &mut self.hosts[host as usize];
                if h.alive && h.timer.is_some_and(|(_, g)| g == generation) {
                    h.timer = None;
                    if let Some(nf) = h.fetch.as_mut() {
                        nf.fetch.handle_timeout(now);
                    }
                    self.mark(host);
                }
            }
            other => self.apply_fault(other),
        }
    }

    /// Whether `a` and `b` are split by a partition while their connection
    /// still counts as up (the session has not timed it out yet).
    pub(crate) fn stalled(&self, a: HostId, b: HostId) -> bool {
        let (ha, hb) = (&self.hosts[a as usize], &self.hosts[b as usize]);
        ha.alive && hb.alive && ha.group != hb.group && self.nbr_pos(a, b).is_some_and(|i| ha.up[i])
    }

    fn publish(&mut self, v: usize) {
        self.published = self.published.max(v + 1);
        self.quiet_at = self.quiet_at.max(self.t);
        let origin = &mut self.hosts[ORIGIN as usize];
        origin.known = Some(v);
        for g in self.versions[v].chunks.clone() {
            self.hosts[ORIGIN as usize].store[g as usize] = self.tokens[g as usize];
        }
        self.hosts[ORIGIN as usize].current = Some(v);
        let earlier: std::collections::HashSet<u32> = self.versions[..v]
            .iter()
            .flat_map(|x| x.chunks.iter().copied())
            .collect();
        let fresh = self.versions[v]
            .chunks
            .iter()
            .filter(|g| !earlier.contains(g))
            .count();
        let resend = self
            .sc
            .swarm
            .origin_resend_ms
            .map_or(DEFAULT_RESEND_AFTER, |v| Duration::from_nanos(ms(v)));
        self.hosts[ORIGIN as usize].gate.spread_anew(fresh, resend);
        for h in 1..=self.sc.nodes {
            if self.reachable(ORIGIN, h) {
                // Gossip of the signed root, then the manifest round trip.
                let at = self.t + 3 * self.latency(ORIGIN, h);
                self.push(
                    at,
                    Ev::Learn {
                        host: h,
                        version: v,
                    },
                );
            }
        }
    }

    /// A node hears of a version (gossip, Hello, or its own saved roots).
    pub(crate) fn learn(&mut self, host: HostId, version: usize) {
        let h = &self.hosts[host as usize];
        if !h.alive || h.known.is_some_and(|k| k >= version) {
            return;
        }
        self.hosts[host as usize].known = Some(version);
        self.start_fetch(host, version);
        // Tell neighbours that do not know it yet (gossip through the mesh).
        for p in self.hosts[host as usize].nbrs.clone() {
            if p != ORIGIN
                && self.reachable(host, p)
                && self.hosts[p as usize].known.is_none_or(|k| k < version)
            {
                let at = self.t + self.latency(host, p);
                self.push(at, Ev::Learn { host: p, version });
            }
        }
    }

    fn on_request(&mut self, client: HostId, server: HostId, gid: u32, inc: (u32, u32)) {
        if !self.inc_ok(client, server, inc) || !self.linked(server, client) {
            return;
        }
        let s = &self.hosts[server as usize];
        let held = s.store[gid as usize];
        let now = self.now();
        let backlogged = held != 0 && self.over_backlog(server);
        let admitted = held != 0
            && !backlogged
            && self.hosts[server as usize].gate.admit(now, &gid) == Admission::Serve;
        let s = &self.hosts[server as usize];
        if held == 0 || !admitted {
            let busy = held != 0;
            if busy {
                self.counters.busy += 1;
            } else {
                self.counters.not_found += 1;
            }
            let at = self.t + self.msg_delay(server, client);
            let reply = Ev::Reply {
                client,
                server,
                gid,
                busy,
                inc,
            };
            self.push(at, reply);
            return;
        }
        self.counters.safety_checks += 1;
        if !s.byzantine && held != self.tokens[gid as usize] {
            self.violations.push(format!(
                "t={:.3}s node {server} served chunk {gid} that it never verified",
                self.t as f64 / 1e9
            ));
        }
        let token = if s.byzantine {
            held ^ 0xbad0_bad0
        } else {
            held
        };
        let tr = Transfer {
            client,
            gid,
            token,
            inc,
            slot: true,
            tail: 0,
        };
        self.pairs
            .entry((server, client))
            .or_default()
            .queue
            .push_back(tr);
        self.pump_pair(server, client);
    }

    /// Whether `server` has `swarm.upload_backlog_kib` or more admitted and
    /// not yet delivered (the daemon's `upload_backlog_kib`: its gate counts
    /// a response's bytes once handed to the connection, until the
    /// receiver's TCP acknowledges them; here they are delivered when they
    /// have crossed). Never with the bound off (0).
    fn over_backlog(&self, server: HostId) -> bool {
        let limit = u64::from(self.sc.swarm.upload_backlog_kib) << 10;
        if limit == 0 {
            return false;
        }
        let waiting: u64 = self
            .pairs
            .range((server, 0)..=(server, HostId::MAX))
            .flat_map(|(_, p)| &p.queue)
            .map(|tr| u64::from(self.lens[tr.gid as usize]))
            .sum();
        let crossing = self.net.upload_remaining(server as usize, self.t);
        waiting as f64 + crossing >= limit as f64
    }

    /// Starts the next transfer waiting on connection (server, client)
    /// when none is crossing. Its upload slot is freed once at most
    /// `slot_release_kib` of it are left: at once for a chunk that small
    /// (the daemon's response is then written into the stream), else when
    /// the head of the chunk has crossed.
    pub(crate) fn pump_pair(&mut self, server: HostId, client: HostId) {
        let key = (server, client);
        let Some(p) = self.pairs.get_mut(&key) else {
            return;
        };
        if p.active {
            return;
        }
        let Some(mut tr) = p.queue.pop_front() else {
            self.pairs.remove(&key);
            return;
        };
        p.active = true;
        let len = self.lens[tr.gid as usize];
        let release = self.sc.swarm.slot_release_kib.saturating_mul(1024);
        if release > 0 && len <= release {
            self.hosts[server as usize].gate.finished();
            tr.slot = false;
        } else if release > 0 {
            tr.tail = release;
        }
        self.add_flow(server, f64::from(len - tr.tail), tr);
    }

    /// Connection (server, client) has nothing crossing any more.
    fn pair_idle(&mut self, server: HostId, client: HostId) {
        if let Some(p) = self.pairs.get_mut(&(server, client)) {
            p.active = false;
        }
        self.pump_pair(server, client);
    }

    /// Forgets the transfers waiting on connection (server, client) that
    /// `hit` selects (cancelled, or the connection is gone); their slots
    /// are freed.
    pub(crate) fn drop_waiting(
        &mut self,
        server: HostId,
        client: HostId,
        mut hit: impl FnMut(&Transfer) -> bool,
    ) {
        let key = (server, client);
        let Some(p) = self.pairs.get_mut(&key) else {
            return;
        };
        let mut freed = 0;
        p.queue.retain(|tr| {
            let gone = hit(tr);
            if gone && tr.slot {
                freed += 1;
            }
            !gone
        });
        if !p.active && p.queue.is_empty() {
            self.pairs.remove(&key);
        }
        for _ in 0..freed {
            self.hosts[server as usize].gate.finished();
        }
    }

    fn add_flow(&mut self, server: HostId, bytes: f64, tr: Transfer) {
        let cap = if self.stalled(server, tr.client) {
            0.0
        } else {
            self.path_cap(server, tr.client)
        };
        let t = self.t;
        self.net
            .add(t, server as usize, tr.client as usize, bytes, cap, tr);
    }

    pub(crate) fn finish_flow(&mut self, id: crate::bandwidth::FlowId) {
        let t = self.t;
        // The last byte still drains the queues it entered while they were full.
        let queued = self
            .net
            .get(id)
            .map_or(0, |f| self.queue_delay(f.from as HostId, f.to as HostId));
        let Some(f) = self.net.remove(t, id) else {
            return;
        };
        let (server, tr) = (f.from as HostId, f.payload);
        if tr.slot {
            self.hosts[server as usize].gate.finished();
        }
        if tr.tail > 0 {
            // The head crossed: the slot is free, the last bytes follow.
            let rest = Transfer {
                slot: false,
                tail: 0,
                ..tr
            };
            self.add_flow(server, f64::from(tr.tail), rest);
            return;
        }
        self.pair_idle(server, tr.client);
        let len = u64::from(self.lens[tr.gid as usize]);
        let class = self.class(server, tr.client);
        self.counters.by_class[class] += len;
        if class >= 2 {
            let rack = self.hosts[tr.client as usize].place.rack as usize;
            self.counters.into_rack[rack] += len;
        }
        self.counters.delivered += len;
        self.hosts[tr.client as usize].received += len;
        if server == ORIGIN {
            self.counters.origin_egress += len;
        }
        let at = self.t + self.latency(server, tr.client) + queued;
        self.push(
            at,
            Ev::Arrive {
                client: tr.client,
                server,
                gid: tr.gid,
                token: tr.token,
                inc: tr.inc,
            },
        );
    }

    /// A transfer cut off before its end (cancel, crash, partition).
    pub(crate) fn drop_flow(&mut self, id: crate::bandwidth::FlowId) {
        let t = self.t;
        if let Some(f) = self.net.remove(t, id) {
            if f.payload.slot {
                self.hosts[f.from].gate.finished();
            }
            // A head flow is the chunk less its tail; a tail or whole flow
            // ends the chunk.
            let sent =
                f64::from(self.lens[f.payload.gid as usize] - f.payload.tail) - f.remaining_at(t);
            self.pair_idle(f.from as HostId, f.payload.client);
            self.counters.wasted += sent.max(0.0) as u64;
        }
    }

    /// The last byte arrived: verify, store, tell the fetch.
    fn on_arrive(&mut self, client: HostId, server: HostId, gid: u32, token: u64, inc: (u32, u32)) {
        if !self.inc_ok(client, server, inc) {
            return;
        }
        let idx = self.fetch_idx(client, gid);
        // The BLAKE3-against-the-manifest check, in the model.
        if self.verify && token != self.tokens[gid as usize] {
            self.counters.rejected += 1;
            if let Some((v, chunk)) = idx {
                self.feed(
                    client,
                    Some(v),
                    Input::Rejected {
                        peer: server,
                        chunk,
                    },
                );
            }
            return;
        }
        self.store_chunk(client, gid, token);
        if self.dump_arrivals {
            // Simulated ns, receiving node, sending host (0 = origin), chunk.
            eprintln!("arrive {} {client} {server} {gid}", self.t);
        }
        if let Some((v, chunk)) = idx {
            let h = &mut self.hosts[client as usize];
            if !h.log[v].contains(&chunk.0) {
                h.log[v].push(chunk.0);
            }
            self.feed(
                client,
                Some(v),
                Input::Verified {
                    peer: server,
                    chunk,
                },
            );
            self.schedule_tick(client);
        }
    }

    fn store_chunk(&mut self, host: HostId, gid: u32, token: u64) {
        self.counters.safety_checks += 1;
        if token != self.tokens[gid as usize] {
            self.violations.push(format!(
                "t={:.3}s node {host} stored chunk {gid} with bytes that do not match the manifest",
                self.t as f64 / 1e9
            ));
        }
        let slot = &mut self.hosts[host as usize].store[gid as usize];
        if *slot == 0 {
            *slot = token;
            self.copies[gid as usize] += 1;
            self.check_origin_death();
        }
    }

    fn on_tick(&mut self, host: HostId) {
        let h = &mut self.hosts[host as usize];
        h.tick_pending = false;
        if !h.alive {
            return;
        }
        let Some(v) = h.fetch.as_ref().map(|f| f.version).or(h.current) else {
            return;
        };
        let all = h.current == Some(v);
        let new: Vec<u32> = h.log[v][h.cursor.min(h.log[v].len())..].to_vec();
        h.cursor = h.log[v].len();
        if new.is_empty() && !all {
            return;
        }
        if all && h.fetch.is_some() {
            // Complete: one last `Have { all }`, then nothing more to say.
            self.hosts[host as usize].fetch = None;
        } else if all {
            return;
        }
        let inc_self = self.hosts[host as usize].incarnation;
        let chunks: Arc<[u32]> = new.into();
        // Group recipients by latency: one event per group.
        let mut groups: std::collections::BTreeMap<u64, Vec<(HostId, u32)>> = Default::default();
        for &p in &self.hosts[host as usize].nbrs {
            if p != ORIGIN && self.linked(host, p) {
                let inc = self.hosts[p as usize].incarnation;
                groups
                    .entry(self.path_delay(host, p))
                    .or_default()
                    .push((p, inc));
            }
        }
        for (lat, to) in groups {
            let ev = Ev::HaveBatch {
                to,
                from: host,
                from_inc: inc_self,
                version: v,
                chunks: Arc::clone(&chunks),
                all,
            };
            self.push(self.t + lat, ev);
        }
    }

    fn on_have_batch(&mut self, b: HaveBatch) {
        let HaveBatch {
            to,
            from,
            from_inc,
            version,
            chunks,
            all,
        } = b;
        for (p, inc) in to {
            let ev = Ev::Have {
                to: p,
                from,
                version,
                chunks: chunks.to_vec(),
                all,
                inc: (inc, from_inc),
            };
            if self.stalled(p, from) {
                self.parked.push(ev);
            } else {
                self.apply(ev);
            }
        }
    }
}
