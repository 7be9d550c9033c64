use super::*;

use SessionAction as A;
use SessionInput as I;
use SessionState as S;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn drain(s: &mut Session) -> Vec<SessionAction> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn no_jitter() -> SessionConfig {
    SessionConfig {
        jitter: 0.0,
        ..SessionConfig::default()
    }
}

#[test]
fn a_silent_link_is_suspect_then_cut_within_peer_timeout() {
    let t0 = Instant::now();
    let mut s = Session::connected(no_jitter(), t0, 1);
    assert_eq!(s.poll_timeout(), Some(t0 + ms(1000)));
    s.handle_timeout(t0 + ms(999));
    assert_eq!(s.state(), S::Connected { last_heard: t0 });
    s.handle_timeout(t0 + ms(1000));
    assert_eq!(s.state(), S::Suspect { last_heard: t0 });
    assert_eq!(drain(&mut s), vec![A::Throttle]);
    assert_eq!(s.poll_timeout(), Some(t0 + ms(2000)));
    s.handle_timeout(t0 + ms(2000));
    assert_eq!(drain(&mut s), vec![A::Disconnect, A::MoveRequests]);
    assert_eq!(
        s.state(),
        S::Recovering {
            attempt: 0,
            next_try: t0 + ms(2250)
        }
    );
}

#[test]
fn bytes_or_heartbeats_keep_a_peer_connected() {
    let t0 = Instant::now();
    let mut s = Session::connected(no_jitter(), t0, 1);
    for i in 1..10u64 {
        let now = t0 + ms(900 * i);
        s.handle_timeout(now);
        let input = if i % 2 == 0 {
            I::BytesReceived
        } else {
            I::HeartbeatOk
        };
        s.handle(now, input).unwrap();
        assert_eq!(s.state(), S::Connected { last_heard: now });
    }
    assert!(drain(&mut s).is_empty());
}

#[test]
fn a_missed_heartbeat_makes_suspect_and_an_answer_clears_it() {
    let t0 = Instant::now();
    let mut s = Session::connected(no_jitter(), t0, 1);
    s.handle(t0 + ms(300), I::HeartbeatMissed).unwrap();
    assert_eq!(s.state(), S::Suspect { last_heard: t0 });
    assert_eq!(drain(&mut s), vec![A::Throttle]);
    // The cut is still measured from the last time it was heard.
    assert_eq!(s.poll_timeout(), Some(t0 + ms(2000)));
    s.handle(t0 + ms(500), I::BytesReceived).unwrap();
    assert_eq!(
        s.state(),
        S::Connected {
            last_heard: t0 + ms(500)
        }
    );
}

#[test]
fn reconnect_backs_off_exponentially_up_to_the_cap() {
    let t0 = Instant::now();
    let mut s = Session::connected(no_jitter(), t0, 1);
    s.handle(t0, I::Disconnected).unwrap();
    assert_eq!(drain(&mut s), vec![A::MoveRequests]);
    let mut now = t0;
    let mut delays = Vec::new();
    for _ in 0..8 {
        let S::Recovering { next_try, .. } = s.state() else {
            panic!("{:?}", s.state())
        };
        delays.push(next_try - now);
        now = next_try;
        s.handle_timeout(now);
        assert_eq!(drain(&mut s), vec![A::Dial]);
        assert!(matches!(s.state(), S::Dialing { .. }));
        s.handle(now, I::DialFailed).unwrap();
    }
    let want: Vec<Duration> = [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000]
        .into_iter()
        .map(ms)
        .collect();
    assert_eq!(delays, want);
    // A dial that succeeds resumes: Resending until heard, then Connected.
    let S::Recovering { next_try, attempt } = s.state() else {
        panic!()
    };
    assert_eq!(attempt, 8);
    s.handle_timeout(next_try);
    drain(&mut s);
    s.handle(next_try, I::Reconnected).unwrap();
    assert_eq!(drain(&mut s), vec![A::Resume]);
    assert_eq!(s.state(), S::Resending { since: next_try });
    s.handle(next_try + ms(5), I::HeartbeatOk).unwrap();
    assert!(matches!(s.state(), S::Connected { .. }));
}

#[test]
fn jitter_spreads_delays_deterministically() {
    let t0 = Instant::now();
    let delay = |seed| {
        let mut s = Session::connected(SessionConfig::default(), t0, seed);
        s.handle(t0, I::Disconnected).unwrap();
        match s.state() {
            S::Recovering { next_try, .. } => next_try - t0,
            other => panic!("{other:?}"),
        }
    };
    let ds: Vec<Duration> = (0..32).map(delay).collect();
    assert!(ds.iter().all(|d| *d >= ms(125) && *d <= ms(250)), "{ds:?}");
    let distinct: std::collections::BTreeSet<_> = ds.iter().collect();
    assert!(distinct.len() > 16, "jitter should differ by seed: {ds:?}");
    assert_eq!(delay(7), delay(7));
}

#[test]
fn a_hung_dial_counts_as_failed() {
    let t0 = Instant::now();
    let mut s = Session::dial_now(no_jitter(), t0, 1);
    s.handle_timeout(t0);
    assert_eq!(drain(&mut s), vec![A::Dial]);
    assert_eq!(
        s.state(),
        S::Dialing {
            attempt: 1,
            since: t0
        }
    );
    s.handle_timeout(t0 + ms(2000));
    assert_eq!(
        s.state(),
        S::Recovering {
            attempt: 1,
            next_try: t0 + ms(2500)
        }
    );
}

#[test]
fn a_resumed_peer_that_stays_silent_is_cut_again() {
    let t0 = Instant::now();
    let mut s = Session::dial_now(no_jitter(), t0, 1);
    s.handle_timeout(t0);
    s.handle(t0, I::Reconnected).unwrap();
    drain(&mut s);
    s.handle_timeout(t0 + ms(2000));
    assert_eq!(drain(&mut s), vec![A::Disconnect, A::MoveRequests]);
    assert!(matches!(s.state(), S::Recovering { attempt: 0, .. }));
}

#[test]
fn gives_up_after_max_attempts_and_an_inbound_connection_revives() {
    let t0 = Instant::now();
    let cfg = SessionConfig {
        max_attempts: Some(2),
        ..no_jitter()
    };
    let mut s = Session::connected(cfg, t0, 1);
    s.handle(t0, I::Disconnected).unwrap();
    for _ in 0..2 {
        let t = s.poll_timeout().unwrap();
        s.handle_timeout(t);
        s.handle(t, I::DialFailed).unwrap();
    }
    assert_eq!(s.state(), S::Gone);
    assert_eq!(s.poll_timeout(), None);
    s.handle(t0 + ms(9000), I::Reconnected).unwrap();
    assert!(s.state().is_connected());
}

#[test]
fn repeated_offences_ban_for_a_while_then_the_peer_is_dialled_again() {
    let t0 = Instant::now();
    let cfg = SessionConfig {
        ban_duration: Duration::from_secs(60),
        ..no_jitter()
    };
    let mut s = Session::connected(cfg, t0, 1);
    s.handle(t0, I::Offence).unwrap();
    s.handle(t0, I::Offence).unwrap();
    assert!(!s.is_banned());
    assert_eq!(s.offences(), 2);
    s.handle(t0, I::Offence).unwrap();
    let until = t0 + Duration::from_secs(60);
    assert_eq!(s.state(), S::Banned { until });
    assert_eq!(
        drain(&mut s),
        vec![A::Disconnect, A::MoveRequests, A::Ban { until }]
    );
    // While banned: a connection from it is refused, nothing else matters.
    s.handle(t0 + ms(10), I::Disconnected).unwrap();
    s.handle(t0 + ms(20), I::Reconnected).unwrap();
    assert_eq!(drain(&mut s), vec![A::Disconnect]);
    s.handle(t0 + ms(30), I::HeartbeatOk).unwrap();
    s.handle(t0 + ms(30), I::Offence).unwrap();
    assert_eq!(s.state(), S::Banned { until });
    assert_eq!(s.poll_timeout(), Some(until));
    s.handle_timeout(until);
    assert_eq!(drain(&mut s), vec![A::Unban]);
    assert_eq!(s.offences(), 0);
    s.handle_timeout(until);
    assert_eq!(drain(&mut s), vec![A::Dial]);
}

#[test]
fn an_explicit_ban_while_disconnected_does_not_disconnect() {
    let t0 = Instant::now();
    let mut s = Session::dial_now(no_jitter(), t0, 1);
    s.handle(t0, I::Ban).unwrap();
    assert_eq!(
        drain(&mut s),
        vec![A::Ban {
            until: t0 + Duration::from_secs(600)
        }]
    );
}

#[test]
fn inputs_that_do_not_apply_are_errors_and_change_nothing() {
    let t0 = Instant::now();
    let mut s = Session::connected(no_jitter(), t0, 1);
    let e = s.handle(t0, I::DialFailed).unwrap_err();
    assert_eq!(e.state, S::Connected { last_heard: t0 });
    assert!(e.to_string().contains("DialFailed"), "{e}");
    assert!(s.handle(t0, I::Reconnected).is_err());
    s.handle(t0, I::Disconnected).unwrap();
    assert!(s.handle(t0, I::HeartbeatOk).is_err());
    assert!(s.handle(t0, I::BytesReceived).is_err());
    assert!(matches!(s.state(), S::Recovering { .. }));
}
