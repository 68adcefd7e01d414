#!/usr/bin/env python3
"""Side-by-side table of moefabric-nccl-perf -J files (docs/perf-json.md): busbw and time per op
and size, each run against the last file (the baseline)."""
import json
import sys

runs = []
for path in sys.argv[1:]:
    try:
        with open(path) as f:
            runs.append(json.load(f))
    except (OSError, ValueError) as e:
        print(f"# {path}: {e}")
if not runs:
    sys.exit(1)
labels = [r.get("config", {}).get("label") or "?" for r in runs]
print("# busbw in GB/s, time in us; ratio = run / " + labels[-1])
hdr = f"{'op':>10} {'bytes':>10}"
for l in labels:
    hdr += f" | {l[:16]:>16} {'time':>9}"
for l in labels[:-1]:
    hdr += f" {('x ' + l)[:12]:>12}"
print(hdr)
rows = {}
for i, r in enumerate(runs):
    for row in r.get("results", []):
        rows.setdefault((row["op"], row["bytes"]), {})[i] = row
for (op, nbytes) in sorted(rows, key=lambda k: (k[0], k[1])):
    cells = rows[(op, nbytes)]
    line = f"{op:>10} {nbytes:>10}"
    for i in range(len(runs)):
        c = cells.get(i)
        bad = c and c.get("wrong", 0) not in (0, None)
        line += (f" | {c['busbw_gbps']:>16.3f} {c['time_us']:>9.1f}" + ("!" if bad else "")) if c else f" | {'-':>16} {'-':>9}"
    b = cells.get(len(runs) - 1)
    for i in range(len(runs) - 1):
        c = cells.get(i)
        if c and b and b["busbw_gbps"] > 0:
            line += f" {c['busbw_gbps'] / b['busbw_gbps']:>12.2f}"
        else:
            line += f" {'-':>12}"
    print(line)
for label, r in zip(labels, runs):
    s = r.get("summary", {})
    m = r["metadata"]
    print(f"# {label}: exit {s.get('exit_code')}, error {s.get('error')}, "
          f"out of bounds {s.get('out_of_bounds')}, avg busbw {s.get('avg_busbw_gbps')}; "
          f"NCCL {m.get('nccl_version')}, {m.get('gpu')}, moefabric {m.get('version')} ({m.get('commit')})")
