#!/usr/bin/env bash
# moefabric against DeepEP V1, UCCL-EP and NCCL all_to_all on one GPU machine, in one call
# (docs/peers.md). Nothing of the peers is in this repository: they come carried in .gpu-peers
# (ignored by git) and are installed or built here, under /tmp, at run time:
#   .gpu-peers/*.whl          the uccl wheel and what it needs that the machine's image lacks,
#                             ninja (torch's extension builds), installed into /tmp/site
#   .gpu-peers/uccl-ep-py.tar.gz   UCCL-EP's Python Buffer (ep/bench/buffer.py, utils.py) as the
#                             package uccl_ep_py in /tmp/site
#   .gpu-peers/deepep.tar.gz  DeepEP's source (V1), built for sm_90 against the image's
#                             nvidia-nvshmem-cu13 package, in the background while the runs that
#                             do not need it go first
# Ours: the package from python/ with the libraries of .gpu-prebuilt (tools/gpu-prebuilt.sh
# --stage), .gpu-deps for libfabric/hwloc. One torchrun launch per group of systems, one process
# per GPU, each bounded; then ours with the machine split into two nodes (MOEFABRIC_NODE_SIZE).
# The merged table goes to $OUT/peers.txt, the JSON and logs next to it.
#   tools/gpu-peers.sh [budget seconds, default 560] [extra perf/peers.py options...]
# PEERS_TOKENS (default 1,128,512,4096), PEERS_DTYPE (fp8), PEERS_ITERS (200), PEERS_WARMUP (20).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
budget=${1:-560}
shift || true
start=$SECONDS
out=${OUT:-/tmp/moefabric-peers-out}
mkdir -p "$out"
site=/tmp/site
# Multicast over NVLink stays off on these machines (also in every child's environment).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
[ -f .gpu-deps/env.sh ] && source .gpu-deps/env.sh
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH=$site/bin:$CUDA_HOME/bin:$PATH
torch_nccl=$(python3 -c 'import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])' 2>/dev/null || true)
export LD_LIBRARY_PATH=${torch_nccl:+$torch_nccl/lib:}$CUDA_HOME/lib64:${LD_LIBRARY_PATH:-}
pb=$root/.gpu-prebuilt
export MOEFABRIC_LIB_PATH=$pb/collectives:$pb/plugin/nccl:$pb/python
export PYTHONPATH=$root/python:$site${PYTHONPATH:+:$PYTHONPATH}
export MOEFABRIC_DEBUG=${MOEFABRIC_DEBUG:-WARN} MOEFABRIC_TIMEOUT_MS=${MOEFABRIC_TIMEOUT_MS:-60000}
ngpu=$(nvidia-smi -L | wc -l)
nvidia-smi -L | tee "$out/gpus.txt"
nvidia-smi topo -m > "$out/nvidia-smi-topo.txt" 2>&1
echo "ours built from: $(head -n 1 "$pb/COMMIT" 2>/dev/null || echo '?'); peers: $(tr '\n' ' ' < .gpu-peers/SOURCES.txt 2>/dev/null)" \
  | tee "$out/versions.txt"
python3 -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "NCCL", torch.cuda.nccl.version())' \
  | tee -a "$out/versions.txt"
left() { echo $((budget - (SECONDS - start))); }

# 1. The carried wheels and UCCL-EP's Python Buffer.
rm -rf "$site" && mkdir -p "$site"
if ls .gpu-peers/*.whl > /dev/null 2>&1; then
  pipi=(python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site")
  if ! "${pipi[@]}" .gpu-peers/*.whl > "$out/pip.log" 2>&1; then
    # One wheel this machine cannot take fails them all: then each on its own.
    for w in .gpu-peers/*.whl; do
      "${pipi[@]}" "$w" >> "$out/pip.log" 2>&1 || echo "pip: $(basename "$w") not installed (pip.log)"
    done
  fi
else
  echo "no .gpu-peers/*.whl: UCCL-EP will be unavailable"
fi
if [ -f .gpu-peers/uccl-ep-py.tar.gz ]; then
  mkdir -p "$site/uccl_ep_py" && tar -xzf .gpu-peers/uccl-ep-py.tar.gz -C "$site/uccl_ep_py" --strip-components=3 &&
    touch "$site/uccl_ep_py/__init__.py"
fi

# 2. DeepEP V1, built in the background (sm_90 only) against the image's NVSHMEM package.
deepep=/tmp/deepep-build
deepep_pid=
if [ -f .gpu-peers/deepep.tar.gz ]; then
  rm -rf "$deepep" && mkdir -p "$deepep" && tar -xzf .gpu-peers/deepep.tar.gz -C "$deepep"
  nvshmem=$(python3 -c 'import nvidia.nvshmem as m; print(list(m.__path__)[0])' 2>/dev/null || true)
  set -m  # the build gets its own process group (stopped as a whole if it overruns)
  (
    set -e
    [ -n "$nvshmem" ] || { echo "no nvidia.nvshmem package in this python"; exit 3; }
    # The wheel ships libnvshmem_host.so.N only: a directory of links adds the unversioned name.
    nd=/tmp/nvshmem-dir && rm -rf $nd && mkdir -p $nd/lib && ln -s "$nvshmem/include" $nd/include
    for f in "$nvshmem"/lib/*; do ln -s "$f" $nd/lib/; done
    [ -e $nd/lib/libnvshmem_host.so ] || ln -s "$(ls "$nvshmem"/lib/libnvshmem_host.so.* | head -n 1)" $nd/lib/libnvshmem_host.so
    [ -e $nd/lib/libnvshmem_device.a ] || { echo "no libnvshmem_device.a in $nvshmem/lib"; ls "$nvshmem/lib"; exit 3; }
    cd "$deepep/deepep"
    # CUDA 13 keeps libcu++ under include/cccl (NVSHMEM's headers include <cuda/std/...>); -lcuda
    # links against the toolkit's stub when the driver's unversioned libcuda.so is absent.
    export NVSHMEM_DIR=$nd TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 CPATH=$CUDA_HOME/include/cccl${CPATH:+:$CPATH} \
      LIBRARY_PATH=${LIBRARY_PATH:+$LIBRARY_PATH:}$CUDA_HOME/lib64/stubs
    echo "NVSHMEM from $nvshmem: $(ls "$nvshmem/lib" | tr '\n' ' ')"
    nice -n 10 python3 setup.py build_ext --inplace
  ) > "$out/deepep-build.log" 2>&1 &
  deepep_pid=$!
  set +m
  echo "== DeepEP build started in the background (log: deepep-build.log)"
else
  echo "no .gpu-peers/deepep.tar.gz: DeepEP will be unavailable"
fi

tokens=${PEERS_TOKENS:-1,128,512,4096}
common=(--tokens "$tokens" -d "${PEERS_DTYPE:-fp8}" -n "${PEERS_ITERS:-200}" -w "${PEERS_WARMUP:-20}" "$@")
port=29600
launch() {  # label, seconds, extra env (VAR=value ...) --, peers.py options...
  local label=$1 want=$2; shift 2
  local envs=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  local l; l=$(left)
  [ "$want" -gt $((l - 5)) ] && want=$((l - 5))
  if [ "$want" -lt 20 ]; then echo "== $label: skipped, budget spent" | tee -a "$out/runs.txt"; return; fi
  port=$((port + 7))
  echo "== $label (limit ${want}s, $(( SECONDS - start ))s in)" | tee -a "$out/runs.txt"
  env "${envs[@]}" timeout -k 10 "$want" torchrun --nproc-per-node "$ngpu" --master-port $port perf/peers.py \
    "${common[@]}" -J "$out/peers-$label.json" "$@" > "$out/peers-$label.log" 2>&1
  local rc=$?
  grep -E '^# [a-z]|^ ' "$out/peers-$label.log" | grep -v '^#    T' | tail -n 40
  echo "rc=$rc" | tee -a "$out/runs.txt"
}

# 3. NCCL's all_to_all first (CUDA-graph replays: the build's CPU load hardly reaches them).
launch nccl 90 -- --systems nccl-a2a
# 4. The rest wait for the build: none of their timings share the CPUs with nvcc.
if [ -n "$deepep_pid" ]; then
  l=$(left); w=$((l - 200)); [ $w -lt 10 ] && w=10
  waited=0
  while kill -0 "$deepep_pid" 2> /dev/null && [ $waited -lt $w ]; do sleep 2; waited=$((waited + 2)); done
  if kill -0 "$deepep_pid" 2> /dev/null; then
    echo "== DeepEP build still running after ${waited}s of waiting: stopped, DeepEP unavailable"
    kill -- "-$deepep_pid" 2> /dev/null
  fi
  wait "$deepep_pid"; brc=$?
  echo "== DeepEP build: rc=$brc at $((SECONDS - start))s"; tail -n 3 "$out/deepep-build.log"
  [ $brc -eq 0 ] && export PYTHONPATH=$deepep/deepep:$PYTHONPATH
fi
launch ours-uccl 150 -- --systems ours,ours-eager,uccl-ll,uccl-normal
launch deepep 150 -- --systems deepep-ll,deepep-normal
if [ "$ngpu" -ge 2 ]; then
  half=$((ngpu / 2))
  launch ours-node$half 90 MOEFABRIC_PROVIDER="${MOEFABRIC_PROVIDER:-shm}" FI_SHM_DISABLE_CMA=0 -- \
    --systems ours --node-size $half
fi

# 5. One table.
jsons=$(ls "$out"/peers-*.json 2> /dev/null)
if [ -n "$jsons" ]; then
  # shellcheck disable=SC2086
  python3 perf/peers.py --merge $jsons | tee "$out/peers.txt"
fi
echo "done in $((SECONDS - start)) s"
