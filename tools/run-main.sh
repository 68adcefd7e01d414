#!/usr/bin/env bash
# The main job on a fresh machine: build, then sweep the NCCL net plugin between two local
# processes over loopback libfabric (tcp bound to lo, then shm) against a raw-libfabric baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/deps.sh
[ -f build/build.ninja ] || meson setup build --buildtype=release >/dev/null
ninja -C build >/dev/null
max=${MAX_BYTES:-64M}
echo "== moefabric-net-perf: provider tcp on lo =="
MOEFABRIC_PROVIDER=tcp MOEFABRIC_TCP_IFACE=lo build/perf/moefabric-net-perf -e "$max" "$@"
echo
echo "== moefabric-net-perf: provider shm =="
MOEFABRIC_PROVIDER=shm build/perf/moefabric-net-perf -e "$max" "$@"
