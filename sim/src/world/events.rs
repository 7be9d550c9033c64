//! Event handlers of the flow world: requests, transfers, verification,
//! announcements and timers.

use swarm::{ChunkIdx, Input};

use super::*;

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
        let earlier: std::collections::HashSet<u32> =
            self.versions[..v].iter().flat_map(|x| x.chunks.iter().copied()).collect();
        let fresh = self.versions[v].chunks.iter().filter(|g| !earlier.contains(g)).count();
        let resend = self.sc.swarm.origin_resend_ms.map_or(DEFAULT_RESEND_AFTER, |v| Duration::from_nanos(ms(v)));
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
        let admitted = held != 0 && self.hosts[server as usize].gate.admit(now, &gid) == Admission::Serve;
        let s = &self.hosts[server as usize];
        if held != 0 && !admitted {
            self.counters.busy += 1;
            let at = self.t + self.msg_delay(server, client);
            self.push(
                at,
                Ev::Reply {
                    client,
                    server,
                    gid,
                    busy: true,
                    inc,
                },
            );
        } else if held != 0 {
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
            let len = f64::from(self.lens[gid as usize]);
            let cap = if self.stalled(server, client) {
                0.0
            } else {
                self.path_cap(server, client)
            };
            let t = self.t;
            self.net.add(
                t,
                server as usize,
                client as usize,
                len,
                cap,
                Transfer {
                    client,
                    gid,
                    token,
                    inc,
                },
            );
        } else {
            self.counters.not_found += 1;
            let at = self.t + self.msg_delay(server, client);
            self.push(
                at,
                Ev::Reply {
                    client,
                    server,
                    gid,
                    busy: false,
                    inc,
                },
            );
        }
    }

    pub(crate) fn finish_flow(&mut self, id: crate::bandwidth::FlowId) {
        let t = self.t;
        let Some(f) = self.net.remove(t, id) else {
            return;
        };
        let (server, tr) = (f.from as HostId, f.payload);
        let len = u64::from(self.lens[tr.gid as usize]);
        let class = self.class(server, tr.client);
        self.counters.by_class[class] += len;
        self.counters.delivered += len;
        self.hosts[tr.client as usize].received += len;
        if server == ORIGIN {
            self.counters.origin_egress += len;
        }
        let at = self.t + self.latency(server, tr.client);
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
            self.hosts[f.from].gate.finished();
            let sent = f64::from(self.lens[f.payload.gid as usize]) - f.remaining_at(t);
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
        for p in self.hosts[host as usize].nbrs.clone() {
            if p == ORIGIN || !self.linked(host, p) {
                continue;
            }
            let at = self.t + self.latency(host, p);
            let inc = (self.hosts[p as usize].incarnation, inc_self);
            self.push(
                at,
                Ev::Have {
                    to: p,
                    from: host,
                    version: v,
                    chunks: new.clone(),
                    all,
                    inc,
                },
            );
        }
    }
}
