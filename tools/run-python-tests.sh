#!/usr/bin/env bash
# The Python tests (tests/python, pytest) against a build tree: the package from python/, its
# libraries from the build. tools/run-tests.sh runs it on the normal build; the GPU tests skip
# themselves (reason printed) without a GPU and torch.
# Usage: tools/run-python-tests.sh [BUILD_DIR] [pytest args...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build-test}" && pwd)
shift || true
export MOEFABRIC_BUILD_DIR=$build
export MOEFABRIC_LIB_PATH=$build/collectives:$build/plugin/nccl:$build/python
export PYTHONPATH=$root/python${PYTHONPATH:+:$PYTHONPATH}
export MOEFABRIC_PROVIDER=${MOEFABRIC_PROVIDER:-tcp} MOEFABRIC_TCP_IFACE=${MOEFABRIC_TCP_IFACE:-lo}
export MOEFABRIC_DEBUG=${MOEFABRIC_DEBUG:-WARN} MOEFABRIC_TIMEOUT_MS=${MOEFABRIC_TIMEOUT_MS:-30000}
cd "$root"
exec python3 -m pytest tests/python -ra -p no:cacheprovider "$@"
