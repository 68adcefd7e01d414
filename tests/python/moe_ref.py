"""The ncclMoe contract in numpy (docs/moe-api.md), for the Python tests: deterministic inputs
every rank can regenerate for every other rank, the expected dispatch layout, the expected combine
(an fmaf chain per token), and a small MoE layer (router top-k, per-expert MLPs)."""

import numpy as np

from moefabric import numerics as num


def owner_range(rank, nranks, experts):
    return rank * experts // nranks, (rank + 1) * experts // nranks


def make_inputs(seed, rank, T, H, E, K, fp8, block=128, empty_frac=0.1):
    """x (bf16 bits, or fp8 bits + scales), topk_idx (distinct experts per token, some -1),
    topk_weights."""
    rng = np.random.default_rng([seed, rank, T])
    x32 = rng.standard_normal((T, H)).astype(np.float32)
    idx = np.stack([rng.permutation(E)[:K] for _ in range(T)]).astype(np.int32) if T else np.zeros((0, K), np.int32)
    idx[rng.random((T, K)) < empty_frac] = -1
    w = rng.random((T, K)).astype(np.float32)
    if fp8:
        codes, scales = num.quantize_fp8(x32, block)
        return codes, scales, idx, w
    return num.bf16_from_f32(x32), None, idx, w


def expected_dispatch(inputs, rank, nranks, E, align=1):
    """inputs[r] = (x, scales, idx, w): the rows (and scales) rank `rank` receives, expert-major,
    inside a segment by source rank then source token; counts per local expert."""
    lo, hi = owner_range(rank, nranks, E)
    counts = np.zeros(hi - lo, np.int32)
    rows = [[] for _ in range(hi - lo)]
    for r in range(nranks):
        x, s, idx, _ = inputs[r]
        for t in range(idx.shape[0]):
            for k in range(idx.shape[1]):
                e = idx[t, k]
                if lo <= e < hi:
                    rows[e - lo].append((x[t], None if s is None else s[t]))
                    counts[e - lo] += 1
    offsets, o = [], 0
    for c in counts:
        offsets.append(o)
        o += -(-int(c) // align) * align
    return counts, offsets, rows


def expert_fn(e, x32):
    """A stand-in expert for the dispatch/combine tests: row-wise, exact per row."""
    return num.bf16_from_f32(x32 * np.float32(1.0 + 0.125 * (e % 7)) - np.float32(e % 3))


def expected_combine(idx, w, expert_out):
    """y[t] = bf16(acc), acc = fmaf(w[t,k], float(expert_out(t,k)), acc) over k in order with
    idx >= 0; expert_out(t, k) -> bf16 bits [H]."""
    T, K = idx.shape
    ys = []
    for t in range(T):
        acc = None
        for k in range(K):
            if idx[t, k] < 0:
                continue
            v = num.f32_from_bf16(expert_out(t, k))
            acc = num.fma_f32(np.full_like(v, w[t, k]), v, acc if acc is not None else np.zeros_like(v))
        ys.append(num.bf16_from_f32(acc) if acc is not None else None)
    return ys


class MoeLayer:
    """A small MoE layer: router (logits = x @ Wg, top-k, softmax over the k), experts (bf16
    rounded SiLU MLPs, H -> F -> H). The same seed gives the same weights in every process."""

    def __init__(self, seed, E, K, H, F):
        rng = np.random.default_rng(seed)
        self.E, self.K, self.H = E, K, H
        self.wg = (rng.standard_normal((H, E)) / np.sqrt(H)).astype(np.float32)
        self.w1 = (rng.standard_normal((E, H, F)) / np.sqrt(H)).astype(np.float32)
        self.w2 = (rng.standard_normal((E, F, H)) / np.sqrt(F)).astype(np.float32)

    def route(self, x32):
        logits = x32 @ self.wg
        idx = np.argsort(-logits, axis=1, kind="stable")[:, : self.K].astype(np.int32)
        top = np.take_along_axis(logits, idx, axis=1).astype(np.float64)
        p = np.exp(top - top.max(axis=1, keepdims=True))
        return idx, (p / p.sum(axis=1, keepdims=True)).astype(np.float32)

    def expert(self, e, rows32):
        """Expert e on rows (float32 [n, H]) -> bf16 bits [n, H]; row by row, so a row's result
        does not depend on which other rows share the call."""
        out = np.empty((rows32.shape[0], self.H), np.uint16)
        for i in range(rows32.shape[0]):
            h = rows32[i] @ self.w1[e]
            h = h / (1.0 + np.exp(-h))
            out[i] = num.bf16_from_f32((h @ self.w2[e]).astype(np.float32))
        return out

    def whole(self, x32, fp8, block=128):
        """The layer in one process: route, quantize as the dispatch would, experts, combine."""
        idx, w = self.route(x32)
        if fp8:
            xin = num.dequantize_fp8(*num.quantize_fp8(num.f32_from_bf16(num.bf16_from_f32(x32)), block), block)
        else:
            xin = num.f32_from_bf16(num.bf16_from_f32(x32))
        ys = expected_combine(idx, w, lambda t, k: self.expert(idx[t, k], xin[t : t + 1])[0])
        return np.stack([y if y is not None else np.zeros(self.H, np.uint16) for y in ys])
