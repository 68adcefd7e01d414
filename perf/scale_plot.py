#!/usr/bin/env python3
"""Draws moefabric-model's JSON (-J FILE): dispatch and combine latency against EP size, one line
per (platform, system) of the results, and the published points of the validation with the
model's prediction of each (docs/scale-model.md).

Usage: scale_plot.py MODEL.json OUT.png   (needs matplotlib)
"""
import json
import sys
from collections import defaultdict


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        doc = json.load(f)
    if doc.get("metadata", {}).get("tool") != "moefabric-model":
        print(f"{argv[1]}: not a moefabric-model file", file=sys.stderr)
        return 2
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("scale_plot.py needs matplotlib (pip install matplotlib)", file=sys.stderr)
        return 2

    lines = defaultdict(list)
    for r in doc["results"]:
        lines[(r["platform"], r["system"])].append((r["ranks"], r["dispatch_us"], r["combine_us"]))
    published = defaultdict(list)
    for v in doc.get("validation", []):
        if v["kind"] == "published":
            published[v["system"]].append(v)

    cfg = doc["config"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.5), sharex=True)
    for ax, phase, col in ((axes[0], "dispatch", 1), (axes[1], "combine", 2)):
        for (plat, system), pts in sorted(lines.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[col] for p in pts], marker="o", label=f"{system} on {plat} (model)")
        for i, (system, pts) in enumerate(sorted(published.items())):
            pts.sort(key=lambda v: v["ranks"])
            xs = [v["ranks"] for v in pts]
            m = "s^Dv"[i % 4]
            if not system.endswith("-scatter"):  # the same published points as pplx-garden
                ax.plot(xs, [v[f"{phase}_measured_us"] for v in pts], m, color="black", markersize=7,
                        label=f"{system}: published")
            ax.plot(xs, [v[f"{phase}_predicted_us"] for v in pts], m, color="black", fillstyle="none",
                    markersize=9, linestyle=":", label=f"{system}: model of its traffic")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("EP size (ranks)")
        ax.set_ylabel(f"{phase} latency (µs)")
        ax.set_title(f"{phase}: T {cfg['tokens']}, H {cfg['hidden']}, top-{cfg['topk']} of {cfg['experts']}, "
                     f"{cfg['dtype']}, combine {cfg['combine_mode']}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=4)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(argv[2], dpi=110)
    print(f"wrote {argv[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
