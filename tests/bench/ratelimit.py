#!/usr/bin/env python3
"""Rate-control benchmark: syncnode's bandwidth limit and adaptive mode on a shaped link.

Two network namespaces joined by a veth pair: the sender (`syncnode seed`) and
the receiver (`syncnode run`). The sender's egress is shaped with TBF. Cases:

  a) fixed limit (default 100 Mbit/s) on a faster link (default 200 Mbit/s):
     goodput over a large file, against the limit (target: within 5 %);
  b) the limit changed at run time (100 -> 50) over the control socket in the
     middle of a transfer: the rate of each phase;
  c) a deep TBF queue (200 Mbit/s, `latency 200ms`, so it bloats) and an RTT
     probe in parallel: idle RTT, then RTT and throughput with no limit, then
     in adaptive mode (target: RTT near idle, >= 90 % of the link).

RTT is probed with UDP echo packets (10 per second) from the receiver to the
sender, whose replies queue in the sender's shaped egress like the data does
(no ping binary needed). Rates are computed from the receiver's `status`
(chunk bytes held: goodput) and the sender's `status` (`wire_bytes_sent`: the
TCP payload the limiter counts), over a steady window that skips the first
second of each phase.

Run as root:  sudo python3 tests/bench/ratelimit.py   (see tests/bench/README.md)
"""

import argparse
import atexit
import json
import os
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fanout  # noqa: E402  (shared helpers: cleanup registry, processes, data)
from fanout import REG, Proc, log, run  # noqa: E402

REPO = fanout.REPO
CHANNEL = "bench"
PORT = 7411
ECHO_PORT = 9999


# --------------------------------------------------------------------------
# RTT probe (runs inside the namespaces as subprocesses of this script)
# --------------------------------------------------------------------------

def udp_echo(listen):
    host, port = listen.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, int(port)))
    while True:
        data, addr = s.recvfrom(2048)
        s.sendto(data, addr)


def udp_probe(target, out, interval):
    host, port = target.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(interval)
    seq = 0
    with open(out, "a", buffering=1) as f:
        while True:
            seq += 1
            t0 = time.monotonic()
            s.sendto(struct.pack("!Qd", seq, t0), (host, int(port)))
            deadline = t0 + interval
            while True:
                left = deadline - time.monotonic()
                try:
                    s.settimeout(max(left, 0.001))
                    data, _ = s.recvfrom(2048)
                except socket.timeout:
                    break
                rseq, sent = struct.unpack("!Qd", data[:16])
                now = time.monotonic()
                # a late reply (beyond one interval) still counts: bloat
                f.write(f"{sent:.6f} {(now - sent) * 1e3:.3f}\n")
                if now >= deadline:
                    break
            time.sleep(max(0.0, deadline - time.monotonic()))


# --------------------------------------------------------------------------
# Network: sender and receiver namespaces, one veth pair
# --------------------------------------------------------------------------

class Link:
    """Sender and receiver namespaces, each with a veth to a bridge in a
    third "switch" namespace. TBF goes either on the sender's own egress or
    on the switch port towards the receiver (a bottleneck hop downstream)."""

    def __init__(self, tag, subnet, cc):
        self.tx = f"rl{tag}s"
        self.rx = f"rl{tag}r"
        self.sw = f"rl{tag}w"
        self.tx_ip = f"10.232.{subnet}.1"
        self.rx_ip = f"10.232.{subnet}.2"
        self.cc = cc
        self.shaped = []

    def setup(self):
        for ns in (self.sw, self.tx, self.rx):
            REG.namespaces.append(ns)
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", self.sw, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.sw, "link", "set", "br0", "up"])
        for i, (ns, ip) in enumerate(((self.tx, self.tx_ip), (self.rx, self.rx_ip))):
            # veth created directly inside the two namespaces: never in ours
            run(["ip", "link", "add", "eth0", "netns", ns, "type", "veth",
                 "peer", "name", f"p{i}", "netns", self.sw])
            run(["ip", "-n", self.sw, "link", "set", f"p{i}", "master", "br0"])
            run(["ip", "-n", self.sw, "link", "set", f"p{i}", "up"])
            run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            # per-route congestion control: works where /proc/sys is read-only
            net = ip.rsplit(".", 1)[0] + ".0/24"
            run(["ip", "-n", ns, "route", "replace", net, "dev", "eth0", "congctl", self.cc])

    def shape(self, rate_mbit, latency_ms, at="sender"):
        """TBF (burst 10 ms of rate, at least 64 KiB) on the sender's egress
        or on the switch's egress towards the receiver; removes the other."""
        burst = max(64 * 1024, int(rate_mbit * 1e6 / 8 / 100))
        here, other = (self.tx, "eth0"), (self.sw, "p1")
        if at == "switch":
            here, other = other, here
        run(["tc", "-n", other[0], "qdisc", "del", "dev", other[1], "root"], check=False)
        run(["tc", "-n", here[0], "qdisc", "replace", "dev", here[1], "root", "tbf", "rate",
             f"{rate_mbit}mbit", "burst", str(burst), "latency", f"{latency_ms}ms"])


# --------------------------------------------------------------------------
# syncnode control
# --------------------------------------------------------------------------

def control(data_dir, req, timeout=5):
    path = os.path.join(data_dir, ".syncnode", "control.sock")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall((json.dumps(req) + "\n").encode())
            buf = b""
            while not buf.endswith(b"\n"):
                b = s.recv(1 << 16)
                if not b:
                    break
                buf += b
        return json.loads(buf)
    except (OSError, ValueError):
        return None


class Bench:
    def __init__(self, a, link, work):
        self.a = a
        self.link = link
        self.work = work
        self.rows = []
        self.seed = None
        self.seed_dir = os.path.join(work, "seed")
        self.n = 0

    def start_seed(self, src):
        key = os.path.join(self.work, "publisher.key")
        out = run([self.a.syncnode, "keygen", "--out", key])
        self.publisher = out.stdout.strip()
        cfg = os.path.join(self.work, "seed.yaml")
        with open(cfg, "w") as f:
            f.write(f"data_dir: {self.seed_dir}\nmax_uploads: {self.a.uploads}\n")
        argv = [self.a.syncnode, "--log-format", "json", "seed", src, "--channel", CHANNEL,
                "--version", "v1", "--key", key, "--config", cfg,
                "--listen", f"/ip4/{self.link.tx_ip}/tcp/{PORT}", "--metrics-listen", "none"]
        self.seed = Proc("seed", argv, ns=self.link.tx, logfile=os.path.join(self.work, "seed.log"))
        deadline = time.monotonic() + 300
        while True:
            st = control(self.seed_dir, {"cmd": "status"})
            if st and st.get("listen_addrs"):
                self.seed_addr = f"/ip4/{self.link.tx_ip}/tcp/{PORT}/p2p/{st['peer_id']}"
                return
            if self.seed.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"seed did not start:\n{self.seed.log_tail()}")
            time.sleep(0.2)

    def set_limit(self, upload, mode="fixed"):
        r = control(self.seed_dir, {"cmd": "limit", "upload_mbps": upload, "mode": mode})
        if not r or "error" in r:
            raise RuntimeError(f"limit command failed: {r}")
        return r

    def start_node(self):
        self.n += 1
        d = os.path.join(self.work, f"node{self.n}")
        os.makedirs(d)
        cfg = os.path.join(self.work, f"node{self.n}.yaml")
        with open(cfg, "w") as f:
            f.write(f"data_dir: {d}\nlisten: [/ip4/{self.link.rx_ip}/tcp/{PORT}]\n"
                    f"bootstrap: ['{self.seed_addr}']\nchannels: [{CHANNEL}]\n"
                    f"trusted_publishers: [{self.publisher}]\nmetrics_listen: null\n"
                    f"fsync: false\nmax_downloads: {self.a.downloads}\n"
                    f"max_in_flight_per_peer: {max(16, self.a.downloads)}\n")
        p = Proc(f"node{self.n}", [self.a.syncnode, "--log-format", "json", "run", "--config", cfg],
                 ns=self.link.rx, logfile=os.path.join(self.work, f"node{self.n}.log"))
        return p, d

    def sample(self, node_dir):
        st = control(node_dir, {"cmd": "status"}) or {}
        lat = next((c.get("latest") for c in st.get("channels", [])
                    if c.get("channel") == CHANNEL), None) or {}
        sst = control(self.seed_dir, {"cmd": "status"}) or {}
        return (time.monotonic(), lat.get("bytes_done", 0), lat.get("bytes_total", 0),
                lat.get("state"), sst.get("bandwidth", {}).get("wire_bytes_sent", 0),
                sst.get("bandwidth", {}).get("upload_rate_mbps"))

    def transfer(self, duration=None, at=None):
        """Runs a fresh node until complete (or for `duration` s); calls
        `at[t]()` once `t` s after the first chunk byte. Returns samples."""
        node, d = self.start_node()
        samples, first, pending = [], None, sorted((at or {}).items())
        deadline = time.monotonic() + self.a.timeout
        try:
            while True:
                s = self.sample(d)
                samples.append(s)
                if first is None and s[1] > 0:
                    first = s[0]
                if first is not None:
                    while pending and s[0] - first >= pending[0][0]:
                        pending.pop(0)[1]()
                    if duration is not None and s[0] - first >= duration:
                        break
                if s[3] == "complete" or (s[2] and s[1] >= s[2]):
                    break
                if node.poll() is not None:
                    raise RuntimeError(f"node exited:\n{node.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError("transfer timed out")
                time.sleep(0.25)
        finally:
            node.stop()
        return first, samples

    def rate(self, samples, t0, t1):
        """(goodput, wire) Mbit/s between t0 and t1 (monotonic seconds)."""
        w = [s for s in samples if t0 <= s[0] <= t1]
        if len(w) < 2:
            return None, None
        dt = w[-1][0] - w[0][0]
        return ((w[-1][1] - w[0][1]) * 8 / 1e6 / dt, (w[-1][4] - w[0][4]) * 8 / 1e6 / dt)

    def steady(self, first, samples, skip=1.0):
        """Rate over [first+skip, the last sample before 98 % of the file]."""
        total = samples[-1][2] or 1
        end = max((s[0] for s in samples if s[1] <= 0.98 * total), default=samples[-1][0])
        return self.rate(samples, first + skip, end)

    def row(self, case, link, limit, good, wire, rtt=None, note=""):
        self.rows.append((case, link, limit, good, wire, rtt, note))
        log(f"{case}: link {link} limit {limit} goodput {fmt(good)} wire {fmt(wire)} "
            f"rtt {rtt} {note}")


def fmt(v, d=1):
    return "-" if v is None else f"{v:.{d}f}"


class Probe:
    """UDP echo on the sender, a 10 Hz prober on the receiver."""

    def __init__(self, b):
        self.b = b
        self.out = os.path.join(b.work, "rtt.txt")
        me = os.path.abspath(__file__)
        lk = b.link
        self.echo = Proc("echo", [sys.executable, me, "--udp-echo", f"{lk.tx_ip}:{ECHO_PORT}"],
                         ns=lk.tx, logfile=os.path.join(b.work, "echo.log"))
        time.sleep(0.3)
        self.probe = Proc("probe", [sys.executable, me, "--udp-probe", f"{lk.tx_ip}:{ECHO_PORT}",
                                    "--probe-out", self.out],
                          ns=lk.rx, logfile=os.path.join(b.work, "probe.log"))

    def rtts(self, t0, t1):
        try:
            with open(self.out) as f:
                rows = [tuple(map(float, line.split())) for line in f if line.strip()]
        except OSError:
            return []
        return [r for t, r in rows if t0 <= t <= t1]

    def stop(self):
        self.probe.stop()
        self.echo.stop()


def rtt_summary(v):
    if not v:
        return None
    v = sorted(v)
    return f"{statistics.median(v):.2f} / {v[int(0.95 * (len(v) - 1))]:.2f}"


def case_a(b):
    a = b.a
    b.link.shape(a.link_mbit, 50)
    b.set_limit(a.limit_mbit)
    first, s = b.transfer()
    good, wire = b.steady(first, s)
    dev = None if wire is None else (wire / a.limit_mbit - 1) * 100
    b.row("a) fixed limit", a.link_mbit, a.limit_mbit, good, wire,
          note=f"wire vs limit {dev:+.1f} %" + ("  [within 5 %]" if abs(dev) <= 5 else "  [OFF]"))


def case_b(b):
    a = b.a
    b.link.shape(a.link_mbit, 50)
    b.set_limit(a.limit_mbit)
    phase = a.phase_s
    first, s = b.transfer(duration=2 * phase,
                          at={phase: lambda: b.set_limit(a.limit2_mbit)})
    for name, lim, t0, t1 in (("b) phase 1", a.limit_mbit, first + 1, first + phase),
                              ("b) phase 2", a.limit2_mbit, first + phase + 1, first + 2 * phase)):
        good, wire = b.rate(s, t0, t1)
        dev = None if wire is None else (wire / lim - 1) * 100
        b.row(name, a.link_mbit, lim, good, wire, note=f"wire vs limit {fmt(dev)} %")


def case_c(b):
    a = b.a
    b.link.shape(a.link_mbit, a.deep_ms, at=a.deep_at)
    probe = Probe(b)
    try:
        time.sleep(3)
        now = time.monotonic()
        idle = probe.rtts(now - 2.5, now)
        b.row("c) idle", a.link_mbit, "-", None, None, rtt_summary(idle))
        for name, mode in (("c) no limit", "fixed"), ("c) adaptive", "adaptive")):
            b.set_limit(0, mode)
            first, s = b.transfer(duration=a.phase_s, at={1.0: lambda: log_cc(b.link)})
            total = s[-1][2] or 1
            t0 = first + 2
            t1 = max((x[0] for x in s if x[1] < total), default=s[-1][0])
            good, wire = b.rate(s, t0, t1)
            r = probe.rtts(t0, t1)
            share = None if good is None else good / a.link_mbit * 100
            rates = [x[5] for x in s if x[0] >= t0 and x[5]]
            note = f"goodput {fmt(share)} % of link"
            if mode == "adaptive" and rates:
                note += f"; adaptive rate median {statistics.median(rates):.0f} Mbit/s"
            b.row(name, a.link_mbit, "adaptive" if mode == "adaptive" else "none",
                  good, wire, rtt_summary(r), note)
            time.sleep(2)  # let the queue drain between runs
    finally:
        probe.stop()


def log_cc(link):
    """Logs which congestion control the sender's TCP connections use."""
    r = run(["ss", "-tin", "state", "established"], ns=link.tx, check=False, timeout=10)
    ccs = sorted({w for w in r.stdout.split() if w in ("cubic", "bbr", "reno", "bbr2")})
    log(f"sender TCP congestion control in use: {ccs or 'unknown'}")


def print_table(b, header):
    print()
    print(header)
    print(f"| case | link Mbit/s | limit Mbit/s | goodput Mbit/s | wire Mbit/s | RTT ms median / p95 | note |")
    print("|---|---|---|---|---|---|---|")
    for case, link, limit, good, wire, rtt, note in b.rows:
        print(f"| {case} | {link} | {limit} | {fmt(good)} | {fmt(wire)} | {rtt or '-'} | {note} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=256, help="file size (default 256 MiB)")
    ap.add_argument("--link-mbit", type=int, default=200, help="TBF rate (default 200)")
    ap.add_argument("--limit-mbit", type=float, default=100, help="case a/b limit (default 100)")
    ap.add_argument("--limit2-mbit", type=float, default=50, help="case b second limit (default 50)")
    ap.add_argument("--phase-s", type=float, default=8, help="case b phase and case c run, seconds (default 8)")
    ap.add_argument("--deep-ms", type=int, default=200, help="case c TBF latency (default 200)")
    ap.add_argument("--deep-at", choices=("switch", "sender"), default="switch",
                    help="where case c's deep TBF sits (default: the switch port to the receiver)")
    ap.add_argument("--cc", default="cubic", help="TCP congestion control in the namespaces")
    ap.add_argument("--uploads", type=int, default=8, help="seed max_uploads (default 8)")
    ap.add_argument("--downloads", type=int, default=8, help="node max_downloads (default 8)")
    ap.add_argument("--cases", default="a,b,c")
    ap.add_argument("--timeout", type=float, default=180, help="per transfer (s)")
    ap.add_argument("--syncnode", default=os.path.join(REPO, "target", "release", "syncnode"))
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (logs)")
    ap.add_argument("--udp-echo", help=argparse.SUPPRESS)
    ap.add_argument("--udp-probe", help=argparse.SUPPRESS)
    ap.add_argument("--probe-out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.udp_echo:
        return udp_echo(a.udp_echo)
    if a.udp_probe:
        return udp_probe(a.udp_probe, a.probe_out, 0.1)
    if os.geteuid() != 0:
        print("ratelimit.py must run as root (network namespaces, tc).", file=sys.stderr)
        return 2
    if not os.access(a.syncnode, os.X_OK):
        print(f"{a.syncnode} missing: cargo build --release -p node", file=sys.stderr)
        return 2
    tag = f"{os.getpid() % 10000:04d}{random.randrange(36 ** 2):02x}"[:6]
    work = tempfile.mkdtemp(prefix=f"ratelimit-{tag}-")
    if not a.keep:
        REG.dirs.append(work)
    atexit.register(REG.cleanup)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, fanout._on_signal)
    # a private copy: a concurrent `cargo build` must not swap it mid-run
    binary = os.path.join(work, "syncnode")
    subprocess.run(["cp", a.syncnode, binary], check=True)
    a.syncnode = binary
    link = Link(tag, random.randrange(1, 255), a.cc)
    b = Bench(a, link, work)
    cases = set(a.cases.split(","))
    try:
        log(f"scratch {work}; namespaces {link.tx}, {link.sw}, {link.rx}; cc {a.cc}")
        link.setup()
        src = os.path.join(work, "src")
        os.makedirs(src)
        fanout.write_checkpoint(os.path.join(src, "model.safetensors"), a.size_mib << 20, seed=99)
        b.start_seed(src)
        for name, fn in (("a", case_a), ("b", case_b), ("c", case_c)):
            if name in cases:
                try:
                    fn(b)
                except RuntimeError as e:
                    b.row(name, a.link_mbit, "-", None, None, note=f"ERROR: {e}"[:300])
        print_table(b, f"syncnode rate control, {a.size_mib} MiB file, {a.cc}; TBF on the "
                       f"sender's egress (a, b) and at the {a.deep_at} (c); seed max_uploads "
                       f"{a.uploads}, node max_downloads {a.downloads}")
    except KeyboardInterrupt as e:
        print(f"\ninterrupted ({e}); cleaning up", file=sys.stderr)
        return 130
    finally:
        REG.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
