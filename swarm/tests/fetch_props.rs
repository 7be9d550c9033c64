//! Property test: random event sequences never break the invariants or panic.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use swarm::{Action, ChunkIdx, ChunkState, Fetch, FetchConfig, Input};

const PEERS: u8 = 5;
const CHUNKS: u32 = 12;

#[derive(Clone, Debug)]
enum Op {
    Connect(u8, bool),
    Disconnect(u8),
    HasAll(u8),
    Has(u8, Vec<u32>),
    AlreadyHave(Vec<u32>),
    /// An answer from an arbitrary peer about an arbitrary (maybe out-of-range) chunk.
    Stray(u8, u32, u8),
    /// An answer to the `n`-th outstanding request.
    Answer(usize, u8),
    Advance(u64),
    Timeout,
    /// 0 suspect, 1 banned, 2 unbanned (the driver's session actions).
    Session(u8, u8),
}

fn op() -> impl Strategy<Value = Op> {
    let peer = 0..PEERS;
    let chunk = 0..CHUNKS + 2;
    prop_oneof![
        (peer.clone(), any::<bool>()).prop_map(|(p, o)| Op::Connect(p, o)),
        peer.clone().prop_map(Op::Disconnect),
        peer.clone().prop_map(Op::HasAll),
        (peer.clone(), prop::collection::vec(chunk.clone(), 0..4)).prop_map(|(p, c)| Op::Has(p, c)),
        prop::collection::vec(chunk.clone(), 0..3).prop_map(Op::AlreadyHave),
        (peer, chunk, 0..4u8).prop_map(|(p, c, k)| Op::Stray(p, c, k)),
        (any::<usize>(), 0..4u8).prop_map(|(n, k)| Op::Answer(n, k)),
        (0..3000u64).prop_map(Op::Advance),
        Just(Op::Timeout),
        (0..PEERS, 0..3u8).prop_map(|(p, k)| Op::Session(p, k)),
    ]
}

fn answer(kind: u8, peer: u8, chunk: ChunkIdx) -> Input<u8> {
    match kind {
        0 => Input::Verified { peer, chunk },
        1 => Input::Rejected { peer, chunk },
        2 => Input::NotFound { peer, chunk },
        _ => Input::Failed { peer, chunk },
    }
}

proptest! {
    #[test]
    fn invariants_survive_random_events(
        ops in prop::collection::vec(op(), 0..150),
        seed in any::<u64>(),
        per_peer in 1..4usize,
        total in 1..8usize,
        origin_last in any::<bool>(),
    ) {
        let cfg = FetchConfig {
            max_in_flight_per_peer: per_peer,
            max_in_flight_total: total,
            request_timeout: Duration::from_millis(2000),
            lack_ttl: Duration::from_millis(500),
            max_strikes: 2,
            origin_last,
            ..FetchConfig::default()
        };
        let mut fetch = Fetch::new(cfg, (0..CHUNKS).map(|i| i * 10).collect(), seed);
        let mut now = Instant::now();
        let mut outstanding: Vec<(u8, ChunkIdx)> = Vec::new();
        let mut completes = 0;
        for op in ops {
            match op {
                Op::Connect(p, origin) => fetch.handle(now, Input::PeerConnected { peer: p, origin }),
                Op::Disconnect(p) => fetch.handle(now, Input::PeerDisconnected { peer: p }),
                Op::HasAll(p) => fetch.handle(now, Input::PeerHasAll { peer: p }),
                Op::Has(p, c) => fetch.handle(now, Input::PeerHas { peer: p, chunks: c.into_iter().map(ChunkIdx).collect() }),
                Op::AlreadyHave(c) => fetch.handle(now, Input::AlreadyHave { chunks: c.into_iter().map(ChunkIdx).collect() }),
                Op::Stray(p, c, k) => fetch.handle(now, answer(k, p, ChunkIdx(c))),
                Op::Answer(n, k) => {
                    if !outstanding.is_empty() {
                        let (p, c) = outstanding.swap_remove(n % outstanding.len());
                        fetch.handle(now, answer(k, p, c));
                    }
                }
                Op::Advance(ms) => now += Duration::from_millis(ms),
                Op::Timeout => {
                    if let Some(t) = fetch.poll_timeout() {
                        now = now.max(t);
                    }
                    fetch.handle_timeout(now);
                }
                Op::Session(peer, k) => fetch.handle(now, match k {
                    0 => Input::PeerSuspect { peer },
                    1 => Input::PeerBanned { peer },
                    _ => Input::PeerUnbanned { peer },
                }),
            }
            fetch.check_invariants();
            while let Some(action) = fetch.poll_action(now) {
                fetch.check_invariants();
                match action {
                    Action::Request { peer, chunk } => {
                        prop_assert!(!fetch.is_banned(&peer));
                        prop_assert!(fetch.in_flight_to(&peer) <= per_peer);
                        outstanding.push((peer, chunk));
                    }
                    Action::Complete => completes += 1,
                    Action::Ban { peer } => prop_assert!(fetch.is_banned(&peer)),
                    Action::Cancel { .. } | Action::Penalise { .. } => {}
                }
                prop_assert!(fetch.progress().in_flight <= total);
            }
            prop_assert!(completes <= 1);
            prop_assert_eq!(completes == 1, fetch.is_complete());
            let p = fetch.progress();
            prop_assert!(p.chunks_done <= p.chunks_total && p.bytes_done <= p.bytes_total);
            if let Some(t) = fetch.poll_timeout() {
                // Timers only ever point at lack expiries or remote waits ahead of
                // the last handle_timeout, or at a (size-scaled) request deadline.
                let is_deadline = (0..CHUNKS).any(|c| matches!(
                    fetch.chunk_state(ChunkIdx(c)),
                    Some(ChunkState::InFlight { peers }) if peers.iter().any(|o| o.deadline == t)
                ));
                prop_assert!(is_deadline || t <= now + Duration::from_millis(2000));
            }
        }
    }

    /// With at least one honest full peer, answering every request eventually completes.
    #[test]
    fn honest_swarm_always_completes(seed in any::<u64>(), n in 0..40u32, have in prop::collection::vec(0..40u32, 0..10)) {
        let mut fetch = Fetch::new(FetchConfig::default(), vec![1; n as usize], seed);
        let now = Instant::now();
        fetch.handle(now, Input::PeerConnected { peer: 1u8, origin: true });
        fetch.handle(now, Input::PeerConnected { peer: 2u8, origin: false });
        fetch.handle(now, Input::PeerHasAll { peer: 2u8 });
        fetch.handle(now, Input::AlreadyHave { chunks: have.into_iter().map(ChunkIdx).collect() });
        let mut completes = 0;
        for _ in 0..1000 {
            let mut reqs = Vec::new();
            while let Some(a) = fetch.poll_action(now) {
                match a {
                    Action::Request { peer, chunk } => reqs.push((peer, chunk)),
                    Action::Complete => completes += 1,
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            if reqs.is_empty() {
                break;
            }
            for (peer, chunk) in reqs {
                fetch.handle(now, Input::Verified { peer, chunk });
            }
        }
        prop_assert!(fetch.is_complete());
        prop_assert_eq!(completes, 1);
        fetch.check_invariants();
    }
}
