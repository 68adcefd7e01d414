#!/usr/bin/env python3
"""The perf tools' JSON files (docs/perf-json.md): tiny runs of moefabric-net-perf and
moefabric-moe-perf (self-launched and under moefabric-run) with -J, and moefabric-topo --json;
every document must carry the common "metadata" object and its rows under "results".
Usage: check_perf_json.py MOEFABRIC-RUN MOE-PERF NET-PERF TOPO   (provider from the environment)"""
import json
import os
import re
import subprocess
import sys
import tempfile

run, moe_perf, net_perf, topo = sys.argv[1:5]
META = ["tool", "version", "commit", "provider", "gpu", "nccl_version", "command_line", "hostname", "schema"]


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def sh(cmd):
    print("$ " + " ".join(cmd), flush=True)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    print(p.stdout, end="")
    if p.returncode != 0:
        fail("%s exited %d" % (os.path.basename(cmd[0]), p.returncode))
    return p.stdout


def check_meta(doc, tool, provider=True):
    m = doc.get("metadata")
    if not isinstance(m, dict):
        fail("%s: no metadata object" % tool)
    if list(m.keys()) != META:
        fail("%s: metadata keys %s, want %s" % (tool, list(m.keys()), META))
    if m["tool"] != tool or m["schema"] != "moefabric-perf/1":
        fail("%s: tool/schema %s/%s" % (tool, m["tool"], m["schema"]))
    if not re.fullmatch(r"\d+\.\d+\.\d+", m["version"]) or not m["commit"]:
        fail("%s: version %r commit %r" % (tool, m["version"], m["commit"]))
    if provider and not m["provider"]:
        fail("%s: provider unknown" % tool)
    if m["gpu"] is not None or m["nccl_version"] is not None:
        fail("%s: gpu/nccl_version should be null here: %r %r" % (tool, m["gpu"], m["nccl_version"]))
    if os.path.basename(tool) not in m["command_line"] or not m["hostname"]:
        fail("%s: command_line %r hostname %r" % (tool, m["command_line"], m["hostname"]))
    return m


with tempfile.TemporaryDirectory() as d:
    # net-perf: four sizes, checked; the rows, then the summary lines.
    f = os.path.join(d, "net.json")
    out = sh([net_perf, "-b", "8", "-e", "64", "-n", "5", "-w", "1", "-c", "1", "-J", f])
    doc = json.load(open(f))
    check_meta(doc, "moefabric-net-perf")
    if [r["bytes"] for r in doc["results"]] != [8, 16, 32, 64]:
        fail("net-perf results: %s" % doc["results"])
    if doc["summary"]["wrong"] != 0 or doc["config"]["check"] is not True:
        fail("net-perf summary/config: %s %s" % (doc["summary"], doc["config"]))
    # No raw baseline: no verdict on the targets.
    out = sh([net_perf, "-b", "8", "-e", "8", "-n", "3", "--no-raw", "-J", f])
    if re.search(r"\bmet\b", out.split("# Targets:")[1].splitlines()[0]):
        fail("net-perf judged a target without a raw baseline")
    if json.load(open(f))["summary"]["bandwidth_target"] is not None:
        fail("net-perf JSON judged a target without a raw baseline")

    # moe-perf forking its own ranks, two rank counts: one file with the rows of both.
    f = os.path.join(d, "moe.json")
    small = ["--tokens", "1,4", "--hidden", "128", "-k", "2", "-E", "4", "-n", "3", "-w", "1", "-c", "1"]
    sh([moe_perf, "-r", "1,2"] + small + ["-J", f])
    doc = json.load(open(f))
    check_meta(doc, "moefabric-moe-perf")
    rows = doc["results"]
    if sorted((r["ranks"], r["tokens"]) for r in rows) != [(1, 1), (1, 4), (2, 1), (2, 4)]:
        fail("moe-perf results: %s" % [(r["ranks"], r["tokens"]) for r in rows])
    if any(r["wrong"] != 0 for r in rows):
        fail("moe-perf: wrong results")

    # moe-perf under moefabric-run (-n: ranks, as mpirun; "--" before the command).
    f = os.path.join(d, "moe-run.json")
    sh([run, "-n", "2", "--", moe_perf] + small + ["-J", f])
    doc = json.load(open(f))
    check_meta(doc, "moefabric-moe-perf")
    if [r["ranks"] for r in doc["results"]] != [2, 2]:
        fail("moe-perf under moefabric-run: %s" % doc["results"])

    # moefabric-topo --json: the same metadata, then the topology's fields.
    doc = json.loads(sh([topo, "--json"]))
    check_meta(doc, "moefabric-topo")
    if list(doc.keys())[:2] != ["metadata", "source"] or "gpus" not in doc or "nics" not in doc:
        fail("moefabric-topo --json keys: %s" % list(doc.keys()))
print("perf JSON files: ok")
