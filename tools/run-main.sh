#!/usr/bin/env bash
# The main job on a fresh machine: build, then
#  1. a 4-rank ncclMoe dispatch/combine sweep on the host backend over loopback libfabric (tcp on
#     lo), results checked against the reference, launched with moefabric-run;
#  2. the NCCL net plugin swept between two local processes (tcp on lo, then shm) against a
#     raw-libfabric baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/deps.sh
# A kept build dir is put back to the release options this job is measured with.
if [ -f build/build.ninja ]; then
  meson configure build -Dbuildtype=release -Dcuda=auto > build-setup.log 2>&1
else
  meson setup build -Dbuildtype=release -Dcuda=auto > build-setup.log 2>&1
fi || { tail -n 30 build-setup.log; echo "run-main: meson setup failed (log: build-setup.log)"; exit 1; }
ninja -C build > build.log 2>&1 \
  || { grep -E -A12 'FAILED|error' build.log | head -n 60; echo "run-main: build failed (log: build.log)"; exit 1; }
max=${MAX_BYTES:-64M}
echo "== moefabric-moe-perf: 4 ranks, host backend, provider tcp on lo =="
MOEFABRIC_PROVIDER=tcp MOEFABRIC_TCP_IFACE=lo build/perf/moefabric-run -n 4 -- \
  build/perf/moefabric-moe-perf -c 1 --tokens 1,8,32,128 --hidden 2048 -k 8 -E 64 -d fp8,bf16 -n 50
echo
echo "== moefabric-net-perf: provider tcp on lo =="
MOEFABRIC_PROVIDER=tcp MOEFABRIC_TCP_IFACE=lo build/perf/moefabric-net-perf -e "$max" "$@"
echo
echo "== moefabric-net-perf: provider shm =="
MOEFABRIC_PROVIDER=shm build/perf/moefabric-net-perf -e "$max" "$@"
