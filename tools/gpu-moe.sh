#!/usr/bin/env bash
# The MoE CUDA backend on the GPU machine, in one call (dependencies staged into .gpu-deps, see docs/cuda-backend.md): build
# build-gpu with -Dcuda=enabled, run the gpu suite (CUDA backend vs host backend, bit for bit,
# and 1000 CUDA-graph replays), compute-sanitizer memcheck and racecheck on the quick
# configuration, then the latency sweep (moefabric-moe-gpu-perf) with its NCCL all_to_all and
# peer-copy baselines. Logs go to $OUT/gpu-moe-logs.tgz (default /tmp/moefabric-gpu-out) with
# summary.txt beside it; a short table is printed last.
# Usage (from the repo root, .gpu-deps carried):  tools/gpu-moe.sh [perf options...]
#   e.g. tools/gpu-moe.sh --tokens 1,8,32,128,512,1024,4096 -n 1000
# Steps: test (NVLink mode), fabric (the same checks with MOEFABRIC_FORCE_FABRIC=1 and, on two
# GPUs, MOEFABRIC_NODE_SIZE=1, over libfabric shm; staging in host memory, then in GPU memory
# when .gpu-deps/libfabric-cuda is there), sanitize, perf (NVLink sweep), perf-fabric
# (forced-fabric sweeps over shm, host and GPU staging, with the proxy's posting cost, against the
# NVLink rows at T=128; GPU_MOE_FABRIC_T sets their token counts).
# On a one-GPU machine step ep2-shared runs the suite with --ranks 2 (both ranks on the one GPU;
# GPU_MOE_EP2_ARGS adds options, e.g. "--quick"; GPU_MOE_EP2_TIMEOUT, default 300 s).
# GPU_MOE_SANITIZE_ARGS adds test options under compute-sanitizer (e.g. "--ranks 2 --modes
# nvlink,fabric,node1"); GPU_MOE_SANITIZE_TIMEOUT (default 270 s) bounds each tool.
# Step profile (Nsight Systems when installed) prints per-kernel times inside the graphs.
# Steps can be skipped: GPU_MOE_SKIP="sanitize perf" tools/gpu-moe.sh. Every step has its own
# timeout (test and fabric 300 s each, each sanitizer 270 s, each perf sweep 300 s, the fabric sweep
# 240 s); where one call may run for at most 10 minutes, split it (build-gpu is reused):
#   GPU_MOE_SKIP="sanitize perf perf-fabric"   build + test + fabric
#   GPU_MOE_SKIP="test fabric perf perf-fabric"   sanitizers
#   GPU_MOE_SKIP="test fabric sanitize"   both sweeps
set -uo pipefail
cd "$(dirname "$0")/.."
final=${OUT:-/tmp/moefabric-gpu-out}
out=/tmp/moefabric-gpu-moe
rm -rf "$out"
mkdir -p "$out" "$final"
skip=" ${GPU_MOE_SKIP:-} "
summary=$out/summary.txt
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }
finish() {
  tar -C "$out" -czf "$final/gpu-moe-logs.tgz" . 2>/dev/null
  cp "$summary" "$final/summary.txt" 2>/dev/null
  echo
  echo "================ gpu-moe summary ================"
  cat "$summary"
}
trap finish EXIT

[ -f .gpu-deps/env.sh ] && source .gpu-deps/env.sh
export NCCL_NVLS_ENABLE=0
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi -L > "$out/gpus.txt" 2>&1
nvidia-smi topo -m >> "$out/gpus.txt" 2>&1
note "GPUs: $(nvidia-smi -L 2>/dev/null | wc -l) ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)); nvcc $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*')"

# NCCL: PyTorch's (2.28.9) when present, else the system one (as tools/gpu-run.sh).
torch_nccl=$(python3 -c 'import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])' 2>/dev/null || true)
nccl_opt=()
if [ -n "$torch_nccl" ] && [ -f "$torch_nccl/include/nccl.h" ]; then
  nccl_opt=(-Dnccl_root="$torch_nccl")
  export LD_LIBRARY_PATH=$torch_nccl/lib:${LD_LIBRARY_PATH:-}
  [ -e "$torch_nccl/lib/libnccl.so" ] || ln -sf libnccl.so.2 "$torch_nccl/lib/libnccl.so" 2>/dev/null || true
fi
note "NCCL from: ${torch_nccl:-system}"

setup=(-Dcuda=enabled "${nccl_opt[@]}" --buildtype=release)
# Meson (up to at least 1.0) runs nvcc without a depfile, so a kernel header change would not
# rebuild the kernels of a build-gpu kept from an earlier call: always recompile them.
rm -rf build-gpu/kernels/*.p
{
  if [ -d build-gpu ]; then meson setup --reconfigure build-gpu "${setup[@]}"; else meson setup build-gpu "${setup[@]}"; fi &&
    ninja -C build-gpu
} > "$out/build.log" 2>&1
if [ $? -ne 0 ]; then
  tail -n 40 "$out/build.log"
  note "build: FAILED (build.log)"
  exit 1
fi
grep -E "MoE CUDA backend|NCCL" "$out/build.log" | tail -n 2 | tee -a "$summary"
test_bin=build-gpu/tests/test-moe-gpu
perf_bin=build-gpu/perf/moefabric-moe-gpu-perf
if [ ! -x "$test_bin" ]; then note "build: no CUDA backend was built (see build.log)"; exit 1; fi

# The host-backend side of the comparison runs over libfabric shm. Fabric peers stage in pinned
# host memory with Debian's libfabric (no CUDA in it); the *-dev runs use the CUDA-enabled
# libfabric that tools/stage-libfabric-cuda.sh stages, whose shm registers GPU memory (FI_HMEM),
# with MOEFABRIC_MOE_STAGING=device: on one GPU (EP1, every peer this rank) no byte crosses the
# provider, so these runs check the kernels and the proxy with GPU staging; with two ranks shm
# must be refused (its CUDA copies run on the legacy stream; GPU staging needs NIC DMA).
fabric_env=(MOEFABRIC_PROVIDER=shm FI_SHM_DISABLE_CMA=0 MOEFABRIC_DEBUG=WARN MOEFABRIC_MOE_STAGING=host)
source tools/libfabric-cuda-env.sh "$out"
dev_env=()
if [ ${#lfc_env[@]} -gt 0 ]; then
  dev_env=(MOEFABRIC_PROVIDER=shm FI_SHM_DISABLE_CMA=0 MOEFABRIC_DEBUG=WARN MOEFABRIC_MOE_STAGING=device
           "${lfc_env[@]}")
else
  note "no .gpu-deps/libfabric-cuda: GPU-staging (-dev) runs skipped (tools/stage-libfabric-cuda.sh stages it)"
fi

if [[ $skip != *" test "* ]]; then
  echo "== gpu suite (full)"
  env "${fabric_env[@]}" timeout 300 "$test_bin" --modes nvlink > "$out/test-gpu.log" 2>&1
  rc=$?
  tail -n 20 "$out/test-gpu.log"
  note "gpu test, NVLink (CUDA vs host, graphs): rc=$rc $(grep -c '^  ok' "$out/test-gpu.log") ok lines, $(tail -n1 "$out/test-gpu.log")"
  meson test -C build-gpu --suite unit --num-processes 4 > "$out/test-unit.log" 2>&1
  note "unit suite on the GPU machine: $(grep -E '^(Ok|Fail|Skipped|Timeout):' "$out/test-unit.log" | tr -s ' ' | tr '\n' ' ')"
fi

if [[ $skip != *" fabric "* ]]; then
  echo "== gpu suite, fabric modes (FORCE_FABRIC=1; NODE_SIZE=1 with 2 GPUs) over shm"
  env "${fabric_env[@]}" MOEFABRIC_TIMEOUT_MS=20000 timeout 300 "$test_bin" --modes fabric,node1 \
    > "$out/test-gpu-fabric.log" 2>&1
  rc=$?
  tail -n 20 "$out/test-gpu-fabric.log"
  note "gpu test, fabric modes, host staging: rc=$rc $(grep -c '^  ok' "$out/test-gpu-fabric.log") ok lines, $(tail -n1 "$out/test-gpu-fabric.log")"
  if [ ${#dev_env[@]} -gt 0 ]; then
    env "${dev_env[@]}" MOEFABRIC_TIMEOUT_MS=20000 timeout 300 "$test_bin" --modes fabric,node1 \
      > "$out/test-gpu-fabric-dev.log" 2>&1
    rc=$?
    tail -n 20 "$out/test-gpu-fabric-dev.log"
    note "gpu test, fabric modes, GPU staging (FI_HMEM; EP1: no byte crosses shm): rc=$rc $(grep -c '^  ok' "$out/test-gpu-fabric-dev.log") ok lines, $(tail -n1 "$out/test-gpu-fabric-dev.log")"
  fi
fi

# One GPU: EP2 with both ranks on it (CUDA IPC inside one device, kernels time-sliced), so the
# two-rank protocol runs on every path; correctness only, no timings.
if [[ $skip != *" ep2-shared "* ]] && [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -eq 1 ]; then
  echo "== gpu suite, EP2 on one GPU (--ranks 2), all modes"
  env "${fabric_env[@]}" MOEFABRIC_TIMEOUT_MS=30000 timeout "${GPU_MOE_EP2_TIMEOUT:-300}" "$test_bin" \
    --ranks 2 ${GPU_MOE_EP2_ARGS:-} > "$out/test-gpu-ep2-shared.log" 2>&1
  rc=$?
  tail -n 30 "$out/test-gpu-ep2-shared.log"
  note "gpu test, EP2 sharing one GPU (all modes, host staging): rc=$rc $(grep -c '^  ok' "$out/test-gpu-ep2-shared.log") ok lines, $(tail -n1 "$out/test-gpu-ep2-shared.log")"
  if [ ${#dev_env[@]} -gt 0 ]; then
    # GPU staging is refused where bytes would cross shm (its CUDA copies run on the legacy
    # stream): init must fail at once on both ranks, naming why.
    env "${dev_env[@]}" MOEFABRIC_TIMEOUT_MS=30000 timeout 120 "$test_bin" --ranks 2 --modes fabric --quick \
      > "$out/test-gpu-ep2-shared-dev.log" 2>&1
    rc=$?
    tail -n 6 "$out/test-gpu-ep2-shared-dev.log"
    grep -q "NIC that writes GPU memory itself" "$out/test-gpu-ep2-shared-dev.log" && [ $rc -ne 0 ] && [ $rc -ne 124 ] && ok=PASS || ok=FAIL
    note "gpu test, EP2 over shm with MOEFABRIC_MOE_STAGING=device refused at init with the reason: rc=$rc, $ok"
  fi
fi

if [[ $skip != *" sanitize "* ]]; then
  if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck; do
      echo "== compute-sanitizer $tool (quick configuration)"
      env "${fabric_env[@]}" MOEFABRIC_TIMEOUT_MS=120000 timeout "${GPU_MOE_SANITIZE_TIMEOUT:-270}" compute-sanitizer --tool "$tool" --target-processes all \
        --error-exitcode 99 "$test_bin" --quick --modes nvlink,fabric ${GPU_MOE_SANITIZE_ARGS:-} \
        > "$out/sanitize-$tool.log" 2>&1
      rc=$?
      tail -n 8 "$out/sanitize-$tool.log"
      note "compute-sanitizer $tool: rc=$rc, $(grep -E '(ERROR|RACECHECK) SUMMARY' "$out/sanitize-$tool.log" | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
      if [ ${#dev_env[@]} -gt 0 ]; then
        env "${dev_env[@]}" MOEFABRIC_TIMEOUT_MS=120000 timeout "${GPU_MOE_SANITIZE_TIMEOUT:-270}" compute-sanitizer --tool "$tool" --target-processes all \
          --error-exitcode 99 "$test_bin" --quick --modes fabric ${GPU_MOE_SANITIZE_ARGS:-} \
          > "$out/sanitize-$tool-dev.log" 2>&1
        rc=$?
        tail -n 8 "$out/sanitize-$tool-dev.log"
        note "compute-sanitizer $tool, fabric with GPU staging: rc=$rc, $(grep -E '(ERROR|RACECHECK) SUMMARY' "$out/sanitize-$tool-dev.log" | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
      fi
    done
  else
    note "compute-sanitizer: not found on PATH"
  fi
fi

# Per-kernel times inside the graphs (Nsight Systems, when installed): where a call's time goes.
if [[ $skip != *" profile "* ]]; then
  nsys_bin=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -n 1)
  if [ -n "$nsys_bin" ]; then
    echo "== nsys: kernel times of moefabric-moe-gpu-perf (1 rank, fp8, T=1 and 128)"
    timeout 240 "$nsys_bin" profile -t cuda --cuda-graph-trace=node -o "$out/prof" -f true \
      "$perf_bin" -r 1 -d fp8 --tokens 1,128 -n 100 -w 10 --no-nccl > "$out/profile.log" 2>&1
    "$nsys_bin" stats --report cuda_gpu_kern_sum --format csv -o "$out/prof" "$out/prof.nsys-rep" >> "$out/profile.log" 2>&1
    note "nsys kernel summary (ns): $(ls "$out"/prof*kern_sum*.csv 2>/dev/null | head -n 1)"
    for f in "$out"/prof*kern_sum*.csv; do [ -f "$f" ] && cut -d, -f2-9 "$f" | tee -a "$summary"; done
  else
    note "nsys: not installed; profile step skipped"
  fi
fi

if [[ $skip != *" perf "* ]]; then
  ngpu=$(nvidia-smi -L | wc -l)
  ranks=$(( ngpu >= 2 ? 2 : 1 ))
  echo "== moefabric-moe-gpu-perf ($ranks ranks)"
  perf_args=("$@")
  [ ${#perf_args[@]} -eq 0 ] && perf_args=(--tokens 1,8,32,128,512,1024,4096 -n 1000)
  for dt in fp8 bf16; do
    timeout 300 "$perf_bin" -r "$ranks" -d "$dt" "${perf_args[@]}" -J "$out/perf-$dt.json" \
      > "$out/perf-$dt.log" 2>&1
    rc=$?
    note "perf $dt dispatch (rc=$rc):"
    grep -v '^# [EM]' "$out/perf-$dt.log" | grep -v 'NCCL INFO' | tee -a "$summary" | tail -n 0
  done
  note "targets (2xH200, T=128, fp8 dispatch / bf16 combine): dispatch p50 <= 12 us, combine p50 <= 26 us"
fi

if [[ $skip != *" perf-fabric "* ]]; then
  ngpu=$(nvidia-smi -L | wc -l)
  ranks=$(( ngpu >= 2 ? 2 : 1 ))
  # The floor under the proxy path: a GPU <-> host-thread round trip through pinned memory.
  if nvcc -O2 -std=c++20 -arch=sm_90 -I. -o "$out/gpu_host_rtt" tools/gpu_host_rtt.cu > "$out/gpu_host_rtt.log" 2>&1; then
    "$out/gpu_host_rtt" >> "$out/gpu_host_rtt.log" 2>&1
    grep "round trip" "$out/gpu_host_rtt.log" | tee -a "$summary"
  fi
  fab_t=${GPU_MOE_FABRIC_T:-1,8,32,128,512}
  for staging in host dev; do
    if [ $staging = dev ]; then
      [ ${#dev_env[@]} -gt 0 ] || continue
      senv=("${dev_env[@]}")
    else
      senv=("${fabric_env[@]}")
    fi
    echo "== moefabric-moe-gpu-perf --fabric ($ranks ranks, shm, staging $staging)"
    env "${senv[@]}" timeout 240 "$perf_bin" -r "$ranks" -d fp8 --fabric --no-nccl \
      --tokens "$fab_t" -n 300 -J "$out/perf-fabric-fp8-$staging.json" > "$out/perf-fabric-fp8-$staging.log" 2>&1
    rc=$?
    note "perf fp8, every peer through the fabric proxy over shm, staging in $staging memory (rc=$rc; post/cpost: proxy posting cost):"
    grep -v '^# [EM]' "$out/perf-fabric-fp8-$staging.log" | grep -v 'NCCL INFO' | tee -a "$summary" | tail -n 0
  done
  # Against the NVLink sweep of this call or an earlier one (same ranks), at T=128.
  nv=$out/perf-fp8.json
  [ -f "$nv" ] || nv=$(tar -xzOf "$final/gpu-moe-logs.tgz" ./perf-fp8.json > /tmp/moefabric-nv.json 2>/dev/null && echo /tmp/moefabric-nv.json)
  python3 - "${nv:-}" "$out"/perf-fabric-fp8-*.json <<'PY' | tee -a "$summary"
import json, sys
def rows(path):  # docs/perf-json.md: the rows under "results" (a bare list before moefabric-perf/1)
    d = json.load(open(path))
    return d["results"] if isinstance(d, dict) else d
try:
    nv = {x["tokens"]: x for x in rows(sys.argv[1])}[128]
except Exception:
    nv = None
for path in sys.argv[2:]:
    try:
        r = {x["tokens"]: x for x in rows(path)}[128]
    except Exception:
        print("%s: no T=128 row" % path)
        continue
    line = "fabric (%s) T=128: dispatch p50 %.1f us, combine p50 %.1f us, proxy post %.2f / %.2f us" % (
        path.rsplit("-", 1)[-1][:-5], r["dispatch_p50_us"], r["combine_p50_us"],
        r["proxy_post_p50_us"], r["proxy_combine_post_p50_us"])
    if nv:
        line += "; NVLink %.1f / %.1f us; ratio %.2fx / %.2fx (target <= 3x)" % (
            nv["dispatch_p50_us"], nv["combine_p50_us"], r["dispatch_p50_us"] / nv["dispatch_p50_us"],
            r["combine_p50_us"] / nv["combine_p50_us"])
    else:
        line += "; no NVLink fp8 sweep with T=128 to compare with"
    print(line)
PY
fi
