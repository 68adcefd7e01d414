"""moefabric: expert-parallel MoE dispatch/combine (the ncclMoe C API through ctypes) and the
NCCL net plugin over libfabric. docs/python.md is the guide; docs/moe-api.md the contract.

    import moefabric
    comm = moefabric.init(num_experts=64, topk=4, hidden=1024, max_tokens_per_rank=128)
    res = comm.dispatch(x, topk_idx, topk_weights)      # expert-major rows, per-expert counts
    y = comm.combine(expert_outputs)                     # weighted sum over top-k, bf16
"""

from ._lib import MoeError, library_path, nccl_plugin_path, version
from .adapter import ExpertTokensMetadata, MoefabricPrepareAndFinalize
from .bootstrap import EnvBootstrap, channel, init, process_group_allgather
from .comm import Communicator, DispatchResult, MoeConfig

__version__ = "0.1.0"

__all__ = [
    "Communicator",
    "DispatchResult",
    "EnvBootstrap",
    "ExpertTokensMetadata",
    "MoeConfig",
    "MoeError",
    "MoefabricPrepareAndFinalize",
    "channel",
    "init",
    "library_path",
    "nccl_plugin_path",
    "process_group_allgather",
    "version",
]
