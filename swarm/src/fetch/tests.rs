use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::*;

type F = Fetch<&'static str>;

fn drain(f: &mut F, now: Instant) -> Vec<Action<&'static str>> {
    let mut out = Vec::new();
    while let Some(a) = f.poll_action(now) {
        out.push(a);
        f.check_invariants();
    }
    out
}

fn requests(actions: &[Action<&'static str>]) -> Vec<(&'static str, ChunkIdx)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Request { peer, chunk } => Some((*peer, *chunk)),
            _ => None,
        })
        .collect()
}

fn connect(f: &mut F, now: Instant, peer: &'static str, all: bool) {
    f.handle(
        now,
        Input::PeerConnected {
            peer,
            origin: false,
        },
    );
    if all {
        f.handle(now, Input::PeerHasAll { peer });
    }
}

/// The pre-rarest-first behaviour these tests were written for: a full
/// pipeline per peer from the start, no endgame duplicates.
fn classic() -> FetchConfig {
    FetchConfig {
        min_in_flight_per_peer: 8,
        endgame: false,
        download_slots: 64,
        ..FetchConfig::default()
    }
}

fn fetch(n: usize) -> F {
    Fetch::new(classic(), vec![100; n], 1)
}

#[test]
fn empty_fetch_is_complete_at_once() {
    let now = Instant::now();
    let mut f = fetch(0);
    assert!(f.is_complete());
    assert_eq!(drain(&mut f, now), vec![Action::Complete]);
    connect(&mut f, now, "a", true);
    assert_eq!(drain(&mut f, now), vec![]);
    assert_eq!(f.poll_timeout(), None);
    f.check_invariants();
}

#[test]
fn already_have_everything_completes_once_without_requests() {
    let now = Instant::now();
    let mut f = fetch(3);
    connect(&mut f, now, "a", true);
    f.handle(
        now,
        Input::AlreadyHave {
            chunks: vec![ChunkIdx(0), ChunkIdx(1), ChunkIdx(2)],
        },
    );
    assert_eq!(drain(&mut f, now), vec![Action::Complete]);
    f.handle(
        now,
        Input::AlreadyHave {
            chunks: vec![ChunkIdx(1)],
        },
    );
    f.handle(
        now,
        Input::Verified {
            peer: "a",
            chunk: ChunkIdx(2),
        },
    );
    assert_eq!(drain(&mut f, now), vec![]);
    let p = f.progress();
    assert_eq!(
        (p.chunks_done, p.chunks_total, p.bytes_done, p.bytes_total),
        (3, 3, 300, 300)
    );
}

#[test]
fn caps_hold_and_completion_is_reported_once() {
    let now = Instant::now();
    let cfg = FetchConfig {
        max_in_flight_per_peer: 3,
        min_in_flight_per_peer: 3,
        max_in_flight_total: 5,
        endgame: false,
        download_slots: 64,
        ..Default::default()
    };
    let mut f = Fetch::new(cfg, vec![1; 20], 5);
    connect(&mut f, now, "a", true);
    connect(&mut f, now, "b", true);
    let reqs = requests(&drain(&mut f, now));
    assert_eq!(reqs.len(), 5);
    assert!(f.in_flight_to(&"a") <= 3 && f.in_flight_to(&"b") <= 3);
    let mut pending = reqs;
    let mut completes = 0;
    while let Some((peer, chunk)) = pending.pop() {
        f.handle(now, Input::Verified { peer, chunk });
        f.handle(now, Input::Verified { peer, chunk }); // duplicate: ignored
        for a in drain(&mut f, now) {
            match a {
                Action::Request { peer, chunk } => pending.push((peer, chunk)),
                Action::Complete => completes += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(f.progress().in_flight <= 5);
    }
    assert_eq!(completes, 1);
    assert!(f.is_complete());
}

#[test]
fn rarest_first_and_origin_only_for_unheld_chunks() {
    let now = Instant::now();
    let cfg = FetchConfig {
        max_in_flight_per_peer: 2,
        download_slots: 64,
        rarest_window: 1,
        ..Default::default()
    };
    let mut f = Fetch::new(cfg, vec![1; 10], 3);
    f.handle(
        now,
        Input::PeerConnected {
            peer: "origin",
            origin: true,
        },
    );
    connect(&mut f, now, "unknown", false);
    connect(&mut f, now, "holder", false);
    let held: Vec<ChunkIdx> = (0..5).map(ChunkIdx).collect();
    f.handle(
        now,
        Input::PeerHas {
            peer: "holder",
            chunks: held,
        },
    );
    assert_eq!(f.availability(ChunkIdx(0)), 1);
    assert_eq!(f.availability(ChunkIdx(9)), 0);
    let reqs = requests(&drain(&mut f, now));
    let peers: Vec<_> = reqs.iter().map(|(p, _)| *p).collect();
    // Unheld chunks (availability 0) first: unknown peers before the origin;
    // then the held ones, from their holder. The origin never gets a held chunk.
    assert_eq!(
        peers,
        ["unknown", "unknown", "origin", "origin", "holder", "holder"]
    );
    for (p, c) in &reqs[..4] {
        assert!(c.0 >= 5, "{p} asked for held {c:?}");
    }
    for (_, c) in &reqs[4..] {
        assert!(c.0 < 5);
    }
}

#[test]
fn origin_is_a_holder_when_origin_last_is_off() {
    let now = Instant::now();
    let cfg = FetchConfig {
        max_in_flight_per_peer: 2,
        origin_last: false,
        download_slots: 64,
        rarest_window: 1,
        ..Default::default()
    };
    let mut f = Fetch::new(cfg, vec![1; 10], 3);
    f.handle(
        now,
        Input::PeerConnected {
            peer: "origin",
            origin: true,
        },
    );
    connect(&mut f, now, "unknown", false);
    let peers: Vec<_> = requests(&drain(&mut f, now))
        .iter()
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(peers, ["origin", "origin", "unknown", "unknown"]);
}

#[test]
fn not_found_blocks_the_peer_for_lack_ttl() {
    let t0 = Instant::now();
    let mut f = fetch(1);
    connect(&mut f, t0, "a", false);
    assert_eq!(requests(&drain(&mut f, t0)), vec![("a", ChunkIdx(0))]);
    f.handle(
        t0,
        Input::NotFound {
            peer: "a",
            chunk: ChunkIdx(0),
        },
    );
    assert_eq!(drain(&mut f, t0), vec![]);
    let ttl = FetchConfig::default().lack_ttl;
    assert_eq!(f.poll_timeout(), Some(t0 + ttl));
    let t1 = t0 + ttl;
    f.handle_timeout(t1);
    assert_eq!(requests(&drain(&mut f, t1)), vec![("a", ChunkIdx(0))]);
}

#[test]
fn announcement_lifts_a_lack_mark() {
    let t0 = Instant::now();
    let mut f = fetch(1);
    connect(&mut f, t0, "a", false);
    drain(&mut f, t0);
    f.handle(
        t0,
        Input::NotFound {
            peer: "a",
            chunk: ChunkIdx(0),
        },
    );
    assert_eq!(drain(&mut f, t0), vec![]);
    f.handle(
        t0,
        Input::PeerHas {
            peer: "a",
            chunks: vec![ChunkIdx(0), ChunkIdx(99)],
        },
    );
    assert_eq!(requests(&drain(&mut f, t0)), vec![("a", ChunkIdx(0))]);
}

#[test]
fn disconnect_reissues_elsewhere() {
    let now = Instant::now();
    let mut f = fetch(2);
    connect(&mut f, now, "a", true);
    assert_eq!(requests(&drain(&mut f, now)).len(), 2);
    connect(&mut f, now, "b", false);
    f.handle(now, Input::PeerDisconnected { peer: "a" });
    f.check_invariants();
    let reqs = requests(&drain(&mut f, now));
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|(p, _)| *p == "b"));
    // A late answer from the gone peer still counts and cancels b's request.
    let (_, c) = reqs[0];
    f.handle(
        now,
        Input::Verified {
            peer: "a",
            chunk: c,
        },
    );
    assert_eq!(
        drain(&mut f, now),
        vec![Action::Cancel {
            peer: "b",
            chunk: c
        }]
    );
    assert_eq!(f.progress().chunks_done, 1);
}

#[test]
fn timeout_moves_request_and_late_answer_cancels_the_retry() {
    let t0 = Instant::now();
    let cfg = classic();
    let mut f = fetch(1);
    connect(&mut f, t0, "slow", true);
    assert_eq!(requests(&drain(&mut f, t0)), vec![("slow", ChunkIdx(0))]);
    connect(&mut f, t0, "b", true);
    assert_eq!(drain(&mut f, t0), vec![]);
    let t1 = f.poll_timeout().unwrap();
    assert_eq!(t1, t0 + cfg.request_timeout);
    f.handle_timeout(t1);
    let acts = drain(&mut f, t1);
    assert_eq!(
        acts,
        vec![
            Action::Cancel {
                peer: "slow",
                chunk: ChunkIdx(0)
            },
            Action::Request {
                peer: "b",
                chunk: ChunkIdx(0)
            }
        ]
    );
    f.handle(
        t1,
        Input::Verified {
            peer: "slow",
            chunk: ChunkIdx(0),
        },
    );
    assert_eq!(
        drain(&mut f, t1),
        vec![
            Action::Cancel {
                peer: "b",
                chunk: ChunkIdx(0)
            },
            Action::Complete
        ]
    );
    f.handle(
        t1,
        Input::Verified {
            peer: "b",
            chunk: ChunkIdx(0),
        },
    );
    assert_eq!(drain(&mut f, t1), vec![]);
}

#[test]
fn a_timed_out_peer_gets_one_request_until_it_answers() {
    let t0 = Instant::now();
    let mut f = fetch(20);
    connect(&mut f, t0, "a", true);
    assert_eq!(requests(&drain(&mut f, t0)).len(), 8);
    let t1 = f.poll_timeout().unwrap();
    f.handle_timeout(t1);
    let acts = drain(&mut f, t1);
    let reqs = requests(&acts);
    assert_eq!(reqs.len(), 1, "{acts:?}");
    f.handle(
        t1,
        Input::Verified {
            peer: "a",
            chunk: reqs[0].1,
        },
    );
    assert_eq!(requests(&drain(&mut f, t1)).len(), 8);
}

#[test]
fn corrupt_peer_is_penalised_then_banned() {
    let now = Instant::now();
    let mut f = fetch(10);
    connect(&mut f, now, "bad", true);
    let reqs = requests(&drain(&mut f, now));
    assert_eq!(reqs.len(), 8);
    for (i, (peer, chunk)) in reqs.iter().take(3).enumerate() {
        f.handle(
            now,
            Input::Rejected {
                peer,
                chunk: *chunk,
            },
        );
        let acts = drain(&mut f, now);
        assert_eq!(
            acts[0],
            Action::Penalise {
                peer: "bad",
                reason: REASON_CORRUPT
            }
        );
        if i < 2 {
            assert!(!f.is_banned(&"bad"));
        } else {
            assert!(f.is_banned(&"bad"));
            assert_eq!(acts.last(), Some(&Action::Ban { peer: "bad" }));
            // The other seven requests (the pipeline was refilled) are cancelled.
            let cancels = acts
                .iter()
                .filter(|a| matches!(a, Action::Cancel { .. }))
                .count();
            assert_eq!(cancels, 7);
            assert_eq!(f.progress().in_flight, 0);
        }
    }
    // Banned for good: no request, and no more penalties.
    f.handle(
        now,
        Input::Rejected {
            peer: "bad",
            chunk: ChunkIdx(0),
        },
    );
    f.handle(
        now,
        Input::PeerConnected {
            peer: "bad",
            origin: false,
        },
    );
    assert_eq!(drain(&mut f, now), vec![]);
    connect(&mut f, now, "good", true);
    assert!(
        requests(&drain(&mut f, now))
            .iter()
            .all(|(p, _)| *p == "good")
    );
}

#[test]
fn rejected_chunk_goes_elsewhere_first() {
    let now = Instant::now();
    let mut f = fetch(1);
    connect(&mut f, now, "a", true);
    drain(&mut f, now);
    connect(&mut f, now, "b", false);
    f.handle(
        now,
        Input::Rejected {
            peer: "a",
            chunk: ChunkIdx(0),
        },
    );
    let acts = drain(&mut f, now);
    assert_eq!(
        acts,
        vec![
            Action::Penalise {
                peer: "a",
                reason: REASON_CORRUPT
            },
            Action::Request {
                peer: "b",
                chunk: ChunkIdx(0)
            }
        ]
    );
}

#[test]
fn failed_request_is_retried_and_stray_answers_are_ignored() {
    let now = Instant::now();
    let mut f = fetch(1);
    connect(&mut f, now, "a", true);
    drain(&mut f, now);
    // Answers for a chunk that is in flight to someone else, or unknown peers.
    f.handle(
        now,
        Input::Failed {
            peer: "x",
            chunk: ChunkIdx(0),
        },
    );
    f.handle(
        now,
        Input::NotFound {
            peer: "x",
            chunk: ChunkIdx(0),
        },
    );
    f.handle(
        now,
        Input::Verified {
            peer: "a",
            chunk: ChunkIdx(7),
        },
    );
    f.handle(
        now,
        Input::AlreadyHave {
            chunks: vec![ChunkIdx(9)],
        },
    );
    assert_eq!(f.progress().in_flight, 1);
    assert_eq!(drain(&mut f, now), vec![]);
    connect(&mut f, now, "b", true);
    f.handle(
        now,
        Input::Failed {
            peer: "a",
            chunk: ChunkIdx(0),
        },
    );
    assert_eq!(requests(&drain(&mut f, now)), vec![("b", ChunkIdx(0))]);
}

#[test]
fn already_have_cancels_an_in_flight_request() {
    let now = Instant::now();
    let mut f = fetch(2);
    connect(&mut f, now, "a", true);
    drain(&mut f, now);
    f.handle(
        now,
        Input::AlreadyHave {
            chunks: vec![ChunkIdx(1)],
        },
    );
    assert_eq!(
        drain(&mut f, now),
        vec![Action::Cancel {
            peer: "a",
            chunk: ChunkIdx(1)
        }]
    );
}

#[test]
fn zero_caps_are_clamped_to_one() {
    let now = Instant::now();
    let cfg = FetchConfig {
        max_in_flight_per_peer: 0,
        max_in_flight_total: 0,
        ..Default::default()
    };
    let mut f = Fetch::new(cfg, vec![1; 3], 0);
    connect(&mut f, now, "a", true);
    assert_eq!(requests(&drain(&mut f, now)).len(), 1);
}

#[test]
fn poll_timeout_ignores_lacks_of_done_chunks_and_gone_peers() {
    let t0 = Instant::now();
    let mut f = fetch(2);
    connect(&mut f, t0, "a", false);
    f.handle(
        t0,
        Input::NotFound {
            peer: "a",
            chunk: ChunkIdx(0),
        },
    );
    f.handle(
        t0,
        Input::NotFound {
            peer: "a",
            chunk: ChunkIdx(1),
        },
    );
    assert!(f.poll_timeout().is_some());
    f.handle(
        t0,
        Input::AlreadyHave {
            chunks: vec![ChunkIdx(0)],
        },
    );
    f.handle(t0, Input::PeerDisconnected { peer: "a" });
    assert_eq!(f.poll_timeout(), None);
    let _ = Duration::ZERO;
}

#[test]
fn a_peer_lying_about_what_it_has_is_penalised_then_banned() {
    let now = Instant::now();
    let mut f = Fetch::new(
        FetchConfig {
            max_lies: 2,
            max_strikes: 2,
            ..classic()
        },
        vec![100; 10],
        1,
    );
    connect(&mut f, now, "liar", true);
    let reqs = requests(&drain(&mut f, now));
    assert_eq!(reqs.len(), 8);
    let mut penalties = 0;
    for (i, (peer, chunk)) in reqs.iter().take(4).enumerate() {
        f.handle(
            now,
            Input::NotFound {
                peer,
                chunk: *chunk,
            },
        );
        let acts = drain(&mut f, now);
        let pen = acts
            .iter()
            .filter(|a| {
                **a == Action::Penalise {
                    peer: "liar",
                    reason: REASON_LYING,
                }
            })
            .count();
        penalties += pen;
        // Every second lie is a strike; the second strike bans.
        assert_eq!(pen, usize::from(i % 2 == 1), "lie {i}: {acts:?}");
        assert_eq!(f.is_banned(&"liar"), i == 3, "lie {i}");
        if i == 3 {
            assert_eq!(acts.last(), Some(&Action::Ban { peer: "liar" }));
        }
    }
    assert_eq!(penalties, 2);
    assert_eq!(f.progress().in_flight, 0);
}

#[test]
fn not_found_for_an_unannounced_chunk_is_no_lie() {
    let now = Instant::now();
    let mut f = Fetch::new(
        FetchConfig {
            max_lies: 1,
            max_strikes: 1,
            ..classic()
        },
        vec![100; 4],
        1,
    );
    // Never announced: an "unknown" peer may be asked for anything.
    connect(&mut f, now, "u", false);
    let reqs = requests(&drain(&mut f, now));
    assert!(!reqs.is_empty());
    for (peer, chunk) in reqs {
        f.handle(now, Input::NotFound { peer, chunk });
    }
    assert!(
        !drain(&mut f, now)
            .iter()
            .any(|a| matches!(a, Action::Penalise { .. } | Action::Ban { .. }))
    );
    assert!(!f.is_banned(&"u"));
}

#[test]
fn a_driver_ban_cancels_without_penalty_and_an_unban_restores_the_peer() {
    let now = Instant::now();
    let mut f = fetch(4);
    connect(&mut f, now, "a", true);
    assert_eq!(requests(&drain(&mut f, now)).len(), 4);
    f.handle(now, Input::PeerBanned { peer: "a" });
    let acts = drain(&mut f, now);
    assert_eq!(acts.len(), 4, "{acts:?}");
    assert!(acts.iter().all(|a| matches!(a, Action::Cancel { .. })));
    assert!(f.is_banned(&"a"));
    assert_eq!(f.progress().in_flight, 0);
    assert_eq!(f.availability(ChunkIdx(0)), 0);
    f.handle(now, Input::PeerUnbanned { peer: "a" });
    assert!(!f.is_banned(&"a"));
    assert_eq!(f.availability(ChunkIdx(0)), 1);
    assert_eq!(requests(&drain(&mut f, now)).len(), 4);
    assert_eq!(f.peer_stats(&"a").unwrap().strikes, 0);
}

#[test]
fn a_suspect_link_gets_no_new_pipeline() {
    let now = Instant::now();
    let mut f = fetch(20);
    connect(&mut f, now, "a", true);
    let first = requests(&drain(&mut f, now));
    assert_eq!(first.len(), 8);
    f.handle(now, Input::PeerSuspect { peer: "a" });
    f.handle(
        now,
        Input::Verified {
            peer: "a",
            chunk: first[0].1,
        },
    );
    // An answer clears the suspicion: the pipeline refills.
    assert_eq!(requests(&drain(&mut f, now)).len(), 1);
    f.handle(now, Input::PeerSuspect { peer: "a" });
    for (peer, chunk) in &first[1..] {
        f.handle(
            now,
            Input::Failed {
                peer,
                chunk: *chunk,
            },
        );
    }
    // Suspect (no answer since): at most one request outstanding.
    assert!(requests(&drain(&mut f, now)).is_empty());
    assert_eq!(f.in_flight_to(&"a"), 1);
}

#[test]
fn a_stalling_peer_is_dropped_from_the_candidates_for_that_chunk() {
    let t0 = Instant::now();
    let mut f = fetch(1);
    connect(&mut f, t0, "stall", true);
    assert_eq!(requests(&drain(&mut f, t0)), vec![("stall", ChunkIdx(0))]);
    let t1 = f.poll_timeout().unwrap();
    f.handle_timeout(t1);
    let acts = drain(&mut f, t1);
    assert_eq!(
        acts,
        vec![Action::Cancel {
            peer: "stall",
            chunk: ChunkIdx(0)
        }]
    );
    // The only holder stalled: the chunk waits (not re-asked of it) until its lack mark expires.
    assert_eq!(f.chunk_state(ChunkIdx(0)), Some(&ChunkState::Needed));
    let t2 = f.poll_timeout().unwrap();
    assert_eq!(t2, t1 + f.config().lack_ttl);
    f.handle_timeout(t2);
    assert_eq!(requests(&drain(&mut f, t2)), vec![("stall", ChunkIdx(0))]);
}

/// A round trip of 100 ms and deliveries at 10 MB/s: two round trips hold
/// 2 MB, 20 chunks of 100 kB, on top of the 2 download slots.
#[test]
fn the_window_grows_to_cover_the_round_trip() {
    let run = |cover: bool| {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let cfg = FetchConfig {
            download_slots: 2,
            cover_round_trip: cover,
            ..FetchConfig::default()
        };
        let mut f: F = Fetch::new(cfg, vec![100_000; 400], 7);
        for p in ["a", "b", "c", "d", "e", "f", "g", "h"] {
            connect(&mut f, t0, p, true);
        }
        let mut out: VecDeque<(&'static str, ChunkIdx)> = requests(&drain(&mut f, t0)).into();
        assert_eq!(out.len(), 2);
        assert_eq!(f.window(), 2, "nothing measured yet");
        // The first answer comes 100 ms later and carries no chunk.
        let (p, c) = out.pop_front().expect("a request");
        let mut now = t0 + ms(100);
        f.handle(now, Input::Busy { peer: p, chunk: c });
        out.extend(requests(&drain(&mut f, now)));
        // Then one chunk every 10 ms, oldest request first.
        for _ in 0..40 {
            now += ms(10);
            let (p, c) = out.pop_front().expect("a request outstanding");
            f.handle(now, Input::Verified { peer: p, chunk: c });
            out.extend(requests(&drain(&mut f, now)));
        }
        (f.window(), out.len())
    };
    assert_eq!(run(false), (2, 2));
    let (window, outstanding) = run(true);
    assert_eq!(window, 22);
    assert!(outstanding > 10, "{outstanding} outstanding");
}

/// The announce interval follows the delivery rate: `min` until measured,
/// then 8 mean chunks' worth of time (100 kB chunks every 10 ms: 80 ms),
/// clamped to `min..=max`.
#[test]
fn the_announce_interval_follows_the_delivery_rate() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut f: F = Fetch::new(FetchConfig::default(), vec![100_000; 400], 7);
    for p in ["a", "b", "c", "d"] {
        connect(&mut f, t0, p, true);
    }
    let mut out: VecDeque<(&'static str, ChunkIdx)> = requests(&drain(&mut f, t0)).into();
    assert_eq!(f.announce_interval(ms(1), ms(100)), ms(1), "unmeasured");
    let mut now = t0;
    for _ in 0..20 {
        now += ms(10);
        let (p, c) = out.pop_front().expect("a request outstanding");
        f.handle(now, Input::Verified { peer: p, chunk: c });
        out.extend(requests(&drain(&mut f, now)));
    }
    let d = f.announce_interval(ms(1), ms(100));
    assert!(d > ms(79) && d < ms(81), "{d:?}");
    assert_eq!(f.announce_interval(ms(1), ms(50)), ms(50));
    assert_eq!(f.announce_interval(ms(90), ms(100)), ms(90));
}
