"""2-4 ranks as processes (moefabric-run), host backend on numpy arrays, bit-exact against the
reference in moe_ref.py; the adapter's MoE layer against the whole layer."""

import pytest


@pytest.mark.parametrize("n", [2, 3, 4])
def test_dispatch_combine_bf16(ranks, n):
    ranks(n, "dispatch", "--tokens", "24,0,7,24,13")


@pytest.mark.parametrize("split", [False, True])
def test_dispatch_combine_fp8(ranks, split):
    ranks(3, "dispatch", "--dtype", "fp8", "--align", "4", *(["--split"] if split else []))


def test_python_allgather_callable(ranks):
    ranks(2, "dispatch", "--via", "python-callable", "--tokens", "9,16")


def test_errors(ranks):
    ranks(2, "errors")


@pytest.mark.parametrize("n,dtype", [(2, "bf16"), (4, "fp8")])
def test_adapter_moe_layer(ranks, n, dtype):
    ranks(n, "layer", "--dtype", dtype, "--experts", "8", "--topk", "2", "--hidden", "128", "--tokens", "16,5",
          "--align", "8" if dtype == "fp8" else "1")
