//! Drills over the flow tier: determinism, chaos seeds, and large fan-outs.

use std::path::Path;

use sim::{Report, Scenario};

fn load(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Scenario::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn run(name: &str, sc: Scenario, seed: u64) -> Report {
    let r = sim::run(sc, seed);
    println!("{r}");
    assert!(
        r.passed(),
        "drill failed; replay: syncnode sim sim/scenarios/{name} --seed {seed}\n{r}"
    );
    r
}

#[test]
fn fanout_1000() {
    let r = run("fanout-1000.yaml", load("fanout-1000.yaml"), 1);
    println!(
        "max {:.3} x S/B, origin {:.3} x S",
        r.max_over_s_b(),
        r.origin_over_s()
    );
}

#[test]
#[ignore = "scaling probe"]
fn probe() {
    let spec = std::env::var("PROBE").unwrap_or_else(|_| "100:1:100".into());
    for item in spec.split(',') {
        let v: Vec<f64> = item.split(':').map(|x| x.parse().expect("number")).collect();
        let mut sc = load("fanout-1000.yaml");
        sc.nodes = v[0] as u32;
        sc.topology.racks_per_zone = v[1] as u32;
        sc.swarm.announce_interval_ms = v[2];
        sc.checkpoint.size_mib = v.get(3).copied().unwrap_or(32.0);
        sc.swarm.remote_wait_ms = v.get(4).copied();
        let r = sim::run(sc, 1);
        println!(
            "{item}: p50 {:.3} max {:.3} x S/B origin {:.3} busy {} events {} wall {:.2}",
            r.completion_q(0.5) / r.s_over_b(),
            r.max_over_s_b(),
            r.origin_over_s(),
            r.counters.busy,
            r.counters.events,
            r.wall_s
        );
    }
}
