//! The per-peer session: one connection's liveness, reconnect and ban state
//! machine, across every fetch (see `docs/session.md` and `swarm/STATE.md`).
//!
//! A [`Session`] is sans-IO like [`Fetch`](crate::Fetch): the driver reports
//! [`SessionInput`]s (heartbeat answered or missed, bytes received, the
//! connection lost or re-established, a dial failed, an offence) with the
//! current time, calls [`Session::handle_timeout`] at
//! [`Session::poll_timeout`], and carries out the [`SessionAction`]s it
//! drains from [`Session::poll_action`]. Backoff jitter comes from a seeded
//! [`SplitMix64`], so a seed and an input sequence always give the same
//! actions.
//!
//! ```text
//!            heartbeat missed / silent for suspect_after
//!  Connected ───────────────────────────────────────────► Suspect
//!      ▲  ◄─────────────── heard (heartbeat ok, bytes) ──────┘ │
//!      │                                                       │ silent for peer_timeout
//!      │ heard                                                 │ (Disconnect, MoveRequests)
//!      │                                                       ▼
//!  Resending ◄── Reconnected (Resume) ── Dialing ◄── next_try ── Recovering{attempt, next_try}
//!                                          └──── DialFailed ──────►  (attempt + 1)
//!  any connected state ── Disconnected (MoveRequests) ──► Recovering{1, now + backoff}
//!  any state ── max_offences offences / Banned ──► Banned{until} ── until ──► Recovering{0, now}
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::rng::SplitMix64;

/// Tunables of a [`Session`].
#[derive(Clone, Debug, PartialEq)]
pub struct SessionConfig {
    /// A connected peer heard from neither by heartbeat nor by bytes for this
    /// long is declared cut (default 2 s): the driver closes the connection
    /// and moves its outstanding requests to other peers.
    pub peer_timeout: Duration,
    /// Silence after which a connected peer becomes [`SessionState::Suspect`]
    /// (default 1 s; at most `peer_timeout`). A missed heartbeat makes it
    /// suspect at once.
    pub suspect_after: Duration,
    /// First reconnect delay (default 250 ms), doubled per failed attempt.
    pub backoff_initial: Duration,
    /// Largest reconnect delay (default 10 s).
    pub backoff_max: Duration,
    /// Share of each delay that is random (default 0.5): a delay `d` becomes
    /// uniform in `[d × (1 − jitter), d]`, so peers cut at the same instant do
    /// not all redial at the same instant. Clamped to `0..=1`.
    pub jitter: f64,
    /// Dial attempts before the session gives up ([`SessionState::Gone`];
    /// default `None`: never, e.g. for bootstrap peers).
    pub max_attempts: Option<u32>,
    /// Offences ([`SessionInput::Offence`]) before the peer is banned (default 3).
    pub max_offences: u32,
    /// How long a ban lasts (default 10 min).
    pub ban_duration: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            peer_timeout: Duration::from_secs(2),
            suspect_after: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
            jitter: 0.5,
            max_attempts: None,
            max_offences: 3,
            ban_duration: Duration::from_secs(600),
        }
    }
}

/// The state of one peer's session: exactly one at any time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Connected and heard from recently.
    Connected {
        /// When a heartbeat answer or bytes last arrived.
        last_heard: Instant,
    },
    /// Connected, but a heartbeat was missed or it has been silent for
    /// `suspect_after`: no new requests should be piled on it.
    Suspect {
        /// When it was last heard from.
        last_heard: Instant,
    },
    /// Not connected; the next dial is due at `next_try`.
    Recovering {
        /// Dial attempts made since the connection was lost (0 after a ban ends).
        attempt: u32,
        /// When to dial next.
        next_try: Instant,
    },
    /// A dial is outstanding.
    Dialing {
        /// The attempt in progress (1 = first).
        attempt: u32,
        /// When the dial was issued; it counts as failed after `peer_timeout`.
        since: Instant,
    },
    /// Connected again; the requests for what is still missing were reissued
    /// and it becomes `Connected` once it is heard from.
    Resending {
        /// When the connection came back.
        since: Instant,
    },
    /// Misbehaved: not dialled, not asked, its connections refused until `until`.
    Banned {
        /// When the ban ends.
        until: Instant,
    },
    /// Gave up after `max_attempts` dials; only an inbound connection revives it.
    Gone,
}

impl SessionState {
    /// A connection to the peer is up (Connected, Suspect or Resending).
    pub fn is_connected(&self) -> bool {
        matches!(
            self,
            Self::Connected { .. } | Self::Suspect { .. } | Self::Resending { .. }
        )
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Connected { .. } => "connected",
            Self::Suspect { .. } => "suspect",
            Self::Recovering { .. } => "recovering",
            Self::Dialing { .. } => "dialing",
            Self::Resending { .. } => "resending",
            Self::Banned { .. } => "banned",
            Self::Gone => "gone",
        }
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An event the driver reports to a [`Session`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionInput {
    /// A heartbeat (ping) was answered.
    HeartbeatOk,
    /// A heartbeat went unanswered within its timeout.
    HeartbeatMissed,
    /// Bytes of a response arrived from the peer (the transfer progresses).
    BytesReceived,
    /// The connection closed (FIN, RST, or closed by us).
    Disconnected,
    /// A connection to the peer was established (our dial or theirs).
    Reconnected,
    /// Our dial failed.
    DialFailed,
    /// The peer misbehaved (corrupt chunk, announced a chunk it lacks).
    Offence,
    /// Ban the peer now (a fetch reached its strike limit).
    Ban,
}

/// What the driver should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionAction {
    /// Dial the peer (its known addresses).
    Dial,
    /// Close every connection to the peer.
    Disconnect,
    /// Stop piling requests on the peer (feed every fetch
    /// [`Input::PeerSuspect`](crate::Input::PeerSuspect)).
    Throttle,
    /// Move every request outstanding to the peer to other peers (feed every
    /// fetch [`Input::PeerDisconnected`](crate::Input::PeerDisconnected)).
    MoveRequests,
    /// The peer is back: let every fetch ask it again for what is still
    /// missing (feed [`Input::PeerConnected`](crate::Input::PeerConnected)).
    Resume,
    /// The peer is banned until `until` (feed every fetch
    /// [`Input::PeerBanned`](crate::Input::PeerBanned), log it).
    Ban {
        /// When the ban ends.
        until: Instant,
    },
    /// The ban ended (feed every fetch [`Input::PeerUnbanned`](crate::Input::PeerUnbanned)).
    Unban,
}

/// An input that makes no sense in the session's state; the state is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("session input {input:?} is not expected in state {state}")]
pub struct SessionError {
    /// The state the session was (and still is) in.
    pub state: SessionState,
    /// The input.
    pub input: SessionInput,
}

/// One peer's session (see the module docs for the state diagram).
#[derive(Clone, Debug)]
pub struct Session {
    config: SessionConfig,
    state: SessionState,
    offences: u32,
    rng: SplitMix64,
    /// Actions decided and not yet polled: at most a handful per input.
    actions: VecDeque<SessionAction>,
}

impl Session {
    /// A session for a peer whose connection is up at `now`.
    pub fn connected(config: SessionConfig, now: Instant, seed: u64) -> Self {
        Self::with_state(config, SessionState::Connected { last_heard: now }, seed)
    }

    /// A session for a peer not connected yet, to be dialled at once.
    pub fn dial_now(config: SessionConfig, now: Instant, seed: u64) -> Self {
        let state = SessionState::Recovering {
            attempt: 0,
            next_try: now,
        };
        Self::with_state(config, state, seed)
    }

    fn with_state(mut config: SessionConfig, state: SessionState, seed: u64) -> Self {
        config.suspect_after = config.suspect_after.min(config.peer_timeout);
        config.backoff_max = config.backoff_max.max(config.backoff_initial);
        config.jitter = config.jitter.clamp(0.0, 1.0);
        config.max_offences = config.max_offences.max(1);
        Self {
            config,
            state,
            offences: 0,
            rng: SplitMix64::new(seed),
            actions: VecDeque::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// The configuration in use (clamped as documented).
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Offences counted since the last ban ended.
    pub fn offences(&self) -> u32 {
        self.offences
    }

    /// The peer is banned at `now`.
    pub fn is_banned(&self) -> bool {
        matches!(self.state, SessionState::Banned { .. })
    }

    /// Applies one event. An input that does not apply to the current state
    /// (for example `DialFailed` while connected) returns an error and
    /// changes nothing.
    pub fn handle(&mut self, now: Instant, input: SessionInput) -> Result<(), SessionError> {
        use SessionInput as I;
        use SessionState as S;
        let unexpected = SessionError {
            state: self.state,
            input,
        };
        match (self.state, input) {
            (_, I::Offence) => self.offence(now),
            (_, I::Ban) => self.ban(now),
            (S::Connected { .. }, I::HeartbeatOk | I::BytesReceived) => self.heard(now),
            (S::Suspect { .. } | S::Resending { .. }, I::HeartbeatOk | I::BytesReceived) => {
                self.heard(now);
            }
            (S::Connected { last_heard }, I::HeartbeatMissed) => self.suspect(last_heard),
            (S::Suspect { .. } | S::Resending { .. }, I::HeartbeatMissed) => {}
            (S::Connected { .. } | S::Suspect { .. } | S::Resending { .. }, I::Disconnected) => {
                self.actions.push_back(SessionAction::MoveRequests);
                self.retry_later(now, 1);
            }
            (S::Recovering { .. } | S::Dialing { .. } | S::Gone, I::Reconnected) => {
                self.state = S::Resending { since: now };
                self.actions.push_back(SessionAction::Resume);
            }
            (S::Dialing { attempt, .. }, I::DialFailed) => self.retry_later(now, attempt + 1),
            (S::Banned { .. }, I::Reconnected) => {
                self.actions.push_back(SessionAction::Disconnect);
            }
            // Late reports about a connection or dial that is already gone.
            (
                S::Banned { .. } | S::Recovering { .. } | S::Gone,
                I::Disconnected | I::DialFailed,
            ) => {}
            (S::Banned { .. }, _) => {}
            _ => return Err(unexpected),
        }
        Ok(())
    }

    /// Acts on the passage of time: suspects a silent peer, declares a cut
    /// link after `peer_timeout` of silence, dials when a backoff ends, gives
    /// up on a hung dial, ends a ban.
    pub fn handle_timeout(&mut self, now: Instant) {
        use SessionState as S;
        let c = &self.config;
        match self.state {
            S::Connected { last_heard } if now >= last_heard + c.peer_timeout => self.cut(now),
            S::Connected { last_heard } if now >= last_heard + c.suspect_after => {
                self.suspect(last_heard);
            }
            S::Suspect { last_heard } if now >= last_heard + c.peer_timeout => self.cut(now),
            S::Resending { since } if now >= since + c.peer_timeout => self.cut(now),
            S::Recovering { attempt, .. } if c.max_attempts.is_some_and(|m| attempt >= m) => {
                self.state = S::Gone;
            }
            S::Recovering { attempt, next_try } if now >= next_try => {
                let attempt = attempt + 1;
                self.state = S::Dialing {
                    attempt,
                    since: now,
                };
                self.actions.push_back(SessionAction::Dial);
            }
            S::Dialing { attempt, since } if now >= since + c.peer_timeout => {
                self.retry_later(now, attempt + 1);
            }
            S::Banned { until } if now >= until => {
                self.offences = 0;
                self.state = S::Recovering {
                    attempt: 0,
                    next_try: now,
                };
                self.actions.push_back(SessionAction::Unban);
            }
            _ => {}
        }
    }

    /// The next action for the driver; call until `None` after every
    /// [`handle`](Self::handle) and [`handle_timeout`](Self::handle_timeout).
    pub fn poll_action(&mut self) -> Option<SessionAction> {
        self.actions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should be called next
    /// (`None` only when [`SessionState::Gone`]).
    pub fn poll_timeout(&self) -> Option<Instant> {
        use SessionState as S;
        let c = &self.config;
        match self.state {
            S::Connected { last_heard } => Some(last_heard + c.suspect_after),
            S::Suspect { last_heard } => Some(last_heard + c.peer_timeout),
            S::Resending { since } | S::Dialing { since, .. } => Some(since + c.peer_timeout),
            S::Recovering { next_try, .. } => Some(next_try),
            S::Banned { until } => Some(until),
            S::Gone => None,
        }
    }

    /// The reconnect delay before dial attempt `attempt` (1 = the first after
    /// a loss), without jitter: `min(backoff_max, backoff_initial × 2^(attempt−1))`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let c = &self.config;
        let shift = attempt.saturating_sub(1).min(20);
        c.backoff_initial
            .saturating_mul(1 << shift)
            .min(c.backoff_max)
    }

    fn heard(&mut self, now: Instant) {
        self.state = SessionState::Connected { last_heard: now };
    }

    fn suspect(&mut self, last_heard: Instant) {
        self.state = SessionState::Suspect { last_heard };
        self.actions.push_back(SessionAction::Throttle);
    }

    /// The link is declared cut: close it and move its requests away.
    fn cut(&mut self, now: Instant) {
        self.actions.push_back(SessionAction::Disconnect);
        self.actions.push_back(SessionAction::MoveRequests);
        self.retry_later(now, 1);
    }

    /// Waits (with jitter) before dial attempt `attempt`, or gives up.
    fn retry_later(&mut self, now: Instant, attempt: u32) {
        if self.config.max_attempts.is_some_and(|m| attempt > m) {
            self.state = SessionState::Gone;
            return;
        }
        let d = self.backoff(attempt);
        let random = d.mul_f64(self.config.jitter * self.unit());
        self.state = SessionState::Recovering {
            attempt: attempt - 1,
            next_try: now + (d - random),
        };
    }

    /// A uniform value in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn offence(&mut self, now: Instant) {
        if self.is_banned() {
            return;
        }
        self.offences += 1;
        if self.offences >= self.config.max_offences {
            self.ban(now);
        }
    }

    fn ban(&mut self, now: Instant) {
        if self.is_banned() {
            return;
        }
        let until = now + self.config.ban_duration;
        if self.state.is_connected() {
            self.actions.push_back(SessionAction::Disconnect);
            self.actions.push_back(SessionAction::MoveRequests);
        }
        self.state = SessionState::Banned { until };
        self.actions.push_back(SessionAction::Ban { until });
    }
}

#[cfg(test)]
mod tests;
