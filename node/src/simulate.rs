//! `syncnode sim`: runs a scenario in the flow-level simulator (crate `sim`)
//! or in the packet tier (`node::packet_tier`: the daemon on turmoil hosts).

use std::path::PathBuf;

use anyhow::{Context, bail};

pub const EXAMPLES: &str = "\
Examples:
  syncnode sim sim/scenarios/fanout-1000.yaml --seed 1
  # 100 seeds of a chaos drill; a failing seed prints the command that replays it
  syncnode sim sim/scenarios/chaos-30.yaml --seed 1 --runs 100
  # the same drill with the real daemon (libp2p included) on simulated hosts
  syncnode sim sim/scenarios/chaos-30.yaml --tier packet --seed 1

The scenario format is documented in docs/simulator.md.";

/// Arguments of `syncnode sim`.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// The scenario (YAML).
    scenario: PathBuf,
    /// Seed of the (first) run; the same scenario and seed give the same trace hash.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Runs with seeds seed, seed+1, ...: one summary line each, the full report of failures.
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// `flow`: the swarm core over a flow-level network model (thousands of
    /// nodes); `packet`: the whole daemon, libp2p included, on turmoil hosts
    /// (up to 64 hosts); `both`: each, then the two side by side.
    #[arg(long, value_enum, default_value_t = Tier::Flow)]
    tier: Tier,
}

/// Which simulator runs the scenario.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// Flow level (crate `sim`).
    Flow,
    /// Packet level (`node::packet_tier`).
    Packet,
    /// Both, one after the other, and how far apart they are.
    Both,
}

pub fn run(args: SimArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.scenario)
        .with_context(|| format!("cannot read scenario {}", args.scenario.display()))?;
    let sc =
        sim::Scenario::parse(&text).with_context(|| format!("in {}", args.scenario.display()))?;
    let mut failed = Vec::new();
    for seed in args.seed..args.seed.saturating_add(args.runs.max(1)) {
        let report = match args.tier {
            Tier::Flow => sim::run(sc.clone(), seed),
            Tier::Packet => node::packet_tier::run(&sc, seed)?,
            Tier::Both => {
                let flow = sim::run(sc.clone(), seed);
                let packet = node::packet_tier::run(&sc, seed)?;
                println!("{flow}\n");
                let (f, p) = (flow.max_over_s_b(), packet.max_over_s_b());
                let (fo, po) = (flow.origin_over_s(), packet.origin_over_s());
                println!(
                    "tiers side by side, seed {seed}: slowest node flow {f:.3} / packet {p:.3} x S/B \
                     (packet {:+.1} %), origin egress flow {fo:.3} / packet {po:.3} x S ({:+.1} %)\n",
                    (p / f - 1.0) * 100.0,
                    (po / fo - 1.0) * 100.0
                );
                if !flow.passed() {
                    failed.push(seed);
                }
                packet
            }
        };
        if args.runs <= 1 || !report.passed() {
            println!("{report}");
        } else {
            println!(
                "seed {seed}: max {:.3} x S/B, origin {:.3} x S, trace {:016x}, passed",
                report.max_over_s_b(),
                report.origin_over_s(),
                report.trace
            );
        }
        if !report.passed() {
            println!(
                "FAILED; replay with: syncnode sim {}{} --seed {seed}",
                args.scenario.display(),
                if args.tier == Tier::Packet {
                    " --tier packet"
                } else {
                    ""
                }
            );
            failed.push(seed);
        }
    }
    failed.dedup();
    if !failed.is_empty() {
        bail!(
            "{} of {} runs failed (seeds {failed:?})",
            failed.len(),
            args.runs.max(1)
        );
    }
    Ok(())
}
