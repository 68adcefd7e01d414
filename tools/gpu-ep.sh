#!/usr/bin/env bash
# Many ranks on one GPU machine, in one call: ranks share the GPUs round robin, and
# MOEFABRIC_NODE_SIZE groups them into "nodes" (NVLink/CUDA IPC inside, the MoE protocol through
# the host proxy between), so that the CUDA backend's fabric path runs at EP8 and EP16 on one H200.
#  1. the differential fuzzer (CUDA backend vs host backend vs reference, byte for byte) at EP8
#     (two nodes of 4, and all NVLink) and EP16 (two nodes of 8, four of 4);
#  2. moefabric-moe-gpu-perf --no-nccl at the decode shape (T 128, hidden 7168, top-8 of 256, fp8):
#     EP2 over NVLink and with every peer through the proxy, and EP8 as two nodes of 4.
# Uses the binaries of tools/gpu-prebuilt.sh --stage (.gpu-prebuilt, carried with .gpu-deps).
#   tools/gpu-ep.sh [fuzz seconds per rank count, default 90]
set -uo pipefail
cd "$(dirname "$0")/.."
fuzz_s=${1:-90}
[ -f .gpu-deps/env.sh ] && source .gpu-deps/env.sh
export LD_LIBRARY_PATH=$PWD/.gpu-prebuilt/collectives:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export MOEFABRIC_PROVIDER=${MOEFABRIC_PROVIDER:-shm} FI_SHM_DISABLE_CMA=0 MOEFABRIC_DEBUG=${MOEFABRIC_DEBUG:-WARN}
bin=.gpu-prebuilt/tests/test-moe-fuzz-gpu
perf=.gpu-prebuilt/perf
[ -x "$bin" ] || { echo "no $bin: run tools/gpu-prebuilt.sh --stage here first and carry .gpu-prebuilt"; exit 2; }
nvidia-smi -L
echo "built from: $(head -n 1 .gpu-prebuilt/COMMIT)"
seed=${GPU_FUZZ_SEED:-$(date +%s)}
rc=0
for spec in "8 node4,nvlink" "16 node8,node4"; do
  set -- $spec
  echo "== fuzz: $1 ranks, modes $2, seed $seed"
  timeout -k 5 $((fuzz_s + 120)) $bin --seed "$seed" --cases 40 --ranks "$1" --modes "$2" --budget "$fuzz_s" \
    --timeout-ms 60000 --no-regressions 2>&1 | grep -v 'moefabric pid .* WARN' | tail -n 12
  [ "${PIPESTATUS[0]}" -ne 0 ] && rc=1
done
shape="--tokens 128 --hidden 7168 -k 8 -E 256 -d fp8 -n 50 -w 10 --no-nccl"
for spec in "2 nvlink" "2 fabric" "8 nvlink" "8 node4"; do
  set -- $spec
  extra=""
  [ "$2" = fabric ] && extra="--fabric"
  [ "$2" = node4 ] && extra="--node-size 4"
  echo "== moefabric-moe-gpu-perf: EP$1, $2"
  # shellcheck disable=SC2086
  timeout -k 5 150 $perf/moefabric-run -n "$1" -- $perf/moefabric-moe-gpu-perf $shape $extra 2>&1 \
    | grep -v 'moefabric pid .* WARN' | grep -v '^#  ' | tail -n 4
done
exit $rc
