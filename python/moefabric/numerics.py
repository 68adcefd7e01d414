"""bf16 and fp8 (e4m3) on numpy arrays, as the library stores them: bf16 as uint16 bits, fp8 as
uint8 bits; round to nearest even. For torch tensors use torch's own dtypes."""

import numpy as np

FP8_MAX = 448.0


def bf16_from_f32(x):
    """float32 -> bf16 bits (uint16), round to nearest even (NaN stays NaN)."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    return np.where(nan, np.uint16(0x7FC0), r)


def f32_from_bf16(b):
    """bf16 bits (uint16) -> float32, exact."""
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _fp8_table():
    codes = np.arange(256, dtype=np.uint32)
    s, e, m = codes >> 7, (codes >> 3) & 0xF, codes & 7
    v = np.where(e == 0, m / 8.0 * 2.0**-6, (1 + m / 8.0) * 2.0 ** (e.astype(np.int64) - 7))
    v = np.where(s == 1, -v, v)
    v[(e == 15) & (m == 7)] = np.nan  # 0x7f / 0xff
    return v.astype(np.float32)


_FP8 = _fp8_table()
_POS = _FP8[:127].astype(np.float64)  # codes 0x00..0x7e: 0 .. 448, increasing


def f32_from_fp8(c):
    """fp8 e4m3 bits (uint8) -> float32, exact."""
    return _FP8[np.asarray(c, dtype=np.uint8)]


def fp8_from_f32(x):
    """float32 -> fp8 e4m3 bits, round to nearest even, saturating at +-448."""
    x = np.asarray(x, dtype=np.float32)
    a = np.minimum(np.abs(x).astype(np.float64), FP8_MAX)
    hi = np.clip(np.searchsorted(_POS, a, side="left"), 0, 126)
    lo = np.maximum(hi - 1, 0)
    dlo, dhi = a - _POS[lo], _POS[hi] - a
    pick_hi = (dhi < dlo) | ((dhi == dlo) & (hi % 2 == 0))
    code = np.where(pick_hi, hi, lo).astype(np.uint8)
    code = np.where(np.signbit(x), code | np.uint8(0x80), code)
    return np.where(np.isnan(x), np.uint8(0x7F), code).astype(np.uint8)


def quantize_fp8(x, block=128):
    """float32 [T, H] -> (fp8 bits [T, H], fp32 scales [T, H/block]): each block of `block`
    values scaled by amax/448 (scale 1 for an all-zero block); x ~= f32(fp8) * scale."""
    x = np.asarray(x, dtype=np.float32)
    T, H = x.shape
    xb = x.reshape(T, H // block, block)
    amax = np.abs(xb).max(axis=2)
    scales = np.where(amax > 0, amax / np.float32(FP8_MAX), np.float32(1)).astype(np.float32)
    codes = fp8_from_f32(xb / scales[:, :, None]).reshape(T, H)
    return codes, scales


def dequantize_fp8(codes, scales, block=128):
    """The inverse of quantize_fp8 (up to fp8 rounding): float32 [T, H]."""
    T, H = codes.shape
    v = f32_from_fp8(codes).reshape(T, H // block, block) * np.asarray(scales, np.float32)[:, :, None]
    return v.reshape(T, H).astype(np.float32)


def fma_f32(a, b, c):
    """fmaf(a, b, c) elementwise on float32 arrays, correctly rounded (a*b is exact in float64;
    the one addition's error is recovered with TwoSum for the halfway cases)."""
    a, b, c = (np.asarray(v, dtype=np.float32) for v in (a, b, c))
    p = a.astype(np.float64) * b.astype(np.float64)
    cc = c.astype(np.float64)
    s = p + cc
    bb = s - p
    err = (p - (s - bb)) + (cc - bb)  # s + err == p + c exactly
    r = s.astype(np.float32)
    # Only when s is a float32 halfway point (r was chosen as the even neighbour) can the exact
    # value round elsewhere: err > 0 above the upper half, err < 0 below the lower half.
    lower = np.nextafter(r, np.float32(-np.inf))
    upper = np.nextafter(r, np.float32(np.inf))
    d = s - r.astype(np.float64)
    half_up = (upper.astype(np.float64) - r.astype(np.float64)) / 2
    half_dn = (r.astype(np.float64) - lower.astype(np.float64)) / 2
    r = np.where((d == half_up) & (err > 0), upper, r)
    r = np.where((d == -half_dn) & (err < 0), lower, r)
    return r.astype(np.float32)
