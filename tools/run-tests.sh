#!/usr/bin/env bash
# The full CPU test suite: unit + fabric suites on a normal build, the unit suite on the release
# build the main job uses, unit + fabric again under AddressSanitizer and
# UndefinedBehaviorSanitizer, and the threaded transport tests under ThreadSanitizer.
# The gpu suite runs too and skips itself (exit 77, reason printed) without a GPU; on the GPU
# machine tools/gpu-moe.sh and tools/gpu-run.sh run it.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/deps.sh
jobs=$(nproc)
passed=0
run_suite() {  # dir, "suites", meson setup args...
  local dir=$1 suites=$2; shift 2
  # A kept dir gets this suite's options again: a dir set up earlier with others (say a
  # debugoptimized "build") must not hide what a fresh CI machine compiles.
  if [ -f "$dir/build.ninja" ]; then
    meson configure "$dir" "$@" > "$dir.setup.log" 2>&1 || { cat "$dir.setup.log"; return 1; }
  else
    meson setup "$dir" "$@" > "$dir.setup.log" 2>&1 || { cat "$dir.setup.log"; return 1; }
  fi
  ninja -C "$dir" > "$dir.build.log" 2>&1 || { grep -E -A5 'error|FAILED' "$dir.build.log" | head -n 60; return 1; }
  local args=()
  for s in $suites; do args+=(--suite "$s"); done
  meson test -C "$dir" --print-errorlogs --num-processes "$jobs" "${args[@]}" | tee "$dir.test.log"
  local n
  n=$(awk '/^Ok:/ {print $2}' "$dir.test.log")
  passed=$((passed + ${n:-0}))
}
echo "== build (debugoptimized) =="
run_suite build-test "unit fabric gpu" -Dcuda=auto
grep -h '^SKIP:' build-test/meson-logs/testlog.txt | sed 's/^/gpu suite: /' || true
echo "== Python package (tests/python, pytest, on that build) =="
# Each pytest test counts; skips (the GPU tests without a GPU) are listed with their reason.
if ! tools/run-python-tests.sh build-test -q 2>&1 | tee build-test.python.log; then
  echo "Python tests failed"
  exit 1
fi
n=$(tail -n 1 build-test.python.log | sed -nE 's/^=* *([0-9]+) passed.*/\1/p')
passed=$((passed + ${n:-0}))
echo "== release build (what tools/run-main.sh runs: -O3 warnings are errors too) =="
run_suite build "unit" -Dbuildtype=release -Dcuda=auto
echo "== AddressSanitizer + UndefinedBehaviorSanitizer =="
# Leak checking on the unit tier. The fabric tier dlopens/dlcloses the plugin and loads
# libfabric's provider libraries (psm2, verbs), whose load-time allocations LeakSanitizer cannot
# attribute; there, leaks are caught by the soak test's registration/comm/RSS counters instead.
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  run_suite build-asan "unit" -Dcuda=disabled -Db_sanitize=address,undefined -Db_lundef=false
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
  run_suite build-asan "fabric" -Dcuda=disabled -Db_sanitize=address,undefined -Db_lundef=false
echo "== ThreadSanitizer (transport + background progress thread: 10^5-message soak) =="
TSAN_OPTIONS="halt_on_error=1 suppressions=$PWD/tests/tsan.supp" \
  run_suite build-tsan "threads" -Dcuda=disabled -Db_sanitize=thread -Db_lundef=false
echo "all suites passed"
echo "$passed passed, 0 failed"
