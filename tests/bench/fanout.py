#!/usr/bin/env python3
"""Fan-out benchmark: syncnode vs unicast (curl) vs BitTorrent (aria2c, rqbit).

N hosts are Linux network namespaces attached to a bridge that lives in its own
"switch" namespace (nothing is added to the caller's network namespace). Every
host link is shaped with TBF in both directions: egress of the host-side veth
(upload) and egress of the switch-side veth (download). Host 0 is the origin
(publisher / HTTP server / initial seeder), hosts 1..N-1 fetch the file.

For each tool the same file is distributed and the script prints: wall time
until every node holds the verified file, that time divided by S/B (S = file
bytes, B = per-host link rate), bytes that left the origin's interface divided
by S, and CPU seconds (user+sys) of the tool's processes.

Run as root:  sudo python3 tests/bench/fanout.py --quick
See tests/bench/README.md.
"""

import argparse
import atexit
import ctypes
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHANNEL = "bench"
SYNC_PORT = 7411
HTTP_PORT = 8000
TRACKER_PORT = 6969
BT_PORT = 6881
RQBIT_API_PORT = 3030
# Every tool's completion is polled at this interval (wall time is when the poll
# first sees a node complete), so each tool's figure carries the same <= 50 ms
# of polling error.
POLL_S = 0.05
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Cleanup: every namespace and process we create is registered here.
# --------------------------------------------------------------------------

class Registry:
    def __init__(self):
        self.namespaces = []  # deleted in reverse order
        self.procs = []
        self.dirs = []
        self.done = False
        self.lock = threading.Lock()

    def cleanup(self):
        with self.lock:
            if self.done:
                return
            self.done = True
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(s, signal.SIG_IGN)  # a second Ctrl-C must not abort cleanup
        for p in reversed(self.procs):
            try:
                p.stop(grace=2.0)
            except Exception as e:  # keep going: namespaces must go
                print(f"cleanup: stopping {p.name}: {e}", file=sys.stderr)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30)
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


REG = Registry()


def _on_signal(signum, _frame):
    # Turn the signal into an exception so every `finally` runs, then cleanup.
    raise KeyboardInterrupt(f"signal {signum}")


class Proc:
    """A process (optionally inside a namespace), in its own process group.

    The process is reaped with wait4() so its rusage (including children it
    waited for) is known; while it runs, CPU is read from /proc/<pid>/stat.
    """

    def __init__(self, name, argv, ns=None, cwd=None, env=None, logfile=None):
        self.name = name
        self.argv = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
        self.logfile = logfile
        out = open(logfile, "ab") if logfile else subprocess.DEVNULL
        self.rc = None
        self.rusage = None
        self.last_cpu = 0.0
        # `ip netns exec` execs the command in place (no fork), so pid is the tool.
        self.p = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                  start_new_session=True)
        if logfile:
            out.close()
        REG.procs.append(self)
        self.t_start = time.monotonic()
        self.t_end = None

    @property
    def pid(self):
        return self.p.pid

    def poll(self):
        if self.rc is None:
            try:
                pid, status, ru = os.wait4(self.p.pid, os.WNOHANG)
            except ChildProcessError:
                self.rc = -1
                self.p.returncode = -1
                self.t_end = time.monotonic()
                return self.rc
            if pid:
                self.rc = os.waitstatus_to_exitcode(status)
                self.p.returncode = self.rc
                self.rusage = ru
                self.t_end = time.monotonic()
        return self.rc

    def cpu(self):
        """User+sys seconds so far (process, its threads and reaped children)."""
        if self.poll() is not None:
            if self.rusage is not None:
                return self.rusage.ru_utime + self.rusage.ru_stime
            return self.last_cpu
        try:
            with open(f"/proc/{self.p.pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            # rest[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17
            ticks = sum(int(x) for x in rest[11:15])
            self.last_cpu = ticks / CLK_TCK
        except (OSError, IndexError, ValueError):
            pass
        return self.last_cpu

    def wait(self, timeout):
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)
        return self.rc

    def stop(self, grace=3.0):
        """SIGTERM the process group, then SIGKILL; always reaps."""
        if self.poll() is not None:
            self._kill_group(signal.SIGKILL)  # stray children of an exited leader
            return self.rc
        self._kill_group(signal.SIGTERM)
        if self.wait(grace) is None:
            self._kill_group(signal.SIGKILL)
            self.wait(10)
        self._kill_group(signal.SIGKILL)
        return self.rc

    def _kill_group(self, sig):
        try:
            os.killpg(self.p.pid, sig)  # pgid == pid (start_new_session)
        except (ProcessLookupError, PermissionError):
            pass

    def log_tail(self, n=20):
        if not self.logfile:
            return ""
        try:
            with open(self.logfile, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""


def run(argv, timeout=60, check=True, ns=None, **kw):
    if ns:
        argv = ["ip", "netns", "exec", ns] + list(argv)
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                       text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


# --------------------------------------------------------------------------
# Network: a switch namespace with a bridge, N host namespaces, TBF both ways.
# --------------------------------------------------------------------------

class Net:
    def __init__(self, tag, hosts, rate_mbit, subnet_octet, sysctls=(), queue_ms=50):
        self.tag = tag
        self.queue_ms = queue_ms
        self.sysctls = list(sysctls)
        self.n = hosts
        self.rate_mbit = rate_mbit
        self.sw = f"fo{tag}sw"
        self.hosts = [f"fo{tag}h{i}" for i in range(hosts)]
        self.ips = [f"10.231.{subnet_octet}.{i + 1}" for i in range(hosts)]

    def setup(self):
        # TBF burst: at least rate/HZ worth, a few jumbo GSO packets; a queue of
        # `--queue-ms` (default 50 ms, a deep-buffered link).
        rate_bytes = self.rate_mbit * 1e6 / 8
        burst = max(64 * 1024, int(rate_bytes / 100))
        tbf = ["root", "tbf", "rate", f"{self.rate_mbit}mbit", "burst", str(burst),
               "latency", f"{self.queue_ms}ms"]
        REG.namespaces.append(self.sw)
        run(["ip", "netns", "add", self.sw])
        run(["ip", "-n", self.sw, "link", "set", "lo", "up"])
        run(["ip", "-n", self.sw, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.sw, "link", "set", "br0", "up"])
        for i, ns in enumerate(self.hosts):
            REG.namespaces.append(ns)
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            # veth created directly inside the two namespaces: never in ours.
            run(["ip", "link", "add", "eth0", "netns", ns, "type", "veth",
                 "peer", "name", f"p{i}", "netns", self.sw])
            run(["ip", "-n", self.sw, "link", "set", f"p{i}", "master", "br0"])
            run(["ip", "-n", self.sw, "link", "set", f"p{i}", "up"])
            run(["ip", "-n", ns, "addr", "add", f"{self.ips[i]}/24", "dev", "eth0"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            for kv in self.sysctls:  # per-namespace network sysctls (--sysctl)
                run(["sysctl", "-q", "-w", kv], ns=ns)
            # upload: egress of the host side; download: egress of the switch side
            run(["tc", "-n", ns, "qdisc", "add", "dev", "eth0"] + tbf)
            run(["tc", "-n", self.sw, "qdisc", "add", "dev", f"p{i}"] + tbf)
        # wait until every host reaches the origin (bounded)
        deadline = time.monotonic() + 20
        for i in range(1, self.n):
            while True:
                r = run(["ping", "-c1", "-W1", self.ips[0]], ns=self.hosts[i], check=False,
                        timeout=10) if shutil.which("ping") else None
                if r is None or r.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"host {i} cannot reach the origin")
                time.sleep(0.2)

    def counters(self, i):
        """(tx_bytes, rx_bytes) of host i's eth0, read inside its namespace."""
        r = run(["ip", "-n", self.hosts[i], "-s", "-j", "link", "show", "dev", "eth0"],
                timeout=10)
        st = json.loads(r.stdout)[0]["stats64"]
        return st["tx"]["bytes"], st["rx"]["bytes"]

    def origin_tx(self):
        return self.counters(0)[0]


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def safetensors_layout(total):
    tensors = 32
    tb = max(4096, total // tensors) & ~3
    hdr = "{"
    for t in range(tensors):
        s = t * tb
        hdr += (f'"layers.{t}.weight":{{"dtype":"F32","shape":[{tb // 4}],'
                f'"data_offsets":[{s},{s + tb}]}},')
    hdr += '"__metadata__":{"format":"pt"}}'
    hdr += " " * (-len(hdr) % 8)
    return tensors, tb, hdr.encode()


def write_checkpoint(path, total, seed, rewritten=()):
    """A safetensors file (header + 32 F32 tensors of seeded random bytes),
    like node/src/checkpoint.rs; tensors in `rewritten` get other bytes."""
    tensors, tb, hdr = safetensors_layout(total)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for part in (len(hdr).to_bytes(8, "little"), hdr):
            f.write(part)
            h.update(part)
        for t in range(tensors):
            s = (seed ^ 0xA5A50000 ^ t) if t in rewritten else (seed ^ t)
            data = random.Random(s).randbytes(tb)
            f.write(data)
            h.update(data)
    return h.hexdigest(), tb


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


# --------------------------------------------------------------------------
# BitTorrent helpers: bencode, torrent creation, a tiny HTTP tracker.
# --------------------------------------------------------------------------

def bencode(x):
    if isinstance(x, int):
        return b"i%de" % x
    if isinstance(x, str):
        x = x.encode()
    if isinstance(x, bytes):
        return b"%d:%s" % (len(x), x)
    if isinstance(x, list):
        return b"l" + b"".join(bencode(v) for v in x) + b"e"
    if isinstance(x, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in x.items())
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in items) + b"e"
    raise TypeError(type(x))


def make_torrent(path, out, announce, piece_len):
    pieces = []
    with open(path, "rb") as f:
        while True:
            b = f.read(piece_len)
            if not b:
                break
            pieces.append(hashlib.sha1(b).digest())
    info = {"name": os.path.basename(path), "length": os.path.getsize(path),
            "piece length": piece_len, "pieces": b"".join(pieces)}
    with open(out, "wb") as f:
        f.write(bencode({"announce": announce, "info": info, "created by": "fanout.py"}))
    return hashlib.sha1(bencode(info)).hexdigest()


def tracker_main(listen, stats_file):
    """Minimal BEP 3/23 HTTP tracker (runs inside the origin namespace)."""
    import http.server

    host, port = listen.rsplit(":", 1)
    swarms = {}  # info_hash -> {peer_id: (ip, port, left, seen)}
    lock = threading.Lock()

    def dump():
        out = {}
        for ih, peers in swarms.items():
            out[ih.hex()] = {
                "seeders": sum(1 for p in peers.values() if p[2] == 0),
                "leechers": sum(1 for p in peers.values() if p[2] != 0)}
        tmp = stats_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f)
        os.replace(tmp, stats_file)

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *a):
            pass

        def do_GET(self):
            u = urllib.parse.urlsplit(self.path)
            q = urllib.parse.parse_qs(u.query, encoding="latin-1")
            try:
                ih = q["info_hash"][0].encode("latin-1")
                pid = q["peer_id"][0].encode("latin-1")
                pport = int(q["port"][0])
                left = int(q.get("left", ["1"])[0])
                event = q.get("event", [""])[0]
                compact = q.get("compact", ["1"])[0] == "1"
            except (KeyError, ValueError) as e:
                body = bencode({"failure reason": f"bad request: {e}"})
            else:
                ip = self.client_address[0]
                with lock:
                    peers = swarms.setdefault(ih, {})
                    if event == "stopped":
                        peers.pop(pid, None)
                    else:
                        peers[pid] = (ip, pport, left, time.time())
                    others = [(k, v) for k, v in peers.items() if k != pid]
                    dump()
                resp = {"interval": 5, "min interval": 1,
                        "complete": sum(1 for _, v in others if v[2] == 0),
                        "incomplete": sum(1 for _, v in others if v[2] != 0)}
                if compact:
                    resp["peers"] = b"".join(socket.inet_aton(v[0]) + v[1].to_bytes(2, "big")
                                             for _, v in others)
                else:
                    resp["peers"] = [{"peer id": k, "ip": v[0], "port": v[1]}
                                     for k, v in others]
                body = bencode(resp)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = http.server.ThreadingHTTPServer((host, int(port)), H)
    with lock:
        dump()
    srv.serve_forever()


# --------------------------------------------------------------------------
# Reaching a TCP port inside a namespace without routing through the bridge:
# create the socket while this thread is in the namespace (setns is per thread).
# --------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


FLOOR_PORT = 7499


def floor_parts(size, nodes):
    """Split `size` bytes into `nodes` near-equal parts (node i holds part i-1)."""
    base, extra = divmod(size, nodes)
    return [base + (1 if k < extra else 0) for k in range(nodes)]


def floor_peer_main(me, ips, size, start, disk=None):
    """One host of the `tcp-floor` case: plain TCP, the oracle relay schedule.

    The origin (0) sends part i-1 of the file (S/(N-1) bytes) to node i; node i
    sends its part to every other node at the same moment, without waiting to
    have it (an oracle: a real relay can forward only what it holds, which at
    chunk granularity costs about one chunk time). Every node receives S bytes
    in total over N-1 connections, every node sends (N-2)/(N-1) S and the
    origin S: the fan-out schedule with the least bytes per link, run over
    the same fabric and the same TCP as the tools. A node prints the instant
    (time.time()) it had received all S bytes.

    With `disk` (the `tcp-floor-disk` row) every node also does the one thing
    every tool must: it writes each received byte into the file at its offset
    (a sender first names its part in 8 bytes) and fsyncs the file before it
    reports. No hashing, no encryption: the floor of network plus disk.
    """
    n = len(ips)
    parts = floor_parts(size, n - 1)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((ips[me], FLOOR_PORT))
    srv.listen(64)
    lock = threading.Lock()
    got = [0]
    full = threading.Event()

    offsets = [sum(parts[:k]) for k in range(len(parts))]
    fd = os.open(disk, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644) if disk and me != 0 else None

    def receive(c):
        with c:
            pos = None
            head = b""
            while True:
                b = c.recv(1 << 20)
                if not b:
                    return
                if fd is not None:
                    if pos is None:
                        head += b
                        if len(head) < 8:
                            continue
                        pos = offsets[int.from_bytes(head[:8], "little")]
                        b = head[8:]
                    os.pwrite(fd, b, pos)
                    pos += len(b)
                with lock:
                    got[0] += len(b)
                    if me != 0 and got[0] >= size and not full.is_set():
                        if fd is not None:
                            os.fsync(fd)
                        print(f"received {got[0]} at {time.time():.6f}", flush=True)
                        full.set()

    def accept():
        while True:
            c, _ = srv.accept()
            threading.Thread(target=receive, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    buf = bytes(1 << 20)

    def send(j, nbytes, part):
        for attempt in range(50):  # every peer listens before the start instant
            try:
                s = socket.create_connection((ips[j], FLOOR_PORT), timeout=5)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"cannot connect to {ips[j]}:{FLOOR_PORT}")
        s.settimeout(None)
        with s:
            if disk:
                s.sendall(part.to_bytes(8, "little"))
            left = nbytes
            while left > 0:
                k = min(left, len(buf))
                s.sendall(buf[:k])
                left -= k

    targets = ([(i, parts[i - 1], i - 1) for i in range(1, n)] if me == 0
               else [(j, parts[me - 1], me - 1) for j in range(1, n) if j != me])
    while time.time() < start:
        time.sleep(0.001)
    senders = [threading.Thread(target=send, args=t, daemon=True) for t in targets]
    for t in senders:
        t.start()
    if me != 0 and not full.wait(600):
        print(f"timeout: received {got[0]} of {size}", flush=True)
        return 1
    for t in senders:
        t.join(600)
    return 0


def ns_http_get(ns, host, port, path, timeout=3.0):
    result = {}

    def worker():
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            try:
                s = socket.create_connection((host, port), timeout=timeout)
            finally:
                if _libc.setns(own, CLONE_NEWNET) != 0:
                    os._exit(99)  # never continue in the wrong namespace
            with s:
                s.settimeout(timeout)
                s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
                data = b""
                while True:
                    b = s.recv(65536)
                    if not b:
                        break
                    data += b
            result["body"] = data.split(b"\r\n\r\n", 1)[1]
        except Exception as e:
            result["error"] = e
        finally:
            os.close(own)
            os.close(target)

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    t.join(timeout + 2)
    if "body" in result:
        return result["body"]
    return None


# --------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------

def fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


class Bench:
    def __init__(self, args, net, work):
        self.a = args
        self.net = net
        self.work = work
        self.rows = []
        self.notes = []
        self.syncnode = args.syncnode
        self.rqbit = args.rqbit or shutil.which("rqbit") or (
            os.path.expanduser("~/.cargo/bin/rqbit")
            if os.path.exists(os.path.expanduser("~/.cargo/bin/rqbit")) else None)

    # -- generic helpers ---------------------------------------------------

    def limit(self, size):
        """Bound for one tool run: factor x the unicast ideal + 60 s."""
        ideal = (self.net.n - 1) * size / (self.a.rate_mbit * 1e6 / 8)
        return self.a.timeout_factor * ideal + 60

    def cpu_total(self, procs):
        return sum(p.cpu() for p in procs)

    def row(self, case, tool, size, wall, origin_tx, cpu, note):
        sb = size / (self.a.rate_mbit * 1e6 / 8)
        self.rows.append({
            "case": case, "tool": tool, "size": size,
            "wall": wall, "wall_sb": (wall / sb) if wall is not None else None,
            "origin_tx_s": (origin_tx / size) if origin_tx is not None else None,
            "cpu": cpu, "note": note})
        w = f"{wall:.1f}s" if wall is not None else "-"
        log(f"{case} {tool}: wall {w}  {note}")

    def fresh_dir(self, *parts):
        d = os.path.join(self.work, *parts)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d

    # -- calibration ---------------------------------------------------------

    def calibrate(self, src_dir):
        """One curl origin->host1 (should be ~R), then two at once from the
        origin (the origin's upload is the limit: sum ~R)."""
        net = self.net
        size = min(64 << 20, max(8 << 20, int(self.a.rate_mbit * 1e6 / 8 * 3)))
        path = os.path.join(src_dir, "calib.bin")
        with open(path, "wb") as f:
            f.write(random.Random(7).randbytes(size))
        srv = Proc("calib-http", [sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind",
                                  net.ips[0], "--directory", src_dir], ns=net.hosts[0],
                   logfile=os.path.join(self.work, "calib-http.log"))
        try:
            self.wait_http(net.ips[0], HTTP_PORT, 1)
            rates = []
            for peers in ([1], [1, 2] if net.n > 2 else [1]):
                t0 = time.monotonic()
                ps = [Proc(f"calib-curl{i}", ["curl", "-sS", "--fail", "--max-time", "60", "-o",
                                               "/dev/null", f"http://{net.ips[0]}:{HTTP_PORT}/calib.bin"],
                           ns=net.hosts[i], logfile=os.path.join(self.work, f"calib{i}-{len(peers)}.log"))
                      for i in peers]
                for p in ps:
                    if p.wait(90) != 0:
                        raise RuntimeError(f"calibration curl failed: {p.log_tail()}")
                # aggregate: all bytes over the span until the last one finished
                span = max(p.t_end for p in ps) - t0
                rates.append((len(peers), len(ps) * size * 8 / 1e6 / span))
        finally:
            srv.stop()
            os.unlink(path)
        parts = [f"{k} concurrent curl(s) from the origin: {r:.1f} Mbit/s aggregate"
                 for k, r in rates]
        ok = all(r <= self.a.rate_mbit * 1.08 for _, r in rates) and rates[0][1] >= self.a.rate_mbit * 0.8
        self.calibration = (f"calibration ({fmt_bytes(size)}, TBF {self.a.rate_mbit} Mbit/s): "
                            + "; ".join(parts) + ("  [OK]" if ok else "  [WARNING: shaping off]"))
        log(self.calibration)

    def wait_http(self, ip, port, host_idx, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = run(["curl", "-s", "-o", "/dev/null", "--max-time", "2", f"http://{ip}:{port}/"],
                    ns=self.net.hosts[host_idx], check=False, timeout=10)
            if r.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"http server {ip}:{port} not up after {timeout}s")

    # -- syncnode ------------------------------------------------------------

    def sn_status(self, data_dir):
        sock_path = os.path.join(data_dir, ".syncnode", "control.sock")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(3)
                s.connect(sock_path)
                s.sendall(b'{"cmd":"status"}\n')
                buf = b""
                while not buf.endswith(b"\n"):
                    b = s.recv(65536)
                    if not b:
                        break
                    buf += b
            return json.loads(buf)
        except (OSError, ValueError):
            return None

    def sn_latest(self, data_dir):
        st = self.sn_status(data_dir)
        if not st:
            return None, None
        for c in st.get("channels", []):
            if c.get("channel") == CHANNEL:
                return c.get("current"), c.get("latest")
        return None, None

    @staticmethod
    def yaml_lines(spec):
        """Config lines from "key: value; key: value"."""
        return "".join(kv.strip() + "\n" for kv in (spec or "").split(";") if kv.strip())

    def sn_extra_yaml(self):
        """`--sn-extra` config lines for every daemon."""
        return self.yaml_lines(self.a.sn_extra)

    def seed_extra_yaml(self):
        """`--sn-extra`, then `--seed-extra` (the later of a repeated key wins), for the publisher."""
        extra = dict(kv.split(":", 1) for kv in
                     self.yaml_lines(self.a.sn_extra).splitlines() if ":" in kv)
        extra.update(kv.split(":", 1) for kv in
                     self.yaml_lines(self.a.seed_extra).splitlines() if ":" in kv)
        return "".join(f"{k.strip()}:{v}\n" for k, v in extra.items())

    def sn_start_seed(self, name, src, version, port, bootstrap=(), started=None):
        d = os.path.join(self.work, "sn", name)
        os.makedirs(d, exist_ok=True)
        argv = [self.syncnode, "--log-format", "json", "seed", src, "--channel", CHANNEL,
                "--version", version, "--key", self.sn_key, "--data-dir", d,
                "--listen", f"/ip4/{self.net.ips[0]}/tcp/{port}", "--metrics-listen", "none"]
        for b in bootstrap:
            argv += ["--bootstrap", b]
        if self.a.sn_extra or self.a.seed_extra:
            cfg = os.path.join(self.work, "sn", f"{name}.yaml")
            with open(cfg, "w") as f:
                f.write(self.seed_extra_yaml())
            argv += ["--config", cfg]
        p = Proc(name, argv, ns=self.net.hosts[0], logfile=os.path.join(self.work, f"sn-{name}.log"))
        if started is not None:
            started.append(p)
        deadline = time.monotonic() + 120 + self.a.size_mib_max / 20
        while True:
            st = self.sn_status(d)
            if st and st.get("listen_addrs"):
                return p, st
            if p.poll() is not None:
                raise RuntimeError(f"syncnode seed exited ({p.rc}):\n{p.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"syncnode seed not ready:\n{p.log_tail()}")
            time.sleep(0.1)

    def sn_wait(self, nodes, dirs, version, limit, t0):
        done = {}
        self.fetched_at = {}  # node -> seconds until all chunks held (before materializing)
        deadline = t0 + limit
        last = {}
        while len(done) < len(nodes):
            for i, d in enumerate(dirs):
                if i in done:
                    continue
                cur, lat = self.sn_latest(d)
                if lat:
                    last[i] = lat
                    if i not in self.fetched_at and lat.get("version") == version and \
                            lat.get("bytes_total", 0) > 0 and \
                            lat.get("bytes_done", 0) >= lat.get("bytes_total", 0):
                        self.fetched_at[i] = time.monotonic() - t0
                if cur == version and lat and lat.get("version") == version and \
                        lat.get("state") == "complete":
                    done[i] = (time.monotonic() - t0, lat)
                if nodes[i].poll() is not None:
                    raise RuntimeError(f"syncnode node {i + 1} exited ({nodes[i].rc}):\n"
                                       f"{nodes[i].log_tail()}")
            if len(done) == len(nodes):
                break
            if time.monotonic() > deadline:
                prog = ", ".join(
                    f"n{i + 1}:{(last.get(i) or {}).get('state')}"
                    f" {(last.get(i) or {}).get('bytes_done', 0) >> 20}/"
                    f"{(last.get(i) or {}).get('bytes_total', 0) >> 20}MiB"
                    for i in range(len(nodes)))
                return None, done, prog
            time.sleep(POLL_S)
        return max(t for t, _ in done.values()), done, ""

    def run_syncnode(self, case, size, v1_dir, v1_sha, v2_dir=None, changed=None):
        net = self.net
        if not self.syncnode or not os.access(self.syncnode, os.X_OK):
            self.row(case, "syncnode", size, None, None, None,
                     f"SKIPPED: syncnode binary not found ({self.syncnode}); "
                     "build with `cargo build --release -p node`")
            return
        base = self.fresh_dir("sn")
        key = os.path.join(base, "publisher.key")
        out = run([self.syncnode, "keygen", "--out", key]).stdout
        pub = [w for w in out.replace('"', " ").split() if len(w) == 64 and
               all(c in "0123456789abcdef" for c in w)]
        if not pub:
            raise RuntimeError(f"cannot parse public key from keygen output: {out!r}")
        self.sn_key = key
        started = []
        try:
            self._run_syncnode(case, size, v1_dir, v1_sha, v2_dir, changed, base, pub, started)
        finally:
            for p in started:
                p.stop()
            shutil.rmtree(base, ignore_errors=True)

    def _run_syncnode(self, case, size, v1_dir, v1_sha, v2_dir, changed, base, pub, started):
        net = self.net
        seed, _ = self.sn_start_seed("seed1", v1_dir, "v1", SYNC_PORT, started=started)
        seed_addr = f"/ip4/{net.ips[0]}/tcp/{SYNC_PORT}"
        node_addr = [f"/ip4/{ip}/tcp/{SYNC_PORT}" for ip in net.ips]
        dirs, cfgs = [], []
        for i in range(1, net.n):
            d = os.path.join(base, f"node{i}")
            os.makedirs(d)
            boots = [seed_addr] + [node_addr[j] for j in (i - 1, i + 1) if 1 <= j < net.n]
            cfg = os.path.join(base, f"node{i}.yaml")
            with open(cfg, "w") as f:
                f.write(f'data_dir: "{d}"\n'
                        f'listen: ["/ip4/{net.ips[i]}/tcp/{SYNC_PORT}"]\n'
                        f'bootstrap: [{", ".join(json.dumps(b) for b in boots)}]\n'
                        f'channels: ["{CHANNEL}"]\n'
                        f'trusted_publishers: ["{pub[-1]}"]\n'
                        f'metrics_listen: null\n' + self.sn_extra_yaml())
            dirs.append(d)
            cfgs.append(cfg)
        tx0 = net.origin_tx()
        cpu0 = seed.cpu()
        t0 = time.monotonic()
        nodes = [Proc(f"node{i + 1}", [self.syncnode, "--log-format", "json", "run", "--config", c],
                      ns=net.hosts[i + 1], logfile=os.path.join(self.work, f"sn-node{i + 1}.log"))
                 for i, c in enumerate(cfgs)]
        started += nodes
        wall, done, prog = self.sn_wait(nodes, dirs, "v1", self.limit(size), t0)
        cpu = self.cpu_total(nodes) + seed.cpu() - cpu0
        tx = net.origin_tx() - tx0
        if wall is None:
            self.row(case, "syncnode", size, None, tx, cpu,
                     f"TIMEOUT after {self.limit(size):.0f}s: {len(done)}/{len(nodes)} "
                     f"complete ({prog})")
            return
        # untimed cross-check: the materialized file is the published one
        bad = [i + 1 for i, d in enumerate(dirs)
               if sha256_file(os.path.join(d, CHANNEL, "current", "model.safetensors"))
               != v1_sha] if self.a.verify else []
        times = sorted(t for t, _ in done.values())
        fetched = sorted(self.fetched_at.values())
        # What the nodes' chunk requests were answered, other than data
        # (status counters since start; absent from older builds).
        sts = [self.sn_status(d) or {} for d in dirs]
        busy = sum(st.get("answers_busy", 0) for st in sts)
        notfound = sum(st.get("answers_not_found", 0) for st in sts)
        note = (f"{len(done)}/{len(nodes)} complete; first {times[0]:.1f}s median "
                f"{times[len(times) // 2]:.1f}s"
                + (f"; all chunks held: median {fetched[len(fetched) // 2]:.1f}s "
                   f"last {fetched[-1]:.1f}s" if fetched else "")
                + f"; answers busy {busy}, not-found {notfound}"
                # The simulator's `machine.ns_per_byte` (docs/simulator.md).
                + f"; {cpu * 1e9 / (len(nodes) * size):.1f} CPU-ns per byte delivered"
                + (f"; SHA MISMATCH on {bad}" if bad else
                   "; sha256 ok" if self.a.verify else ""))
        self.row(case, "syncnode", size, wall, tx, cpu, note)

        if v2_dir is None:
            return
        # ---- delta: v2 (a quarter of the tensors rewritten) to the same nodes
        seed.stop()
        self.net_settle()
        seed2, _ = self.sn_start_seed("seed2", v2_dir, "v2", SYNC_PORT + 1,
                                      bootstrap=node_addr[1:], started=started)
        rx0 = [net.counters(i)[1] for i in range(1, net.n)]
        tx0 = net.origin_tx()
        cpu0 = self.cpu_total(nodes) + seed2.cpu()
        t0 = time.monotonic()
        wall, done, prog = self.sn_wait(nodes, dirs, "v2", self.limit(size), t0)
        cpu = self.cpu_total(nodes) + seed2.cpu() - cpu0
        tx = net.origin_tx() - tx0
        rx = [net.counters(i)[1] - rx0[i - 1] for i in range(1, net.n)]
        if wall is None:
            self.row(case + "-delta", "syncnode", changed, None, tx, cpu,
                     f"TIMEOUT: {len(done)}/{len(nodes)} complete ({prog})")
            return
        fetched = [lat.get("bytes_fetched", 0) for _, lat in done.values()]
        reused = [lat.get("bytes_reused", 0) for _, lat in done.values()]
        self.delta = {
            "case": case, "size": size, "changed": changed, "wall": wall,
            "origin_tx": tx, "cpu": cpu,
            "fetched_avg": sum(fetched) / len(fetched), "fetched_max": max(fetched),
            "reused_avg": sum(reused) / len(reused),
            "rx_avg": sum(rx) / len(rx), "rx_max": max(rx)}
        self.row(case + "-delta", "syncnode", changed, wall, tx, cpu,
                 f"{len(done)}/{len(nodes)} complete; here S = changed bytes of v2 (8 of 32 "
                 f"tensors), fetched per node {self.delta['fetched_avg'] / changed:.2f}x S")

    def net_settle(self):
        time.sleep(1.0)

    # -- unicast ------------------------------------------------------------

    def run_unicast(self, case, size, src_dir, sha):
        net = self.net
        base = self.fresh_dir("uc")
        srv = Proc("http", [sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind",
                            net.ips[0], "--directory", src_dir], ns=net.hosts[0],
                   logfile=os.path.join(self.work, "uc-http.log"))
        clients = []
        try:
            self.wait_http(net.ips[0], HTTP_PORT, 1)
            tx0 = net.origin_tx()
            cpu0 = srv.cpu()
            limit = self.limit(size)
            t0 = time.monotonic()
            for i in range(1, net.n):
                f = os.path.join(base, f"h{i}.bin")
                script = (f'curl -sS --fail --max-time {int(limit)} -o "{f}" '
                          f'"http://{net.ips[0]}:{HTTP_PORT}/model.safetensors" && sha256sum "{f}"')
                clients.append(Proc(f"curl{i}", ["sh", "-c", script], ns=net.hosts[i],
                                    logfile=os.path.join(base, f"h{i}.log")))
            deadline = t0 + limit
            while any(c.poll() is None for c in clients) and time.monotonic() < deadline:
                time.sleep(POLL_S)
            ends = [c.t_end for c in clients if c.t_end is not None]
            wall = (max(ends) - t0) if len(ends) == len(clients) else None
            tx = net.origin_tx() - tx0
            cpu = self.cpu_total(clients) + srv.cpu() - cpu0
            ok = [c for c in clients if c.rc == 0 and sha in open(c.logfile).read()]
            note = f"{len(ok)}/{len(clients)} downloaded, sha256 ok"
            if wall is None:
                note = f"TIMEOUT after {limit:.0f}s; " + note
            elif len(ok) != len(clients):
                note = "FAILED: " + note + "; " + clients[0].log_tail(3)
                wall = None
            self.row(case, "unicast(curl)", size, wall, tx, cpu, note)
        finally:
            for c in clients:
                c.stop()
            srv.stop()
            shutil.rmtree(base, ignore_errors=True)

    # -- tcp-floor: the oracle relay over plain TCP ---------------------------

    def run_floor(self, case, size, disk=False):
        """What plain TCP reaches on this fabric with the best schedule (see
        floor_peer_main): a reference next to the tools, not a tool. With
        `disk`, each node also writes the file and fsyncs it."""
        net = self.net
        tool = "tcp-floor-disk" if disk else "tcp-floor"
        base = self.fresh_dir("floor")
        start = time.time() + 1.0
        tx0 = net.origin_tx()
        peers = []
        try:
            for i in range(net.n):
                argv = [sys.executable, os.path.abspath(__file__), "--floor-peer", str(i),
                        "--floor-ips", ",".join(net.ips), "--floor-bytes", str(size),
                        "--floor-start", f"{start:.6f}"]
                if disk:
                    argv += ["--floor-disk", os.path.join(base, f"h{i}.bin")]
                peers.append(Proc(f"floor{i}", argv, ns=net.hosts[i],
                                  logfile=os.path.join(base, f"h{i}.log")))
            deadline = time.monotonic() + self.limit(size)
            while any(p.poll() is None for p in peers) and time.monotonic() < deadline:
                time.sleep(POLL_S)
            ends = []
            for p in peers[1:]:
                for line in open(p.logfile).read().splitlines():
                    if line.startswith("received "):
                        ends.append(float(line.split()[-1]))
            tx = net.origin_tx() - tx0
            cpu = self.cpu_total(peers)
            if len(ends) == net.n - 1 and all(p.rc == 0 for p in peers):
                spans = sorted(e - start for e in ends)
                sb = size / (self.a.rate_mbit * 1e6 / 8)
                note = (f"oracle relay schedule, plain TCP{', file written + fsynced' if disk else ''}; per node "
                        f"{spans[0] / sb:.2f}-{spans[-1] / sb:.2f} x S/B, median "
                        f"{spans[len(spans) // 2] / sb:.2f}")
                self.row(case, tool, size, spans[-1], tx, cpu, note)
            else:
                self.row(case, tool, size, None, tx, cpu,
                         "FAILED: " + " | ".join(p.log_tail(2) for p in peers if p.rc != 0)[:200])
        finally:
            for p in peers:
                p.stop()
            shutil.rmtree(base, ignore_errors=True)

    # -- BitTorrent ---------------------------------------------------------

    def bt_torrent(self, size, src_file):
        """The .torrent file (announce = the tracker in the origin namespace)."""
        base = self.fresh_dir("bt-meta")
        piece = 256 << 10  # aim at <= 2048 pieces
        while size / piece > 2048 and piece < (4 << 20):
            piece *= 2
        torrent = os.path.join(base, "model.torrent")
        ih = make_torrent(src_file, torrent,
                          f"http://{self.net.ips[0]}:{TRACKER_PORT}/announce", piece)
        return torrent, ih

    def start_tracker(self, base):
        """A fresh tracker per client run (no stale peers from the previous one)."""
        stats = os.path.join(base, "tracker.json")
        tracker = Proc("tracker", [sys.executable, os.path.abspath(__file__), "--tracker",
                                   f"{self.net.ips[0]}:{TRACKER_PORT}", "--tracker-stats", stats],
                       ns=self.net.hosts[0], logfile=os.path.join(base, "tracker.log"))
        deadline = time.monotonic() + 15
        while not os.path.exists(stats):
            if time.monotonic() > deadline or tracker.poll() is not None:
                raise RuntimeError(f"tracker did not start: {tracker.log_tail()}")
            time.sleep(0.1)
        return tracker, stats

    def tracker_seeders(self, stats, ih):
        try:
            with open(stats) as f:
                return json.load(f).get(ih, {}).get("seeders", 0)
        except (OSError, ValueError):
            return 0

    def run_bt(self, case, size, src_file, sha, client, torrent, ih):
        net = self.net
        name = os.path.basename(src_file)
        base = self.fresh_dir("bt", client)
        procs = []
        limit = self.limit(size)
        try:
            tracker, stats = self.start_tracker(base)
            procs.append(tracker)
            dirs = []
            for i in range(net.n):
                d = os.path.join(base, f"h{i}")
                os.makedirs(d)
                dirs.append(d)
            os.link(src_file, os.path.join(dirs[0], name))  # origin holds the file
            hook = os.path.join(base, "done-hook.sh")
            with open(hook, "w") as f:
                f.write('#!/bin/sh\n: > "$(dirname "$3")/.bt-done"\n')
            os.chmod(hook, 0o755)

            def argv(i):
                if client == "aria2c":
                    a = ["aria2c", f"--dir={dirs[i]}", "--seed-ratio=0.0",
                         "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
                         "--enable-peer-exchange=true", f"--listen-port={BT_PORT}",
                         "--file-allocation=none", "--console-log-level=warn",
                         "--summary-interval=0", "--disable-ipv6=true",
                         "--bt-max-peers=0", "--bt-request-peer-speed-limit=100M",
                         "--follow-torrent=false", "--auto-save-interval=0"]
                    if i == 0:
                        a += ["--check-integrity=true"]
                    else:
                        a += [f"--on-bt-download-complete={hook}"]
                    return a + [torrent]
                # rqbit: session state and API per host; keeps seeding after completion
                return [self.rqbit, "--disable-dht", "--disable-dht-persistence",
                        "--disable-upnp-port-forward", "--disable-lsd", "--ipv4-only",
                        "--http-api-listen-addr", f"127.0.0.1:{RQBIT_API_PORT}",
                        "--listen-port", str(BT_PORT), "-i", "5s",
                        "download", "-o", dirs[i]] + (["--overwrite"] if i == 0 else []) + [torrent]

            env = dict(os.environ)
            env.pop("RUST_LOG", None)

            def env_for(i):
                e = dict(env)
                e["HOME"] = dirs[i] + "-home"
                e["XDG_CACHE_HOME"] = dirs[i] + "-home/cache"
                e["XDG_DATA_HOME"] = dirs[i] + "-home/data"
                e["XDG_CONFIG_HOME"] = dirs[i] + "-home/config"
                os.makedirs(dirs[i] + "-home", exist_ok=True)
                return e

            seeder = Proc(f"{client}-seed", argv(0), ns=net.hosts[0], env=env_for(0), cwd=dirs[0],
                          logfile=os.path.join(self.work, f"bt-{client}-h0.log"))
            procs.append(seeder)
            deadline = time.monotonic() + 60 + size / 100e6
            while self.tracker_seeders(stats, ih) < 1:
                if seeder.poll() is not None:
                    raise RuntimeError(f"{client} seeder exited ({seeder.rc}): {seeder.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{client} seeder never announced as seeder: "
                                       f"{seeder.log_tail()}")
                time.sleep(0.1)
            tx0 = net.origin_tx()
            cpu0 = seeder.cpu()
            t0 = time.monotonic()
            leechers = [Proc(f"{client}-h{i}", argv(i), ns=net.hosts[i], env=env_for(i), cwd=dirs[i],
                             logfile=os.path.join(self.work, f"bt-{client}-h{i}.log"))
                        for i in range(1, net.n)]
            procs += leechers
            done = {}
            deadline = t0 + limit
            while len(done) < len(leechers) and time.monotonic() < deadline:
                for k, p in enumerate(leechers):
                    i = k + 1
                    if i in done:
                        continue
                    if self.bt_complete(client, i, dirs[i]):
                        done[i] = time.monotonic() - t0
                    elif p.poll() is not None:
                        raise RuntimeError(f"{client} on host {i} exited ({p.rc}): {p.log_tail()}")
                time.sleep(POLL_S)
            cpu = self.cpu_total([seeder] + leechers) - cpu0
            tx = net.origin_tx() - tx0
            if len(done) < len(leechers):
                self.row(case, client, size, None, tx, cpu,
                         f"TIMEOUT after {limit:.0f}s: {len(done)}/{len(leechers)} complete")
                return
            wall = max(done.values())
            bad = [i for i in range(1, net.n)
                   if sha256_file(os.path.join(dirs[i], name)) != sha] if self.a.verify else []
            times = sorted(done.values())
            self.row(case, client, size, wall, tx, cpu,
                     f"{len(done)}/{len(leechers)} complete; first {times[0]:.1f}s median "
                     f"{times[len(times) // 2]:.1f}s" + (f"; SHA MISMATCH on {bad}" if bad else
                                                         "; sha256 ok" if self.a.verify else ""))
        finally:
            for p in procs:
                p.stop()
            shutil.rmtree(base, ignore_errors=True)

    def bt_complete(self, client, i, d):
        if client == "aria2c":
            return os.path.exists(os.path.join(d, ".bt-done"))
        body = ns_http_get(self.net.hosts[i], "127.0.0.1", RQBIT_API_PORT,
                           "/torrents/0/stats/v1", timeout=2)
        if not body:
            return False
        try:
            st = json.loads(body)
        except ValueError:
            return False
        return bool(st.get("finished")) and st.get("state") in ("live", "paused")

    # -- report -------------------------------------------------------------

    def print_table(self):
        a = self.a
        B = a.rate_mbit * 1e6 / 8
        print()
        print(f"fan-out benchmark: {self.net.n} hosts (1 origin + {self.net.n - 1} nodes), "
              f"TBF {a.rate_mbit} Mbit/s up and down per host, B = {B / 1e6:.1f} MB/s; "
              f"{os.cpu_count()} cores, tokio threads per process "
              f"{os.environ.get('TOKIO_WORKER_THREADS', 'one per core')}")
        print(self.calibration)
        print("wall = until every node holds the verified file; S/B = file bytes / per-host rate "
              "(ideal P2P fan-out ~1, unicast from origin = N-1 = "
              f"{self.net.n - 1}); origin tx/S = bytes leaving the origin's interface / S; "
              "CPU = user+sys of the tool's processes")
        hdr = f"{'case':<14} {'tool':<14} {'file':>10} {'wall s':>8} {'wall/(S/B)':>10} " \
              f"{'origin tx/S':>11} {'CPU s':>8}  note"
        print(hdr)
        print("-" * len(hdr))
        for r in self.rows:
            w = f"{r['wall']:.1f}" if r["wall"] is not None else "-"
            ws = f"{r['wall_sb']:.2f}" if r["wall_sb"] is not None else "-"
            tx = f"{r['origin_tx_s']:.2f}" if r["origin_tx_s"] is not None else "-"
            c = f"{r['cpu']:.1f}" if r["cpu"] is not None else "-"
            print(f"{r['case']:<14} {r['tool']:<14} {fmt_bytes(r['size']):>10} {w:>8} {ws:>10} "
                  f"{tx:>11} {c:>8}  {r['note']}")
        for d in getattr(self, "deltas", []):
            print(f"delta {d['case']}: v2 rewrites 8 of 32 tensors: changed {fmt_bytes(d['changed'])} "
                  f"({d['changed'] / d['size']:.0%} of S); per node fetched (syncnode status) avg "
                  f"{fmt_bytes(d['fetched_avg'])} = {d['fetched_avg'] / d['changed']:.2f}x changed, "
                  f"max {d['fetched_max'] / d['changed']:.2f}x; per node interface rx avg "
                  f"{fmt_bytes(d['rx_avg'])} = {d['rx_avg'] / d['changed']:.2f}x changed; reused avg "
                  f"{fmt_bytes(d['reused_avg'])}; origin tx {d['origin_tx'] / d['changed']:.2f}x changed; "
                  f"wall {d['wall']:.1f}s = {d['wall'] / (d['changed'] / B):.2f} x changed/B")
        for n in self.notes:
            print("note: " + n)
        sys.stdout.flush()


def parse_size(s):
    return int(float(s) * (1 << 20))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=8, help="hosts incl. the origin (default 8)")
    ap.add_argument("--rate-mbit", type=int, default=200, help="per-host TBF rate (default 200)")
    ap.add_argument("--size-mib", default="128,1024",
                    help="comma-separated file sizes in MiB (default 128,1024)")
    ap.add_argument("--cases", default="tcp-floor,syncnode,delta,unicast,aria2c,rqbit",
                    help="comma-separated subset of tcp-floor,tcp-floor-disk,syncnode,delta,unicast,aria2c,rqbit")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 4 hosts, 100 Mbit/s, 32 MiB (explicit flags still win)")
    ap.add_argument("--syncnode", default=os.path.join(REPO, "target", "release", "syncnode"))
    ap.add_argument("--sn-extra", default=None, metavar="'KEY: VALUE; ...'",
                    help="extra config keys for every syncnode daemon (publisher and nodes), "
                         "e.g. 'bandwidth_mode: adaptive; max_downloads: 4'")
    ap.add_argument("--seed-extra", default=None, metavar="'KEY: VALUE; ...'",
                    help="extra config keys for the publisher only, after --sn-extra "
                         "(a key given in both takes this value), e.g. 'max_uploads: 4'")
    ap.add_argument("--queue-ms", type=float, default=50,
                    help="TBF queue (the `latency` parameter) of every shaped link, ms (default 50)")
    ap.add_argument("--sysctl", action="append", default=[], metavar="KEY=VALUE",
                    help="network sysctl set inside every host namespace, for every tool "
                         "(repeatable), e.g. net.ipv4.tcp_slow_start_after_idle=0")
    ap.add_argument("--host-threads", type=int, default=None, metavar="N",
                    help="async runtime threads per process for the tokio tools (syncnode, "
                         "rqbit), via TOKIO_WORKER_THREADS (default: tokio's, one per core). "
                         "On 2 cores, 1 and the default measured the same within noise")
    ap.add_argument("--rqbit", default=None, help="rqbit binary (default: PATH or ~/.cargo/bin)")
    ap.add_argument("--workdir", default=None, help="parent of the scratch folder (default /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (logs)")
    ap.add_argument("--timeout-factor", type=float, default=3.0,
                    help="per-tool limit = factor x (N-1)*S/B + 60 s (default 3)")
    ap.add_argument("--no-verify", dest="verify", action="store_false",
                    help="skip the untimed sha256 cross-check of syncnode/BitTorrent results")
    ap.add_argument("--tracker", help=argparse.SUPPRESS)
    ap.add_argument("--floor-peer", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--floor-ips", help=argparse.SUPPRESS)
    ap.add_argument("--floor-bytes", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--floor-start", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--floor-disk", help=argparse.SUPPRESS)
    ap.add_argument("--tracker-stats", help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    a = ap.parse_args(argv)
    if a.tracker:
        tracker_main(a.tracker, a.tracker_stats)
        return 0
    if a.floor_peer is not None:
        return floor_peer_main(a.floor_peer, a.floor_ips.split(","), a.floor_bytes, a.floor_start,
                               a.floor_disk)
    if a.quick:
        given = " ".join(argv)
        if "--hosts" not in given:
            a.hosts = 4
        if "--rate-mbit" not in given:
            a.rate_mbit = 100
        if "--size-mib" not in given:
            a.size_mib = "32"
    sizes = [parse_size(s) for s in a.size_mib.split(",") if s.strip()]
    a.size_mib_max = max(sizes) >> 20
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    unknown = set(cases) - {"tcp-floor", "tcp-floor-disk", "syncnode", "delta", "unicast", "aria2c", "rqbit"}
    if unknown:
        ap.error(f"unknown cases: {sorted(unknown)}")
    if a.hosts < 2 or a.hosts > 200:
        ap.error("--hosts must be 2..200")
    if a.host_threads is not None:
        if a.host_threads > 0:
            os.environ["TOKIO_WORKER_THREADS"] = str(a.host_threads)
        else:
            os.environ.pop("TOKIO_WORKER_THREADS", None)

    if os.geteuid() != 0:
        print("fanout.py must run as root (network namespaces, tc).", file=sys.stderr)
        return 2
    missing = [t for t in ("ip", "tc", "curl", "sh", "sha256sum") if not shutil.which(t)]
    if missing:
        print(f"missing required tools: {missing} (apt-get install iproute2 curl coreutils)",
              file=sys.stderr)
        return 2

    tag = f"{os.getpid() % 10000:04d}{random.randrange(36 ** 2):02x}"[:6]
    subnet = random.randrange(1, 255)
    work = tempfile.mkdtemp(prefix=f"fanout-{tag}-", dir=a.workdir)
    if not a.keep:
        REG.dirs.append(work)
    atexit.register(REG.cleanup)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)

    net = Net(tag, a.hosts, a.rate_mbit, subnet, a.sysctl, a.queue_ms)
    bench = Bench(a, net, work)
    bench.deltas = []
    rc = 0
    try:
        if "aria2c" in cases and not shutil.which("aria2c"):
            bench.notes.append("aria2c not installed (apt-get install aria2): skipped")
            cases.remove("aria2c")
        if "rqbit" in cases and not (bench.rqbit and os.access(bench.rqbit, os.X_OK)):
            bench.notes.append("rqbit not installed (cargo install --locked rqbit): skipped")
            cases.remove("rqbit")
        if ("syncnode" in cases or "delta" in cases) and not os.access(a.syncnode, os.X_OK):
            bench.notes.append(f"syncnode binary {a.syncnode} missing "
                               "(cargo build --release -p node): syncnode skipped")
            cases = [c for c in cases if c not in ("syncnode", "delta")]
        if "syncnode" in cases or "delta" in cases:
            # a private copy: a concurrent `cargo build` must not swap it mid-run
            st = os.stat(a.syncnode)
            bench.syncnode = os.path.join(work, "syncnode")
            shutil.copy2(a.syncnode, bench.syncnode)
            bench.notes.append(f"syncnode binary {a.syncnode} (built "
                               f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(st.st_mtime))})")
        log(f"scratch {work}; namespaces fo{tag}*; subnet 10.231.{subnet}.0/24; cases {cases}")
        net.setup()
        src_root = os.path.join(work, "src")
        os.makedirs(src_root)
        bench.calibrate(src_root)
        for size in sizes:
            case = f"{size >> 20}MiB"
            v1 = os.path.join(src_root, f"{case}-v1")
            os.makedirs(v1)
            f1 = os.path.join(v1, "model.safetensors")
            log(f"generating {case} checkpoint")
            sha1, tb = write_checkpoint(f1, size, seed=1234)
            real = os.path.getsize(f1)
            try:
                if "tcp-floor" in cases:
                    try:
                        bench.run_floor(case, real)
                    except RuntimeError as e:
                        bench.row(case, "tcp-floor", real, None, None, None, f"ERROR: {e}"[:300])
                if "tcp-floor-disk" in cases:
                    try:
                        bench.run_floor(case, real, disk=True)
                    except RuntimeError as e:
                        bench.row(case, "tcp-floor-disk", real, None, None, None,
                                  f"ERROR: {e}"[:300])
                if "syncnode" in cases or "delta" in cases:
                    v2 = None
                    changed = None
                    if "delta" in cases:
                        v2 = os.path.join(src_root, f"{case}-v2")
                        os.makedirs(v2)
                        _, tb = write_checkpoint(os.path.join(v2, "model.safetensors"), size,
                                                 seed=1234, rewritten={t for t in range(32)
                                                                       if t % 4 == 1})
                        changed = 8 * tb
                    try:
                        bench.run_syncnode(case, real, v1, sha1, v2, changed)
                        if getattr(bench, "delta", None):
                            bench.deltas.append(bench.delta)
                            bench.delta = None
                    except RuntimeError as e:
                        bench.row(case, "syncnode", real, None, None, None, f"ERROR: {e}"[:300])
                    finally:
                        if v2:
                            shutil.rmtree(v2, ignore_errors=True)
                if "unicast" in cases:
                    try:
                        bench.run_unicast(case, real, v1, sha1)
                    except RuntimeError as e:
                        bench.row(case, "unicast(curl)", real, None, None, None, f"ERROR: {e}"[:300])
                bt = [c for c in ("aria2c", "rqbit") if c in cases]
                if bt:
                    torrent, ih = bench.bt_torrent(real, f1)
                    for client in bt:
                        try:
                            bench.run_bt(case, real, f1, sha1, client, torrent, ih)
                        except RuntimeError as e:
                            bench.row(case, client, real, None, None, None, f"ERROR: {e}"[:300])
            finally:
                shutil.rmtree(v1, ignore_errors=True)
        bench.print_table()
    except KeyboardInterrupt as e:
        print(f"\ninterrupted ({e}); cleaning up", file=sys.stderr)
        bench.print_table() if bench.rows and hasattr(bench, "calibration") else None
        rc = 130
    finally:
        REG.cleanup()
    return rc


if __name__ == "__main__":
    sys.exit(main())
