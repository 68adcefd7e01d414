#!/usr/bin/env bash
# Installs what moefabric needs to build and test on Debian/Ubuntu (no-op when present).
set -euo pipefail
pkgs=(meson ninja-build g++ pkgconf libfabric-dev libfabric-bin libhwloc-dev hwloc catch2
      libcli11-dev nlohmann-json3-dev libibverbs-dev iproute2 clang-format)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "moefabric: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Python tests (tests/python) need numpy and pytest in the python3 on PATH: pip where it may
# install (a virtual environment, pyenv), else Debian's packages (a system python3 refuses pip).
if ! python3 -c 'import numpy, pytest' 2>/dev/null; then
  echo "moefabric: installing numpy and pytest for $(command -v python3 || echo python3)"
  if ! { command -v python3 >/dev/null && python3 -m pip install -q numpy pytest 2>/dev/null; }; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3 python3-numpy \
      python3-pytest >/dev/null
  fi
fi
