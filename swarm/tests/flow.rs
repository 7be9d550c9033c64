//! Fan-out scenarios: many nodes, each running a real `Fetch`, over a
//! flow-level network model (see `harness/flow.rs`).

#[path = "harness/flow.rs"]
mod flow;

use std::time::Duration;

use flow::{FlowConfig, FlowSim, ORIGIN};

fn report(name: &str, sim: &FlowSim) -> (f64, f64) {
    let s = sim.version_bytes() as f64;
    let ratio = sim.completion_secs() / sim.ideal_secs();
    let origin = sim.origin_egress() as f64 / s;
    println!(
        "{name}: completion {:.3} s = {ratio:.3} x S/B, origin egress {origin:.3} x S, not-found {}, busy {}, injected {:.3} x S/B, origin idle {:.3} x S/B",
        sim.completion_secs(),
        sim.not_found,
        sim.busy,
        sim.injected_at.unwrap_or(0) as f64 / 1e9 / sim.ideal_secs(),
        sim.origin_idle as f64 / 1e9 / sim.ideal_secs(),
    );
    (ratio, origin)
}

fn small(nodes: u32, racks: u32, seed: u64) -> FlowConfig {
    FlowConfig {
        nodes,
        racks,
        chunks: 64,
        upload_slots: 2,
        seed,
        ..FlowConfig::default()
    }
}

/// Fan-out of 50 nodes from one origin (hosts serve 2 uploads at once and
/// answer `Busy` beyond). Converges with about one origin copy; the
/// completion figure is printed (the 1.3 x S/B target is in the ignored test
/// below: not reached yet).
#[test]
fn fifty_nodes_converge_with_about_one_origin_copy() {
    let mut sim = FlowSim::new(small(50, 1, 1));
    assert!(sim.run(2_000_000), "did not converge");
    sim.check();
    let (ratio, origin) = report("50 nodes, one rack", &sim);
    assert!(ratio <= 1.5, "completion {ratio:.3} x S/B");
    assert!(origin <= 1.2, "origin egress {origin:.3} x S");
}

/// The target. Not reached yet: 1.34 x S/B with seed 1 (see
/// swarm/STATE.md, "Open problems").
#[test]
#[ignore = "the 1.3 x S/B target is not reached yet (1.34); see swarm/STATE.md"]
fn fifty_nodes_complete_within_1_3_s_over_b() {
    let mut sim = FlowSim::new(small(50, 1, 1));
    assert!(sim.run(2_000_000), "did not converge");
    let (ratio, origin) = report("50 nodes, target", &sim);
    assert!(ratio <= 1.3, "completion {ratio:.3} x S/B");
    assert!(origin <= 1.2, "origin egress {origin:.3} x S");
}

/// 200 nodes, one rack: figures printed, loose bounds. Too slow for debug
/// builds (the harness reshares every flow on every event).
#[test]
#[ignore = "slow in debug; run with --release --ignored"]
fn two_hundred_nodes_converge() {
    let mut sim = FlowSim::new(small(200, 1, 7));
    assert!(sim.run(20_000_000), "did not converge");
    let (ratio, origin) = report("200 nodes, one rack", &sim);
    assert!(ratio <= 2.0, "completion {ratio:.3} x S/B");
    assert!(origin <= 1.2, "origin egress {origin:.3} x S");
}

#[test]
fn about_one_copy_crosses_into_each_rack() {
    let mut sim = FlowSim::new(small(24, 3, 2));
    assert!(sim.run(2_000_000), "did not converge");
    sim.check();
    report("24 nodes, 3 racks", &sim);
    let s = sim.version_bytes() as f64;
    for r in 0..3 {
        let copies = sim.cross_into_rack[r] as f64 / s;
        println!("rack {r}: {copies:.3} copies crossed in");
        assert!(copies <= 1.5, "rack {r}: {copies:.3} copies");
    }
}

#[test]
fn a_node_leaving_mid_request_does_not_stall() {
    for silent in [false, true] {
        let mut sim = FlowSim::new(small(12, 1, 3));
        // Early: it is serving the chunks it injected, requests in flight.
        sim.leave_at(5, Duration::from_millis(60), silent);
        assert!(sim.run(2_000_000), "silent={silent}: stalled");
        sim.check();
        report(&format!("12 nodes, node 5 leaves (silent={silent})"), &sim);
        assert!(sim.done_at[4].is_none());
    }
}

#[test]
fn a_node_leaving_after_announcing_does_not_stall() {
    let mut sim = FlowSim::new(small(12, 1, 4));
    sim.leave_at(7, Duration::from_millis(400), false);
    assert!(sim.run(2_000_000), "stalled");
    sim.check();
    report("12 nodes, node 7 leaves late", &sim);
    assert!(
        sim.bytes.keys().any(|(from, _)| *from == 7),
        "node 7 never served"
    );
    assert!(sim.origin_egress() > 0 && sim.bytes.keys().any(|(f, _)| *f == ORIGIN));
}

#[test]
fn same_seed_same_trace() {
    let trace = |seed| {
        let mut sim = FlowSim::new(small(10, 2, seed));
        assert!(sim.run(2_000_000));
        sim.trace
    };
    assert_eq!(trace(5), trace(5));
    assert_ne!(trace(5), trace(6));
}
