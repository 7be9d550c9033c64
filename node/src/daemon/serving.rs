//! Serving peers and local clients: request handling, hello and peer
//! exchange, and the control-socket status.

use super::*;

/// Logs a failed stream: a malformed one loudly (only that stream ends; the
/// connection and every other peer carry on), others at debug.
fn log_failure(
    peer: PeerId,
    what: &str,
    io: Option<&std::io::Error>,
    error: &dyn std::fmt::Display,
) {
    match io {
        Some(e) if wire::is_malformed(e) => {
            tracing::warn!(%peer, error = %e, "dropped a malformed {what} from peer; still serving others")
        }
        _ => tracing::debug!(%peer, %error, "{what} stream failed"),
    }
}

impl Daemon {
    pub(super) fn hello(&self) -> Hello {
        Hello {
            listen_addrs: self
                .swarm
                .listeners()
                .take(wire::MAX_ADDRS)
                .map(|a| a.to_vec())
                .collect(),
            labels: self
                .cfg
                .raw
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            seeding: self.seed.is_some(),
        }
    }

    pub(super) fn on_rr(&mut self, ev: request_response::Event<Request, Response>) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request,
                        channel,
                        request_id,
                    },
                ..
            } => {
                self.session_input(peer, swarm::SessionInput::BytesReceived);
                self.on_request(peer, request_id, request, channel);
            }
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => match self.heard(peer).pending.remove(&request_id) {
                Some(Pending::Hello) => {
                    if let Response::Hello(h) = response {
                        self.on_hello_reply(peer, h);
                    }
                }
                Some(Pending::Manifest { root }) => self.on_manifest(peer, root, Some(response)),
                Some(Pending::Chunk {
                    root,
                    idx,
                    hash,
                    len,
                }) => self.on_chunk(peer, root, idx, hash, len, response),
                Some(Pending::Have { root }) if !matches!(response, Response::Ack) => {
                    self.have_refused(peer, root);
                }
                Some(Pending::Have { .. }) | None => {}
            },
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let io = match &error {
                    request_response::OutboundFailure::Io(e) => Some(e),
                    _ => None,
                };
                log_failure(peer, "response", io, &error);
                self.on_outbound_failure(peer, request_id, error);
            }
            Event::InboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let io = match &error {
                    request_response::InboundFailure::Io(e) => Some(e),
                    _ => None,
                };
                log_failure(peer, "request", io, &error);
                if self.uploads.remove(&request_id) {
                    self.gate.finished();
                }
            }
            Event::ResponseSent { request_id, .. } => {
                if self.uploads.remove(&request_id) {
                    self.gate.finished();
                }
            }
        }
    }

    fn on_outbound_failure(
        &mut self,
        peer: PeerId,
        request_id: OutboundRequestId,
        error: request_response::OutboundFailure,
    ) {
        match self.pending.remove(&request_id) {
            Some(Pending::Chunk { root, idx, .. }) => {
                tracing::debug!(%peer, %error, "chunk request failed");
                self.failed.push((root, idx, peer));
            }
            Some(Pending::Manifest { root }) => self.on_manifest(peer, root, None),
            Some(Pending::Have { root }) => self.have_refused(peer, root),
            _ => {}
        }
    }

    pub(super) fn on_request(
        &mut self,
        peer: PeerId,
        request_id: InboundRequestId,
        req: Request,
        channel: ResponseChannel<Response>,
    ) {
        match req {
            Request::Hello(h) => {
                let info = self.peers.entry(peer).or_default();
                for a in h.listen_addrs {
                    if let Ok(a) = Multiaddr::try_from(a) {
                        info.add_addr(a);
                    }
                }
                self.on_peer_hello(peer, h.labels, h.seeding);
                let reply = Response::Hello(self.hello_reply(peer));
                let _ = self.swarm.behaviour_mut().rr.send_response(channel, reply);
            }
            Request::Have(have) => {
                let resp = self.on_have(peer, have);
                let _ = self.swarm.behaviour_mut().rr.send_response(channel, resp);
            }
            Request::GetManifest { root } => {
                let resp = match self.versions.get_mut(&root) {
                    Some(Version {
                        manifest: Some(m),
                        manifest_bytes,
                        ..
                    }) => {
                        let bytes = manifest_bytes.get_or_insert_with(|| Arc::new(m.encode()));
                        Response::Manifest(bytes.to_vec())
                    }
                    _ => Response::NotFound,
                };
                let _ = self.swarm.behaviour_mut().rr.send_response(channel, resp);
            }
            Request::Malformed(reason) => {
                tracing::warn!(%peer, %reason, "dropped a malformed request from peer; still serving others");
                let resp = Response::Error(format!("malformed request: {reason}"));
                let _ = self.swarm.behaviour_mut().rr.send_response(channel, resp);
            }
            Request::GetChunk { hash } => {
                if self.fault_refused.contains(&hash) {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .rr
                        .send_response(channel, Response::NotFound);
                    return;
                }
                let spread_before = self.gate.spread();
                let now = now();
                let uplink = self.limiter.settled();
                self.gate.path_rtt(uplink.rtt);
                self.gate.settled(now, uplink.settled);
                if self.gate.admit(now, &hash) == Admission::Busy {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .rr
                        .send_response(channel, Response::Busy);
                    return;
                }
                // Admitted: `gate.finished()` runs when this id's response is
                // sent or fails (`on_rr`), so nothing may return before this.
                self.uploads.insert(request_id);
                if let (Some(b), Some(a), Some(t)) =
                    (spread_before, self.gate.spread(), self.gate.spread_total())
                    && b < t
                    && a == t
                {
                    tracing::info!(
                        chunks = t,
                        bytes_served = self
                            .metrics
                            .bytes_served
                            .load(std::sync::atomic::Ordering::Relaxed),
                        "every chunk of the version has now left this publisher once"
                    );
                }
                if self.faults.serve_once {
                    self.fault_refused.insert(hash);
                }
                let store = self.store.clone();
                let source = self.seed.as_ref().map(|s| s.source.clone());
                let tx = self.served_tx.clone();
                let metrics = self.metrics.clone();
                let faults = self.faults;
                env::offload(self.inline, tx, move || {
                    if let Some(d) = faults.serve_delay {
                        std::thread::sleep(d);
                    }
                    let read = match store.get(&hash) {
                        Ok(Some(d)) => Ok(Some(d)),
                        Ok(None) => match source {
                            Some(s) => s.read(&hash).map_err(|e| e.to_string()),
                            None => Ok(None),
                        },
                        Err(e) => Err(e.to_string()),
                    };
                    let resp = match read {
                        Ok(Some(_)) if faults.notfound_serve => Response::NotFound,
                        Ok(Some(mut d)) => {
                            Metrics::add(&metrics.chunks_served, 1);
                            Metrics::add(&metrics.bytes_served, d.len() as u64);
                            if faults.corrupt_serve && !d.is_empty() {
                                d[0] ^= 0xff;
                            }
                            Response::Chunk(d)
                        }
                        Ok(None) => Response::NotFound,
                        Err(e) => {
                            tracing::error!(%peer, chunk = %hash, error = %e, "cannot serve chunk");
                            Response::Error(e)
                        }
                    };
                    (channel, resp)
                });
            }
        }
    }

    /// A publisher under `withhold-data` or `serve-once` will not serve every
    /// piece, so it announces none (no `Have`, no completion in `Hello`):
    /// nodes still ask it as an origin, and its `NotFound`s are not lies.
    pub(super) fn partial_origin(&self) -> bool {
        self.seed.is_some() && (self.faults.withhold_data.is_some() || self.faults.serve_once)
    }

    /// Something arrived from `peer`: its link is alive.
    fn heard(&mut self, peer: PeerId) -> &mut Self {
        self.session_input(peer, swarm::SessionInput::BytesReceived);
        self
    }

    pub(super) fn hello_reply(&self, asker: PeerId) -> HelloReply {
        let peers = self
            .peers
            .iter()
            .filter(|(id, i)| **id != asker && i.connections > 0 && !i.addrs.is_empty())
            .take(wire::MAX_PEER_RECORDS)
            .map(|(id, i)| PeerRecord {
                id: id.to_bytes(),
                addrs: i
                    .addrs
                    .iter()
                    .take(wire::MAX_ADDRS)
                    .map(|a| a.to_vec())
                    .collect(),
            })
            .collect();
        let roots = self
            .latest
            .values()
            .filter_map(|r| self.versions.get(r))
            .map(|v| v.signed.clone())
            .take(wire::MAX_ROOTS)
            .collect();
        let complete = self
            .versions
            .iter()
            .filter(|(_, v)| matches!(v.state, VState::Complete) && !self.partial_origin())
            .map(|(r, _)| *r)
            .take(wire::MAX_COMPLETE)
            .collect();
        HelloReply {
            listen_addrs: self.hello().listen_addrs,
            peers,
            roots,
            complete,
        }
    }

    pub(super) fn on_hello_reply(&mut self, peer: PeerId, h: HelloReply) {
        let me = *self.swarm.local_peer_id();
        {
            let info = self.peers.entry(peer).or_default();
            for a in h
                .listen_addrs
                .iter()
                .filter_map(|a| Multiaddr::try_from(a.clone()).ok())
            {
                info.add_addr(a);
            }
        }
        let connected = self.swarm.connected_peers().count();
        let mut budget = self.cfg.raw.max_peers.saturating_sub(connected);
        for rec in h.peers {
            let Ok(id) = PeerId::from_bytes(&rec.id) else {
                continue;
            };
            let banned = self
                .sessions
                .get(&id)
                .is_some_and(swarm::Session::is_banned);
            if id == me
                || banned
                || self.swarm.is_connected(&id)
                || budget == 0
                || !security::is_allowed(&self.cfg.allowed_peers, &id)
            {
                continue;
            }
            let addrs: Vec<Multiaddr> = rec
                .addrs
                .into_iter()
                .filter_map(|a| Multiaddr::try_from(a).ok())
                .collect();
            if addrs.is_empty() {
                continue;
            }
            budget -= 1;
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(id)
                .addresses(addrs)
                .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(peer = %id, error = %e, "peer-exchange dial failed");
            }
        }
        for signed in h.roots {
            self.offer_root(signed, Some(peer));
        }
        for root in h.complete {
            self.mark_complete(peer, root);
        }
    }

    /// The daemon's status; `brief` leaves out peers and listen addresses
    /// (see [`control::StatusRequest::brief`]).
    pub(super) fn status(&self, brief: bool) -> Status {
        let now = now();
        let channels = self
            .followed_channels()
            .into_iter()
            .map(|ch| {
                let latest = self
                    .latest
                    .get(&ch)
                    .and_then(|r| self.versions.get(r))
                    .map(|v| {
                        let total_chunks = v.chunks.len() as u64;
                        let total_bytes: u64 = v.chunks.iter().map(|c| u64::from(c.len)).sum();
                        let (chunks_done, bytes_done) = match (&v.state, &v.fetch) {
                            (_, Some(f)) => {
                                let p = f.progress();
                                (u64::from(p.chunks_done), p.bytes_done)
                            }
                            (VState::Complete | VState::Materializing, None) => {
                                (total_chunks, total_bytes)
                            }
                            // Failed or waiting: what the store holds is the truth.
                            _ => v
                                .chunks
                                .iter()
                                .filter(|c| self.store.contains(&c.hash))
                                .fold((0, 0), |(n, b), c| (n + 1, b + u64::from(c.len))),
                        };
                        VersionStatus {
                            version: v.signed.version.clone(),
                            root: v.signed.root.to_hex(),
                            state: match v.state {
                                VState::Manifest { .. } => "manifest",
                                VState::Fetching => "fetching",
                                VState::Materializing => "materializing",
                                VState::Complete => "complete",
                                VState::Failed { .. } => "failed",
                            }
                            .into(),
                            chunks_done,
                            chunks_total: total_chunks,
                            bytes_done,
                            bytes_total: total_bytes,
                            bytes_fetched: v.bytes_fetched,
                            bytes_reused: v.bytes_reused,
                            elapsed_ms: v
                                .finished
                                .unwrap_or(now)
                                .duration_since(v.started)
                                .as_millis() as u64,
                            complete_peers: v.complete_peers.len(),
                            error: v.error.clone(),
                        }
                    });
                ChannelStatus {
                    current: materialize::current_version(&self.cfg.raw.data_dir, &ch),
                    channel: ch,
                    latest,
                }
            })
            .collect();
        Status {
            role: if self.seed.is_some() { "seed" } else { "node" }.into(),
            peer_id: self.swarm.local_peer_id().to_string(),
            listen_addrs: if brief {
                Vec::new()
            } else {
                self.swarm.listeners().map(|a| a.to_string()).collect()
            },
            metrics_addr: self.metrics_addr.map(|a| a.to_string()),
            peers: if brief {
                Vec::new()
            } else {
                self.swarm
                    .connected_peers()
                    .map(|p| PeerStatus {
                        id: p.to_string(),
                        addrs: self
                            .peers
                            .get(p)
                            .map(|i| i.addrs.iter().map(|a| a.to_string()).collect())
                            .unwrap_or_default(),
                    })
                    .collect()
            },
            channels,
            bytes_served: self.metrics.bytes_served.load(Relaxed),
            bytes_fetched: self.metrics.bytes_fetched.load(Relaxed),
            chunks_rejected: self.metrics.chunks_rejected.load(Relaxed),
            roots_rejected: self.metrics.roots_rejected.load(Relaxed),
            answers_busy: self.metrics.answers_busy.load(Relaxed),
            answers_not_found: self.metrics.answers_not_found.load(Relaxed),
            bandwidth: self.limiter.status(),
        }
    }
}
