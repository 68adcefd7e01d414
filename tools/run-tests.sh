#!/usr/bin/env bash
# The full CPU test suite: unit + fabric suites on a normal build, again under AddressSanitizer
# and UndefinedBehaviorSanitizer, and the threaded transport tests under ThreadSanitizer.
# GPU suites skip themselves (exit 77) here and run on the GPU machine (tools/gpu-run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/deps.sh
jobs=$(nproc)
run_suite() {  # dir, meson setup args...
  local dir=$1; shift
  [ -f "$dir/build.ninja" ] || meson setup "$dir" "$@" >/dev/null
  ninja -C "$dir" >/dev/null
  meson test -C "$dir" --print-errorlogs --num-processes "$jobs" --suite unit --suite fabric
}
echo "== build (debugoptimized) =="
run_suite build-test -Dcuda=auto
echo "== AddressSanitizer + UndefinedBehaviorSanitizer =="
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  run_suite build-asan -Dcuda=disabled -Db_sanitize=address,undefined -Db_lundef=false
echo "== ThreadSanitizer (transport and progress thread) =="
TSAN_OPTIONS="halt_on_error=1 suppressions=$PWD/tests/tsan.supp" \
  run_suite build-tsan -Dcuda=disabled -Db_sanitize=thread -Db_lundef=false
echo "all suites passed"
