#!/bin/bash
# Installed tools find their libraries without LD_LIBRARY_PATH: `meson install` into a scratch
# DESTDIR, then ldd must resolve libmoefabric next to the installed tool (install_rpath
# $ORIGIN/../<libdir>), and the installed moefabric-moe-perf must start (--version).
# Usage: check_install.sh MESON BUILD_DIR
set -u
meson=$1 build=$2
dest=$(mktemp -d /tmp/moefabric-install.XXXXXX)
trap 'rm -rf "$dest"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
"$meson" install -C "$build" --destdir "$dest" --no-rebuild --quiet >"$dest.log" 2>&1 ||
  { cat "$dest.log"; rm -f "$dest.log"; fail "meson install"; }
rm -f "$dest.log"
tool=$(find "$dest" -type f -name moefabric-moe-perf | head -n 1)
[ -n "$tool" ] || fail "moefabric-moe-perf not installed"
lib=$(env -u LD_LIBRARY_PATH ldd "$tool" | grep 'libmoefabric\.so')
echo "$tool: $lib"
[[ $lib == *"=> $dest/"* ]] || fail "libmoefabric is not resolved to the installed copy: $lib"
readelf -d "$tool" | grep -E 'RPATH|RUNPATH'
env -u LD_LIBRARY_PATH "$tool" --version || fail "the installed tool does not start"
for t in "$(dirname "$tool")"/moefabric-*; do
  missing=$(env -u LD_LIBRARY_PATH ldd "$t" | grep 'not found')
  [ -z "$missing" ] || fail "$(basename "$t"): $missing"
done
echo "installed tools resolve their libraries"
