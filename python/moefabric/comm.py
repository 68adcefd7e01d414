"""The communicator: ncclMoe dispatch/combine on numpy arrays (host backend) and torch tensors
(CUDA tensors: CUDA backend, on the current stream; CPU tensors: host backend)."""

import ctypes
import dataclasses
import sys

from . import _arrays as arr
from . import _lib


@dataclasses.dataclass
class MoeConfig:
    """ncclMoeConfig_t. None leaves a field to the library's default (docs/moe-api.md)."""

    num_experts: int
    topk: int
    hidden: int
    max_tokens_per_rank: int
    dispatch_dtype: str = "bf16"  # "bf16" or "fp8" (e4m3, with one fp32 scale per scale_block)
    scale_block: int = None
    expert_alignment: int = None
    max_private_tokens: int = None
    backend: str = "auto"  # "auto", "host" or "cuda"
    timeout_ms: int = None
    combine_mode: str = "pair"  # "pair": a row per (token, expert); "rank": pre-reduced per (token, rank)

    def to_c(self):
        c = _lib.Config.initializer()
        c.numExperts, c.numTopk, c.hidden = self.num_experts, self.topk, self.hidden
        c.maxTokensPerRank = self.max_tokens_per_rank
        if self.dispatch_dtype not in ("bf16", "fp8"):
            raise ValueError('dispatch_dtype must be "bf16" or "fp8", not %r' % (self.dispatch_dtype,))
        c.dispatchType = _lib.NCCL_FLOAT8E4M3 if self.dispatch_dtype == "fp8" else _lib.NCCL_BFLOAT16
        c.combineType = _lib.NCCL_BFLOAT16
        for field, name in (
            ("scale_block", "scaleBlock"),
            ("expert_alignment", "expertAlignment"),
            ("max_private_tokens", "maxPrivateTokens"),
            ("timeout_ms", "timeoutMs"),
        ):
            if getattr(self, field) is not None:
                setattr(c, name, int(getattr(self, field)))
        c.backend = _lib.BACKENDS[resolve_backend(self.backend)]
        if self.combine_mode not in _lib.COMBINE_MODES:
            raise ValueError('combine_mode must be "pair" or "rank", not %r' % (self.combine_mode,))
        c.combineMode = _lib.COMBINE_MODES[self.combine_mode]
        return c


def resolve_backend(backend):
    """"auto" is "cuda" when torch is imported and sees a GPU, else "host"."""
    if backend not in _lib.BACKENDS:
        raise ValueError('backend must be "auto", "host" or "cuda", not %r' % (backend,))
    if backend != "auto":
        return backend
    torch = sys.modules.get("torch")
    return "cuda" if torch is not None and torch.cuda.is_available() else "host"


class DispatchResult:
    """The receive side of one dispatch: ``x`` [capacity, hidden], ``scales`` [capacity,
    hidden/scale_block] (fp8) or None, ``counts`` [local experts] int32. The buffers belong to the
    communicator and are reused: they hold this dispatch's rows until the next one."""

    def __init__(self, comm, x, scales, counts):
        self.comm, self.x, self.scales, self.counts = comm, x, scales, counts

    def offsets(self):
        """Row where each local expert's segment starts, and the total rows (host ints; reads
        the counts, which for GPU tensors waits for the dispatch)."""
        a = self.comm.config.expert_alignment or 1
        out, o = [], 0
        for c in arr.to_host_list(self.counts):
            out.append(o)
            o += -(-c // a) * a
        return out, o

    def expert_views(self):
        """Per local expert j: (rows of x, rows of scales or None), views into the buffers."""
        starts, _ = self.offsets()
        counts = arr.to_host_list(self.counts)
        return [
            (self.x[s : s + c], None if self.scales is None else self.scales[s : s + c])
            for s, c in zip(starts, counts)
        ]


class Communicator:
    """One expert-parallel group (an ncclMoeComm_t). Build it with from_allgather,
    from_process_group or moefabric.init (the launcher's environment). Destroy it with close()
    (collective) or abort() (local); it is also a context manager."""

    def __init__(self, handle, rank, nranks, config):
        self._h = handle
        self.rank, self.nranks, self.config = rank, nranks, config
        self.backend = resolve_backend(config.backend)
        cap, first, count = ctypes.c_size_t(), ctypes.c_int(), ctypes.c_int()
        self._call("ncclMoeGetRecvCapacity", ctypes.byref(cap))
        self._call("ncclMoeGetLocalExperts", ctypes.byref(first), ctypes.byref(count))
        self.recv_capacity, self.first_expert, self.num_local_experts = cap.value, first.value, count.value
        self._buffers = {}
        self._inflight = None  # what the library still reads between dispatch and combine
        self._phase = "idle"

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_allgather(cls, allgather, rank, nranks, config=None, **kwargs):
        """Bootstraps over `allgather(data: bytes) -> bytes` (every rank's data in rank order,
        concatenated, or a list of them). Collective."""
        config = config or MoeConfig(**kwargs)
        errors = []

        def trampoline(send, recv, n, _ctx):
            try:
                out = allgather(ctypes.string_at(send, n))
                if isinstance(out, (list, tuple)):
                    out = b"".join(bytes(o) for o in out)
                out = bytes(out)
                if len(out) != n * nranks:
                    raise ValueError("allgather returned %d bytes, expected %d x %d ranks" % (len(out), n, nranks))
                ctypes.memmove(recv, out, len(out))
                return 0
            except BaseException as e:  # noqa: B902 - reported after the C call returns
                errors.append(e)
                return 2

        fn = _lib.ALLGATHER_FN(trampoline)  # alive for the whole (synchronous) init
        try:
            return cls._init(rank, nranks, config, ctypes.cast(fn, ctypes.c_void_p), None)
        except _lib.MoeError as e:
            if errors:
                raise e from errors[0]
            raise

    @classmethod
    def from_process_group(cls, group=None, config=None, **kwargs):
        """Bootstraps over a torch.distributed process group (default: the world): the init
        records are allgathered through it. Collective over the group."""
        from .bootstrap import process_group_allgather

        ag, rank, nranks = process_group_allgather(group)
        return cls.from_allgather(ag, rank, nranks, config, **kwargs)

    @classmethod
    def _init(cls, rank, nranks, config, fn, ctx):
        c = config.to_c()
        h = ctypes.c_void_p()
        _lib.check(
            "ncclMoeCommInitAllGather",
            _lib.moe().ncclMoeCommInitAllGather(ctypes.byref(h), nranks, rank, fn, ctx, ctypes.byref(c)),
        )
        return cls(h, rank, nranks, config)

    # ---- lifetime ----------------------------------------------------------------------------
    def _call(self, name, *args):
        if self._h is None:
            raise _lib.MoeError(name, 4, "the communicator is closed")
        _lib.check(name, getattr(_lib.moe(), name)(self._h, *args), self._h)

    def close(self):
        """ncclMoeCommDestroy: collective, bounded by timeout_ms."""
        if self._h is not None:
            h, self._h = self._h, None
            self._inflight = None
            _lib.check("ncclMoeCommDestroy", _lib.moe().ncclMoeCommDestroy(h))

    def abort(self):
        """ncclMoeCommAbort: local, returns promptly even when peers are gone."""
        if self._h is not None:
            h, self._h = self._h, None
            self._inflight = None
            _lib.check("ncclMoeCommAbort", _lib.moe().ncclMoeCommAbort(h))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self):
        if getattr(self, "_h", None) is not None and _lib is not None:
            try:
                self.abort()
            except Exception:
                pass

    def async_error(self):
        """ncclMoeCommGetAsyncError: None, or the MoeError found by the proxy or kernels."""
        err = ctypes.c_int()
        self._call("ncclMoeCommGetAsyncError", ctypes.byref(err))
        return None if err.value == 0 else _lib.MoeError("async", err.value, _lib.last_error(self._h))

    def stats(self):
        """ncclMoeGetStats as a dict."""
        s = _lib.Stats()
        s.size = ctypes.sizeof(s)
        self._call("ncclMoeGetStats", ctypes.byref(s))
        return {name: getattr(s, name) for name, _ in _lib.Stats._fields_[1:]}

    # ---- data path ---------------------------------------------------------------------------
    def _stream(self, like):
        if self.backend != "cuda":
            return None
        import torch

        return ctypes.c_void_p(torch.cuda.current_stream(like.device).cuda_stream)

    def receive_buffers(self, like):
        """The reusable receive buffers for arrays like `like` (same kind and device), made on
        first use: x [capacity, hidden], scales or None, counts [local experts]."""
        key = ("torch", str(like.device)) if arr.is_torch(like) else ("numpy",)
        if key not in self._buffers:
            cfg, cap = self.config, self.recv_capacity
            fp8 = cfg.dispatch_dtype == "fp8"
            self._buffers[key] = (
                arr.empty(like, (cap, cfg.hidden), "fp8" if fp8 else "bf16"),
                arr.empty(like, (cap, cfg.hidden // self.scale_block), "f32") if fp8 else None,
                arr.empty(like, (self.num_local_experts,), "i32"),
            )
        return self._buffers[key]

    @property
    def scale_block(self):
        return self.config.scale_block or 128

    def _dispatch_args(self, x, topk_idx, topk_weights, x_scales, num_tokens):
        cfg, gpu = self.config, self.backend == "cuda"
        if self._phase != "idle":
            raise RuntimeError("a dispatch is already in flight on this communicator (combine it first)")
        fp8 = cfg.dispatch_dtype == "fp8"
        arr.check(x, "x", (None, cfg.hidden), "fp8" if fp8 else "bf16", gpu)
        T = x.shape[0]
        if T > cfg.max_tokens_per_rank and num_tokens is None:
            raise ValueError("x has %d tokens, max_tokens_per_rank is %d" % (T, cfg.max_tokens_per_rank))
        topk_idx = arr.as_int32(topk_idx, "topk_idx")
        arr.check(topk_idx, "topk_idx", (T, cfg.topk), "i32", gpu)
        arr.check(topk_weights, "topk_weights", (T, cfg.topk), "f32", gpu)
        if fp8:
            if x_scales is None:
                raise ValueError("fp8 dispatch needs x_scales [T, hidden/scale_block] float32")
            arr.check(x_scales, "x_scales", (T, cfg.hidden // self.scale_block), "f32", gpu)
        elif x_scales is not None:
            raise ValueError("x_scales is for fp8 dispatch only (this communicator dispatches bf16)")
        if num_tokens is None:
            if gpu:
                import torch

                num_tokens = torch.full((1,), T, dtype=torch.int32, device=x.device)
            else:
                num_tokens = ctypes.c_int32(T)
        elif arr.is_torch(num_tokens) or arr.is_numpy(num_tokens):
            arr.check(num_tokens, "num_tokens", (1,), "i32", gpu)
        elif gpu:
            raise TypeError("num_tokens must be a one-element int32 CUDA tensor with the CUDA backend")
        else:
            num_tokens = ctypes.c_int32(int(num_tokens))
        rx, rs, rc = self.receive_buffers(x)
        nt_ptr = ctypes.addressof(num_tokens) if isinstance(num_tokens, ctypes.c_int32) else arr.ptr(num_tokens)
        args = [arr.ptr(x), arr.ptr(x_scales) if fp8 else None, arr.ptr(topk_idx), arr.ptr(topk_weights), nt_ptr,
                arr.ptr(rx), arr.ptr(rs) if fp8 else None, arr.ptr(rc), self._h, self._stream(x)]
        keep = (x, x_scales, topk_idx, topk_weights, num_tokens, T)
        return args, keep, DispatchResult(self, rx, rs, rc)

    def dispatch(self, x, topk_idx, topk_weights, x_scales=None, num_tokens=None):
        """ncclMoeDispatch. x [T, hidden] (bf16, or fp8 with x_scales [T, hidden/scale_block]
        fp32), topk_idx [T, topk] int32 (-1: empty slot), topk_weights [T, topk] fp32. num_tokens:
        T (default: x's rows) or, with the CUDA backend, a one-element int32 tensor on the device
        (read by the kernels: graph replays may change it). Returns a DispatchResult."""
        args, keep, res = self._dispatch_args(x, topk_idx, topk_weights, x_scales, num_tokens)
        self._run("ncclMoeDispatch", args)
        self._inflight, self._phase = keep, "dispatched"
        return res

    def dispatch_send(self, x, topk_idx, topk_weights, x_scales=None, num_tokens=None):
        """ncclMoeDispatchSend: the first half; the DispatchResult is valid after dispatch_recv."""
        args, keep, res = self._dispatch_args(x, topk_idx, topk_weights, x_scales, num_tokens)
        self._run("ncclMoeDispatchSend", args)
        self._inflight, self._phase = keep, "dispatch-sent"
        return res

    def dispatch_recv(self):
        """ncclMoeDispatchRecv."""
        self._expect("dispatch-sent", "dispatch_recv", "dispatch_send")
        self._run("ncclMoeDispatchRecv", [self._h, self._stream(self._inflight[0])])
        self._phase = "dispatched"

    def _combine_args(self, expert_y):
        self._expect("dispatched", "combine", "dispatch")
        arr.check(expert_y, "expert_y", (self.recv_capacity, self.config.hidden), "bf16", self.backend == "cuda")
        return expert_y

    def _out(self, out, like):
        """(y to return, buffer whose pointer the call gets): a call never gets NULL for y, since
        the CUDA backend reads T on the device (an empty tensor has no storage: a one-row scratch
        stands in for it, and the [0, hidden] result is returned)."""
        T = self._inflight[5]
        if out is None:
            out = arr.empty(like, (T, self.config.hidden), "bf16")
        else:
            arr.check(out, "out", (T, self.config.hidden), "bf16", self.backend == "cuda")
        return out, out if T > 0 else arr.empty(like, (1, self.config.hidden), "bf16")

    def combine(self, expert_y, out=None):
        """ncclMoeCombine: expert_y [capacity, hidden] bf16 in the receive layout; returns y
        [T, hidden] bf16 (into `out` when given): y[t] = bf16(sum_k fmaf(w[t,k], expert_y[row], acc))."""
        self._combine_args(expert_y)
        out, buf = self._out(out, expert_y)
        self._run("ncclMoeCombine", [arr.ptr(expert_y), arr.ptr(buf), self._h, self._stream(expert_y)])
        self._inflight, self._phase = None, "idle"
        return out

    def combine_send(self, expert_y):
        """ncclMoeCombineSend: the first half of combine."""
        self._combine_args(expert_y)
        self._run("ncclMoeCombineSend", [arr.ptr(expert_y), self._h, self._stream(expert_y)])
        self._inflight = self._inflight + (expert_y,)
        self._phase = "combine-sent"

    def combine_recv(self, out=None):
        """ncclMoeCombineRecv: returns y (into `out` when given)."""
        self._expect("combine-sent", "combine_recv", "combine_send")
        like = self._inflight[6]
        out, buf = self._out(out, like)
        self._run("ncclMoeCombineRecv", [arr.ptr(buf), self._h, self._stream(like)])
        self._inflight, self._phase = None, "idle"
        return out

    def _expect(self, phase, call, before):
        if self._phase != phase:
            raise RuntimeError("%s needs a %s first (the communicator is %s)" % (call, before, self._phase))

    def _run(self, name, args):
        if self._h is None:
            raise _lib.MoeError(name, 4, "the communicator is closed")
        rc = getattr(_lib.moe(), name)(*args)
        if rc != 0:
            # A failed op leaves nothing in flight that a retry could pair with.
            self._inflight, self._phase = None, "idle"
            _lib.check(name, rc, self._h)
