//! `syncnode sim`: runs a scenario in the flow-level simulator (crate `sim`).

use std::path::PathBuf;

use anyhow::{Context, bail};

pub const EXAMPLES: &str = "\
Examples:
  syncnode sim sim/scenarios/fanout-1000.yaml --seed 1
  # 100 seeds of a chaos drill; a failing seed prints the command that replays it
  syncnode sim sim/scenarios/chaos-30.yaml --seed 1 --runs 100

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
}

pub fn run(args: SimArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.scenario)
        .with_context(|| format!("cannot read scenario {}", args.scenario.display()))?;
    let sc =
        sim::Scenario::parse(&text).with_context(|| format!("in {}", args.scenario.display()))?;
    let mut failed = Vec::new();
    for seed in args.seed..args.seed.saturating_add(args.runs.max(1)) {
        let report = sim::run(sc.clone(), seed);
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
                "FAILED; replay with: syncnode sim {} --seed {seed}",
                args.scenario.display()
            );
            failed.push(seed);
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} runs failed (seeds {failed:?})",
            failed.len(),
            args.runs.max(1)
        );
    }
    Ok(())
}
