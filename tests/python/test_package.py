"""The package itself: libraries found, version, config errors, a one-rank round trip in this
process through a Python allgather callable, and that a failing callable surfaces."""

import ctypes
import os

import numpy as np
import pytest

import moefabric
from moefabric import numerics as num


def test_libraries_and_version():
    assert os.path.isfile(moefabric.library_path())
    plugin = moefabric.nccl_plugin_path()
    assert plugin.endswith("libnccl-net-moefabric.so") and os.path.isfile(plugin)
    lib = ctypes.CDLL(plugin)
    assert hasattr(lib, "ncclNetPlugin_v8")  # what NCCL looks up
    assert moefabric.version() == moefabric.__version__


def one_rank(**cfg):
    return moefabric.Communicator.from_allgather(lambda b: b, 0, 1, backend="host", **cfg)


def test_one_rank_round_trip_in_process():
    with one_rank(num_experts=4, topk=2, hidden=128, max_tokens_per_rank=8) as comm:
        assert (comm.first_expert, comm.num_local_experts) == (0, 4)
        assert comm.recv_capacity >= 16
        x = num.bf16_from_f32(np.arange(8 * 128, dtype=np.float32).reshape(8, 128) / 100)
        idx = np.array([[t % 4, (t + 1) % 4] for t in range(8)], np.int32)
        w = np.full((8, 2), 0.5, np.float32)
        res = comm.dispatch(x, idx, w)
        assert res.counts.tolist() == [4, 4, 4, 4]
        views = res.expert_views()
        assert [t for t in range(8) if idx[t, 0] == 1 or idx[t, 1] == 1] == [0, 1, 4, 5]
        assert np.array_equal(views[1][0], x[[0, 1, 4, 5]])
        y = comm.combine(res.x)  # identity experts: y = bf16(0.5*x + 0.5*x) = x
        assert np.array_equal(y, x)


def test_config_errors_are_clear():
    with pytest.raises(moefabric.MoeError) as e:
        one_rank(num_experts=4, topk=2, hidden=100, max_tokens_per_rank=8)
    assert e.value.name == "ncclInvalidArgument" and "hidden" in str(e.value)
    with pytest.raises(ValueError, match="dispatch_dtype"):
        one_rank(num_experts=4, topk=2, hidden=128, max_tokens_per_rank=8, dispatch_dtype="fp16")


def test_allgather_callable_failure_surfaces():
    def broken(_):
        raise ConnectionError("peer 3 went away")

    with pytest.raises(moefabric.MoeError) as e:
        moefabric.Communicator.from_allgather(broken, 0, 1, backend="host", num_experts=4, topk=2, hidden=128,
                                              max_tokens_per_rank=8)
    assert isinstance(e.value.__cause__, ConnectionError)


def test_numerics_round_trip():
    x = np.array([0.0, 1.0, -2.5, 448.0, 1000.0, 1e-3, 2.0**-10], np.float32)  # 2^-10: a tie, to even (0)
    assert num.f32_from_fp8(num.fp8_from_f32(x)).tolist() == [0.0, 1.0, -2.5, 448.0, 448.0, 2.0**-9, 0.0]
    assert num.f32_from_bf16(num.bf16_from_f32(np.float32([1.00390625, 1.01171875]))).tolist() == [1.0, 1.015625]
    # fmaf: 1 + 2^-24 * (1 + 2^-23) is above the halfway point: fmaf rounds up, a*b then + does not.
    a, b = np.float32([2.0**-24]), np.float32([1 + 2.0**-23])
    assert num.fma_f32(a, b, np.float32([1.0]))[0] == np.nextafter(np.float32(1), np.float32(2))


def test_without_a_launcher_init_says_so(monkeypatch):
    for v in ("MOEFABRIC_RANK", "MOEFABRIC_NRANKS", "MOEFABRIC_OOB_FD", "RANK", "WORLD_SIZE",
              "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(RuntimeError, match="no launcher in the environment"):
        moefabric.EnvBootstrap()
