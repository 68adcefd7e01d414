#!/usr/bin/env bash
# The short two-GPU run for a device call with little time: no build on the GPU machine. The
# binaries come built here (tools/gpu-prebuilt.sh --stage: a release build with CUDA into
# .gpu-prebuilt, which .git/info/exclude ignores; carry it with .gpu-deps). On the GPU machine,
#   tools/gpu-prebuilt.sh [seconds]
# runs, most important first, each step cut to what is left of the budget (default 140 s):
#   1. EP2 dispatch/combine latency over NVLink (fp8 and bf16, T = 1, 128, 512, with NCCL's
#      all_to_all on the same GPUs as the baseline);
#   2. NCCL all_reduce/all_to_all between the two GPUs, each its own node, through moefabric over
#      shm and through NCCL's Socket transport;
#   3. the gpu suite on two GPUs (--quick: nvlink, fabric and node1 modes, results checked
#      against the CPU reference);
#   4. NCCL through moefabric over tcp on lo;
#   5. EP2 through the fabric proxy across the two GPUs (--node-size 1).
# Logs go to $OUT (default /tmp/moefabric-gpu-out).
set -uo pipefail
cd "$(dirname "$0")/.."
pb=.gpu-prebuilt
if [ "${1:-}" = "--stage" ]; then
  d=${2:-/tmp/moefabric-prebuilt-build}
  opts=(-Dbuildtype=release -Dcuda=enabled)
  if [ -f "$d/build.ninja" ]; then meson configure "$d" "${opts[@]}"; else meson setup "$d" "${opts[@]}"; fi &&
    ninja -C "$d" || exit 1
  rm -rf "$pb" && mkdir -p "$pb"/{perf,collectives,plugin/nccl,tests}
  cp -a "$d"/perf/moefabric-{moe-gpu-perf,moe-perf,nccl-perf,net-perf,run,topo} "$pb/perf/"
  mkdir -p "$pb/python" && cp -a "$d"/python/libmoefabric-bootstrap.so* "$pb/python/"
  cp -a "$d"/collectives/libmoefabric.so* "$pb/collectives/"
  cp -a "$d"/plugin/nccl/libnccl-net-moefabric.so "$pb/plugin/nccl/"
  cp -a "$d"/tests/test-moe-gpu "$d"/tests/test-moe-fuzz-gpu "$pb/tests/"
  grep -qx '/.gpu-prebuilt/' .git/info/exclude || echo '/.gpu-prebuilt/' >> .git/info/exclude
  git rev-parse HEAD > "$pb/COMMIT"; git status --short >> "$pb/COMMIT"
  du -sh "$pb"; exit 0
fi
budget=${1:-140}
start=$SECONDS
out=${OUT:-/tmp/moefabric-gpu-out}
mkdir -p "$out"
source .gpu-deps/env.sh
export NCCL_NVLS_ENABLE=0
torch_nccl=$(python3 -c 'import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])' 2>/dev/null || true)
export LD_LIBRARY_PATH=${torch_nccl:+$torch_nccl/lib:}/usr/local/cuda/lib64:$LD_LIBRARY_PATH
nvidia-smi -L
echo "built from: $(head -n 1 $pb/COMMIT) $(tail -n +2 $pb/COMMIT | wc -l) files changed"
summary=$out/summary.txt
: > "$summary"
step() {  # seconds, label, log, command...: runs while the budget lasts, prints the log's tail
  local want=$1 label=$2 log=$3; shift 3
  local left=$((budget - (SECONDS - start) - 3))
  [ $left -lt 8 ] && { echo "== $label: skipped, budget spent" | tee -a "$summary"; return; }
  [ $want -gt $left ] && want=$left
  echo "== $label (limit ${want}s)" | tee -a "$summary"
  timeout -k 2 "$want" "$@" > "$out/$log" 2>&1
  local rc=$?
  grep -v 'NCCL INFO' "$out/$log" | grep -v '^# [EMF]' | tail -n 22 | tee -a "$summary"
  echo "rc=$rc ($((SECONDS - start)) s in)" | tee -a "$summary"
}
p=$pb/perf
plugin=$PWD/$pb/plugin/nccl/libnccl-net-moefabric.so
nccl=(env NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_IB_DISABLE=1 NCCL_SOCKET_IFNAME=lo)
step 22 "EP2 NVLink fp8" ep2-fp8.log $p/moefabric-moe-gpu-perf -r 2 -d fp8 --tokens 1,128,512 -n 300 -w 20 -J "$out/ep2-fp8.json"
step 22 "EP2 NVLink bf16" ep2-bf16.log $p/moefabric-moe-gpu-perf -r 2 -d bf16 --tokens 1,128,512 -n 300 -w 20 -J "$out/ep2-bf16.json"
step 22 "NCCL moefabric shm" nccl-shm.log "${nccl[@]}" NCCL_NET_PLUGIN="$plugin" NCCL_NET=moefabric MOEFABRIC_PROVIDER=shm \
  $p/moefabric-nccl-perf -r 2 -b 8 -f 8 -e 64M -n 10 --label moefabric-shm -J "$out/nccl-shm.json"
step 22 "NCCL Socket" nccl-socket.log "${nccl[@]}" NCCL_NET_PLUGIN=none NCCL_NET=Socket \
  $p/moefabric-nccl-perf -r 2 -b 8 -f 8 -e 64M -n 10 --label socket -J "$out/nccl-socket.json"
step 35 "gpu suite EP2 on two GPUs (--quick)" test-gpu-ep2.log env MOEFABRIC_TIMEOUT_MS=20000 $pb/tests/test-moe-gpu --ranks 2 --quick
step 22 "NCCL moefabric tcp" nccl-tcp.log "${nccl[@]}" NCCL_NET_PLUGIN="$plugin" NCCL_NET=moefabric MOEFABRIC_PROVIDER=tcp MOEFABRIC_TCP_IFACE=lo \
  $p/moefabric-nccl-perf -r 2 -b 8 -f 8 -e 64M -n 10 --label moefabric-tcp -J "$out/nccl-tcp.json"
step 20 "EP2 fabric proxy across the GPUs (node size 1, shm)" ep2-node1.log env MOEFABRIC_PROVIDER=shm \
  $p/moefabric-moe-gpu-perf -r 2 -d fp8 --node-size 1 --no-nccl --tokens 1,128 -n 200 -w 20
echo "done in $((SECONDS - start)) s"
