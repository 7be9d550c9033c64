//! Versions: accepting signed roots, fetching and verifying manifests,
//! driving `swarm::Fetch`, storing verified chunks, materializing.

use super::*;

impl Daemon {
    pub(super) fn feed_all(&mut self, input: Input<PeerId>) {
        let now = now();
        for v in self.versions.values_mut() {
            if let Some(f) = v.fetch.as_mut() {
                f.handle(now, input.clone());
            }
        }
    }

    /// A gossip message: decoded, then reported to gossipsub (which forwards
    /// only accepted messages, so undecodable ones stop here), then handled.
    pub(super) fn on_gossip(
        &mut self,
        via: PeerId,
        id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) {
        let decoded = Gossip::decode(&message.data);
        let verdict = if decoded.is_ok() {
            gossipsub::MessageAcceptance::Accept
        } else {
            gossipsub::MessageAcceptance::Reject
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id, &via, verdict);
        let msg = match decoded {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(peer = %via, source = ?message.source, bytes = message.data.len(), error = %e, "dropped an undecodable gossip message");
                return;
            }
        };
        match msg {
            Gossip::Announce(signed) => {
                if let Some(src) = message.source {
                    self.origins.insert(src);
                }
                self.offer_root(signed, Some(via));
            }
            Gossip::Complete(root) => {
                if let Some(src) = message.source {
                    self.mark_complete(src, root);
                }
            }
        }
    }

    pub(super) fn mark_complete(&mut self, peer: PeerId, root: Hash) {
        if let Some(v) = self.versions.get_mut(&root)
            && v.complete_peers.insert(peer)
        {
            tracing::debug!(%peer, %root, "peer holds version");
            if let Some(f) = v.fetch.as_mut() {
                f.handle(now(), Input::PeerHasAll { peer });
            }
        }
    }

    /// Checks signature and trust of a root.
    pub(super) fn check_root(&self, signed: &SignedRoot) -> Result<(), String> {
        signed.verify().map_err(|e| format!("bad signature: {e}"))?;
        // Names become folder names under data_dir: refuse unsafe ones at once.
        merkle::validate_name("channel", &signed.channel).map_err(|e| e.to_string())?;
        merkle::validate_name("version", &signed.version).map_err(|e| e.to_string())?;
        let trusted = match &self.seed {
            Some(s) => s.signed.publisher == signed.publisher,
            None => self
                .cfg
                .trusted
                .iter()
                .any(|k| k.as_bytes() == &signed.publisher),
        };
        if !trusted {
            return Err(format!(
                "signed by untrusted publisher key {}; add it to trusted_publishers to accept it",
                hex::encode(signed.publisher)
            ));
        }
        Ok(())
    }

    pub(super) fn offer_root(&mut self, signed: SignedRoot, from: Option<PeerId>) {
        if !self.followed_channels().contains(&signed.channel) || self.seed.is_some() {
            return;
        }
        if self.versions.contains_key(&signed.root) {
            return;
        }
        if let Err(why) = self.check_root(&signed) {
            Metrics::add(&self.metrics.roots_rejected, 1);
            tracing::warn!(channel = %signed.channel, version = %signed.version, peer = ?from, "refusing root: {why}");
            return;
        }
        if let Some(cur) = self
            .latest
            .get(&signed.channel)
            .and_then(|r| self.versions.get(r))
            && (signed.created_unix, &signed.version)
                <= (cur.signed.created_unix, &cur.signed.version)
        {
            tracing::debug!(version = %signed.version, "ignoring root older than the latest");
            return;
        }
        tracing::info!(channel = %signed.channel, version = %signed.version, root = %signed.root, "new version announced");
        let path = self
            .state_dir
            .join("versions")
            .join(format!("{}.root", signed.root.to_hex()));
        if let Err(e) = write_atomic(&path, &signed.encode()) {
            tracing::error!(path = %path.display(), error = %e, "cannot save root");
        }
        let root = signed.root;
        self.insert_version(signed);
        self.request_manifest(root);
    }

    pub(super) fn insert_version(&mut self, signed: SignedRoot) {
        let root = signed.root;
        if let Some(old) = self.latest.insert(signed.channel.clone(), root)
            && let Some(v) = self.versions.get_mut(&old)
            && v.fetch.take().is_some()
        {
            tracing::info!(version = %v.signed.version, "superseded by a newer version; its chunks stay in the store");
        }
        self.versions.insert(
            root,
            Version {
                signed,
                manifest: None,
                manifest_bytes: None,
                chunks: Vec::new(),
                fetch: None,
                state: VState::Manifest {
                    asked: Set::default(),
                    in_flight: false,
                    since: None,
                },
                started: now(),
                finished: None,
                materializing_since: None,
                bytes_fetched: 0,
                bytes_reused: 0,
                complete_peers: Set::default(),
                error: None,
                have: Default::default(),
                stager: None,
            },
        );
    }

    pub(super) fn request_manifest(&mut self, root: Hash) {
        let connected = self.live_peers();
        let Some(v) = self.versions.get_mut(&root) else {
            return;
        };
        let VState::Manifest {
            asked,
            in_flight,
            since,
        } = &mut v.state
        else {
            return;
        };
        if *in_flight {
            return;
        }
        // Prefer peers known complete, then origins, then anyone not yet asked this round.
        let mut candidates: Vec<PeerId> = connected
            .iter()
            .filter(|p| !asked.contains(p))
            .copied()
            .collect();
        candidates.sort_by_key(|p| (!v.complete_peers.contains(p), !self.origins.contains(p), *p));
        let Some(peer) = candidates.first().copied() else {
            asked.clear(); // next housekeeping round starts over
            return;
        };
        asked.insert(peer);
        *in_flight = true;
        *since = Some(now());
        let id = self
            .swarm
            .behaviour_mut()
            .rr
            .send_request(&peer, Request::GetManifest { root });
        self.pending.insert(id, Pending::Manifest { root });
    }

    pub(super) fn on_manifest(&mut self, peer: PeerId, root: Hash, resp: Option<Response>) {
        let Some(v) = self.versions.get_mut(&root) else {
            return;
        };
        if let VState::Manifest { in_flight, .. } = &mut v.state {
            *in_flight = false;
        } else {
            return;
        }
        let bytes = match resp {
            Some(Response::Manifest(b)) => b,
            _ => {
                self.request_manifest(root);
                return;
            }
        };
        // Decoding validates paths and sizes; verify_manifest recomputes the
        // version root and checks it, the channel and the version against the
        // signed root.
        let checked = Manifest::decode(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|m| {
                v.signed
                    .verify_manifest(&m)
                    .map(|()| m)
                    .map_err(|e| e.to_string())
            });
        match checked {
            Ok(m) => {
                let path = self
                    .state_dir
                    .join("versions")
                    .join(format!("{}.manifest", root.to_hex()));
                if let Err(e) = write_atomic(&path, &bytes) {
                    tracing::error!(path = %path.display(), error = %e, "cannot save manifest");
                }
                tracing::info!(%peer, version = %m.version, files = m.files.len(), bytes = m.total_size(), "manifest verified");
                self.start_fetch(root, Arc::new(m));
            }
            Err(why) => {
                tracing::warn!(%peer, %root, "rejecting manifest: {why}");
                Metrics::add(&self.metrics.chunks_rejected, 1);
                self.request_manifest(root);
            }
        }
    }

    pub(super) fn start_fetch(&mut self, root: Hash, m: Arc<Manifest>) {
        let connected = self.live_peers();
        let banned = self.banned_peers();
        let Some(v) = self.versions.get_mut(&root) else {
            return;
        };
        let chunks = m.pieces();
        let have: Vec<ChunkIdx> = chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| self.store.contains(&c.hash))
            .map(|(i, _)| ChunkIdx(i as u32))
            .collect();
        let held: u64 = have
            .iter()
            .map(|i| u64::from(chunks[i.0 as usize].len))
            .sum();
        // On a retry after a failure, chunks this process fetched for the
        // version are held but were not reused: fetched + reused == total.
        let reused = held.saturating_sub(v.bytes_fetched);
        let total: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
        let config = FetchConfig {
            max_in_flight_per_peer: self.cfg.raw.max_in_flight_per_peer,
            max_in_flight_total: self.cfg.raw.max_in_flight,
            request_timeout: Duration::from_secs(self.cfg.raw.request_timeout_secs),
            download_slots: self.cfg.raw.max_downloads,
            max_strikes: self.cfg.raw.ban_after,
            ..FetchConfig::default()
        };
        let mut fetch = Fetch::new(
            config,
            chunks.iter().map(|c| c.len).collect(),
            self.rng_seed ^ u64::from_le_bytes(root.0[..8].try_into().expect("8 bytes")),
        );
        let now = now();
        let have_idx: Vec<u32> = have.iter().map(|c| c.0).collect();
        fetch.handle(now, Input::AlreadyHave { chunks: have });
        for p in connected {
            fetch.handle(
                now,
                Input::PeerConnected {
                    peer: p,
                    origin: self.origins.contains(&p),
                },
            );
        }
        for p in &v.complete_peers {
            fetch.handle(now, Input::PeerHasAll { peer: *p });
        }
        // Bans hold across versions: a peer banned during an older fetch is
        // not asked for this one either until its ban ends.
        for peer in banned {
            fetch.handle(now, Input::PeerBanned { peer });
        }
        // Stage the version's files while its chunks arrive (see
        // `materialize::Stager`); without a stager it is built at the end.
        if v.stager.is_none() && !materialize::is_materialized(&self.cfg.raw.data_dir, &m, &root) {
            match materialize::Stager::create(&self.cfg.raw.data_dir, &m, &self.store) {
                Ok(st) => {
                    let fsync = self.cfg.raw.fsync;
                    v.stager = st.map(|s| Arc::new(s.with_writeback(fsync)));
                }
                Err(e) => tracing::warn!(version = %m.version, error = %e,
                    "cannot stage the version's files while fetching; they will be written at the end"),
            }
        }
        tracing::info!(
            version = %m.version,
            chunks = chunks.len(),
            need_bytes = total - reused,
            reused_bytes = reused,
            "fetching version"
        );
        Metrics::add(
            &self.metrics.bytes_reused,
            reused.saturating_sub(v.bytes_reused),
        );
        v.bytes_reused = reused;
        v.have.hold(have_idx);
        v.chunks = chunks;
        v.manifest = Some(m);
        v.fetch = Some(fetch);
        v.state = VState::Fetching;
        v.error = None;
        self.check_all_stripes(root);
        self.prime_fetch(root);
        self.send_have(Some(root), None);
    }

    /// Drains every fetch's actions into requests.
    pub(super) fn pump(&mut self) {
        let mut failed = std::mem::take(&mut self.failed);
        failed.sort_unstable();
        for (root, chunk, peer) in failed {
            self.feed(root, Input::Failed { peer, chunk });
        }
        let now = now();
        let mut requests = Vec::new();
        let mut complete = Vec::new();
        let mut offences = Vec::new();
        for (root, v) in self.versions.iter_mut() {
            let Some(f) = v.fetch.as_mut() else { continue };
            while let Some(a) = f.poll_action(now) {
                match a {
                    Action::Request { peer, chunk } => {
                        tracing::trace!(%peer, chunk = chunk.0, "requesting chunk");
                        let c = v.chunks[chunk.0 as usize];
                        requests.push((peer, *root, chunk, c));
                    }
                    Action::Cancel { .. } => {}
                    Action::Penalise { peer, reason } => {
                        tracing::warn!(%peer, reason, version = %v.signed.version, "penalising peer: {reason}");
                        offences.push((peer, swarm::SessionInput::Offence));
                    }
                    Action::Ban { peer } => {
                        tracing::warn!(%peer, version = %v.signed.version, "peer reached its strike limit for this version");
                        offences.push((peer, swarm::SessionInput::Ban));
                    }
                    Action::Complete => complete.push(*root),
                }
            }
        }
        for (peer, root, idx, c) in requests {
            let id = self
                .swarm
                .behaviour_mut()
                .rr
                .send_request(&peer, Request::GetChunk { hash: c.hash });
            self.pending.insert(
                id,
                Pending::Chunk {
                    root,
                    idx,
                    hash: c.hash,
                    len: c.len,
                },
            );
        }
        for root in complete {
            self.begin_materialize(root);
        }
        // Penalties and bans go to the peer's session, which bans it for a
        // while across versions (and feeds `PeerBanned` back to every fetch).
        let had_offences = !offences.is_empty();
        for (peer, input) in offences {
            self.session_input(peer, input);
        }
        if had_offences {
            self.pump();
        }
    }

    pub(super) fn begin_materialize(&mut self, root: Hash) {
        let Some(v) = self.versions.get_mut(&root) else {
            return;
        };
        v.fetch = None;
        v.state = VState::Materializing;
        v.materializing_since = Some(now());
        let m = v.manifest.clone().expect("fetching implies a manifest");
        let store = self.store.clone();
        let data_dir = self.cfg.raw.data_dir.clone();
        let fsync = self.cfg.raw.fsync;
        let tx = self.mat_tx.clone();
        let pause = self.faults.materialize_delay.unwrap_or_default();
        let stager = v.stager.take();
        env::offload(self.inline, tx, move || {
            let r = materialize::materialize_staged(
                &data_dir,
                &m,
                &root,
                &store,
                fsync,
                pause,
                stager.as_deref(),
            )
            .map_err(|e| e.to_string());
            (root, r)
        });
    }

    pub(super) fn on_materialized(&mut self, root: Hash, r: Result<PathBuf, String>) {
        let Some(v) = self.versions.get_mut(&root) else {
            return;
        };
        match r {
            Ok(path) => {
                let elapsed = now().saturating_duration_since(v.started);
                let materialize = v
                    .materializing_since
                    .map_or(Duration::ZERO, |t| now().saturating_duration_since(t));
                v.state = VState::Complete;
                v.finished = Some(now());
                Metrics::add(&self.metrics.versions_complete, 1);
                tracing::info!(
                    channel = %v.signed.channel,
                    version = %v.signed.version,
                    path = %path.display(),
                    elapsed_ms = elapsed.as_millis() as u64,
                    materialize_ms = materialize.as_millis() as u64,
                    fetched_bytes = v.bytes_fetched,
                    reused_bytes = v.bytes_reused,
                    "version complete and current"
                );
                let ch = v.signed.channel.clone();
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(wire::topic(&ch), Gossip::Complete(root).encode());
            }
            Err(e) => {
                tracing::error!(version = %v.signed.version, error = %e, "materialization failed; previous `current` kept; retrying in 10 s");
                v.error = Some(e);
                v.state = VState::Failed {
                    retry_at: now() + Duration::from_secs(10),
                };
            }
        }
    }

    pub(super) fn feed(&mut self, root: Hash, input: Input<PeerId>) {
        if let Some(f) = self.versions.get_mut(&root).and_then(|v| v.fetch.as_mut()) {
            f.handle(now(), input);
        }
    }

    pub(super) fn on_chunk(
        &mut self,
        peer: PeerId,
        root: Hash,
        idx: ChunkIdx,
        hash: Hash,
        len: u32,
        resp: Response,
    ) {
        tracing::trace!(%peer, chunk = idx.0, response = resp.kind(), "chunk response");
        match resp {
            Response::Chunk(data) => {
                let tx = self.stored_tx.clone();
                let store = self.store.clone();
                let stager = self.versions.get(&root).and_then(|v| v.stager.clone());
                env::offload(self.inline, tx, move || {
                    // Verified, then written once: into the version's
                    // staged files (the store keeps a reference), or into a
                    // pack when the version is not being staged.
                    let result = if data.len() != len as usize {
                        Err(StoreError::HashMismatch {
                            expected: hash,
                            actual: Hash::of(&data),
                        })
                    } else if let Some(st) = &stager {
                        st.store_chunk(&store, &hash, &data)
                    } else {
                        store.put(&hash, &data)
                    };
                    Stored {
                        root,
                        idx,
                        peer,
                        len,
                        result,
                    }
                });
            }
            Response::NotFound => {
                Metrics::add(&self.metrics.answers_not_found, 1);
                self.feed(root, Input::NotFound { peer, chunk: idx });
            }
            Response::Busy => {
                Metrics::add(&self.metrics.answers_busy, 1);
                self.feed(root, Input::Busy { peer, chunk: idx });
            }
            other => {
                tracing::debug!(%peer, ?other, "unexpected reply to a chunk request");
                self.feed(root, Input::Failed { peer, chunk: idx });
            }
        }
    }

    pub(super) fn on_stored(&mut self, s: Stored) {
        match s.result {
            Ok(newly_stored) => {
                Metrics::add(&self.metrics.chunks_verified, 1);
                if let Some(v) = self.versions.get_mut(&s.root) {
                    v.have.hold([s.idx.0]);
                }
                // A duplicate (endgame or a late answer after a retry) was
                // verified but adds no new bytes to the store.
                if newly_stored {
                    Metrics::add(&self.metrics.bytes_fetched, u64::from(s.len));
                    if let Some(v) = self.versions.get_mut(&s.root) {
                        v.bytes_fetched += u64::from(s.len);
                    }
                }
                self.feed(
                    s.root,
                    Input::Verified {
                        peer: s.peer,
                        chunk: s.idx,
                    },
                );
                self.check_stripe_of(s.root, s.idx.0);
            }
            Err(StoreError::HashMismatch { expected, actual }) => {
                Metrics::add(&self.metrics.chunks_rejected, 1);
                tracing::warn!(peer = %s.peer, chunk = %expected, got = %actual, "rejected a chunk that failed BLAKE3 verification; fetching it elsewhere");
                self.feed(
                    s.root,
                    Input::Rejected {
                        peer: s.peer,
                        chunk: s.idx,
                    },
                );
            }
            Err(e) => {
                // Local failure (disk full, permissions): stop this version, retry later.
                if let Some(v) = self.versions.get_mut(&s.root)
                    && v.fetch.take().is_some()
                {
                    tracing::error!(version = %v.signed.version, error = %e, "cannot store chunks; pausing this version for 10 s (previous `current` kept)");
                    v.error = Some(e.to_string());
                    v.state = VState::Failed {
                        retry_at: now() + Duration::from_secs(10),
                    };
                    // Its staged files go too (they take space on a full
                    // disk); the retry stages anew and fetches what they held.
                    if let Some(st) = v.stager.take() {
                        st.discard(&self.store);
                    }
                }
            }
        }
    }
}
