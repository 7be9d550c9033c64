//! Per-peer sessions: drives one [`swarm::Session`] per peer from libp2p
//! events (ping heartbeats, responses, connections, dial failures) and the
//! fetches' penalties, and carries out its actions (dial with backoff, close
//! a cut link, move requests away, resume, ban for a while). See
//! `docs/session.md`.

use libp2p::ping;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use swarm::{Session, SessionAction, SessionConfig, SessionInput, SessionState};

use super::*;

/// Redials of a lost peer before its session gives up (`Gone`).
const MAX_REDIALS: u32 = 100;

/// The session tunables from the node config.
pub(super) fn session_config(cfg: &Validated) -> SessionConfig {
    SessionConfig {
        peer_timeout: Duration::from_millis(cfg.raw.peer_timeout_ms),
        suspect_after: Duration::from_millis(cfg.raw.peer_timeout_ms / 2),
        max_offences: cfg.raw.ban_after,
        ban_duration: Duration::from_secs(cfg.raw.ban_secs),
        // About a quarter of an hour of redials at the 10 s cap; bootstrap
        // addresses are redialled for ever by `dial_bootstrap` regardless,
        // and an inbound connection revives a session that gave up.
        max_attempts: Some(MAX_REDIALS),
        ..SessionConfig::default()
    }
}

/// The heartbeat: a ping every quarter of `peer_timeout_ms`, each allowed
/// half of it before it counts as missed.
pub(super) fn ping_config(cfg: &Validated) -> ping::Config {
    let t = Duration::from_millis(cfg.raw.peer_timeout_ms);
    ping::Config::new().with_interval(t / 4).with_timeout(t / 2)
}

impl Daemon {
    /// Feeds `input` to `peer`'s session (if it has one: sessions start when
    /// a first connection is up) and carries out what it decides.
    pub(super) fn session_input(&mut self, peer: PeerId, input: SessionInput) {
        let now = now();
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        if let Err(e) = s.handle(now, input) {
            // Races between libp2p events (a ping result from a connection
            // being closed): harmless, the state is unchanged.
            tracing::trace!(%peer, error = %e, "session input ignored");
        }
        self.run_session_actions(peer);
    }

    /// A connection to `peer` is up: a new session starts connected; a known
    /// one is told `Reconnected` (which resumes it, or refuses a banned peer).
    pub(super) fn session_connected(&mut self, peer: PeerId) {
        let now = now();
        match self.sessions.get(&peer).map(Session::state) {
            Some(st) if st.is_connected() => {}
            Some(_) => self.session_input(peer, SessionInput::Reconnected),
            None => {
                let seed = self.rng_seed ^ hash_peer(&peer);
                let s = Session::connected(self.session_cfg.clone(), now, seed);
                self.sessions.insert(peer, s);
                self.peer_up(peer);
            }
        }
    }

    /// The peer's session is connected (not cut, not banned). Peers without a
    /// session yet count as live.
    pub(super) fn is_live(&self, peer: &PeerId) -> bool {
        self.sessions
            .get(peer)
            .is_none_or(|s| s.state().is_connected())
    }

    /// Connected peers whose session considers them live.
    /// Connected peers whose session is live, in peer id order (the swarm
    /// iterates a randomly seeded map; sorted, what is sent to whom first
    /// does not depend on it).
    pub(super) fn live_peers(&self) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self
            .swarm
            .connected_peers()
            .filter(|p| self.is_live(p))
            .copied()
            .collect();
        v.sort_unstable();
        v
    }

    /// Banned peers (for a fetch that starts now).
    pub(super) fn banned_peers(&self) -> Vec<PeerId> {
        self.sessions
            .iter()
            .filter(|(_, s)| s.is_banned())
            .map(|(p, _)| *p)
            .collect()
    }

    /// Advances every session's timers.
    pub(super) fn sessions_timeout(&mut self) {
        let now = now();
        let due: Vec<PeerId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.poll_timeout().is_some_and(|t| t <= now))
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            if let Some(s) = self.sessions.get_mut(&peer) {
                s.handle_timeout(now);
            }
            self.run_session_actions(peer);
        }
    }

    /// The earliest session timer.
    pub(super) fn sessions_deadline(&self) -> Option<Instant> {
        self.sessions
            .values()
            .filter_map(Session::poll_timeout)
            .min()
    }

    pub(super) fn on_ping(&mut self, ev: ping::Event) {
        let input = match ev.result {
            Ok(_) => SessionInput::HeartbeatOk,
            Err(e) => {
                tracing::debug!(peer = %ev.peer, error = %e, "heartbeat missed");
                // The session is per peer and hears every connection; a
                // dead extra connection (the peer restarted behind a
                // half-open one) would keep its requests forever. Close it.
                if self.peers.get(&ev.peer).is_some_and(|i| i.connections > 1) {
                    tracing::info!(peer = %ev.peer, "closing a connection whose heartbeat failed; another is up");
                    self.swarm.close_connection(ev.connection);
                }
                SessionInput::HeartbeatMissed
            }
        };
        if self.sessions.contains_key(&ev.peer) {
            self.session_input(ev.peer, input);
        }
    }

    fn run_session_actions(&mut self, peer: PeerId) {
        while let Some(a) = self.sessions.get_mut(&peer).and_then(Session::poll_action) {
            self.session_action(peer, a);
        }
    }

    fn session_action(&mut self, peer: PeerId, action: SessionAction) {
        match action {
            SessionAction::Dial => self.session_dial(peer),
            SessionAction::Disconnect => {
                if !self.sessions.get(&peer).is_some_and(Session::is_banned) {
                    Metrics::add(&self.metrics.links_cut, 1);
                    tracing::warn!(%peer, timeout_ms = self.cfg.raw.peer_timeout_ms, "peer link silent too long; declared cut, closing it");
                }
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            SessionAction::Throttle => {
                tracing::debug!(%peer, "peer suspect (heartbeat missed or silent)");
                self.feed_all(Input::PeerSuspect { peer });
            }
            SessionAction::MoveRequests => self.peer_down(peer),
            SessionAction::Resume => {
                tracing::info!(%peer, "peer reconnected; resending what is missing");
                self.peer_up(peer);
            }
            SessionAction::Ban { until } => {
                let secs = until.saturating_duration_since(now()).as_secs();
                Metrics::add(&self.metrics.peers_banned, 1);
                tracing::warn!(%peer, ban_secs = secs, "peer banned for {secs} s after repeated offences (corrupt chunks or chunks announced but not held)");
                self.feed_all(Input::PeerBanned { peer });
            }
            SessionAction::Unban => {
                tracing::info!(%peer, "ban ended; the peer may be used again");
                self.feed_all(Input::PeerUnbanned { peer });
            }
        }
    }

    fn session_dial(&mut self, peer: PeerId) {
        let addrs = self
            .peers
            .get(&peer)
            .map(|i| i.addrs.clone())
            .unwrap_or_default();
        let attempt = match self.sessions.get(&peer).map(Session::state) {
            Some(SessionState::Dialing { attempt, .. }) => attempt,
            _ => 0,
        };
        if addrs.is_empty() {
            self.session_input(peer, SessionInput::DialFailed);
            return;
        }
        tracing::debug!(%peer, attempt, "redialling peer");
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::Always)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "redial failed");
            self.session_input(peer, SessionInput::DialFailed);
        }
    }

    /// The peer is reachable (again): greet it and let every fetch use it.
    fn peer_up(&mut self, peer: PeerId) {
        let hello = Request::Hello(self.hello());
        let id = self.swarm.behaviour_mut().rr.send_request(&peer, hello);
        self.pending.insert(id, Pending::Hello);
        self.feed_all(Input::PeerConnected {
            peer,
            origin: self.origins.contains(&peer),
        });
        // What we fetch and hold, at once rather than on the next
        // `have_interval` tick: until our first `Have` for a version reaches
        // it, the peer may probe us with requests we can only answer
        // `NotFound`. (In the packet tier, with connections coming up a
        // round trip after fetches start, that was ~320 `NotFound`s per
        // 8-node run of 16 chunks; with this, ~30.) Versions we hold whole
        // wait for the tick as before: to a peer that does not know the
        // version yet, an early `Have { all }` is refused and resent only
        // 500 ms later.
        let fetching: Vec<Hash> = self
            .versions
            .iter()
            .filter(|(_, v)| matches!(v.state, VState::Fetching))
            .map(|(r, _)| *r)
            .collect();
        for root in fetching {
            self.send_have(Some(root), Some(peer));
        }
    }

    /// The peer's link is gone (closed, or declared cut): its requests move
    /// to other peers at once.
    fn peer_down(&mut self, peer: PeerId) {
        tracing::info!(%peer, "peer link down; moving its requests to other peers");
        self.feed_all(Input::PeerDisconnected { peer });
        for v in self.versions.values_mut() {
            v.have.forget_peer(&peer);
        }
        self.update_local_group();
    }
}

fn hash_peer(p: &PeerId) -> u64 {
    let b = p.to_bytes();
    let tail: [u8; 8] = b[b.len() - 8..].try_into().expect("peer ids are long");
    u64::from_le_bytes(tail)
}
