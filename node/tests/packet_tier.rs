//! The simulator's packet tier: the whole daemon (libp2p included) on
//! turmoil hosts. Runs live here rather than in `cargo test -p sim` because
//! the packet tier is the daemon's code (crate `node` depends on `sim`).

use node::packet_tier::{self, PacketError};

fn scenario(text: &str) -> sim::Scenario {
    sim::Scenario::parse(text).expect("scenario")
}

const CALM_8: &str = "
name: calm-8
nodes: 8
topology: {racks_per_zone: 2}
link: {mbps: 200}
checkpoint: {size_mib: 4}
swarm: {download_slots: 6}
checks: {max_sim_s: 30}
";

#[test]
fn the_same_seed_gives_the_same_trace_and_every_node_completes() {
    let sc = scenario(CALM_8);
    let a = packet_tier::run(&sc, 3).expect("run a");
    let b = packet_tier::run(&sc, 3).expect("run b");
    println!("{a}\n{b}");
    assert!(a.passed(), "{a}");
    assert_eq!(a.tier, "packet");
    assert_eq!(a.completion.len(), 8, "every node holds the version: {a}");
    assert_eq!(a.trace, b.trace, "same scenario and seed, different trace");
    assert_eq!(a.completion, b.completion);
    assert_eq!(a.counters.events, b.counters.events);
    // Nodes get most bytes from each other: unicast would cost the origin
    // 8 copies (this small version, 16 chunks, costs it about 1.7).
    assert!(
        a.origin_over_s() < 2.5,
        "origin sent {:.2} x S",
        a.origin_over_s()
    );
    let delivered = a.counters.delivered as f64 / a.published_bytes as f64;
    assert!(delivered > 8.0, "8 nodes got {delivered:.2} copies in all");
    // No node can beat its link: S/B is a floor.
    assert!(a.completion_q(0.0) > a.s_over_b(), "{a}");
    // A node's first `Have` goes out the moment its fetch starts (and again
    // to a peer that shows it now knows the version), so peers are rarely
    // probed for chunks they cannot have. Sent only on the 100 ms tick, as
    // before, this run had 275 `NotFound` answers; now 15. And to a peer
    // that connects while we fetch, at once: with the Noise negotiation's
    // extra round trip (connections up after fetches start) and only the
    // tick for those, 318; with it, 30.
    assert!(
        a.counters.not_found < 60,
        "{} NotFound answers: nodes probe peers of unknown availability",
        a.counters.not_found
    );
    // Another seed is another run (different keys, different schedule).
    let c = packet_tier::run(&sc, 4).expect("run c");
    assert_ne!(a.trace, c.trace);
}

#[test]
fn a_byzantine_peer_is_caught_and_every_honest_node_is_byte_identical() {
    let sc = scenario(
        "
name: byzantine-4
nodes: 4
link: {mbps: 200}
checkpoint: {size_mib: 4}
swarm: {download_slots: 6}
faults: [{kind: byzantine, ids: [1]}]
checks: {max_sim_s: 60}
",
    );
    let r = packet_tier::run(&sc, 1).expect("run");
    println!("{r}");
    // Safety (every `current` equals its source, every stored record hashes
    // to its name) and liveness held, although node 1 corrupted every chunk
    // it served.
    assert!(r.passed(), "{r}");
    assert!(
        r.counters.rejected > 0,
        "nobody asked the Byzantine node? {r}"
    );
    assert!(r.counters.safety_checks > 0);
}

#[test]
fn the_chaos_drill_passes_for_several_seeds() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sim/scenarios/chaos-packet-8.yaml"
    );
    let sc = scenario(&std::fs::read_to_string(path).expect("scenario file"));
    // Seed 3 guards the stale-connection rule (an inbound connection from a
    // peer closes our older one to it): without it, after the silent crash
    // and restart, every node waited ~10 s on the half-open connection and
    // finished at 38.7 x S/B, failing liveness.
    for seed in 1..=3 {
        let r = packet_tier::run(&sc, seed).expect("run");
        println!("{r}");
        assert!(
            r.passed(),
            "seed {seed} failed; replay with: syncnode sim sim/scenarios/chaos-packet-8.yaml --tier packet --seed {seed}\n{r}"
        );
        // Two versions were published: v2 is what every live node holds.
        assert!(r.published_bytes > r.version_bytes);
        assert_eq!(r.completion.len() as u32, r.live);
        if seed <= 2 {
            // Under faults too, the same seed replays the same run, even in
            // the same process (libp2p's request and connection ids come
            // from process-wide counters, so they differ from the first run,
            // and its `HashMap`s are seeded afresh). Seed 1 once parted on
            // the order in which a closed connection failed its requests,
            // seed 2 on which of two connections to one peer carried them.
            let again = packet_tier::run(&sc, seed).expect("rerun");
            assert_eq!(
                r.trace, again.trace,
                "seed {seed} did not replay:\n{r}\n{again}"
            );
        }
    }
}

fn load(name: &str) -> sim::Scenario {
    let path = format!("{}/../sim/scenarios/{name}", env!("CARGO_MANIFEST_DIR"));
    scenario(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
}

/// What a chaos drill must show for one seed: safety and liveness held,
/// the second version is what every live node holds, and the Byzantine
/// node's corrupt chunks were caught.
fn check_chaos(name: &str, sc: &sim::Scenario, seed: u64) -> sim::Report {
    let r = packet_tier::run(sc, seed).expect("run");
    assert!(
        r.passed(),
        "seed {seed} failed; replay with: syncnode sim sim/scenarios/{name} --tier packet --seed {seed}\n{r}"
    );
    assert!(r.published_bytes > r.version_bytes, "{r}");
    assert_eq!(r.completion.len() as u32, r.live, "{r}");
    r
}

/// The 30-node packet drill, one seed per CI run (about a minute in a
/// debug build); 100 seeds below.
#[test]
fn the_30_node_chaos_drill_passes() {
    let r = check_chaos("chaos-packet-30.yaml", &load("chaos-packet-30.yaml"), 1);
    println!("{r}");
    assert!(
        r.counters.rejected > 0,
        "nobody asked the Byzantine node? {r}"
    );
}

/// Issue 4's drill suite at the packet tier: 100 seeds of the 30-node chaos
/// drill, every safety check at every step and liveness after the faults.
/// About 10 minutes on 2 cores in a release build, too long for every CI
/// run: `cargo nextest run --release -p node --test packet_tier --run-ignored only`.
#[test]
#[ignore = "100 seeds: about 10 min on 2 cores in release; run with --run-ignored only"]
fn chaos_packet_30_one_hundred_seeds() {
    let sc = load("chaos-packet-30.yaml");
    let started = std::time::Instant::now();
    let next = std::sync::atomic::AtomicU64::new(1);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let reports: Vec<sim::Report> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if seed > 100 {
                            return out;
                        }
                        out.push(check_chaos("chaos-packet-30.yaml", &sc, seed));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a seed failed (see above)"))
            .collect()
    });
    assert_eq!(reports.len(), 100);
    let worst = reports.iter().map(|r| r.max_over_s_b()).fold(0.0, f64::max);
    let rejected: u64 = reports.iter().map(|r| r.counters.rejected).sum();
    let checks: u64 = reports.iter().map(|r| r.counters.safety_checks).sum();
    let origin = reports
        .iter()
        .map(|r| r.origin_over_s())
        .fold(0.0, f64::max);
    println!(
        "chaos-packet-30: 100 seeds passed in {:.0} s of wall on {threads} threads; \
         slowest completion {worst:.3} x S/B; origin egress at most {origin:.3} x S; \
         {rejected} corrupt chunks rejected; {checks} safety checks",
        started.elapsed().as_secs_f64()
    );
    assert!(rejected > 0 && checks > 0);
}

#[test]
fn more_hosts_than_the_tier_runs_is_a_clear_error() {
    let sc = scenario("name: big\nnodes: 100\nlink: {mbps: 100}\ncheckpoint: {size_mib: 1}\n");
    match packet_tier::run(&sc, 1) {
        Err(e @ PacketError::Unsupported(_)) => {
            let msg = e.to_string();
            assert!(
                msg.contains("at most 64 hosts") && msg.contains("--tier flow"),
                "{msg}"
            );
        }
        other => panic!(
            "expected Unsupported, got {:?}",
            other.map(|r| r.to_string())
        ),
    }
}

/// Issue 4's fidelity point, on a case small enough for every CI run: the
/// flow tier (the swarm core over a flow model) and the packet tier (the
/// whole daemon) agree within 10 % on the slowest node's time and on
/// origin egress, averaged over seeds 1-6. One seed alone measures the
/// packet tier's run-to-run spread more than the tiers' difference: over
/// seeds 1-6 its slowest node ranged 1.31-1.48 x S/B, the flow tier's
/// 1.23-1.34. Measured (means of seeds 1-6): flow 1.282, packet 1.390 x S/B
/// (+8.4 %; +7.1 % before the Noise cipher negotiation added a round trip
/// to each connection's setup). The flow tier before it modelled one
/// connection's transfers crossing in order and the daemon's early slot release was
/// 21 % apart here (1.564).
#[test]
fn the_two_tiers_agree_on_a_small_fan_out() {
    let sc = scenario(
        "
name: pair-3
nodes: 3
link: {mbps: 200}
checkpoint: {size_mib: 32, chunk_kib: 256}
swarm: {download_slots: 6, slot_release_kib: 256}
",
    );
    let seeds = [1, 2, 3, 4, 5, 6];
    let (mut flow_t, mut flow_o, mut packet_t, mut packet_o) = (0.0, 0.0, 0.0, 0.0);
    for seed in seeds {
        let flow = sim::run(sc.clone(), seed);
        let packet = packet_tier::run(&sc, seed).expect("packet run");
        println!("{flow}\n{packet}");
        assert!(flow.passed() && packet.passed(), "{flow}\n{packet}");
        flow_t += flow.max_over_s_b();
        flow_o += flow.origin_over_s();
        packet_t += packet.max_over_s_b();
        packet_o += packet.origin_over_s();
    }
    let n = seeds.len() as f64;
    let (flow_t, flow_o, packet_t, packet_o) = (flow_t / n, flow_o / n, packet_t / n, packet_o / n);
    let time = packet_t / flow_t - 1.0;
    let origin = packet_o / flow_o - 1.0;
    assert!(
        time.abs() < 0.10 && origin.abs() < 0.10,
        "means over seeds {seeds:?}: slowest node flow {flow_t:.3} / packet {packet_t:.3} x S/B \
         ({:+.1} %), origin flow {flow_o:.3} / packet {packet_o:.3} x S ({:+.1} %)",
        time * 100.0,
        origin * 100.0
    );
}
