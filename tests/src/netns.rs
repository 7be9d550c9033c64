//! Hosts in Linux network namespaces on one bridge, with TBF-shaped links,
//! for the chaos tests (`tests/tests/chaos.rs`).
//!
//! Layout (as `tests/bench/fanout.py`): a switch namespace holding bridge
//! `br0`; host `i` is namespace `<prefix>h<i>` whose `eth0` (10.77.0.`i+1`/24)
//! is a veth to port `p<i>` on the bridge. Each link is shaped with TBF in
//! both directions (egress of `eth0` = upload, egress of `p<i>` = download).
//! Taking `p<i>` down cuts host `i` off without a FIN or RST, like a pulled
//! cable. Names carry the test's process id and a tag, so parallel tests never
//! share a namespace; [`Net`] deletes every namespace it created on drop
//! (also when a test panics).

use std::process::Command;

use anyhow::{Context, bail};

/// A bridged set of host namespaces.
#[derive(Debug)]
pub struct Net {
    /// The switch namespace.
    pub switch: String,
    /// The host namespaces, in order.
    pub hosts: Vec<String>,
    created: Vec<String>,
}

fn run(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Net {
    /// Why network namespaces cannot be used here, if they cannot (not root,
    /// no `ip`, no `tc`): the chaos tests print it and skip.
    pub fn unavailable() -> Option<String> {
        let probe = format!("snprobe{}", std::process::id());
        if let Err(e) = run(&["ip", "netns", "add", &probe]) {
            return Some(format!(
                "cannot create a network namespace (needs root and iproute2): {e}"
            ));
        }
        let tc = run(&["tc", "-n", &probe, "qdisc", "show"]);
        let _ = run(&["ip", "netns", "del", &probe]);
        tc.err().map(|e| format!("tc does not work: {e}"))
    }

    /// `hosts` namespaces on a bridge, each link shaped to `rate_mbit` both ways.
    pub fn new(tag: &str, hosts: usize, rate_mbit: u32) -> anyhow::Result<Net> {
        let prefix = format!("sn{}{tag}", std::process::id());
        let mut net = Net {
            switch: format!("{prefix}sw"),
            hosts: (0..hosts).map(|i| format!("{prefix}h{i}")).collect(),
            created: Vec::new(),
        };
        net.setup(rate_mbit)?;
        Ok(net)
    }

    fn add_ns(&mut self, ns: &str) -> anyhow::Result<()> {
        run(&["ip", "netns", "add", ns])?;
        self.created.push(ns.to_owned());
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn setup(&mut self, rate_mbit: u32) -> anyhow::Result<()> {
        let sw = self.switch.clone();
        self.add_ns(&sw)?;
        run(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &sw, "link", "set", "br0", "up"])?;
        // TBF burst: at least rate/HZ worth (≥ 64 KiB); 50 ms of queue.
        let burst = (u64::from(rate_mbit) * 1_000_000 / 8 / 100).max(64 * 1024);
        let rate = format!("{rate_mbit}mbit");
        let burst = burst.to_string();
        let tbf = [
            "root", "tbf", "rate", &rate, "burst", &burst, "latency", "50ms",
        ];
        for (i, ns) in self.hosts.clone().iter().enumerate() {
            self.add_ns(ns)?;
            let port = format!("p{i}");
            run(&[
                "ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", &port,
                "netns", &sw,
            ])?;
            run(&["ip", "-n", &sw, "link", "set", &port, "master", "br0"])?;
            run(&["ip", "-n", &sw, "link", "set", &port, "up"])?;
            let ip = format!("{}/24", Self::ip(i));
            run(&["ip", "-n", ns, "addr", "add", &ip, "dev", "eth0"])?;
            run(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
            let mut up = vec!["tc", "-n", ns, "qdisc", "add", "dev", "eth0"];
            up.extend(tbf);
            run(&up)?;
            let mut down = vec!["tc", "-n", &sw, "qdisc", "add", "dev", &port];
            down.extend(tbf);
            run(&down)?;
        }
        Ok(())
    }

    /// The address of host `i`.
    pub fn ip(i: usize) -> String {
        format!("10.77.0.{}", i + 1)
    }

    /// The `ip netns exec` prefix that runs a command on host `i`.
    pub fn exec(&self, i: usize) -> Vec<&str> {
        vec!["ip", "netns", "exec", &self.hosts[i]]
    }

    /// Takes host `i`'s switch port down (no FIN, no RST: packets vanish).
    pub fn link_down(&self, i: usize) -> anyhow::Result<()> {
        run(&[
            "ip",
            "-n",
            &self.switch,
            "link",
            "set",
            &format!("p{i}"),
            "down",
        ])
        .map(drop)
    }

    /// Brings host `i`'s switch port back up.
    pub fn link_up(&self, i: usize) -> anyhow::Result<()> {
        run(&[
            "ip",
            "-n",
            &self.switch,
            "link",
            "set",
            &format!("p{i}"),
            "up",
        ])
        .map(drop)
    }

    /// Bytes host `i` has received on `eth0` (`(rx, tx)`).
    pub fn counters(&self, i: usize) -> anyhow::Result<(u64, u64)> {
        let out = run(&[
            "ip",
            "-n",
            &self.hosts[i],
            "-s",
            "-j",
            "link",
            "show",
            "dev",
            "eth0",
        ])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let st = &v[0]["stats64"];
        let get = |dir: &str| st[dir]["bytes"].as_u64().context("no byte counter");
        Ok((get("rx")?, get("tx")?))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}
