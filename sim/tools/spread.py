#!/usr/bin/env python3
"""How each chunk spread, and how full the nodes' download links were.

    SYNCNODE_SIM_ARRIVALS=1 syncnode sim SCENARIO --seed N 2> arrivals.txt
    python3 sim/tools/spread.py arrivals.txt --nodes 1000 --mbps 200 --chunk-kib 256

Prints, per chunk in the order the origin first sent it, the times (ms after
that first copy) by which 1 %, 10 %, 50 %, 90 % and 100 % of its copies had
arrived, then the nodes' received bytes per half second as a fraction of
their links (assumes chunks of --chunk-kib on average).
"""
import argparse
import collections

ap = argparse.ArgumentParser()
ap.add_argument("file")
ap.add_argument("--nodes", type=int, required=True)
ap.add_argument("--mbps", type=float, required=True)
ap.add_argument("--chunk-kib", type=float, default=256)
a = ap.parse_args()

by = collections.defaultdict(list)
first_from_origin = {}
bins = collections.Counter()
for line in open(a.file):
    if not line.startswith("arrive "):
        continue
    _, t, _client, server, gid = line.split()
    t = int(t) / 1e9
    by[gid].append(t)
    bins[int(t * 2)] += 1
    if server == "0":
        first_from_origin[gid] = min(t, first_from_origin.get(gid, t))

print("origin's copy (ms)  chunk   1%    10%    50%    90%   100%  (ms after it)")
rows = []
for gid, ts in by.items():
    ts.sort()
    t0 = first_from_origin.get(gid, ts[0])
    q = [ts[min(len(ts) - 1, int(p * len(ts)))] - t0 for p in (0.01, 0.1, 0.5, 0.9)]
    rows.append((t0, gid, q + [ts[-1] - t0]))
for t0, gid, q in sorted(rows):
    print(f"{t0 * 1000:10.1f}  {gid:>12}  " + " ".join(f"{x * 1000:6.1f}" for x in q))
link = a.mbps * 1e6 / 8 * 0.5 * a.nodes
chunk = a.chunk_kib * 1024
print("download links used, per half second:")
print(" ".join(f"{b / 2:.1f}s:{bins[b] * chunk / link:.2f}" for b in sorted(bins)))
