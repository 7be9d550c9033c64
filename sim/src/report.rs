//! The report of one run: completion against S/B, origin egress against S,
//! bytes per link class, invariant checks, and the trace hash.

use std::fmt;

use crate::world::{Counters, World};

/// What a run measured and checked.
#[derive(Clone, Debug)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Which tier ran it: `flow` (this crate) or `packet` (the daemon on turmoil).
    pub tier: &'static str,
    /// The seed.
    pub seed: u64,
    /// Nodes (besides the origin).
    pub nodes: u32,
    /// Bytes of the latest version.
    pub version_bytes: u64,
    /// Bytes published in all (each version's new chunks): "one copy of everything".
    pub published_bytes: u64,
    /// Per-node link rate, bytes/s.
    pub link_bps: f64,
    /// Per live node: seconds from the latest version's publication to its `current`.
    pub completion: Vec<f64>,
    /// Counters.
    pub counters: Counters,
    /// Safety violations (empty when every check passed).
    pub violations: Vec<String>,
    /// Liveness: `Err` names the nodes that missed the bound.
    pub liveness: Result<(), String>,
    /// The bound for a node at full link rate (seconds since the start):
    /// quiet time + peer timeout + reconnect delay + `liveness_factor` × S/B;
    /// a slow node's S/B term is divided by its rate factor.
    pub liveness_bound_s: f64,
    /// The liveness factor of the scenario.
    pub liveness_factor: f64,
    /// When the network was quiet (last fault over, latest version out), seconds.
    pub quiet_s: f64,
    /// Hash of every action of every node, with times.
    pub trace: u64,
    /// Simulated seconds.
    pub sim_s: f64,
    /// Wall-clock seconds the run took.
    pub wall_s: f64,
    /// Live nodes at the end.
    pub live: u32,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i]
}

impl Report {
    pub(crate) fn of(w: &World, wall_s: f64) -> Report {
        let latest = w.published.saturating_sub(1);
        let vd = &w.versions[latest];
        let start = vd.at;
        let mut completion = Vec::new();
        let mut late = Vec::new();
        let link_bps = w.sc.link.mbps * 1e6 / 8.0;
        let s_over_b = vd.bytes as f64 / link_bps;
        let quiet = w.quiet_at.max(start);
        // A node's bound scales with its own S/B (a slow NIC gets more time),
        // plus the time to notice a dead connection and redial.
        let slack = (w.sc.swarm.peer_timeout_ms + w.sc.swarm.reconnect_ms) / 1e3;
        // On a shared machine the CPU may bound the fan-out instead: the time
        // it takes to move one copy to every node.
        let nodes = w.hosts.len().saturating_sub(1) as f64;
        let cpu_s =
            w.sc.machine
                .as_ref()
                .map_or(0.0, |m| nodes * vd.bytes as f64 / m.bytes_per_s());
        let bound_of = |slow: f64| {
            quiet as f64 / 1e9 + slack + w.sc.checks.liveness_factor * (s_over_b / slow).max(cpu_s)
        };
        let bound = bound_of(1.0);
        let mut live = 0;
        for (i, h) in w.hosts.iter().enumerate().skip(1) {
            if !h.alive {
                continue;
            }
            live += 1;
            match h.done_at[latest] {
                Some(d) if h.current == Some(latest) => {
                    completion.push((d.saturating_sub(start)) as f64 / 1e9);
                    if d as f64 / 1e9 > bound_of(h.slow) {
                        late.push(format!("node {i} at {:.3} s", d as f64 / 1e9));
                    }
                }
                _ => late.push(format!("node {i} never reached it")),
            }
        }
        completion.sort_by(f64::total_cmp);
        let mut seen = vec![false; w.lens.len()];
        let mut published_bytes = 0;
        for v in &w.versions[..w.published.max(1)] {
            for g in &v.chunks {
                if !std::mem::replace(&mut seen[*g as usize], true) {
                    published_bytes += u64::from(w.lens[*g as usize]);
                }
            }
        }
        let liveness = if late.is_empty() {
            Ok(())
        } else {
            let n = late.len();
            late.truncate(5);
            Err(format!(
                "{n} live node(s) missed the bound: {}",
                late.join(", ")
            ))
        };
        Report {
            scenario: w.sc.name.clone(),
            tier: "flow",
            seed: w.seed,
            nodes: w.sc.nodes,
            version_bytes: vd.bytes,
            published_bytes,
            link_bps,
            completion,
            counters: w.counters.clone(),
            violations: w.violations.clone(),
            liveness,
            liveness_bound_s: bound,
            liveness_factor: w.sc.checks.liveness_factor,
            quiet_s: quiet as f64 / 1e9,
            trace: w.trace,
            sim_s: w.t as f64 / 1e9,
            wall_s,
            live,
        }
    }

    /// S / B of the latest version, seconds.
    pub fn s_over_b(&self) -> f64 {
        self.version_bytes as f64 / self.link_bps
    }

    /// Completion quantile (0.5, 0.99, 1.0) in seconds.
    pub fn completion_q(&self, q: f64) -> f64 {
        quantile(&self.completion, q)
    }

    /// The slowest node's completion over S/B.
    pub fn max_over_s_b(&self) -> f64 {
        self.completion_q(1.0) / self.s_over_b()
    }

    /// Origin egress over the published bytes.
    pub fn origin_over_s(&self) -> f64 {
        self.counters.origin_egress as f64 / self.published_bytes as f64
    }

    /// Copies of the published bytes that crossed into each node rack (min, max).
    pub fn rack_copies(&self) -> (f64, f64) {
        let racks = &self.counters.into_rack[..self.counters.into_rack.len().saturating_sub(1)];
        let c = |b: &u64| *b as f64 / self.published_bytes as f64;
        let min = racks.iter().map(c).fold(f64::INFINITY, f64::min);
        let max = racks.iter().map(c).fold(0.0, f64::max);
        (min, max)
    }

    /// Whether every safety and liveness check passed.
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.liveness.is_ok()
    }

    /// Simulated node-seconds per wall-clock second.
    pub fn node_seconds_per_wall_second(&self) -> f64 {
        f64::from(self.nodes) * self.sim_s / self.wall_s.max(1e-9)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / 1048576.0;
        let sb = self.s_over_b();
        writeln!(
            f,
            "scenario {} ({} tier), seed {}",
            self.scenario, self.tier, self.seed
        )?;
        writeln!(
            f,
            "  {} nodes ({} live at the end), S = {:.1} MiB, B = {:.0} Mbit/s, S/B = {:.3} s",
            self.nodes,
            self.live,
            mib(self.version_bytes),
            self.link_bps * 8.0 / 1e6,
            sb
        )?;
        writeln!(
            f,
            "  completion of the latest version: p50 {:.3} s ({:.3} x S/B), p99 {:.3} s ({:.3} x S/B), max {:.3} s ({:.3} x S/B)",
            self.completion_q(0.5),
            self.completion_q(0.5) / sb,
            self.completion_q(0.99),
            self.completion_q(0.99) / sb,
            self.completion_q(1.0),
            self.completion_q(1.0) / sb
        )?;
        let c = &self.counters;
        writeln!(
            f,
            "  origin egress {:.1} MiB = {:.3} x S (S = {:.1} MiB published)",
            mib(c.origin_egress),
            self.origin_over_s(),
            mib(self.published_bytes)
        )?;
        let names = [
            "same host",
            "same rack",
            "same zone",
            "same region",
            "cross region",
        ];
        let classes: Vec<String> = names
            .iter()
            .zip(c.by_class)
            .filter(|(_, b)| *b > 0)
            .map(|(n, b)| {
                format!(
                    "{n} {:.1} MiB ({:.2} x S)",
                    mib(b),
                    b as f64 / self.published_bytes as f64
                )
            })
            .collect();
        writeln!(f, "  bytes by link class: {}", classes.join(", "))?;
        if self.counters.into_rack.len() > 2 {
            let (lo, hi) = self.rack_copies();
            writeln!(f, "  copies crossing into each rack: {lo:.2} to {hi:.2}")?;
        }
        writeln!(
            f,
            "  cut-off transfers {:.1} MiB, busy {}, not-found {}, rejected chunks {}, penalised {}, banned {}",
            mib(c.wasted),
            c.busy,
            c.not_found,
            c.rejected,
            c.penalised,
            c.banned
        )?;
        let safety = if self.violations.is_empty() {
            format!("{} safety checks passed", c.safety_checks)
        } else {
            format!(
                "{} SAFETY VIOLATIONS, first: {}",
                self.violations.len(),
                self.violations[0]
            )
        };
        let live = match &self.liveness {
            Ok(()) => format!(
                "liveness ok (every live node by {:.3} s = quiet at {:.3} s + redial + {:.1} x S/B)",
                self.liveness_bound_s, self.quiet_s, self.liveness_factor
            ),
            Err(e) => format!("LIVENESS FAILED: {e}"),
        };
        writeln!(f, "  invariants: {safety}; {live}")?;
        writeln!(f, "  trace hash {:016x}", self.trace)?;
        let rate = self.node_seconds_per_wall_second();
        // Two significant digits at least: a fast network's run is below 1.
        let digits = if rate >= 10.0 {
            0
        } else if rate >= 1.0 {
            1
        } else {
            3
        };
        write!(
            f,
            "  {} events, {:.3} s simulated in {:.3} s wall = {rate:.digits$} simulated node-seconds per second",
            c.events, self.sim_s, self.wall_s,
        )
    }
}
