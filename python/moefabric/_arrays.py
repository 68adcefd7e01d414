"""numpy arrays and torch tensors behind one small interface, without importing either until an
array of that kind shows up (no build-time or import-time dependency on torch or numpy).

Element types by name: "bf16" (numpy: uint16 holding the bits; torch: bfloat16), "fp8" (e4m3;
numpy: uint8 bits; torch: float8_e4m3fn or uint8), "f32", "i32".
"""

_NUMPY = {"bf16": "uint16", "fp8": "uint8", "f32": "float32", "i32": "int32"}
_TORCH = {
    "bf16": ("torch.bfloat16",),
    "fp8": ("torch.float8_e4m3fn", "torch.uint8"),
    "f32": ("torch.float32",),
    "i32": ("torch.int32",),
}


def is_torch(a):
    return hasattr(a, "data_ptr") and hasattr(a, "is_cuda")


def is_numpy(a):
    return hasattr(a, "__array_interface__") and hasattr(a, "ctypes")


def kind(a, name):
    if is_torch(a):
        return "torch"
    if is_numpy(a):
        return "numpy"
    raise TypeError("%s must be a numpy array or a torch tensor, not %s" % (name, type(a).__name__))


def on_gpu(a):
    return is_torch(a) and bool(a.is_cuda)


def ptr(a):
    return a.data_ptr() if is_torch(a) else a.ctypes.data


def dtype_ok(a, t):
    if is_torch(a):
        return str(a.dtype) in _TORCH[t]
    return str(a.dtype) == _NUMPY[t]


def dtype_text(t, like):
    return " or ".join(_TORCH[t]) if is_torch(like) else "numpy." + _NUMPY[t]


def check(a, name, shape, t, gpu):
    """Checks a buffer the library reads or writes: kind, device, type, shape, contiguity."""
    kind(a, name)
    if on_gpu(a) != gpu:
        raise ValueError(
            "%s is in %s memory, this communicator's backend needs %s memory"
            % (name, "GPU" if on_gpu(a) else "host", "GPU" if gpu else "host")
        )
    if not dtype_ok(a, t):
        raise TypeError("%s must be %s (%s), not %s" % (name, dtype_text(t, a), t, a.dtype))
    got = tuple(a.shape)
    if len(got) != len(shape) or any(w is not None and g != w for g, w in zip(got, shape)):
        want = "[%s]" % ", ".join("*" if w is None else str(w) for w in shape)
        raise ValueError("%s has shape %s, expected %s" % (name, list(got), want))
    contiguous = a.is_contiguous() if is_torch(a) else a.flags.c_contiguous
    if not contiguous:
        raise ValueError("%s must be contiguous (row-major)" % name)


def empty(like, shape, t):
    """An uninitialised buffer of the same kind (and device) as `like`."""
    if is_torch(like):
        import torch

        dt = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn, "f32": torch.float32, "i32": torch.int32}[t]
        return torch.empty(shape, dtype=dt, device=like.device)
    import numpy as np

    return np.empty(shape, dtype=_NUMPY[t])


def as_int32(a, name):
    """topk indices as int32 (a copy when given int64, as torch.topk returns)."""
    if dtype_ok(a, "i32"):
        return a
    if is_torch(a) and str(a.dtype) == "torch.int64":
        import torch

        return a.to(torch.int32)
    if is_numpy(a) and str(a.dtype) == "int64":
        return a.astype("int32")
    raise TypeError("%s must be int32 (or int64, converted), not %s" % (name, a.dtype))


def to_host_list(a):
    """Small integer array to a Python list (a device sync for GPU tensors)."""
    return [int(v) for v in (a.tolist() if is_torch(a) else a.tolist())]
