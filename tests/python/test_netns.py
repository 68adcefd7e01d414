"""Launches across hosts, with two network namespaces as the two hosts (one rank in each, the tcp
provider over a veth pair): the perf tools and the Python package bootstrap from torchrun's
variables and from OpenMPI's, through the rendezvous rank 0 serves. Needs root and `ip netns`;
skips with the reason otherwise."""

import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import RANK_MAIN, tool

ID = os.getpid() % 100000
NS = ["mfpy%d-a" % ID, "mfpy%d-b" % ID]
IF = ["mfp%da" % ID, "mfp%db" % ID]
ADDR = ["10.79.0.1", "10.79.0.2"]


def _ip(*args, ns=None):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["ip", *args]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def hosts():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces and veth pairs)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 'ip' not found")
    made = []
    try:
        for ns in NS:
            r = _ip("netns", "add", ns)
            if r.returncode != 0:
                pytest.skip("cannot create network namespaces: " + r.stdout.strip())
            made.append(ns)
        r = _ip("link", "add", IF[0], "type", "veth", "peer", "name", IF[1])
        if r.returncode != 0:
            pytest.skip("cannot create a veth pair: " + r.stdout.strip())
        for i in range(2):
            assert _ip("link", "set", IF[i], "netns", NS[i]).returncode == 0
            assert _ip("addr", "add", ADDR[i] + "/24", "dev", IF[i], ns=NS[i]).returncode == 0
            assert _ip("link", "set", IF[i], "up", ns=NS[i]).returncode == 0
            assert _ip("link", "set", "lo", "up", ns=NS[i]).returncode == 0
        yield
    finally:
        for ns in made:
            _ip("netns", "del", ns)


def start(i, cmd, env, **kw):
    """Rank i's command on host i (its namespace), tcp on that host's veth."""
    full = {**os.environ, "MOEFABRIC_PROVIDER": "tcp", "MOEFABRIC_TCP_IFACE": IF[i], "MOEFABRIC_DEBUG": "WARN", **env}
    for v in ("MOEFABRIC_OOB_FD", "MOEFABRIC_RANK", "MOEFABRIC_NRANKS"):
        full.pop(v, None)
    return subprocess.Popen(["ip", "netns", "exec", NS[i], *cmd], env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def torchrun_env(rank, port):
    return {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": ADDR[0], "MASTER_PORT": str(port)}


def mpirun_env(rank, port):
    return {"OMPI_COMM_WORLD_RANK": str(rank), "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "1", "MOEFABRIC_MASTER_ADDR": ADDR[0], "MOEFABRIC_MASTER_PORT": str(port)}


def run_two(cmd, envs, timeout=150):
    procs = [start(i, cmd, envs[i]) for i in (1, 0)][::-1]  # rank 1 first: it must wait for rank 0
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("hung past %d s:\n%s" % (timeout, "\n".join(q.communicate()[0] for q in procs)))
    text = "\n".join("--- rank %d (%s)\n%s" % (i, NS[i], o) for i, o in enumerate(outs))
    assert [p.returncode for p in procs] == [0, 0], text
    return outs


def test_moe_perf_under_torchrun_variables(hosts):
    outs = run_two([tool("moefabric-moe-perf"), "-c", "1", "--tokens", "1,32", "--hidden", "512", "-E", "16",
                    "-k", "4", "-n", "5", "-w", "1"], [torchrun_env(r, 29610) for r in (0, 1)])
    assert "launched by moefabric-run, torchrun or mpirun" in outs[0], outs[0]
    assert "# done" not in outs[1]  # rank 0 reports


def test_net_perf_under_openmpi_variables(hosts):
    outs = run_two([tool("moefabric-net-perf"), "-b", "8", "-e", "64K", "-f", "8", "-n", "20", "-w", "2", "-c", "1",
                    "--no-raw"], [mpirun_env(r, 29620) for r in (0, 1)])
    assert "from the launcher's environment" in outs[0] and "Out of bounds values : 0 OK" in outs[0], outs[0]


def test_python_package_under_torchrun_variables(hosts):
    run_two([sys.executable, RANK_MAIN, "dispatch", "--dtype", "fp8", "--tokens", "16,3"],
            [torchrun_env(r, 29630) for r in (0, 1)])


def test_python_adapter_layer_under_openmpi_variables(hosts):
    run_two([sys.executable, RANK_MAIN, "layer", "--experts", "8", "--topk", "2", "--hidden", "128", "--tokens", "12"],
            [mpirun_env(r, 29640) for r in (0, 1)])


def test_missing_rank_is_named_within_the_timeout(hosts):
    env = {**torchrun_env(0, 29650), "MOEFABRIC_BOOTSTRAP_TIMEOUT_S": "3"}
    t0 = time.monotonic()
    p = start(0, [tool("moefabric-moe-perf"), "--tokens", "1", "-n", "1", "-w", "0"], env)
    out = p.communicate(timeout=60)[0]
    assert p.returncode != 0 and time.monotonic() - t0 < 30, out
    assert "rank 1 of 2 did not connect" in out and "within 3 s" in out, out


def test_rank_0_unreachable_is_reported(hosts):
    env = {**torchrun_env(1, 29660), "MOEFABRIC_BOOTSTRAP_TIMEOUT_S": "2"}
    p = start(1, [sys.executable, RANK_MAIN, "errors"], env)
    out = p.communicate(timeout=60)[0]
    assert p.returncode != 0, out
    assert "cannot connect to rank 0's rendezvous at %s:29661" % ADDR[0] in out, out


def test_stray_connections_do_not_break_the_job(hosts):
    """Junk and a forged rank on rank 0's port are rejected; the real ranks still run."""
    envs = [torchrun_env(r, 29670) for r in (0, 1)]
    p0 = start(0, [sys.executable, RANK_MAIN, "errors"], {**envs[0], "MOEFABRIC_BOOTSTRAP_TIMEOUT_S": "60"})
    junk = ("import socket,struct,time\n"
            "for payload in (b'GET / HTTP/1.0\\r\\n\\r\\n', struct.pack('<IIii', 0x4d46525a, 1, 7, 2)):\n"
            "    for _ in range(100):\n"
            "        try:\n"
            "            s = socket.create_connection(('%s', 29671), timeout=2); break\n"
            "        except OSError: time.sleep(0.05)\n"
            "    s.sendall(payload); print(len(s.recv(4096)) > 0 or 'closed'); s.close()\n" % ADDR[0])
    j = subprocess.run(["ip", "netns", "exec", NS[1], sys.executable, "-c", junk], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60)
    assert j.returncode == 0, j.stdout
    p1 = start(1, [sys.executable, RANK_MAIN, "errors"], envs[1])
    outs = [p.communicate(timeout=120)[0] for p in (p0, p1)]
    assert [p0.returncode, p1.returncode] == [0, 0], "\n".join(outs)
    assert "rank 7 is out of range" in outs[0], outs[0]
