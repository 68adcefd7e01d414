#!/usr/bin/env bash
# One call on the GPU machine (dependencies staged into .gpu-deps, see docs/cuda-backend.md): build with CUDA, run the CPU suites
# there, then NCCL all_reduce/all_to_all between the GPUs with every GPU its own "node" through
# moefabric (shm, then tcp on lo) and through NCCL's Socket transport, all in the same call.
# Usage (from the repo root, .gpu-deps carried):  tools/gpu-run.sh [max-bytes]
# GPU_RUN_SKIP lists steps to leave out: suites (the CPU suites; GPU_RUN_SKIP_SUITES=1 does the
# same), topo-nccl (a one-rank NCCL init through the plugin with a 2-rail device, to show NCCL
# loads the topology file the plugin hands it), nccl (the sweeps), net-perf. With .gpu-deps/libfabric-cuda (tools/stage-libfabric-cuda.sh)
# it also runs NCCL with GPU buffers over shm.
# Logs and JSON go to $OUT/gpu-logs.tgz (default /tmp/moefabric-gpu-out); a summary table is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
final=${OUT:-/tmp/moefabric-gpu-out}
out=/tmp/moefabric-gpu
mkdir -p "$out" "$final"
max=${1:-256M}
skip=" ${GPU_RUN_SKIP:-} "
[ "${GPU_RUN_SKIP_SUITES:-0}" = 1 ] && skip="$skip suites "
source .gpu-deps/env.sh
export NCCL_NVLS_ENABLE=0
nvidia-smi -L | tee "$out/gpus.txt"
ngpu=$(nvidia-smi -L | wc -l)

# NCCL: PyTorch's (2.28.9) when present, else the system one.
torch_nccl=$(python3 -c 'import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])' 2>/dev/null || true)
nccl_opt=()
if [ -n "$torch_nccl" ] && [ -f "$torch_nccl/include/nccl.h" ]; then
  nccl_opt=(-Dnccl_root="$torch_nccl")
  export LD_LIBRARY_PATH=$torch_nccl/lib:$LD_LIBRARY_PATH
  [ -e "$torch_nccl/lib/libnccl.so" ] || ln -sf libnccl.so.2 "$torch_nccl/lib/libnccl.so" 2>/dev/null || true
fi
echo "NCCL from: ${torch_nccl:-system}" | tee -a "$out/gpus.txt"

setup=(-Dcuda=enabled "${nccl_opt[@]}" --buildtype=release)
{ if [ -d build-gpu ]; then meson setup --reconfigure build-gpu "${setup[@]}"; else meson setup build-gpu "${setup[@]}"; fi &&
    ninja -C build-gpu; } \
  > "$out/build.log" 2>&1 || { tail -n 40 "$out/build.log"; exit 1; }
tail -n 12 "$out/build.log"

echo "== moefabric-topo (live machine)"
build-gpu/perf/moefabric-topo | tee "$out/topo.txt"
build-gpu/perf/moefabric-topo --json > "$out/topo.json"
build-gpu/perf/moefabric-topo --hwloc-nics > "$out/topo-hwloc-nics.txt" 2>&1
nvidia-smi topo -m > "$out/nvidia-smi-topo.txt" 2>&1

if [[ $skip == *" suites "* ]]; then echo "CPU suites skipped (GPU_RUN_SKIP)"; else
MFTEST_SKIP_1GIB=1 meson test -C build-gpu --suite unit --suite fabric --num-processes 4 \
  > "$out/tests.log" 2>&1
echo "CPU suites on the GPU machine: $(grep -E '^(Ok|Fail|Skipped|Timeout):' "$out/tests.log" | tr -s ' ' | tr '\n' ' ')"
fi

plugin=$PWD/build-gpu/plugin/nccl/libnccl-net-moefabric.so
perf=build-gpu/perf/moefabric-nccl-perf
common=(NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_IB_DISABLE=1 NCCL_SOCKET_IFNAME=lo
        NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET)
run() {  # label, env...
  local label=$1; shift
  echo "== $label"
  env "${common[@]}" "$@" timeout 280 "$perf" -r "$ngpu" -e "$max" --label "$label" \
      -J "$out/nccl-$label.json" > "$out/nccl-$label.log" 2>&1
  local rc=$?
  grep -E "via NET|NET/Plugin|Using network|GPU Direct|GDR" "$out/nccl-$label.log" | head -n 5
  grep -v "NCCL INFO" "$out/nccl-$label.log" | tail -n 30
  echo "rc=$rc"
}
# GPU buffers over shm (CUDA IPC inside libfabric): needs the CUDA-enabled libfabric that
# tools/stage-libfabric-cuda.sh stages (Debian's has no CUDA). NCCL only hands a network GPU
# buffers when it considers the NIC close enough to the GPU; shm's NIC is virtual (no PCI path),
# so NCCL_NET_GDR_LEVEL=SYS tells it to. NCCL's cuMem buffers cannot be exported with
# cudaIpcGetMemHandle, so the run without them (NCCL_CUMEM_ENABLE=0) is the IPC one; the run with
# them shows libfabric's fallback (staged through host memory).
source tools/libfabric-cuda-env.sh "$out"
gdr_env=()
if [ ${#lfc_env[@]} -gt 0 ]; then
  gdr_env=(MOEFABRIC_PROVIDER=shm MOEFABRIC_GDR=1 "${lfc_env[@]}" FI_LOG_LEVEL=warn)
else
  echo "== no .gpu-deps/libfabric-cuda: GPU-buffer runs skipped (tools/stage-libfabric-cuda.sh stages it)"
fi

# NCCL reads the topology file the plugin writes for a multi-rail device (NCCL_TOPO_FILE on a
# memfd): one rank, two rails (the first non-loopback interface + lo, tcp), NCCL's fused topology
# dumped with NCCL_TOPO_DUMP_FILE must carry the 2-rail net with the summed speed.
if [[ $skip != *" topo-nccl "* ]] && [ -x "$perf" ]; then
  nic=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
  echo "== NCCL with a 2-rail device ($nic+lo over tcp), one rank: does NCCL load the plugin's topology?"
  env NCCL_NET_PLUGIN="$plugin" NCCL_NET=moefabric MOEFABRIC_PROVIDER=tcp MOEFABRIC_TCP_IFACE="$nic+lo" \
      NCCL_TOPO_DUMP_FILE="$out/nccl-topo-dump.xml" NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,GRAPH,NET,ENV \
      timeout 120 "$perf" -r 1 -b 8 -e 1K --label topo-2rail > "$out/nccl-topo-2rail.log" 2>&1
  rc=$?
  grep -E "TOPO_FILE|NET/Plugin|moefabric.*rail|Loading topology|WARN" "$out/nccl-topo-2rail.log" | grep -v "^#" | head -n 12
  has=no
  grep -q "<net name=\"$nic+lo\"" "$out/nccl-topo-dump.xml" 2>/dev/null && has=yes
  [ $has = yes ] && grep -B3 -A1 "<net name=\"$nic+lo\"" "$out/nccl-topo-dump.xml"
  echo "topo-nccl: NCCL init and all_reduce/all_to_all with the plugin's topology file: rc=$rc; NCCL's fused topology holds the 2-rail net $nic+lo: $has" | tee "$out/topo-nccl.txt"
fi

nccl_json=()
if [[ $skip == *" nccl "* ]]; then
  echo "== NCCL sweeps skipped (GPU_RUN_SKIP)"
elif [ "$ngpu" -ge 2 ] && [ -x "$perf" ]; then
  run moefabric-shm NCCL_NET_PLUGIN="$plugin" NCCL_NET=moefabric MOEFABRIC_PROVIDER=shm
  run moefabric-tcp NCCL_NET_PLUGIN="$plugin" NCCL_NET=moefabric MOEFABRIC_PROVIDER=tcp MOEFABRIC_TCP_IFACE=lo
  if [ ${#gdr_env[@]} -gt 0 ]; then
    run moefabric-shm-gdr NCCL_NET_PLUGIN="$plugin" NCCL_NET=moefabric NCCL_NET_GDR_LEVEL=SYS "${gdr_env[@]}" NCCL_CUMEM_ENABLE=0
    run moefabric-shm-gdr-cumem NCCL_NET_PLUGIN="$plugin" NCCL_NET=moefabric NCCL_NET_GDR_LEVEL=SYS "${gdr_env[@]}"
    nccl_json+=("$out"/nccl-moefabric-shm-gdr.json "$out"/nccl-moefabric-shm-gdr-cumem.json)
  fi
  run socket NCCL_NET_PLUGIN=none NCCL_NET=Socket
  nccl_json+=("$out"/nccl-moefabric-shm.json "$out"/nccl-moefabric-tcp.json "$out"/nccl-socket.json)
else
  echo "== NCCL sweeps skipped: they need 2 GPUs (each its own node), this machine has $ngpu"
fi

np=build-gpu/perf/moefabric-net-perf
if [[ $skip != *" net-perf "* ]]; then
MOEFABRIC_PROVIDER=shm timeout 150 $np -e 64M -c 1 > "$out/net-perf-shm.log" 2>&1
MOEFABRIC_PROVIDER=tcp MOEFABRIC_TCP_IFACE=lo timeout 150 $np -e 64M > "$out/net-perf-tcp.log" 2>&1
# The plugin moving GPU buffers over shm (both processes on GPU rank mod count).
[ ${#gdr_env[@]} -gt 0 ] && env "${gdr_env[@]}" timeout 150 $np --gpu -e 64M -c 1 > "$out/net-perf-shm-gpu.log" 2>&1
for f in "$out"/net-perf-*.log; do [ -f "$f" ] && { echo "== $(basename "$f")"; grep -v '^# [MF]' "$f" | tail -n 40; }; done
fi
if [ ${#nccl_json[@]} -gt 0 ]; then
  python3 tools/nccl_table.py "${nccl_json[@]}" | tee "$out/summary.txt"
fi
tar -C "$out" -czf "$final/gpu-logs.tgz" . && cp "$out/summary.txt" "$final/" 2>/dev/null
