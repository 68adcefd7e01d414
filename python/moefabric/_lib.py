"""ctypes binding of libmoefabric (the ncclMoe C API) and libmoefabric-bootstrap.

The libraries are found in the package directory (where ``pip install .`` puts them), or first in
the directories of ``MOEFABRIC_LIB_PATH`` (``:``-separated; a build tree's ``collectives``,
``plugin/nccl`` and ``python`` directories, say).
"""

import ctypes
import os
import pathlib
import threading

_HERE = pathlib.Path(__file__).resolve().parent
_NAMES = {
    "moefabric": "libmoefabric.so",
    "plugin": "libnccl-net-moefabric.so",
    "bootstrap": "libmoefabric-bootstrap.so",
}

RESULT_NAMES = [
    "ncclSuccess",
    "ncclUnhandledCudaError",
    "ncclSystemError",
    "ncclInternalError",
    "ncclInvalidArgument",
    "ncclInvalidUsage",
    "ncclRemoteError",
    "ncclInProgress",
]

# ncclDataType_t values used by the API.
NCCL_BFLOAT16 = 9
NCCL_FLOAT8E4M3 = 10
BACKENDS = {"auto": 0, "cuda": 1, "host": 2}
CONFIG_MAGIC = 0x4D6F4546
CONFIG_VERSION = 2
COMBINE_MODES = {"pair": 0, "rank": 1}  # ncclMoeCombinePerPair, ncclMoeCombinePerRank
UNDEF_INT = -0x80000000


class MoeError(RuntimeError):
    """A failed ncclMoe call: ``code`` is the ncclResult_t, ``name`` its name, and the message
    carries ncclMoeGetLastError's text (phase, peer rank, provider text)."""

    def __init__(self, call, code, text):
        self.call = call
        self.code = code
        self.name = RESULT_NAMES[code] if 0 <= code < len(RESULT_NAMES) else "ncclResult %d" % code
        self.text = text
        super().__init__("%s failed: %s%s" % (call, self.name, ": " + text if text else ""))


def _search_dirs():
    dirs = [pathlib.Path(d) for d in os.environ.get("MOEFABRIC_LIB_PATH", "").split(os.pathsep) if d]
    return dirs + [_HERE]


def find_library(kind):
    """Path of one of the package's libraries: "moefabric", "plugin" or "bootstrap"."""
    name = _NAMES[kind]
    dirs = _search_dirs()
    for d in dirs:
        if (d / name).is_file():
            return str(d / name)
    raise FileNotFoundError(
        "%s not found (looked in %s): install the package with pip, which builds it, or point "
        "MOEFABRIC_LIB_PATH at a build tree's directories" % (name, ", ".join(str(d) for d in dirs))
    )


class Config(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_size_t),
        ("magic", ctypes.c_uint),
        ("version", ctypes.c_uint),
        ("numExperts", ctypes.c_int),
        ("numTopk", ctypes.c_int),
        ("hidden", ctypes.c_int),
        ("maxTokensPerRank", ctypes.c_int),
        ("dispatchType", ctypes.c_int),
        ("combineType", ctypes.c_int),
        ("scaleBlock", ctypes.c_int),
        ("expertAlignment", ctypes.c_int),
        ("maxPrivateTokens", ctypes.c_int),
        ("backend", ctypes.c_int),
        ("timeoutMs", ctypes.c_int),
        ("combineMode", ctypes.c_int),
    ]

    @classmethod
    def initializer(cls):
        c = cls()
        c.size = ctypes.sizeof(cls)
        c.magic = CONFIG_MAGIC
        c.version = CONFIG_VERSION
        for name, _ in cls._fields_[3:]:
            setattr(c, name, UNDEF_INT)
        return c


class Stats(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_size_t),
        ("ops", ctypes.c_uint64),
        ("dispatchWritesMaxPeer", ctypes.c_uint32),
        ("combineWritesMaxPeer", ctypes.c_uint32),
        ("grantsSent", ctypes.c_uint32),
        ("peers", ctypes.c_uint32),
        ("dispatchBytesSent", ctypes.c_uint64),
        ("combineBytesSent", ctypes.c_uint64),
        ("proxyPostUs", ctypes.c_double),
        ("combinePostUs", ctypes.c_double),
        ("registrations", ctypes.c_uint64),
    ]


ALLGATHER_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)

_P = ctypes.c_void_p
_PROTOTYPES = {
    "ncclMoeGetVersion": [ctypes.POINTER(ctypes.c_int)],
    "ncclMoeCommInitAllGather": [ctypes.POINTER(_P), ctypes.c_int, ctypes.c_int, _P, _P, ctypes.POINTER(Config)],
    "ncclMoeCommDestroy": [_P],
    "ncclMoeCommAbort": [_P],
    "ncclMoeCommGetAsyncError": [_P, ctypes.POINTER(ctypes.c_int)],
    "ncclMoeGetRecvCapacity": [_P, ctypes.POINTER(ctypes.c_size_t)],
    "ncclMoeGetLocalExperts": [_P, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)],
    "ncclMoeDispatch": [_P] * 10,
    "ncclMoeCombine": [_P] * 4,
    "ncclMoeDispatchSend": [_P] * 10,
    "ncclMoeDispatchRecv": [_P, _P],
    "ncclMoeCombineSend": [_P, _P, _P],
    "ncclMoeCombineRecv": [_P, _P, _P],
    "ncclMoeGetStats": [_P, ctypes.POINTER(Stats)],
}

_lock = threading.Lock()
_loaded = {}


def moe():
    """libmoefabric, loaded once, with every API prototype declared."""
    with _lock:
        if "moefabric" not in _loaded:
            lib = ctypes.CDLL(find_library("moefabric"))
            for name, args in _PROTOTYPES.items():
                fn = getattr(lib, name)
                fn.argtypes = args
                fn.restype = ctypes.c_int
            lib.ncclMoeGetLastError.argtypes = [_P]
            lib.ncclMoeGetLastError.restype = ctypes.c_char_p
            _loaded["moefabric"] = lib
        return _loaded["moefabric"]


def bootstrap():
    """libmoefabric-bootstrap (the launcher's channel), loaded once."""
    with _lock:
        if "bootstrap" not in _loaded:
            lib = ctypes.CDLL(find_library("bootstrap"))
            lib.moefabricBootstrapOpen.argtypes = [
                ctypes.POINTER(_P),
                ctypes.POINTER(ctypes.c_int),
                ctypes.POINTER(ctypes.c_int),
                ctypes.POINTER(ctypes.c_int),
                ctypes.c_char_p,
                ctypes.c_size_t,
            ]
            lib.moefabricBootstrapOpen.restype = ctypes.c_int
            lib.moefabricBootstrapAllGather.argtypes = [_P, _P, ctypes.c_size_t, _P]
            lib.moefabricBootstrapAllGather.restype = ctypes.c_int
            lib.moefabricBootstrapLastError.argtypes = [_P]
            lib.moefabricBootstrapLastError.restype = ctypes.c_char_p
            lib.moefabricBootstrapClose.argtypes = [_P]
            lib.moefabricBootstrapClose.restype = None
            _loaded["bootstrap"] = lib
        return _loaded["bootstrap"]


def last_error(handle):
    text = moe().ncclMoeGetLastError(handle)
    return text.decode(errors="replace") if text else ""


def check(call, rc, handle=None):
    """Raises MoeError for a failed call, with the comm's (or the thread's) last error."""
    if rc != 0:
        raise MoeError(call, rc, last_error(handle))


def version():
    """The loaded libmoefabric's version as "X.Y.Z"."""
    v = ctypes.c_int()
    check("ncclMoeGetVersion", moe().ncclMoeGetVersion(ctypes.byref(v)))
    return "%d.%d.%d" % (v.value // 10000, v.value // 100 % 100, v.value % 100)


def library_path():
    """Path of libmoefabric.so (the ncclMoe C API)."""
    return find_library("moefabric")


def nccl_plugin_path():
    """Path of libnccl-net-moefabric.so: set NCCL_NET_PLUGIN to it before NCCL initialises."""
    return find_library("plugin")
