"""The TCP rendezvous on this host (no root needed): ranks started with torchrun's variables on
127.0.0.1, through the Python package's channel and through a C++ tool; a size mismatch and a
rank that leaves mid-allgather fail the others at once, naming the rank."""

import os
import subprocess
import sys
import time

from conftest import tool

WORKER = r"""
import os, sys, moefabric
ch = moefabric.channel()
mode = sys.argv[1]
if mode == "ok":
    got = ch.allgather(bytes([ch.rank]) * 3)
    assert got == b"".join(bytes([r]) * 3 for r in range(ch.nranks)), got
    got = ch.allgather(b"")
    print("rank %d ok" % ch.rank)
elif mode == "mismatch":
    ch.allgather(b"x" * (ch.rank + 1))
elif mode == "leave":
    if ch.rank == 1:
        os._exit(0)
    ch.allgather(b"abc")
"""


def launch(n, port, args, extra=None):
    procs = []
    for r in range(n):
        env = {**os.environ, "RANK": str(r), "WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "MOEFABRIC_BOOTSTRAP_TIMEOUT_S": "30", **(extra or {})}
        for v in ("MOEFABRIC_OOB_FD", "MOEFABRIC_RANK", "MOEFABRIC_NRANKS"):
            env.pop(v, None)
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=120)[0] for p in procs]
    return [p.returncode for p in procs], outs


def test_python_channel_three_ranks():
    rcs, outs = launch(3, 29710, [sys.executable, "-c", WORKER, "ok"])
    assert rcs == [0, 0, 0], outs
    assert all("ok" in o for o in outs)


def test_moe_perf_three_ranks_on_loopback():
    rcs, outs = launch(3, 29720, [tool("moefabric-moe-perf"), "-c", "1", "--tokens", "4", "--hidden", "256", "-E",
                                  "12", "-k", "2", "-n", "3", "-w", "1"],
                       {"MOEFABRIC_PROVIDER": "tcp", "MOEFABRIC_TCP_IFACE": "lo"})
    assert rcs == [0, 0, 0], outs
    assert "launched by moefabric-run, torchrun or mpirun" in outs[0]


def test_size_mismatch_is_named():
    rcs, outs = launch(2, 29730, [sys.executable, "-c", WORKER, "mismatch"])
    assert rcs[0] != 0 and rcs[1] != 0, outs
    assert "size mismatch: rank 0 gave 1 bytes, rank 1 gave 2" in outs[0], outs


def test_rank_leaving_mid_allgather_fails_the_others_at_once():
    t0 = time.monotonic()
    rcs, outs = launch(2, 29740, [sys.executable, "-c", WORKER, "leave"])
    assert rcs[0] != 0 and time.monotonic() - t0 < 20, outs  # not the 30 s timeout
    assert "rank 1" in outs[0] and "disconnected" in outs[0], outs


def test_bad_variables_are_refused():
    env = {**os.environ, "RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
    p = subprocess.run([tool("moefabric-moe-perf"), "--tokens", "1"], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60)
    assert p.returncode == 2 and 'RANK="2" is not a rank below 2 (torchrun launch)' in p.stdout, p.stdout
    env = {**os.environ, "OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_SIZE": "1"}
    for v in ("MASTER_ADDR", "MOEFABRIC_MASTER_ADDR", "RANK", "WORLD_SIZE"):
        env.pop(v, None)
    p = subprocess.run([tool("moefabric-net-perf")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=60)
    assert p.returncode == 2 and "set MOEFABRIC_MASTER_ADDR" in p.stdout, p.stdout
