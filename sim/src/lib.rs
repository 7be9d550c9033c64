//! The syncnode deterministic simulator.
//!
//! `sim` runs the real swarm core ([`swarm::Fetch`], the code the daemon
//! ships) for hundreds or thousands of nodes in virtual time, with per-host
//! NIC bandwidth shared max-min fairly ([`bandwidth`]), a region / zone /
//! rack topology with latencies, a fault schedule (partitions, crashes with
//! the disk kept or lost, packet loss, slow nodes, Byzantine peers, the
//! origin dying, a new version published mid-spread), and invariants checked
//! at every step: no unverified byte is stored, served or materialized; no
//! half-written version is ever `current`; and, once the faults stop, every
//! live node reaches the latest root within a bound proportional to S/B.
//!
//! A run is a pure function of the [`Scenario`] and the seed: the same pair
//! gives the same trace hash ([`Report::trace`]), so a failing drill is
//! replayed exactly with `syncnode sim SCENARIO --seed N`.
//!
//! # Tiers
//!
//! This crate is the **flow tier**: transfers are fluid flows (one at a
//! time per server-client pair, as the bytes of one connection), and the node's
//! I/O behaviour around the core (serving with `Busy` beyond its upload
//! slots, `Have` pushes every 100 ms, verification before storing,
//! materialization, supersession by newer versions, reconnects) is modelled in
//! [`world`]. What runs unchanged from production is the whole scheduling
//! core: rarest-first selection, topology preference, origin offload,
//! per-peer pipelining and timeouts, endgame, strikes and bans. The packet
//! tier (the whole daemon, libp2p included, on turmoil hosts) is
//! `node::packet_tier`, since it runs the daemon; it reads the same
//! [`Scenario`] and fills the same [`Report`]. `docs/simulator.md` says
//! which code runs where.
//!
//! ```
//! let sc = sim::Scenario::parse("
//! name: doc
//! nodes: 8
//! link: {mbps: 1000}
//! checkpoint: {size_mib: 4}
//! ").unwrap();
//! let report = sim::run(sc, 1);
//! assert!(report.passed(), "{report}");
//! assert_eq!(report.completion.len(), 8);
//! ```

pub mod bandwidth;
pub mod report;
pub mod scenario;
pub mod world;

pub use report::Report;
pub use scenario::{Scenario, ScenarioError};
pub use world::World;

/// Runs a scenario with a seed and reports.
pub fn run(sc: Scenario, seed: u64) -> Report {
    let started = std::time::Instant::now();
    let mut w = World::new(sc, seed);
    w.run();
    w.final_checks();
    Report::of(&w, started.elapsed().as_secs_f64())
}
