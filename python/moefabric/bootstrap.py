"""Bootstrapping a Communicator: from a torch.distributed process group, from the launcher's
environment (moefabric-run; torchrun's RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT; OpenMPI's
OMPI_COMM_WORLD_*), or from any allgather callable (Communicator.from_allgather)."""

import ctypes
import sys
import threading

from . import _lib
from .comm import Communicator, MoeConfig


def process_group_allgather(group=None):
    """(allgather(bytes) -> bytes, rank, nranks) over a torch.distributed process group; the
    bytes travel as a uint8 tensor on the group's device (CUDA for NCCL groups)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised (call init_process_group first)")
    rank, nranks = dist.get_rank(group), dist.get_world_size(group)
    backend = str(dist.get_backend(group)).lower()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def allgather(data):
        mine = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
        out = [torch.empty_like(mine) for _ in range(nranks)]
        dist.all_gather(out, mine, group=group)
        return b"".join(bytes(o.cpu().tolist()) for o in out)

    return allgather, rank, nranks


class EnvBootstrap:
    """The launcher's out-of-band channel in this process (one per process; see channel())."""

    def __init__(self):
        lib = _lib.bootstrap()
        h, r, n, lr = ctypes.c_void_p(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        err = ctypes.create_string_buffer(1024)
        rc = lib.moefabricBootstrapOpen(ctypes.byref(h), ctypes.byref(r), ctypes.byref(n), ctypes.byref(lr), err, 1024)
        if rc != 0:
            raise RuntimeError("moefabric bootstrap: " + err.value.decode(errors="replace"))
        self._h, self.rank, self.nranks = h, r.value, n.value
        self.local_rank = lr.value if lr.value >= 0 else None
        self._lock = threading.Lock()

    def allgather(self, data):
        """Every rank's `data` (same length everywhere), concatenated in rank order."""
        data = bytes(data)
        out = ctypes.create_string_buffer(len(data) * self.nranks)
        with self._lock:
            rc = _lib.bootstrap().moefabricBootstrapAllGather(data, out, len(data), self._h)
            if rc != 0:
                raise RuntimeError("moefabric bootstrap: " + self._error())
        return out.raw

    def _error(self):
        return (_lib.bootstrap().moefabricBootstrapLastError(self._h) or b"").decode(errors="replace")

    def communicator(self, config):
        """A Communicator over this channel; the C library calls the channel directly."""
        fn = ctypes.cast(_lib.bootstrap().moefabricBootstrapAllGather, ctypes.c_void_p)
        with self._lock:
            try:
                return Communicator._init(self.rank, self.nranks, config, fn, self._h)
            except _lib.MoeError as e:
                why = self._error()
                if why:
                    raise _lib.MoeError(e.call, e.code, e.text + " (bootstrap: " + why + ")") from None
                raise


_channel = None
_channel_lock = threading.Lock()


def channel():
    """This process's EnvBootstrap, opened on first use (rank 0 then starts the rendezvous)."""
    global _channel
    with _channel_lock:
        if _channel is None:
            _channel = EnvBootstrap()
        return _channel


def init(config=None, group=None, **kwargs):
    """A Communicator for this process's launch: over `group` or the initialised
    torch.distributed world when there is one, else over the launcher's environment
    (moefabric-run, torchrun, mpirun; docs/python.md). Collective."""
    config = config or MoeConfig(**kwargs)
    dist = sys.modules.get("torch.distributed")
    if group is not None or (dist is not None and dist.is_available() and dist.is_initialized()):
        return Communicator.from_process_group(group, config)
    return channel().communicator(config)
