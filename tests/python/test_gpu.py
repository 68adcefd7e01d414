"""torch CUDA tensors through the CUDA backend: 1 rank in this process and 2 ranks sharing the
GPU, bit-exact against the reference; CUDA graph capture and replay; the adapter's MoE layer
against the whole layer. Skipped, with the reason, without torch, a GPU, or a CUDA build."""

import subprocess
import sys

import pytest

from conftest import RANK_MAIN, run_ranks


def _gpu_reason():
    try:
        import torch
    except ImportError:
        return "torch is not installed (the GPU tests need torch with CUDA)"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    probe = subprocess.run([sys.executable, RANK_MAIN, "dispatch", "--device", "cuda", "--tokens", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
                           env={**__import__("os").environ, "RANK": "0", "WORLD_SIZE": "1", "MASTER_PORT": "29690"})
    if "no CUDA backend" in probe.stdout or "without CUDA" in probe.stdout:
        return "libmoefabric was built without the CUDA backend"
    return None


_reason = _gpu_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_dispatch_combine_torch(n, dtype):
    rc, out = run_ranks(n, "dispatch", "--device", "cuda", "--dtype", dtype, "--align", "4", "--tokens", "32,0,9,32")
    assert rc == 0, out


@pytest.mark.parametrize("n", [1, 2])
def test_split_halves_torch(n):
    rc, out = run_ranks(n, "dispatch", "--device", "cuda", "--split", "--tokens", "16,5")
    assert rc == 0, out


@pytest.mark.parametrize("n", [1, 2])
def test_graph_capture_and_replay(n):
    rc, out = run_ranks(n, "graph", "--device", "cuda", "--tokens", "24")
    assert rc == 0, out


@pytest.mark.parametrize("n,dtype", [(1, "bf16"), (2, "bf16"), (2, "fp8")])
def test_adapter_moe_layer_torch(n, dtype):
    rc, out = run_ranks(n, "layer", "--device", "cuda", "--dtype", dtype, "--experts", "8", "--topk", "2",
                        "--hidden", "128", "--tokens", "16,5")
    assert rc == 0, out
