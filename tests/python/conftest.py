"""Shared fixtures of the Python tests. tools/run-python-tests.sh BUILD_DIR runs them against a
build tree: MOEFABRIC_BUILD_DIR names it, MOEFABRIC_LIB_PATH finds its libraries, PYTHONPATH the
package sources (python/)."""

import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BUILD = pathlib.Path(os.environ.get("MOEFABRIC_BUILD_DIR", ROOT / "build-test")).resolve()
RANK_MAIN = str(HERE / "rank_main.py")


def tool(name):
    p = BUILD / "perf" / name
    if not p.exists():
        pytest.fail("%s not built in %s (run tools/run-python-tests.sh BUILD_DIR)" % (name, BUILD))
    return str(p)


def run_ranks(n, *args, timeout=180, env=None):
    """rank_main.py as n local ranks under moefabric-run; returns (rc, output)."""
    cmd = [tool("moefabric-run"), "-n", str(n), "-T", str(timeout), "--", sys.executable, RANK_MAIN, *args]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout + 30,
                       env={**os.environ, **(env or {})})
    return p.returncode, p.stdout


@pytest.fixture
def ranks():
    def go(n, *args, **kw):
        rc, out = run_ranks(n, *args, **kw)
        assert rc == 0, "ranks failed (rc %d):\n%s" % (rc, out)
        assert out.count(": ") >= n, out
        return out

    return go
