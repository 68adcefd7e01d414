#!/usr/bin/env bash
# "Nothing may get slower", on the GPU machine in one call: the same MoE latency rows from two
# staged builds, interleaved (before, after, before, after) so that drift on the machine hits
# both alike. Each build is a tools/gpu-prebuilt.sh --stage folder (carry both). Only long
# option names both builds know are used.
#   tools/gpu-before-after.sh BEFORE_DIR AFTER_DIR [rounds, default 2]
# GPU_BA_TOKENS sets the token counts (default 1,128,512).
# Prints one table: p50 µs per row for each build and the ratio after/before.
set -uo pipefail
cd "$(dirname "$0")/.."
before=$1 after=$2 rounds=${3:-2}
out=${OUT:-/tmp/moefabric-gpu-out}
mkdir -p "$out"
[ -f .gpu-deps/env.sh ] && source .gpu-deps/env.sh
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} MOEFABRIC_PROVIDER=${MOEFABRIC_PROVIDER:-shm}
export FI_SHM_DISABLE_CMA=0 MOEFABRIC_DEBUG=NONE
ngpu=$(nvidia-smi -L | wc -l)
# The tool's ranks are one GPU each (its NCCL baseline refuses two ranks on one GPU): EP2 where
# there are two GPUs, else EP1 (NVLink path to itself; --fabric: every byte through the proxy).
n=1; fabric="--fabric"
[ "$ngpu" -ge 2 ] && n=2 && fabric="--node-size 1"
rows=("nvlink fp8:--dtype fp8" "nvlink bf16:--dtype bf16" "fabric fp8:--dtype fp8 $fabric")
for r in $(seq 1 "$rounds"); do
  for side in before after; do
    dir=$before; [ "$side" = after ] && dir=$after
    for row in "${rows[@]}"; do
      name=${row%%:*} args=${row#*:}
      # shellcheck disable=SC2086
      LD_LIBRARY_PATH=$dir/collectives:$LD_LIBRARY_PATH timeout 120 "$dir/perf/moefabric-moe-gpu-perf" --ranks "$n" \
        --tokens "${GPU_BA_TOKENS:-1,128,512}" --iters 200 --warmup 20 --no-nccl $args --json "$out/$side-$r-${name// /-}.json" \
        > "$out/$side-$r-${name// /-}.log" 2>&1 || echo "$side $name round $r failed (see $out)"
    done
  done
done
echo "# $ngpu GPU(s), EP$n; p50 µs, best of $rounds rounds"
python3 - "$out" "$rounds" <<'PY'
import json, sys, glob, os
out, rounds = sys.argv[1], int(sys.argv[2])
best = {}
for f in glob.glob(os.path.join(out, "*-*-*.json")):
    side, _, name = os.path.basename(f)[:-5].split("-", 2)
    try:
        data = json.load(open(f))
    except Exception:
        continue
    rows = data if isinstance(data, list) else data.get("results", [])
    for row in rows:
        for phase in ("dispatch", "combine"):
            key = (name, row.get("tokens"), phase)
            v = row.get(phase + "_p50_us")
            if v is None: continue
            best.setdefault(key, {}).setdefault(side, v)
            best[key][side] = min(best[key][side], v)
print(f"{'row':<14}{'T':>6} {'phase':<9}{'before':>9}{'after':>9}{'after/before':>14}")
for key in sorted(best, key=lambda k: (k[0], k[1] or 0, k[2])):
    b, a = best[key].get("before"), best[key].get("after")
    ratio = f"{a / b:.3f}" if a and b else "-"
    fb = f"{b:.1f}" if b else "-"
    fa = f"{a:.1f}" if a else "-"
    print(f"{key[0]:<14}{key[1]!s:>6} {key[2]:<9}{fb:>9}{fa:>9}{ratio:>14}")
PY
