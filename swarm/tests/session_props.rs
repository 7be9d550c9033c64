//! Property test: random inputs and time never drive a `Session` into an
//! invalid state, and its timing bounds hold.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use swarm::{Session, SessionAction, SessionConfig, SessionInput, SessionState};

#[derive(Clone, Debug)]
enum Op {
    Input(u8),
    Advance(u64),
    Timeout,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..8u8).prop_map(Op::Input),
        3 => (0..3000u64).prop_map(Op::Advance),
        3 => Just(Op::Timeout),
    ]
}

fn input(k: u8) -> SessionInput {
    use SessionInput as I;
    [
        I::HeartbeatOk,
        I::HeartbeatMissed,
        I::BytesReceived,
        I::Disconnected,
        I::Reconnected,
        I::DialFailed,
        I::Offence,
        I::Ban,
    ][k as usize % 8]
}

/// What the driver knows, replayed from the actions alone.
#[derive(Debug, Default)]
struct Driver {
    connected: bool,
    dialing: bool,
    banned: bool,
}

fn check_state(s: &Session, t0: Instant, now: Instant) -> Result<(), TestCaseError> {
    let c = s.config();
    match s.state() {
        SessionState::Connected { last_heard } | SessionState::Suspect { last_heard } => {
            prop_assert!(t0 <= last_heard && last_heard <= now);
        }
        SessionState::Resending { since } => prop_assert!(since <= now),
        SessionState::Recovering { attempt, next_try } => {
            prop_assert!(next_try <= now + c.backoff_max);
            prop_assert!(c.max_attempts.is_none_or(|m| attempt <= m));
        }
        SessionState::Dialing { attempt, since } => {
            prop_assert!(attempt >= 1 && since <= now);
            prop_assert!(c.max_attempts.is_none_or(|m| attempt <= m));
        }
        SessionState::Banned { until } => prop_assert!(until <= now + c.ban_duration),
        SessionState::Gone => prop_assert!(c.max_attempts.is_some()),
    }
    prop_assert!(s.offences() < c.max_offences || s.is_banned());
    if let Some(t) = s.poll_timeout() {
        prop_assert!(t <= now + c.ban_duration.max(c.backoff_max).max(c.peer_timeout));
    }
    prop_assert_eq!(s.poll_timeout().is_none(), s.state() == SessionState::Gone);
    Ok(())
}

/// Applies the actions to the driver model; checks they are consistent.
fn apply(s: &mut Session, d: &mut Driver, now: Instant) -> Result<(), TestCaseError> {
    while let Some(a) = s.poll_action() {
        match a {
            SessionAction::Dial => {
                prop_assert!(!d.connected && !d.dialing && !d.banned, "{:?}", d);
                d.dialing = true;
            }
            SessionAction::Disconnect => d.connected = false,
            SessionAction::MoveRequests | SessionAction::Throttle | SessionAction::Resume => {}
            SessionAction::Ban { until } => {
                prop_assert!(!d.banned && until > now - Duration::from_secs(1));
                d.banned = true;
            }
            SessionAction::Unban => {
                prop_assert!(d.banned);
                d.banned = false;
            }
        }
    }
    prop_assert_eq!(d.banned, s.is_banned());
    Ok(())
}

proptest! {
    #[test]
    fn session_never_reaches_an_invalid_state(
        ops in prop::collection::vec(op(), 0..200),
        seed in any::<u64>(),
        max_attempts in prop::option::of(0..6u32),
        start_connected in any::<bool>(),
    ) {
        let cfg = SessionConfig { max_attempts, ban_duration: Duration::from_secs(30), ..SessionConfig::default() };
        let t0 = Instant::now();
        let mut now = t0;
        let mut s = if start_connected {
            Session::connected(cfg.clone(), now, seed)
        } else {
            Session::dial_now(cfg.clone(), now, seed)
        };
        let mut d = Driver { connected: start_connected, ..Driver::default() };
        for op in ops {
            match op {
                Op::Input(k) => {
                    let i = input(k);
                    let before = s.state();
                    match s.handle(now, i) {
                        Ok(()) => match i {
                            SessionInput::Reconnected if !before.is_connected() => {
                                d.connected = true;
                                d.dialing = false;
                            }
                            SessionInput::DialFailed => d.dialing = false,
                            SessionInput::Disconnected => d.connected = false,
                            _ => {}
                        },
                        Err(e) => prop_assert_eq!(s.state(), e.state),
                    }
                    if s.is_banned() {
                        // A dial still in flight is answered by a Disconnect.
                        d.dialing = false;
                    }
                }
                Op::Advance(ms) => now += Duration::from_millis(ms),
                Op::Timeout => {
                    if let Some(t) = s.poll_timeout() {
                        now = now.max(t);
                    }
                    let was = s.state();
                    s.handle_timeout(now);
                    if matches!(was, SessionState::Dialing { .. }) && !matches!(s.state(), SessionState::Dialing { .. }) {
                        d.dialing = false;
                    }
                    // The detection bound: a connected peer silent for
                    // peer_timeout is no longer connected after a timeout call.
                    if let SessionState::Connected { last_heard } | SessionState::Suspect { last_heard } = was
                        && now >= last_heard + cfg.peer_timeout
                    {
                        prop_assert!(!s.state().is_connected(), "{was:?} -> {:?}", s.state());
                    }
                }
            }
            apply(&mut s, &mut d, now)?;
            if s.state().is_connected() {
                prop_assert!(d.connected, "session {:?} but driver {:?}", s.state(), d);
            }
            check_state(&s, t0, now)?;
        }
    }
}
