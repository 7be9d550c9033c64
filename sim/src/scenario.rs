//! Scenarios: what a drill simulates, read from YAML.
//!
//! A scenario names the swarm (node count, topology, link rates), the
//! checkpoint (size, chunk size, later versions), the fault schedule and the
//! checks. Together with a seed it fixes the whole run. Unknown keys are
//! rejected, and [`Scenario::validate`] names the offending key.
//!
//! ```yaml
//! name: chaos-30
//! nodes: 30
//! topology: {racks_per_zone: 3}
//! link: {mbps: 200}
//! checkpoint: {size_mib: 32, chunk_kib: 256}
//! versions: [{at_s: 1.0, rewrite: 0.25}]
//! faults:
//!   - {kind: partition, at_s: 0.5, until_s: 2.0, racks: [0]}
//!   - {kind: crash, at_s: 0.3, count: 2, restart_s: 1.5, disk: kept}
//!   - {kind: byzantine, count: 1}
//! ```

use serde::Deserialize;

/// A scenario problem, naming the key and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The YAML did not parse, held an unknown key or a value of the wrong type.
    #[error("invalid scenario: {0}")]
    Parse(String),
    /// A value of the right type but out of range.
    #[error("invalid value for `{key}`: {message}")]
    Value {
        /// The dotted key, e.g. `faults[2].count`.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

fn bad(key: impl Into<String>, message: impl Into<String>) -> ScenarioError {
    ScenarioError::Value {
        key: key.into(),
        message: message.into(),
    }
}

/// A whole drill.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Shown in the report.
    pub name: String,
    /// Nodes fetching (besides the origin).
    pub nodes: u32,
    /// Regions, zones, racks and their latencies.
    #[serde(default)]
    pub topology: Topology,
    /// Per-host NIC rates.
    pub link: Link,
    /// One machine running every host, whose CPU bounds the bytes all of
    /// them move together (flow tier only; absent: CPU is free).
    #[serde(default)]
    pub machine: Option<Machine>,
    /// The first version.
    pub checkpoint: Checkpoint,
    /// Later versions, published while earlier ones may still spread.
    #[serde(default)]
    pub versions: Vec<VersionSpec>,
    /// The fault schedule.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// Knobs of the node (as in the daemon's config).
    #[serde(default)]
    pub swarm: SwarmKnobs,
    /// Bounds checked at the end.
    #[serde(default)]
    pub checks: Checks,
}

/// Topology: nodes are dealt round-robin over `regions × zones × racks`
/// racks (node `i` in rack `(i - 1) mod racks`); the origin sits in a rack
/// of its own in region 0, zone 0.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topology {
    /// Regions (default 1).
    pub regions: u32,
    /// Zones per region (default 1).
    pub zones_per_region: u32,
    /// Racks per zone (default 1).
    pub racks_per_zone: u32,
    /// One-way latencies by how far two hosts are.
    pub latency_ms: Latency,
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            regions: 1,
            zones_per_region: 1,
            racks_per_zone: 1,
            latency_ms: Latency::default(),
        }
    }
}

/// One-way latency in milliseconds by link class.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Latency {
    /// Same rack (default 0.05).
    pub rack: f64,
    /// Same zone, other rack (default 0.2).
    pub zone: f64,
    /// Same region, other zone (default 1).
    pub region: f64,
    /// Other region (default 30).
    pub cross_region: f64,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            rack: 0.05,
            zone: 0.2,
            region: 1.0,
            cross_region: 30.0,
        }
    }
}

/// NIC rates.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// Upload and download of every host, Mbit/s.
    pub mbps: f64,
    /// The origin's, if different.
    #[serde(default)]
    pub origin_mbps: Option<f64>,
    /// The delay a saturated link's FIFO adds to every byte and message that
    /// crosses it, ms: a shaper's queue limit (TBF's `latency`) or a switch
    /// buffer, which TCP flows keep full. A link counts as saturated while
    /// its flows carry at least 95 % of its rate. 0 (the default): no
    /// standing queue, as under fair queuing. See `docs/simulator.md`.
    #[serde(default)]
    pub queue_ms: f64,
}

/// A machine that runs every host (flow tier): the fan-out benchmark's 8
/// network namespaces share 2 cores. Moving a byte costs CPU at the sender
/// (read, re-check, encrypt, send) and the receiver (receive, decrypt,
/// verify, write, SHA-256); with `ns_per_byte` the two together, all flows
/// share `cores × 10⁹ / ns_per_byte` bytes/s max-min fairly, besides their
/// NICs. Calibrate it on a run the CPU does not bound (tests/bench/README.md,
/// "Calibrating the simulator's CPU").
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// Cores shared by all hosts.
    pub cores: f64,
    /// CPU nanoseconds per byte moved, sender and receiver together.
    pub ns_per_byte: f64,
}

impl Machine {
    /// The bytes/s all flows can move together.
    pub fn bytes_per_s(&self) -> f64 {
        self.cores * 1e9 / self.ns_per_byte
    }
}

/// The first version's content.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Bytes of the version, MiB.
    pub size_mib: f64,
    /// Mean chunk size, KiB (lengths vary ±25 % from the seed). Default 256, as the daemon's chunker.
    #[serde(default = "default_chunk_kib")]
    pub chunk_kib: u32,
}

fn default_chunk_kib() -> u32 {
    256
}

/// A later version.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionSpec {
    /// When the origin publishes it, seconds.
    pub at_s: f64,
    /// Fraction of the previous version's chunks replaced by new ones.
    pub rewrite: f64,
}

/// Which nodes a fault hits: `count` random nodes (from the seed), explicit
/// `ids` (1-based), or every node of the listed `racks`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Select {
    /// Random nodes.
    #[serde(default)]
    pub count: Option<u32>,
    /// Node ids, 1..=nodes.
    #[serde(default)]
    pub ids: Vec<u32>,
    /// Rack indices.
    #[serde(default)]
    pub racks: Vec<u32>,
}

/// What happens to a crashed node's disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disk {
    /// Chunks and saved roots survive the restart.
    #[default]
    Kept,
    /// The node restarts empty.
    Lost,
}

/// One entry of the fault schedule.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// The selected nodes are cut off from every other host (no RST: peers
    /// notice after `swarm.peer_timeout_ms`) from `at_s` until `until_s`.
    Partition {
        /// Start, seconds.
        at_s: f64,
        /// Heal, seconds.
        until_s: f64,
        /// The cut-off side.
        #[serde(flatten)]
        select: Select,
    },
    /// The selected nodes' processes die (peers see the connection reset)
    /// and, with `restart_s`, start again.
    Crash {
        /// When, seconds.
        at_s: f64,
        /// Restart time, seconds; none: the nodes stay down.
        #[serde(default)]
        restart_s: Option<f64>,
        /// Whether the disk survives.
        #[serde(default)]
        disk: Disk,
        /// The whole host dies (power, kernel): no connection reset, peers
        /// notice only after `swarm.peer_timeout_ms`. Default false (the
        /// process dies and the kernel resets its connections).
        #[serde(default)]
        silent: bool,
        /// Who.
        #[serde(flatten)]
        select: Select,
    },
    /// Packet loss on every path: TCP throughput capped by the Mathis
    /// formula and each small message delayed by one 200 ms RTO with this
    /// probability.
    Loss {
        /// Loss probability, 0..1.
        rate: f64,
        /// From, seconds (default 0).
        #[serde(default)]
        at_s: f64,
        /// Until, seconds (default: the whole run).
        #[serde(default)]
        until_s: Option<f64>,
    },
    /// The selected nodes' NICs run at `factor` of the link rate.
    Slow {
        /// Rate factor, 0..1.
        factor: f64,
        /// Who.
        #[serde(flatten)]
        select: Select,
    },
    /// The selected nodes serve corrupt bytes for every chunk they upload.
    Byzantine {
        /// Who.
        #[serde(flatten)]
        select: Select,
    },
    /// The origin dies for good once every chunk of the latest version is
    /// held by at least `after_copies` nodes.
    OriginDies {
        /// Copies of every chunk that must exist first.
        after_copies: u32,
    },
}

/// Node knobs, as the daemon's config and defaults.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwarmKnobs {
    /// Peers each node keeps connected (the mesh degree; default 64, the daemon's `max_peers`).
    pub max_peers: u32,
    /// Uploads served at once; more are answered `Busy` (default 2, the daemon's `max_uploads`).
    pub upload_slots: u32,
    /// Downloads at once (default 2, with which the drills' bounds were
    /// set; the daemon's `max_downloads` defaults to 6, which the fidelity
    /// scenarios use: see `docs/simulator.md`, "Fidelity").
    pub download_slots: u32,
    /// How often a node pushes new `Have`s (default 100 ms, the daemon's `have_interval_ms`).
    pub announce_interval_ms: f64,
    /// How long a silent connection lives before it is declared dead (default 2000 ms).
    pub peer_timeout_ms: f64,
    /// Delay before re-dialling a peer that is reachable again (default 1000 ms, the daemon's first redial backoff).
    pub reconnect_ms: f64,
    /// How long a chunk held only outside the rack waits for the rack member
    /// responsible for it (`FetchConfig::remote_wait`; default: the core's default).
    pub remote_wait_ms: Option<f64>,
    /// How long the origin refuses a second copy of a chunk while others
    /// never left it (`UploadGate::spreading_first`; default 500 ms).
    pub origin_resend_ms: Option<f64>,
    /// When an upload slot is free again: once at most this many KiB of the
    /// transfer are left to cross. 0 (the default): when the transfer
    /// ends, the gate as `swarm::serve::UploadGate` means it. The daemon
    /// as it ships frees its slot earlier, when request-response reports
    /// the response sent: once its last bytes are written into the yamux
    /// stream, whose window (256 KiB at a stream's start) lets them be
    /// written before they are delivered. 256 models that (the fidelity
    /// scenarios set it); see `docs/simulator.md`, "Fidelity".
    pub slot_release_kib: u32,
    /// `FetchConfig::cover_round_trip`: the download window grows by two
    /// round trips' worth of requests at the measured rate (default true,
    /// as the daemon).
    pub cover_round_trip: bool,
    /// Announce every `Fetch::announce_interval(1 ms, announce_interval_ms)`:
    /// the time to receive 8 mean chunks at the node's measured rate
    /// (default false: every `announce_interval_ms`).
    pub announce_follows_rate: bool,
    /// Packet tier only: the daemon's `stream_window_kib`, the receive
    /// window granted on the streams a node opens (default 256, yamux's
    /// own). The flow tier has no stream windows: `slot_release_kib` is
    /// its counterpart.
    pub stream_window_kib: u32,
    /// The daemon's `upload_backlog_kib`: the bytes an uploader may have
    /// handed to its connections and not yet seen delivered before it
    /// answers `Busy` (default 0: no bound). The flow tier counts a
    /// transfer from its admission until its last byte crossed.
    pub upload_backlog_kib: u32,
}

impl Default for SwarmKnobs {
    fn default() -> Self {
        Self {
            max_peers: 64,
            upload_slots: 2,
            download_slots: 2,
            announce_interval_ms: 100.0,
            peer_timeout_ms: 2000.0,
            reconnect_ms: 1000.0,
            remote_wait_ms: None,
            origin_resend_ms: None,
            slot_release_kib: 0,
            cover_round_trip: true,
            announce_follows_rate: false,
            stream_window_kib: 256,
            upload_backlog_kib: 0,
        }
    }
}

/// End-of-run bounds.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Checks {
    /// Liveness: every live node holds the latest version within this many
    /// S/B after the network is quiet (last fault over, latest version out).
    /// Default 4.
    pub liveness_factor: f64,
    /// Stop (and fail liveness) after this much simulated time, seconds. Default 3600.
    pub max_sim_s: f64,
}

impl Default for Checks {
    fn default() -> Self {
        Self {
            liveness_factor: 4.0,
            max_sim_s: 3600.0,
        }
    }
}

impl Scenario {
    /// Parses and validates YAML text.
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let sc: Scenario =
            serde_norway::from_str(text).map_err(|e| ScenarioError::Parse(e.to_string()))?;
        sc.validate()?;
        Ok(sc)
    }

    /// Racks in total.
    pub fn racks(&self) -> u32 {
        self.topology.regions * self.topology.zones_per_region * self.topology.racks_per_zone
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.nodes == 0 || self.nodes > 100_000 {
            return Err(bad("nodes", "must be 1..=100000"));
        }
        let t = &self.topology;
        for (k, v) in [
            ("topology.regions", t.regions),
            ("topology.zones_per_region", t.zones_per_region),
            ("topology.racks_per_zone", t.racks_per_zone),
        ] {
            if v == 0 {
                return Err(bad(k, "must be at least 1"));
            }
        }
        let l = &t.latency_ms;
        for (k, v) in [
            ("rack", l.rack),
            ("zone", l.zone),
            ("region", l.region),
            ("cross_region", l.cross_region),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(bad(
                    format!("topology.latency_ms.{k}"),
                    "must be a non-negative number of milliseconds",
                ));
            }
        }
        let rate_ok = |v: f64| v.is_finite() && v > 0.0;
        if !rate_ok(self.link.mbps) {
            return Err(bad("link.mbps", "must be a positive rate in Mbit/s"));
        }
        if self.link.origin_mbps.is_some_and(|v| !rate_ok(v)) {
            return Err(bad("link.origin_mbps", "must be a positive rate in Mbit/s"));
        }
        if let Some(m) = &self.machine {
            if !rate_ok(m.cores) {
                return Err(bad("machine.cores", "must be a positive number of cores"));
            }
            if !rate_ok(m.ns_per_byte) {
                return Err(bad(
                    "machine.ns_per_byte",
                    "must be a positive number of CPU nanoseconds per byte moved",
                ));
            }
        }
        if !(self.link.queue_ms.is_finite() && (0.0..=10_000.0).contains(&self.link.queue_ms)) {
            return Err(bad(
                "link.queue_ms",
                "must be a delay from 0 to 10000 ms (0: no standing queue)",
            ));
        }
        if !(self.checkpoint.size_mib.is_finite() && self.checkpoint.size_mib > 0.0) {
            return Err(bad("checkpoint.size_mib", "must be positive"));
        }
        if !(4..=65_536).contains(&self.checkpoint.chunk_kib) {
            return Err(bad("checkpoint.chunk_kib", "must be 4..=65536 KiB"));
        }
        let chunks = self.checkpoint.size_mib * 1024.0 / f64::from(self.checkpoint.chunk_kib);
        if chunks > 1e6 {
            return Err(bad(
                "checkpoint",
                "more than a million chunks: raise chunk_kib or lower size_mib",
            ));
        }
        let mut last = 0.0;
        for (i, v) in self.versions.iter().enumerate() {
            if !(v.at_s.is_finite() && v.at_s > last) {
                return Err(bad(
                    format!("versions[{i}].at_s"),
                    "must be after the previous version (seconds, increasing)",
                ));
            }
            if !(v.rewrite > 0.0 && v.rewrite <= 1.0) {
                return Err(bad(format!("versions[{i}].rewrite"), "must be in (0, 1]"));
            }
            last = v.at_s;
        }
        for (i, f) in self.faults.iter().enumerate() {
            self.validate_fault(i, f)?;
        }
        let k = &self.swarm;
        for (key, v) in [
            ("swarm.max_peers", k.max_peers),
            ("swarm.upload_slots", k.upload_slots),
            ("swarm.download_slots", k.download_slots),
        ] {
            if v == 0 {
                return Err(bad(key, "must be at least 1"));
            }
        }
        for (key, v) in [
            ("swarm.announce_interval_ms", k.announce_interval_ms),
            ("swarm.peer_timeout_ms", k.peer_timeout_ms),
            ("swarm.reconnect_ms", k.reconnect_ms),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(key, "must be a positive number of milliseconds"));
            }
        }
        for (key, v) in [
            ("swarm.remote_wait_ms", k.remote_wait_ms),
            ("swarm.origin_resend_ms", k.origin_resend_ms),
        ] {
            if v.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                return Err(bad(key, "must be a non-negative number of milliseconds"));
            }
        }
        if !(self.checks.liveness_factor.is_finite() && self.checks.liveness_factor >= 1.0) {
            return Err(bad("checks.liveness_factor", "must be at least 1"));
        }
        if !(self.checks.max_sim_s.is_finite() && self.checks.max_sim_s > 0.0) {
            return Err(bad("checks.max_sim_s", "must be positive"));
        }
        Ok(())
    }

    fn validate_select(&self, key: &str, s: &Select) -> Result<(), ScenarioError> {
        let given = usize::from(s.count.is_some())
            + usize::from(!s.ids.is_empty())
            + usize::from(!s.racks.is_empty());
        if given != 1 {
            return Err(bad(
                key,
                "select the nodes with exactly one of `count`, `ids` or `racks`",
            ));
        }
        if s.count.is_some_and(|c| c == 0 || c > self.nodes) {
            return Err(bad(
                format!("{key}.count"),
                format!("must be 1..={}", self.nodes),
            ));
        }
        if let Some(id) = s.ids.iter().find(|i| **i == 0 || **i > self.nodes) {
            return Err(bad(
                format!("{key}.ids"),
                format!("node {id} does not exist: ids are 1..={}", self.nodes),
            ));
        }
        if let Some(r) = s.racks.iter().find(|r| **r >= self.racks()) {
            return Err(bad(
                format!("{key}.racks"),
                format!("rack {r} does not exist: racks are 0..{}", self.racks()),
            ));
        }
        Ok(())
    }

    fn validate_fault(&self, i: usize, f: &Fault) -> Result<(), ScenarioError> {
        let key = format!("faults[{i}]");
        let time_ok = |v: f64| v.is_finite() && v >= 0.0;
        match f {
            Fault::Partition {
                at_s,
                until_s,
                select,
            } => {
                if !(time_ok(*at_s) && until_s.is_finite() && until_s > at_s) {
                    return Err(bad(
                        format!("{key}.until_s"),
                        "must be after at_s (seconds)",
                    ));
                }
                self.validate_select(&key, select)
            }
            Fault::Crash {
                at_s,
                restart_s,
                select,
                ..
            } => {
                if !time_ok(*at_s) || restart_s.is_some_and(|r| !(r.is_finite() && r > *at_s)) {
                    return Err(bad(
                        format!("{key}.restart_s"),
                        "must be after at_s (seconds)",
                    ));
                }
                self.validate_select(&key, select)
            }
            Fault::Loss {
                rate,
                at_s,
                until_s,
            } => {
                if !(*rate >= 0.0 && *rate < 0.5) {
                    return Err(bad(format!("{key}.rate"), "must be in [0, 0.5)"));
                }
                if !time_ok(*at_s) || until_s.is_some_and(|u| !(u.is_finite() && u > *at_s)) {
                    return Err(bad(
                        format!("{key}.until_s"),
                        "must be after at_s (seconds)",
                    ));
                }
                Ok(())
            }
            Fault::Slow { factor, select } => {
                if !(*factor > 0.0 && *factor <= 1.0) {
                    return Err(bad(format!("{key}.factor"), "must be in (0, 1]"));
                }
                self.validate_select(&key, select)
            }
            Fault::Byzantine { select } => self.validate_select(&key, select),
            Fault::OriginDies { after_copies } => {
                if *after_copies == 0 || *after_copies > self.nodes {
                    return Err(bad(
                        format!("{key}.after_copies"),
                        format!("must be 1..={}", self.nodes),
                    ));
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "
name: t
nodes: 30
topology: {regions: 1, zones_per_region: 1, racks_per_zone: 3}
link: {mbps: 200}
checkpoint: {size_mib: 32}
versions: [{at_s: 1.0, rewrite: 0.25}]
faults:
  - {kind: partition, at_s: 0.5, until_s: 2.0, racks: [0]}
  - {kind: crash, at_s: 0.3, count: 2, restart_s: 1.5, disk: lost}
  - {kind: loss, rate: 0.01}
  - {kind: slow, factor: 0.5, ids: [3]}
  - {kind: byzantine, count: 1}
  - {kind: origin_dies, after_copies: 2}
";

    #[test]
    fn a_full_scenario_parses() {
        let sc = Scenario::parse(FULL).expect("parses");
        assert_eq!(sc.racks(), 3);
        assert_eq!(sc.faults.len(), 6);
        assert!(matches!(
            sc.faults[1],
            Fault::Crash {
                disk: Disk::Lost,
                ..
            }
        ));
        assert_eq!(sc.checkpoint.chunk_kib, 256);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (FULL.replace("nodes: 30", "nodes: 0"), "nodes"),
            (FULL.replace("racks: [0]", "racks: [7]"), "faults[0].racks"),
            (
                FULL.replace("count: 2, restart_s: 1.5", "count: 2, restart_s: 0.1"),
                "faults[1].restart_s",
            ),
            (FULL.replace("rate: 0.01", "rate: 0.9"), "faults[2].rate"),
            (FULL.replace("ids: [3]", "ids: [31]"), "faults[3].ids"),
            (
                FULL.replace("byzantine, count: 1", "byzantine, count: 1, ids: [2]"),
                "faults[4]",
            ),
            (
                FULL.replace("rewrite: 0.25", "rewrite: 0"),
                "versions[0].rewrite",
            ),
            (FULL.replace("mbps: 200", "mbps: -1"), "link.mbps"),
            (
                FULL.replace("mbps: 200", "mbps: 200, queue_ms: -5"),
                "link.queue_ms",
            ),
        ];
        for (text, key) in cases {
            match Scenario::parse(&text) {
                Err(ScenarioError::Value { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: expected a value error, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Scenario::parse(&FULL.replace("nodes: 30", "nodes: 30\nnodez: 3")).unwrap_err();
        assert!(err.to_string().contains("nodez"), "{err}");
        let err = Scenario::parse(&FULL.replace("kind: loss", "kind: lose")).unwrap_err();
        assert!(err.to_string().contains("lose"), "{err}");
    }
}
