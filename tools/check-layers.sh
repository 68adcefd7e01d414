#!/usr/bin/env bash
# The layers, checked: every #include "dir/..." of a source file names its own layer or one
# below it, and each product library carries only its layers.
#   common -> fabric -> topology -> plugin/net -> plugin/nccl
#                    \-> kernels (+ the protocol's pure layout header) -> collectives
# perf/, tests/ and tools/ may use everything. Usage (tests/meson.build runs it in suite unit):
#   tools/check-layers.sh [SOURCE_ROOT [libmoefabric.so libnccl-net-moefabric.so]]
set -uo pipefail
root=${1:-$(dirname "$0")/..}
cd "$root" || exit 2
allowed() {  # layer of a file -> the include prefixes it may use
  case "$1" in
    common/*) echo "common/" ;;
    fabric/*) echo "common/ fabric/" ;;
    topology/*) echo "common/ fabric/ topology/" ;;
    plugin/net/*) echo "common/ fabric/ plugin/net/" ;;
    plugin/nccl/*) echo "common/ fabric/ topology/ plugin/net/ plugin/nccl/" ;;
    kernels/*) echo "kernels/ collectives/layout.h" ;;
    collectives/*) echo "common/ fabric/ topology/ kernels/ collectives/ include/moefabric/" ;;
    include/*) echo "moefabric/" ;;
    *) echo "*" ;;
  esac
}
bad=0
while IFS= read -r f; do
  ok=$(allowed "$f")
  [ "$ok" = "*" ] && continue
  while IFS= read -r inc; do
    fine=0
    for p in $ok; do [[ "$inc" == "$p"* ]] && fine=1; done
    if [ $fine -eq 0 ]; then
      echo "layering: $f includes \"$inc\" (its layer may include: $ok)"
      bad=1
    fi
  done < <(grep -oE '^#include "[^"]+/[^"]+"' "$f" | sed -E 's/#include "(.*)"/\1/')
done < <(git ls-files 2>/dev/null | grep -E '^(common|fabric|topology|plugin|kernels|collectives|include)/.*\.(h|hpp|c|cpp|cu|cuh)$' ||
         find common fabric topology plugin kernels collectives include -type f \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' \))
# The libraries: libmoefabric carries no net-plugin protocol and no launcher; the plugin no
# launcher and no MoE code. (Symbols of the static layers, seen with nm in unstripped builds.)
if [ $# -ge 3 ]; then
  moe=$2 plugin=$3
  check_absent() {  # library, pattern, what
    local hit
    hit=$(nm -C "$1" 2>/dev/null | grep -E "$2" | head -n 1)
    if [ -n "$hit" ]; then
      echo "layering: $(basename "$1") carries $3 (${hit:0:120})"
      bad=1
    fi
  }
  if [ "$(nm -C "$moe" 2>/dev/null | grep -c 'moefabric::')" -gt 0 ]; then  # not stripped
    check_absent "$moe" 'moefabric::fabric::(Device|Net)::' "the NCCL net protocol (plugin/net)"
    check_absent "$moe" 'moefabric::(OobChannel|launch_)' "the launcher"
    check_absent "$plugin" 'moefabric::(OobChannel|launch_)' "the launcher"
    check_absent "$plugin" 'moefabric::moe::' "MoE code (collectives)"
  else
    echo "layering: libraries stripped, link check skipped"
  fi
fi
[ $bad -eq 0 ] && echo "layering: ok"
exit $bad
