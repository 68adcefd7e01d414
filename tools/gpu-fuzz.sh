#!/usr/bin/env bash
# The differential fuzzer on the GPU machine, in one call: the CUDA backend against the host
# backend (and the host backend against the reference) on random cases over 1, 2 and 3 ranks
# (ranks share the GPUs round robin), in the three path modes, then compute-sanitizer memcheck,
# racecheck and synccheck on a sample. Uses the binaries of tools/gpu-prebuilt.sh --stage
# (.gpu-prebuilt, carried with .gpu-deps), so nothing is built on the GPU machine.
#   tools/gpu-fuzz.sh [seconds for the fuzz, default 300] [sanitizer seconds, default 150]
# GPU_FUZZ_ARGS adds options (e.g. "--seed 42 --cases 200"); logs go to $OUT (default
# /tmp/moefabric-gpu-out). Every failure prints its case seed and the command that replays it.
set -uo pipefail
cd "$(dirname "$0")/.."
fuzz_s=${1:-300}
san_s=${2:-150}
out=${OUT:-/tmp/moefabric-gpu-out}
mkdir -p "$out"
[ -f .gpu-deps/env.sh ] && source .gpu-deps/env.sh
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export MOEFABRIC_PROVIDER=${MOEFABRIC_PROVIDER:-shm} FI_SHM_DISABLE_CMA=0 MOEFABRIC_DEBUG=${MOEFABRIC_DEBUG:-NONE}
bin=.gpu-prebuilt/tests/test-moe-fuzz-gpu
[ -x "$bin" ] || { echo "no $bin: run tools/gpu-prebuilt.sh --stage here first and carry .gpu-prebuilt"; exit 2; }
nvidia-smi -L
echo "built from: $(head -n 1 .gpu-prebuilt/COMMIT)"
ngpu=$(nvidia-smi -L | wc -l)
ranks=1,2,3
[ "$ngpu" -ge 4 ] && ranks=1,2,3,4
seed=${GPU_FUZZ_SEED:-$(date +%s)}
# shellcheck disable=SC2086
timeout -k 5 $((fuzz_s + 60)) $bin --seed "$seed" --cases 100 --ranks $ranks --budget "$fuzz_s" \
  ${GPU_FUZZ_ARGS:-} 2>&1 | tee "$out/fuzz.log" | grep -v '^rank [0-9]*: moefabric WARN'
rc_fuzz=${PIPESTATUS[0]}
san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
rc_san=0
for tool in memcheck racecheck synccheck; do
  echo "== compute-sanitizer --tool $tool (2 ranks sharing a GPU, nvlink and fabric)"
  timeout -k 5 $((san_s / 3)) "$san" --tool "$tool" --target-processes all --error-exitcode 9 \
    $bin --seed "$seed" --cases 3 --ranks 2 --modes nvlink,fabric --timeout-ms 120000 --no-regressions \
    > "$out/sanitize-$tool.log" 2>&1
  r=$?
  grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|FAIL|PASS|cases passed' "$out/sanitize-$tool.log" | sort | uniq -c | head -n 8
  echo "rc=$r"
  [ $r -ne 0 ] && rc_san=$r
done
echo "== fuzz rc=$rc_fuzz sanitizers rc=$rc_san (seed $seed)"
[ $rc_fuzz -eq 0 ] && [ $rc_san -eq 0 ]
