#!/usr/bin/env python3
"""moefabric-model (docs/scale-model.md): its JSON (common metadata, one row per platform x
system x EP size, the validation rows), the per-peer traffic against the totals, a routing
trace written and read back giving the same traffic, skewed routing loading the hottest rank
more, the refusals, and perf/scale_plot.py drawing the file (when matplotlib is installed).
Usage: check_scale_model.py MOEFABRIC-MODEL SCALE_PLOT.PY"""
import json
import os
import subprocess
import sys
import tempfile

model, plot = sys.argv[1:3]


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def run(args, ok=True):
    p = subprocess.run([model] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    if ok and p.returncode != 0:
        fail("moefabric-model %s exited %d:\n%s" % (" ".join(args), p.returncode, p.stdout))
    if not ok and p.returncode == 0:
        fail("moefabric-model %s succeeded" % " ".join(args))
    return p.stdout


def load(args, f):
    run(args + ["-J", f])
    return json.load(open(f))


with tempfile.TemporaryDirectory() as d:
    f = os.path.join(d, "m.json")
    doc = load(["-p", "p5,cx7", "-s", "moefabric,moefabric-node", "-r", "8,16,32"], f)
    m = doc["metadata"]
    if m["tool"] != "moefabric-model" or m["schema"] != "moefabric-perf/1" or m["gpu"] is not None:
        fail("metadata: %s" % m)
    rows = doc["results"]
    if [(r["platform"], r["system"], r["ranks"]) for r in rows] != [
            (p, s, e) for p in ("p5", "cx7") for s in ("moefabric", "moefabric-node") for e in (8, 16, 32)]:
        fail("result rows: %s" % [(r["platform"], r["system"], r["ranks"]) for r in rows])
    for r in rows:
        if not (0 < r["dispatch_us"] < 1e5 and 0 < r["combine_us"] < 1e5) or r["memory_bytes_per_gpu"] <= 0:
            fail("implausible row %s" % r)
        if r["ranks"] == 8 and r["dispatch"]["nic_bytes_out_max"] != 0:
            fail("EP8 on 8-GPU nodes sent NIC bytes: %s" % r)
        if r["ranks"] > 8 and r["dispatch"]["nic_bytes_out_max"] <= 0:
            fail("EP%d sent no NIC bytes" % r["ranks"])
    # One node: both systems are the same thing.
    by = {(r["platform"], r["system"], r["ranks"]): r for r in rows}
    if by[("p5", "moefabric", 8)]["dispatch_us"] != by[("p5", "moefabric-node", 8)]["dispatch_us"]:
        fail("node mode differs from rank mode inside one node")
    # The node mode puts fewer writes on the NIC.
    if by[("p5", "moefabric-node", 32)]["dispatch"]["nic_writes_out_max"] >= \
            by[("p5", "moefabric", 32)]["dispatch"]["nic_writes_out_max"]:
        fail("node mode does not reduce NIC writes")
    val = doc["validation"]
    kinds = {v["kind"] for v in val}
    if kinds != {"published", "measured", "calibration"}:
        fail("validation kinds %s" % kinds)
    for v in val:
        want = 100 * (v["dispatch_predicted_us"] - v["dispatch_measured_us"]) / v["dispatch_measured_us"]
        if abs(want - v["dispatch_error_pct"]) > 1e-6:
            fail("validation error field: %s" % v)
    if len([v for v in val if v["kind"] == "published"]) != 11:
        fail("want the 4 pplx-garden points (twice, two traffic models) and 3 UCCL-EP points")

    # Per-peer traffic of every rank adds up to the per-phase maxima of the row.
    doc = load(["-p", "p5en", "-r", "16", "--traffic", "--rank", "-1"], f)
    t = doc["traffic"]
    if len(t) != 16 * 16:
        fail("traffic rows: %d" % len(t))
    nic_out = [sum(x["dispatch_bytes"] for x in t if x["rank"] == r and x["link"] == "nic") for r in range(16)]
    if max(nic_out) != doc["results"][0]["dispatch"]["nic_bytes_out_max"]:
        fail("traffic %s vs row %s" % (max(nic_out), doc["results"][0]["dispatch"]["nic_bytes_out_max"]))
    if any(x["dispatch_bytes"] != 0 for x in t if x["link"] == "self"):
        fail("self traffic has bytes")

    # A trace written and read back is the same routing; another EP size deals its tokens.
    tr = os.path.join(d, "t.txt")
    a = load(["-p", "p5en", "-r", "16", "--traffic", "--rank", "-1", "--routing", "zipf:1.2", "--write-trace", tr], f)
    b = load(["-p", "p5en", "-r", "16", "--traffic", "--rank", "-1", "--routing", "trace:" + tr], f)
    if a["traffic"] != b["traffic"]:
        fail("trace read back differs")
    load(["-p", "p5en", "-r", "32", "--routing", "trace:" + tr], f)
    # Skew: the hottest rank receives more than under uniform routing.
    def hottest(doc):
        inb = {}
        for x in doc["traffic"]:
            inb[x["peer"]] = inb.get(x["peer"], 0) + x["pairs"]
        return max(inb.values())
    u = load(["-p", "p5en", "-r", "16", "--traffic", "--rank", "-1"], f)
    if hottest(a) <= hottest(u):
        fail("zipf:1.2 is not more skewed than uniform (%d vs %d)" % (hottest(a), hottest(u)))

    # Refusals: ranks that do not fill nodes, unknown names, malformed traces.
    run(["-r", "12"], ok=False)
    run(["-r", "16", "--traffic", "--rank", "16"], ok=False)
    run(["-p", "p6"], ok=False)
    run(["-s", "nccl"], ok=False)
    run(["--routing", "zipf:x"], ok=False)
    bad = os.path.join(d, "bad.txt")
    open(bad, "w").write("0 1 2 3\n")  # 3 ids for top-8
    run(["--routing", "trace:" + bad], ok=False)

    # The plot, where matplotlib is installed.
    try:
        import matplotlib  # noqa: F401
        png = os.path.join(d, "m.png")
        load(["-p", "p5en"], f)
        p = subprocess.run([sys.executable, plot, f, png], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
        if p.returncode != 0 or os.path.getsize(png) < 10000:
            fail("scale_plot.py: %s" % p.stdout)
        print("plot: ok")
    except ImportError:
        print("plot: skipped (no matplotlib)")
print("moefabric-model: ok")
