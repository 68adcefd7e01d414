#!/usr/bin/env bash
# Every tracked C, C++ and CUDA source is formatted as .clang-format says (suite unit).
#   tools/check-format.sh [SOURCE_ROOT]     fix with: git ls-files '*.cpp' '*.h' '*.cu' '*.cuh' '*.c' | xargs clang-format -i
set -uo pipefail
cd "${1:-$(dirname "$0")/..}" || exit 2
fmt=$(command -v clang-format || command -v clang-format-14 || true)
if [ -z "$fmt" ]; then
  echo "clang-format not installed (tools/deps.sh installs it): format not checked"
  exit 77
fi
files=$(git ls-files '*.cpp' '*.h' '*.cu' '*.cuh' '*.c' 2>/dev/null)
[ -n "$files" ] || { echo "not a git checkout: format not checked"; exit 77; }
# shellcheck disable=SC2086
if ! out=$("$fmt" --style=file --dry-run --Werror $files 2>&1); then
  echo "$out" | grep -E '^[^ ].*(warning|error):' | sed -E 's/: (warning|error):.*//' | sort -u | head -n 40
  echo "format: the files above differ from .clang-format ($($fmt --version))"
  exit 1
fi
echo "format: ok ($(echo "$files" | wc -l) files, $($fmt --version | head -n 1))"
