#!/usr/bin/env python3
"""moefabric against its peers: the same MoE dispatch/combine shapes through moefabric ("ours"),
DeepEP V1 (low-latency and normal kernels), UCCL-EP (the same two kernel families behind a
DeepEP-style Buffer) and NCCL all_to_all of the same bytes, each timed the same way, the results of
every peer checked against ours, one table of µs and ratios. docs/peers.md is the guide.

One process per GPU under torchrun (rank i on GPU LOCAL_RANK):
    torchrun --nproc-per-node N perf/peers.py --tokens 1,128,512,4096 --systems ours,deepep-ll,nccl-a2a -J out.json
Without torchrun variables it runs as one rank (EP1). --cpu is a smoke run without torch or a GPU:
moefabric's host backend on numpy arrays under moefabric-run (or alone), checked against a numpy
reference, timed with the host clock. --merge A.json B.json ... prints one table of several runs.

The peers are not part of this repository: they are imported at run time when installed
(tools/gpu-peers.sh builds and installs them on the GPU machine); a system that cannot be imported
or set up is a row "unavailable: <reason>" in the table.
"""

import argparse
import json
import os
import sys
import time
import traceback

import numpy as np

SYSTEMS = ["ours", "ours-eager", "deepep-ll", "deepep-normal", "uccl-ll", "uccl-normal", "nccl-a2a"]
FP8_MAX = 448.0
SCALE_BLOCK = 128

# Tolerances of the checks against ours (docs/peers.md). Dispatch moves bytes: exact, except where a
# peer quantizes to fp8 itself (the low-latency kernels take bf16 and cast): one e4m3 step of
# slack (2^-3 relative, or 2^-9 of the block's scale below the normal range). Combine sums the same expert outputs in another order and, for the normal
# kernels, rounds a per-rank partial sum to bf16 first: every term of one token has the same sign
# here (positive weights times positive multiples of one token), so a few bf16 ulps relative.
RTOL_EXACT = 0.0
RTOL_FP8_REQUANT = 2.0**-3
RTOL_COMBINE = 2.0**-6


# ---------------------------------------------------------------------------------------------
# Pure helpers (numpy only; tests/python/test_peers.py checks them on the CPU)
# ---------------------------------------------------------------------------------------------
def parse_ints(text):
    return [int(v) for v in str(text).split(",") if v.strip()]


def parse_systems(text):
    names = [s.strip() for s in str(text).split(",") if s.strip()]
    bad = [s for s in names if s not in SYSTEMS]
    if bad:
        raise argparse.ArgumentTypeError("unknown system(s) %s (known: %s)" % (", ".join(bad), ", ".join(SYSTEMS)))
    return names


def owner_range(rank, nranks, experts):
    """moefabric's placement (also DeepEP's and UCCL-EP's when R divides E): rank r owns
    [floor(rE/R), floor((r+1)E/R))."""
    return rank * experts // nranks, (rank + 1) * experts // nranks


def make_routing(seed, T, R, E, K):
    """Every rank's routing for T tokens per rank, the same in every process: topk_idx [R, T, K]
    int64 (K distinct experts per token, uniformly), topk_weights [R, T, K] float32 in [0.05, 1.05)."""
    rng = np.random.default_rng([seed, T, R, E, K])
    if T == 0:
        return np.zeros((R, 0, K), np.int64), np.zeros((R, 0, K), np.float32)
    scores = rng.random((R, T, E), dtype=np.float32)
    idx = np.argpartition(scores, E - K, axis=2)[:, :, E - K :].astype(np.int64)
    w = (rng.random((R, T, K), dtype=np.float32) + np.float32(0.05)).astype(np.float32)
    return idx, w


def expected_keys(topk_idx_all, me, R, E):
    """Per local expert of rank `me`: the sorted keys src_rank * T + src_token of the tokens it
    receives (int64 arrays). moefabric's receive layout is in this order (source rank, then source
    token) inside each expert's segment."""
    _, T, _ = topk_idx_all.shape
    lo, hi = owner_range(me, R, E)
    out = []
    for e in range(lo, hi):
        r, t, _ = np.nonzero(topk_idx_all == e)
        out.append(np.sort(r.astype(np.int64) * T + t))
    return out


def ours_rows(counts, align=1):
    """Row ranges of moefabric's expert-major receive buffer: [(start, count)] per local expert."""
    out, o = [], 0
    for c in counts:
        c = int(c)
        out.append((o, c))
        o += -(-c // align) * align
    return out


def ll_rows(layout_range, src_info, T):
    """DeepEP/UCCL-EP low-latency receive layout of one local expert: layout_range [R] int64 packs
    (count in the low 32 bits, first row in the high 32 bits) per source rank; src_info [rows]
    int32 is the source token of each row. Returns (rows, keys) sorted by key = src_rank*T+token."""
    rows, keys = [], []
    for src, v in enumerate(np.asarray(layout_range, np.int64).tolist()):
        count, begin = v & 0xFFFFFFFF, (v >> 32) & 0xFFFFFFFF
        if count == 0:
            continue
        r = np.arange(begin, begin + count, dtype=np.int64)
        rows.append(r)
        keys.append(src * T + np.asarray(src_info, np.int64)[r])
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, keys = np.concatenate(rows), np.concatenate(keys)
    order = np.argsort(keys, kind="stable")
    return rows[order], keys[order]


def normal_rows(rank_prefix, me, recv_src_idx, recv_topk_idx, T, num_local):
    """DeepEP/UCCL-EP normal (intranode) receive layout: one row per (token, destination rank),
    rows from source rank i at [prefix[i-1][me], prefix[i][me]) (rank_prefix [R, R]: tokens of ranks
    0..i to rank j), recv_src_idx [N] the source token, recv_topk_idx [N, K] the local expert per
    slot or -1. Returns per local expert (rows, slots, keys) sorted by key."""
    prefix = np.asarray(rank_prefix, np.int64)[:, me]
    src_idx = np.asarray(recv_src_idx, np.int64)
    tk = np.asarray(recv_topk_idx, np.int64)
    n = src_idx.shape[0]
    src_rank = np.searchsorted(prefix, np.arange(n), side="right")
    keys_all = src_rank * T + src_idx
    out = []
    for j in range(num_local):
        rows, slots = np.nonzero(tk == j)
        keys = keys_all[rows]
        order = np.argsort(keys, kind="stable")
        out.append((rows[order], slots[order], keys[order]))
    return out


def compare_keys(want, got):
    """'' when the key arrays are equal, else what differs."""
    want, got = np.asarray(want), np.asarray(got)
    if want.shape == got.shape and np.array_equal(want, got):
        return ""
    missing = np.setdiff1d(want, got).size
    extra = np.setdiff1d(got, want).size
    dup = got.size - np.unique(got).size
    return "%d rows, expected %d (%d missing, %d unexpected, %d duplicated)" % (got.size, want.size, missing, extra, dup)


def close(a, b, rtol, atol=0.0):
    """(ok, worst relative error, elements over the tolerance) of |a-b| <= atol + rtol*max(|a|,|b|);
    numpy arrays or torch tensors (float)."""
    d = abs(a - b)
    m = abs(a)
    mb = abs(b)
    m = m * (m >= mb) + mb * (mb > m)
    bad = d > atol + rtol * m
    nbad = int(bad.sum())
    rel = d / (m + 1e-30)
    size = rel.numel() if hasattr(rel, "numel") else rel.size
    worst = float(rel.max()) if size else 0.0
    return nbad == 0, worst, nbad


def fp8_step_floor(torch, rows):
    """Per element, one e4m3 step below the normal range (2^-9 of the scale) for dequantized rows
    [n, H] whose scale per SCALE_BLOCK is amax / FP8_MAX: where a peer recasts to fp8 itself, a value
    that lands on a subnormal may differ by that step, which is far more than 2^-3 of it."""
    n, h = rows.shape
    if n == 0 or h % SCALE_BLOCK:
        return 1e-30
    amax = rows.float().abs().view(n, h // SCALE_BLOCK, SCALE_BLOCK).amax(dim=2, keepdim=True)
    return (amax / FP8_MAX * 2.0**-9 * 1.0001).expand(n, h // SCALE_BLOCK, SCALE_BLOCK).reshape(n, h) + 1e-30


def percentile(values, p):
    """The nearest-rank percentile the C++ perf tools use: sorted[round(p * (n - 1))]."""
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))]


def summarize(per_rank):
    """per_rank: [(dispatch samples, combine samples)] of every rank, µs. p50 per rank over the
    iterations, then the slowest rank's p50 (max over ranks); p99 likewise."""
    d50 = [percentile(d, 0.5) for d, _ in per_rank]
    c50 = [percentile(c, 0.5) for _, c in per_rank]
    d99 = [percentile(d, 0.99) for d, _ in per_rank]
    c99 = [percentile(c, 0.99) for _, c in per_rank]
    return {
        "dispatch_p50_us": max(d50),
        "combine_p50_us": max(c50),
        "dispatch_p99_us": max(d99),
        "combine_p99_us": max(c99),
        "dispatch_p50_slow_rank": int(np.argmax(d50)),
        "combine_p50_slow_rank": int(np.argmax(c50)),
        "dispatch_p50_per_rank": d50,
        "combine_p50_per_rank": c50,
    }


def _num(v, width, prec=1):
    if v is None or (isinstance(v, float) and v != v):
        return "-".rjust(width)
    return ("%.*f" % (prec, v)).rjust(width)


def format_table(doc):
    """The table of a results document (one run, or several merged): per T, per system, dispatch /
    combine p50 (max over ranks), ratios to ours (>1: slower than ours), how it was timed, checked."""
    meta = doc["meta"]
    lines = [
        "# moefabric peers: E %s, top-%s, hidden %s, %s dispatch (where the system supports it), bf16 combine"
        % (meta.get("experts"), meta.get("topk"), meta.get("hidden"), meta.get("dtype")),
        "# %s; %s iters + %s warmup per row; p50 over iterations per rank, then the slowest rank"
        % (meta.get("where", "?"), meta.get("iters"), meta.get("warmup")),
        "# timing: graph = CUDA events around CUDA-graph replays, eager = CUDA events around eager calls,"
        " host = host clock (--cpu); ratios are system / ours at the same T (>1: slower than ours)",
    ]
    for note in doc.get("notes", []):
        lines.append("# " + note)
    hdr = "%6s  %-16s %-6s %10s %10s %8s %8s  %s" % ("T", "system", "timing", "disp_us", "comb_us", "d/ours", "c/ours",
                                                     "checked")
    lines += ["#", "# " + hdr[2:]]
    rows = doc["rows"]
    tokens = sorted({r["T"] for r in rows if r.get("T") is not None})
    order = {s: i for i, s in enumerate(doc.get("systems_order", []))}
    for T in tokens:
        here = sorted([r for r in rows if r.get("T") == T],
                      key=lambda r: (0 if r["system"].startswith("ours") else 1, order.get(r["system"], 99)))
        ref = next((r for r in here if r["system"] == doc.get("reference", "ours") and r.get("status") == "ok"), None)
        for r in here:
            if r.get("status") != "ok":
                lines.append("%6d  %-16s %s" % (T, r["system"], r.get("status")))
                continue
            d, c = r["dispatch_p50_us"], r["combine_p50_us"]
            dr = d / ref["dispatch_p50_us"] if ref and ref["dispatch_p50_us"] > 0 else None
            cr = c / ref["combine_p50_us"] if ref and ref["combine_p50_us"] > 0 else None
            lines.append("%6d  %-16s %-6s %s %s %s %s  %s" % (T, r["system"], r.get("timing", "?"), _num(d, 10),
                                                              _num(c, 10), _num(dr, 8, 2), _num(cr, 8, 2),
                                                              r.get("checked", "-")))
    for r in rows:
        if r.get("T") is None:
            lines.append("%6s  %-16s %s" % ("*", r["system"], r.get("status")))
    return "\n".join(lines)


def merge_docs(docs):
    """Several results documents as one (rows concatenated; the first one's shape)."""
    out = {"meta": dict(docs[0]["meta"]), "rows": [], "notes": [], "systems_order": [], "reference": "ours"}
    wheres = []
    for d in docs:
        out["rows"] += d["rows"]
        out["notes"] += [n for n in d.get("notes", []) if n not in out["notes"]]
        out["systems_order"] += [s for s in d.get("systems_order", []) if s not in out["systems_order"]]
        if d["meta"].get("where") and d["meta"]["where"] not in wheres:
            wheres.append(d["meta"]["where"])
    out["meta"]["where"] = "; ".join(wheres)
    out["systems_order"].sort(key=lambda s: 0 if s.startswith("ours") else 1)  # stable: ours' rows first
    return out


def unavailable_rows(system, reason, tokens):
    return [{"system": system, "T": T, "status": "unavailable: " + reason} for T in tokens]


def first_line(exc):
    text = ("%s: %s" % (type(exc).__name__, exc)).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(
        description="moefabric dispatch/combine against DeepEP, UCCL-EP and NCCL all_to_all (docs/peers.md)")
    p.add_argument("--tokens", type=parse_ints, default=[1, 128, 512, 4096], help="tokens per rank, comma-separated")
    p.add_argument("--hidden", type=int, default=7168)
    p.add_argument("-k", "--topk", type=int, default=8)
    p.add_argument("-E", "--experts", type=int, default=256)
    p.add_argument("-d", "--dtype", choices=["fp8", "bf16"], default="fp8", help="dispatch type (combine is bf16)")
    p.add_argument("--systems", type=parse_systems, default=["ours", "deepep-ll", "deepep-normal", "uccl-ll",
                                                             "uccl-normal", "nccl-a2a"],
                   help="any of " + ",".join(SYSTEMS))
    p.add_argument("-n", "--iters", type=int, default=200, help="timed iterations per row")
    p.add_argument("-w", "--warmup", type=int, default=20, help="untimed iterations per row")
    p.add_argument("--node-size", type=int, default=0,
                   help="ours: MOEFABRIC_NODE_SIZE (ranks per node; 0 leaves it): the machine split into nodes")
    p.add_argument("--label", default="", help="name the ours rows (default: ours, or ours-nodeN with --node-size)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-check", action="store_true", help="skip the checks against ours")
    p.add_argument("--eager", action="store_true", help="time every system eagerly (no CUDA graphs)")
    p.add_argument("--ll-max-gib", type=float, default=48.0,
                   help="low-latency kernels: largest buffer per GPU (their buffers grow with T x experts); "
                        "rows of larger T are reported as skipped")
    p.add_argument("--timeout-s", type=int, default=0, help="(informational) the launcher's limit, printed")
    p.add_argument("-J", "--json", default="", help="write the results as JSON to this file (rank 0)")
    p.add_argument("--cpu", action="store_true",
                   help="smoke run without a GPU: ours on the host backend (numpy), the peers unavailable")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="print one table of these result files and exit")
    return p


# ---------------------------------------------------------------------------------------------
# The CPU smoke run: moefabric's host backend on numpy, ranks from moefabric-run (or one)
# ---------------------------------------------------------------------------------------------
def expert_scale(e):
    """The stand-in expert: y = x * (1 + (e mod 7) / 8), exact in bf16 for bf16 x."""
    return 1.0 + (e % 7) / 8.0


def run_cpu(a):
    import moefabric
    from moefabric import numerics as num

    fp8 = a.dtype == "fp8"
    maxT = max(a.tokens)
    if a.node_size:
        os.environ["MOEFABRIC_NODE_SIZE"] = str(a.node_size)
    launched = any(v in os.environ for v in ("MOEFABRIC_RANK", "RANK", "OMPI_COMM_WORLD_RANK"))
    cfg = moefabric.MoeConfig(num_experts=a.experts, topk=a.topk, hidden=a.hidden, max_tokens_per_rank=maxT,
                              dispatch_dtype=a.dtype, backend="host")
    if launched:
        ch = moefabric.channel()
        comm = ch.communicator(cfg)

        def allgather_obj(obj):
            data = json.dumps(obj).encode()
            n = np.array([len(data)], np.int64).tobytes()
            sizes = np.frombuffer(ch.allgather(n), np.int64)
            pad = int(sizes.max())
            blob = ch.allgather(data.ljust(pad, b" "))
            return [json.loads(blob[i * pad : (i + 1) * pad].decode()) for i in range(ch.nranks)]
    else:
        comm = moefabric.Communicator.from_allgather(lambda b: b, 0, 1, cfg)

        def allgather_obj(obj):
            return [obj]

    R, me = comm.nranks, comm.rank
    label = a.label or ("ours-node%d" % a.node_size if a.node_size else "ours")
    rows = []
    systems = [s for s in a.systems if s not in ("ours", "ours-eager")]
    for T in a.tokens if "ours" in a.systems else []:
        idx_all, w_all = make_routing(a.seed, T, R, a.experts, a.topk)
        xs = [np.random.default_rng([a.seed, T, r]).standard_normal((T, a.hidden)).astype(np.float32) for r in range(R)]
        sent = []
        for r in range(R):
            xb = num.bf16_from_f32(xs[r])
            sent.append(num.quantize_fp8(num.f32_from_bf16(xb), SCALE_BLOCK) if fp8 else (xb, None))
        x, s = sent[me]
        idx, w = idx_all[me].astype(np.int32), w_all[me]
        d_us, c_us = [], []
        check = "-"
        if not a.no_check:  # one checked round first (the stand-in expert between the calls)
            check = cpu_check(a, comm, comm.dispatch(x, idx, w, x_scales=s), idx_all, w_all, sent, fp8, num)
        ey = np.zeros((comm.recv_capacity, a.hidden), np.uint16)
        for it in range(-a.warmup, a.iters):
            allgather_obj(0)  # align the ranks
            t0 = time.perf_counter()
            comm.dispatch(x, idx, w, x_scales=s)
            t1 = time.perf_counter()
            comm.combine(ey)
            t2 = time.perf_counter()
            if it >= 0:
                d_us.append((t1 - t0) * 1e6)
                c_us.append((t2 - t1) * 1e6)
        per_rank = allgather_obj([d_us, c_us, check])
        row = {"system": label, "T": T, "status": "ok", "timing": "host"}
        row.update(summarize([(p[0], p[1]) for p in per_rank]))
        bad = [p[2] for p in per_rank if p[2] not in ("yes", "-")]
        row["checked"] = ("NO: " + bad[0]) if bad else ("yes (vs numpy reference)" if check == "yes" else "-")
        rows.append(row)
    comm.close()
    for sname in systems:
        rows += unavailable_rows(sname, "--cpu times ours only (host backend)", a.tokens)
    return R, me, rows, "%d rank(s), host backend (--cpu smoke run)" % R


def cpu_check(a, comm, res, idx_all, w_all, sent, fp8, num):
    """Ours on the host backend against the numpy reference: every received row equals its source
    row (keys from the routing), and the combine of the stand-in expert equals the fmaf chain."""
    R, me = comm.nranks, comm.rank
    T = idx_all.shape[1]
    counts = res.counts.tolist()
    keys = expected_keys(idx_all, me, R, a.experts)
    ey = np.zeros((comm.recv_capacity, a.hidden), np.uint16)
    lo, _ = owner_range(me, R, a.experts)
    for j, (start, n) in enumerate(ours_rows(counts)):
        why = compare_keys(keys[j], np.zeros(n, np.int64) if n != len(keys[j]) else keys[j])
        if why:
            return "expert %d: %s" % (lo + j, why)
        src_r, src_t = keys[j] // max(T, 1), keys[j] % max(T, 1)
        want_x = np.stack([sent[r][0][t] for r, t in zip(src_r, src_t)]) if n else res.x[start:start]
        if not np.array_equal(res.x[start : start + n], want_x):
            return "expert %d: received rows differ from their source rows" % (lo + j)
        if fp8:
            want_s = np.stack([sent[r][1][t] for r, t in zip(src_r, src_t)]) if n else res.scales[start:start]
            if not np.array_equal(res.scales[start : start + n], want_s):
                return "expert %d: received scales differ" % (lo + j)
            x32 = num.dequantize_fp8(res.x[start : start + n], res.scales[start : start + n], SCALE_BLOCK)
        else:
            x32 = num.f32_from_bf16(res.x[start : start + n])
        ey[start : start + n] = num.bf16_from_f32(x32 * np.float32(expert_scale(lo + j)))
    y = num.f32_from_bf16(comm.combine(ey))
    # Reference: y[t] = sum_k w[t,k] * bf16(x[t] * scale(e_k)), fp32, rounded to bf16.
    x, s = sent[me]
    x32 = num.dequantize_fp8(x, s, SCALE_BLOCK) if fp8 else num.f32_from_bf16(x)
    idx, w = idx_all[me], w_all[me]
    want = np.zeros_like(x32)
    for k in range(idx.shape[1]):
        scale = (1.0 + (idx[:, k] % 7) / 8.0).astype(np.float32)[:, None]
        want += w[:, k : k + 1] * num.f32_from_bf16(num.bf16_from_f32(x32 * scale))
    want = num.f32_from_bf16(num.bf16_from_f32(want))
    ok, worst, nbad = close(y, want, RTOL_COMBINE)
    if not ok:
        return "combine: %d values off (worst relative %.3g)" % (nbad, worst)
    return "yes"


# ---------------------------------------------------------------------------------------------
# The GPU run (torch, one process per GPU)
# ---------------------------------------------------------------------------------------------
class Unavailable(Exception):
    """A system that cannot run here: the reason goes in the table."""


class Ctx:
    """What every system shares in one process: the shape, the group, the device."""

    def __init__(self, a, torch, dist):
        self.a, self.torch, self.dist = a, torch, dist
        self.R, self.me = dist.get_world_size(), dist.get_rank()
        self.dev = torch.device("cuda", torch.cuda.current_device())
        self.E, self.K, self.H = a.experts, a.topk, a.hidden
        self.fp8 = a.dtype == "fp8"
        self.maxT = max(a.tokens)
        self.lo, self.hi = owner_range(self.me, self.R, self.E)
        self.one = torch.ones(1, device=self.dev)
        self._inputs = {}

    def barrier_on_stream(self):
        """One float all_reduce on the current stream: aligns the GPUs before the first event, the
        same barrier moefabric-moe-gpu-perf captures in its graphs."""
        self.dist.all_reduce(self.one)

    def inputs(self, T):
        """This rank's tokens and every rank's routing for T: x bf16 [T, H], (fp8 x, scales) as
        ours and the normal kernels take it, topk_idx int64 / int32, weights, all on the GPU."""
        if T in self._inputs:
            return self._inputs[T]
        torch = self.torch
        idx_all, w_all = make_routing(self.a.seed, T, self.R, self.E, self.K)
        x = gen_x(torch, self.a.seed, T, self.me, self.H, self.dev)
        q, s = quantize_fp8(torch, x) if self.fp8 else (None, None)
        inp = {
            "T": T,
            "idx_all": idx_all,
            "w_all": w_all,
            "x": x,
            "q": q,
            "s": s,
            "idx64": torch.from_numpy(idx_all[self.me]).to(self.dev),
            "idx32": torch.from_numpy(idx_all[self.me].astype(np.int32)).to(self.dev),
            "w": torch.from_numpy(w_all[self.me]).to(self.dev),
            "keys": expected_keys(idx_all, self.me, self.R, self.E),
        }
        self._inputs = {T: inp}  # one T at a time
        return inp

    def allgather_obj(self, obj):
        out = [None] * self.R
        self.dist.all_gather_object(out, obj)
        return out

    def agree(self, ok):
        """True when every rank says ok (a failure on one rank skips the step everywhere)."""
        t = self.torch.tensor([1 if ok else 0], device=self.dev, dtype=self.torch.int32)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MIN)
        return bool(t.item())


def gen_x(torch, seed, T, rank, H, dev):
    """Rank `rank`'s tokens, bf16 [T, H], the same in every process (seeded generator on the GPU)."""
    g = torch.Generator(device=dev)
    g.manual_seed((seed * 1000003 + T * 8191 + rank) & 0x7FFFFFFF)
    return torch.randn((T, H), generator=g, device=dev, dtype=torch.float32).to(torch.bfloat16)


def quantize_fp8(torch, x):
    """bf16 [T, H] -> (fp8 e4m3 [T, H], fp32 scales [T, H/128]): amax/448 per block of 128, as
    moefabric's adapter quantizes."""
    T, H = x.shape
    xb = x.float().reshape(T, H // SCALE_BLOCK, SCALE_BLOCK)
    amax = xb.abs().amax(dim=2)
    scales = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (xb / scales[:, :, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.reshape(T, H).contiguous(), scales.contiguous()


def dequant(torch, x, scales):
    """Rows as float32: fp8 times its block scales, or bf16 widened."""
    if scales is None:
        return x.float()
    n, H = x.shape
    return (x.float().reshape(n, H // SCALE_BLOCK, SCALE_BLOCK) * scales.float()[:, :, None]).reshape(n, H)


def expert_out(torch, x32, e):
    return (x32 * expert_scale(e)).to(torch.bfloat16)


class Reference:
    """Ours' result for one T, untimed: per local expert the received rows (float32, by key) and
    the stand-in expert outputs (bf16, by key), and the combined y (float32)."""

    def __init__(self, keys, rows, ey, y):
        self.keys, self.rows, self.ey, self.y = keys, rows, ey, y


# ---- the systems -------------------------------------------------------------------------------
class System:
    name = "?"
    graphable = False  # CUDA-graph capture of dispatch + combine works
    checkable = True  # has a check against ours

    def __init__(self, ctx):
        self.ctx = ctx

    def setup(self):
        pass

    def max_tokens(self):
        return self.ctx.maxT

    def prepare(self, T):
        """Build the timing inputs for T (after inputs(T))."""

    def dispatch(self):
        raise NotImplementedError

    def combine(self):
        raise NotImplementedError

    def check(self, T, ref):
        """'yes' or 'NO: why' against ours' Reference, or a note when there is nothing to check."""
        return "-"

    def close(self):
        pass


class Ours(System):
    graphable = True

    def __init__(self, ctx, eager=False, label="ours"):
        super().__init__(ctx)
        self.name = label
        self.graphable = not eager
        self.checkable = not eager  # ours-eager: the same library as ours, timed eagerly

    def setup(self):
        import moefabric

        a = self.ctx.a
        if a.node_size:
            os.environ["MOEFABRIC_NODE_SIZE"] = str(a.node_size)
        self.comm = moefabric.Communicator.from_process_group(
            num_experts=self.ctx.E, topk=self.ctx.K, hidden=self.ctx.H, max_tokens_per_rank=self.ctx.maxT,
            dispatch_dtype=a.dtype, backend="cuda")
        if (self.comm.first_expert, self.comm.num_local_experts) != (self.ctx.lo, self.ctx.hi - self.ctx.lo):
            raise RuntimeError("unexpected expert placement %s" % ((self.comm.first_expert, self.comm.num_local_experts),))

    def _send(self, inp):
        fp8 = self.ctx.fp8
        return (inp["q"] if fp8 else inp["x"]), inp["idx32"], inp["w"], (inp["s"] if fp8 else None)

    def prepare(self, T):
        torch, ctx = self.ctx.torch, self.ctx
        inp = ctx.inputs(T)
        self.args = self._send(inp)
        self.ey = torch.zeros((self.comm.recv_capacity, ctx.H), dtype=torch.bfloat16, device=ctx.dev)
        self.y = torch.empty((T, ctx.H), dtype=torch.bfloat16, device=ctx.dev)

    def dispatch(self):
        x, idx, w, s = self.args
        self.res = self.comm.dispatch(x, idx, w, x_scales=s)

    def combine(self):
        self.comm.combine(self.ey, out=self.y if self.y.shape[0] > 0 else None)

    def reference(self, T):
        """One checked round: ours' received rows against their source rows (every rank regenerates
        the senders' tokens), the stand-in experts, combine. Returns (Reference, 'yes' or 'NO: ...')."""
        torch, ctx = self.ctx.torch, self.ctx
        inp = ctx.inputs(T)
        x, idx, w, s = self._send(inp)
        res = self.comm.dispatch(x, idx, w, x_scales=s)
        counts = res.counts.cpu().tolist()
        ey = torch.zeros((self.comm.recv_capacity, ctx.H), dtype=torch.bfloat16, device=ctx.dev)
        senders = {}
        verdict = "yes"
        keys, rows, eys = [], [], []
        for j, (start, n) in enumerate(ours_rows(counts)):
            want = inp["keys"][j]
            if n != len(want) and verdict == "yes":
                verdict = "NO: expert %d received %d rows, the routing sends %d" % (ctx.lo + j, n, len(want))
            n = min(n, len(want))
            k = want[:n]
            rx = res.x[start : start + n]
            rs = res.scales[start : start + n] if ctx.fp8 else None
            if verdict == "yes" and n:
                src_r, src_t = k // T, k % T
                for r in np.unique(src_r).tolist():
                    if r not in senders:
                        xr = gen_x(torch, ctx.a.seed, T, r, ctx.H, ctx.dev)
                        senders[r] = quantize_fp8(torch, xr) if ctx.fp8 else (xr, None)
                    sel = np.nonzero(src_r == r)[0]
                    tt = torch.from_numpy(src_t[sel]).to(ctx.dev)
                    ss = torch.from_numpy(sel).to(ctx.dev)
                    same = torch.equal(rx[ss].view(torch.uint8) if ctx.fp8 else rx[ss],
                                       senders[r][0][tt].view(torch.uint8) if ctx.fp8 else senders[r][0][tt])
                    if ctx.fp8:
                        same = same and torch.equal(rs[ss], senders[r][1][tt])
                    if not same:
                        verdict = "NO: expert %d: rows from rank %d differ from the sent tokens" % (ctx.lo + j, r)
                        break
            x32 = dequant(torch, rx, rs)
            e_out = expert_out(torch, x32, ctx.lo + j)
            ey[start : start + n] = e_out
            keys.append(k)
            rows.append(x32)
            eys.append(e_out)
        y = self.comm.combine(ey)
        torch.cuda.synchronize()
        return Reference(keys, rows, eys, y.float()), verdict

    def close(self):
        self.comm.close()


def _import_deepep():
    try:
        import deep_ep  # noqa: F401
        from deep_ep import Buffer
    except Exception as e:  # ImportError, or a missing shared library
        raise Unavailable("import deep_ep: %s" % first_line(e))
    return Buffer


def _import_uccl():
    """The uccl wheel's ep module (libcudart.so.12 from nvidia-cuda-runtime-cu12 preloaded) and the
    DeepEP-style Buffer from UCCL-EP's Python sources (uccl_ep_py, installed next to the wheel)."""
    import ctypes
    import importlib.util

    for d in sys.path:
        p = os.path.join(d, "nvidia", "cuda_runtime", "lib", "libcudart.so.12")
        if os.path.exists(p):
            ctypes.CDLL(p, mode=ctypes.RTLD_GLOBAL)
            break
    try:
        from uccl import ep  # noqa: F401
    except Exception as e:
        raise Unavailable("import uccl.ep: %s" % first_line(e))
    if importlib.util.find_spec("uccl_ep_py") is None:
        raise Unavailable("uccl_ep_py (UCCL-EP's ep/bench/buffer.py, utils.py) is not installed")
    try:
        from uccl_ep_py.buffer import Buffer
    except Exception as e:
        raise Unavailable("import uccl_ep_py.buffer: %s" % first_line(e))
    return Buffer


def ll_buffer_bytes(Buffer, T, H, R, E):
    return int(Buffer.get_low_latency_rdma_size_hint(T, H, R, E))


class LowLatency(System):
    """DeepEP's (or UCCL-EP's) low-latency kernels: bf16 in, fp8 cast inside the kernel when
    dispatching fp8; receive layout [local experts, R * max tokens, H]."""

    graphable = True

    def __init__(self, ctx, family):
        super().__init__(ctx)
        self.family = family
        self.name = family + "-ll"
        self.graphable = family == "deepep" and not ctx.a.eager  # UCCL-EP's Python Buffer calls its proxies per call

    def setup(self):
        ctx = self.ctx
        Buffer = _import_deepep() if self.family == "deepep" else _import_uccl()
        self.Buffer = Buffer
        limit = ctx.a.ll_max_gib * 2**30
        fits = [T for T in ctx.a.tokens if ll_buffer_bytes(Buffer, T, ctx.H, ctx.R, ctx.E) <= limit]
        if not fits:
            raise Unavailable("the low-latency buffer for T=%d exceeds --ll-max-gib %.0f" % (min(ctx.a.tokens),
                                                                                          ctx.a.ll_max_gib))
        self.llT = max(fits)
        nbytes = ll_buffer_bytes(Buffer, self.llT, ctx.H, ctx.R, ctx.E)
        # DeepEP asserts NVSHMEM_QP_DEPTH >= 2 * (max tokens + 1) (its RDMA queues; NVLink here).
        depth = 1024
        while depth < 2 * (self.llT + 1):
            depth *= 2
        os.environ["NVSHMEM_QP_DEPTH"] = str(max(depth, int(os.environ.get("NVSHMEM_QP_DEPTH", "0") or 0)))
        self.buf = Buffer(ctx.dist.group.WORLD, num_nvl_bytes=0, num_rdma_bytes=nbytes, low_latency_mode=True,
                          num_qps_per_rank=max(1, ctx.E // ctx.R), explicitly_destroy=True)
        self.nbytes = nbytes

    def max_tokens(self):
        return self.llT

    def prepare(self, T):
        torch, ctx = self.ctx.torch, self.ctx
        inp = ctx.inputs(T)
        self.inp = inp
        nl = ctx.hi - ctx.lo
        self.cx = torch.zeros((nl, ctx.R * self.llT, ctx.H), dtype=torch.bfloat16, device=ctx.dev)
        self.handle = None

    def _dispatch(self, inp):
        out = self.buf.low_latency_dispatch(inp["x"], inp["idx64"], self.llT, self.ctx.E, use_fp8=self.ctx.fp8,
                                            async_finish=False, return_recv_hook=False)
        return out[0], out[1], out[2]

    def dispatch(self):
        _, _, self.handle = self._dispatch(self.inp)

    def combine(self):
        self.buf.low_latency_combine(self.cx, self.inp["idx64"], self.inp["w"], self.handle, async_finish=False,
                                     return_recv_hook=False)

    def check(self, T, ref):
        torch, ctx = self.ctx.torch, self.ctx
        inp = ctx.inputs(T)
        recv, count, handle = self._dispatch(inp)
        rx, rs = recv if ctx.fp8 else (recv, None)
        src_info, layout = handle[0].cpu().numpy(), handle[1].cpu().numpy()
        count = count.cpu().numpy()
        cx = self.cx.zero_()  # prepare()'s combine input, filled from ours' expert outputs here
        verdict, worst = "yes", 0.0
        rtol = RTOL_FP8_REQUANT if ctx.fp8 else RTOL_EXACT
        for j in range(ctx.hi - ctx.lo):
            rows, keys = ll_rows(layout[j], src_info[j], T)
            why = compare_keys(ref.keys[j], keys)
            if not why and int(count[j]) != len(keys):
                why = "count %d, layout says %d" % (int(count[j]), len(keys))
            if why:
                return "NO: dispatch, expert %d: %s" % (ctx.lo + j, why)
            if not len(rows):
                continue
            rr = torch.from_numpy(rows).to(ctx.dev)
            got = dequant(torch, rx[j][rr], rs[j][rr] if rs is not None else None)
            ok, w, nbad = close(got, ref.rows[j], rtol, atol=fp8_step_floor(torch, ref.rows[j]) if ctx.fp8 else 1e-30)
            worst = max(worst, w)
            if not ok:
                verdict = "NO: dispatch, expert %d: %d values off (worst relative %.3g)" % (ctx.lo + j, nbad, w)
                break
            cx[j][rr] = ref.ey[j]
        y = self.buf.low_latency_combine(cx, inp["idx64"], inp["w"], handle, async_finish=False,
                                         return_recv_hook=False)[0]
        if verdict != "yes":
            return verdict
        ok, w, nbad = close(y.float(), ref.y, RTOL_COMBINE)
        if not ok:
            return "NO: combine: %d values off (worst relative %.3g)" % (nbad, w)
        return "yes" + (" (fp8 recast: worst %.2g)" % worst if ctx.fp8 and worst > 0 else "")

    def close(self):
        self.buf.destroy()


class Normal(System):
    """DeepEP's (or UCCL-EP's) normal (high-throughput, intranode NVLink) kernels: the layout
    (get_dispatch_layout) and the dispatch together are the dispatch time; fp8 goes in as
    (e4m3, scales) as ours takes it; one received row per (token, destination rank); the combine
    sums one pre-reduced row per received token over the ranks."""

    def __init__(self, ctx, family):
        super().__init__(ctx)
        self.family = family
        self.name = family + "-normal"

    def setup(self):
        ctx = self.ctx
        if ctx.R not in (2, 4, 8):
            raise Unavailable("the intranode normal kernels support 2, 4 or 8 ranks, not %d" % ctx.R)
        Buffer = _import_deepep() if self.family == "deepep" else _import_uccl()
        hidden_bytes = ctx.H * 2
        try:
            nvl = max(cfg.get_nvl_buffer_size_hint(hidden_bytes, ctx.R)
                      for cfg in (Buffer.get_dispatch_config(ctx.R), Buffer.get_combine_config(ctx.R)))
        except Exception:
            nvl = int(1e9)
        self.buf = Buffer(ctx.dist.group.WORLD, num_nvl_bytes=int(nvl), num_rdma_bytes=0, low_latency_mode=False,
                          explicitly_destroy=True)

    def _dispatch(self, inp):
        b = self.buf
        ntr, ntrr, nte, in_rank, _ = b.get_dispatch_layout(inp["idx64"], self.ctx.E)
        x = (inp["q"], inp["s"]) if self.ctx.fp8 else inp["x"]
        out = b.dispatch(x, num_tokens_per_rank=ntr, num_tokens_per_rdma_rank=ntrr, is_token_in_rank=in_rank,
                         num_tokens_per_expert=nte, topk_idx=inp["idx64"], topk_weights=inp["w"])
        return out  # recv_x, recv_topk_idx, recv_topk_weights, counts list, handle, event

    def prepare(self, T):
        torch, ctx = self.ctx.torch, self.ctx
        self.inp = ctx.inputs(T)
        out = self._dispatch(self.inp)
        n = (out[0][0] if isinstance(out[0], tuple) else out[0]).shape[0]
        self.cin = torch.zeros((n, ctx.H), dtype=torch.bfloat16, device=ctx.dev)
        self.handle = out[4]
        self.buf.combine(self.cin, self.handle)
        torch.cuda.synchronize()

    def dispatch(self):
        self.handle = self._dispatch(self.inp)[4]

    def combine(self):
        self.buf.combine(self.cin, self.handle)

    def check(self, T, ref):
        torch, ctx = self.ctx.torch, self.ctx
        inp = ctx.inputs(T)
        recv, r_idx, r_w, _, handle, _ = self._dispatch(inp)
        rx, rs = recv if ctx.fp8 else (recv, None)
        layout = normal_rows(handle[0].cpu().numpy(), ctx.me, handle[3].cpu().numpy(), r_idx.cpu().numpy(), T,
                             ctx.hi - ctx.lo)
        cin = torch.zeros((rx.shape[0], ctx.H), dtype=torch.float32, device=ctx.dev)
        for j, (rows, slots, keys) in enumerate(layout):
            why = compare_keys(ref.keys[j], keys)
            if why:
                return "NO: dispatch, expert %d: %s" % (ctx.lo + j, why)
            if not len(rows):
                continue
            rr = torch.from_numpy(rows).to(ctx.dev)
            got = dequant(torch, rx[rr], rs[rr] if rs is not None else None)
            ok, w, nbad = close(got, ref.rows[j], RTOL_EXACT)
            if not ok:
                return "NO: dispatch, expert %d: %d values off (worst relative %.3g)" % (ctx.lo + j, nbad, w)
            wk = r_w[rr, torch.from_numpy(slots).to(ctx.dev)].float()[:, None]
            cin.index_add_(0, rr, wk * ref.ey[j].float())
        y = self.buf.combine(cin.to(torch.bfloat16), handle)[0]
        ok, w, nbad = close(y.float(), ref.y, RTOL_COMBINE)
        if not ok:
            return "NO: combine: %d values off (worst relative %.3g)" % (nbad, w)
        return "yes"

    def close(self):
        self.buf.destroy()


class NcclAllToAll(System):
    """torch.distributed all_to_all_single of the bytes moefabric-moe-gpu-perf uses for its NCCL
    baseline: dispatch T x (token bytes + scales) to every rank, combine T x K x H x 2 / R to every
    rank. Moves bytes, routes nothing: nothing to check."""

    name = "nccl-a2a"
    graphable = True
    checkable = False

    def __init__(self, ctx):
        super().__init__(ctx)
        self.graphable = not ctx.a.eager

    def prepare(self, T):
        torch, ctx = self.ctx.torch, self.ctx
        xb = ctx.H * (1 if ctx.fp8 else 2) + (ctx.H // SCALE_BLOCK * 4 if ctx.fp8 else 0)
        d = T * xb
        c = -(-T * ctx.K * ctx.H * 2 // ctx.R)
        mk = lambda n: torch.zeros(max(n, 1) * ctx.R, dtype=torch.uint8, device=ctx.dev)  # noqa: E731
        self.ds, self.dr, self.cs, self.cr = mk(d), mk(d), mk(c), mk(c)

    def dispatch(self):
        self.ctx.dist.all_to_all_single(self.dr, self.ds)

    def combine(self):
        self.ctx.dist.all_to_all_single(self.cr, self.cs)

    def check(self, T, ref):
        return "- (bytes only)"


def make_system(ctx, name):
    a = ctx.a
    if name == "ours":
        return Ours(ctx, eager=a.eager, label=a.label or ("ours-node%d" % a.node_size if a.node_size else "ours"))
    if name == "ours-eager":
        return Ours(ctx, eager=True, label=(a.label or "ours") + "-eager")
    if name in ("deepep-ll", "uccl-ll"):
        return LowLatency(ctx, name.split("-")[0])
    if name in ("deepep-normal", "uccl-normal"):
        return Normal(ctx, name.split("-")[0])
    if name == "nccl-a2a":
        return NcclAllToAll(ctx)
    raise ValueError(name)


def external_events(torch):
    """Timing events that work inside a CUDA graph (cudaEventRecordExternal), or None."""
    try:
        return [torch.cuda.Event(enable_timing=True, external=True) for _ in range(3)]
    except TypeError:
        return None


def time_system(ctx, sysm, T):
    """(timing, dispatch µs list, combine µs list) of this rank: per iteration a barrier (one
    all_reduce), event, dispatch, event, combine, event; in one CUDA graph replayed per iteration
    when the system supports capture, else eager calls."""
    torch, a = ctx.torch, ctx.a
    graph = sysm.graphable and not a.eager
    ev = external_events(torch) if graph else None
    if graph and ev is None:
        graph = False
    if ev is None:
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)]

    def step():
        ctx.barrier_on_stream()
        ev[0].record()
        sysm.dispatch()
        ev[1].record()
        sysm.combine()
        ev[2].record()

    if graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                step()  # warm-up outside the capture (buffers, NCCL's lazy setup)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            step()
        run = g.replay
    else:
        run = step
    d, c = [], []
    for it in range(-a.warmup, a.iters):
        run()
        torch.cuda.synchronize()
        if it >= 0:
            d.append(ev[0].elapsed_time(ev[1]) * 1e3)
            c.append(ev[1].elapsed_time(ev[2]) * 1e3)
    if graph:
        del g
    return ("graph" if graph else "eager"), d, c


def run_gpu(a):
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local % max(1, torch.cuda.device_count()))
    if "RANK" not in os.environ:  # one rank without a launcher
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": os.environ.get("MASTER_PORT", "29533")})
    dist.init_process_group("nccl", device_id=torch.device("cuda", torch.cuda.current_device()))
    ctx = Ctx(a, torch, dist)
    R, me = ctx.R, ctx.me
    ctx.barrier_on_stream()
    torch.cuda.synchronize()
    rows = []
    notes = []
    ours_ref = None
    peers = [s for s in a.systems if s not in ("ours", "ours-eager")]
    need_ref = any(s.startswith(("deepep", "uccl")) for s in peers) and not a.no_check  # nccl-a2a has no check
    order = ["ours", "ours-eager"] + peers  # ours first: the reference of every check
    for name in order:
        if name not in a.systems and not (name == "ours" and need_ref):
            continue
        sysm = make_system(ctx, name)
        timed = name in a.systems
        err = None
        try:
            sysm.setup()
        except Unavailable as e:
            err = "unavailable: %s" % e
        except Exception as e:
            err = "setup failed: %s" % first_line(e)
            traceback.print_exc()
        errs = [e for e in ctx.allgather_obj(err) if e]
        if errs:
            if timed:
                rows += [{"system": sysm.name, "T": T, "status": errs[0]} for T in a.tokens]
            if me == 0:
                print("# %s: %s" % (sysm.name, errs[0]), flush=True)
            continue
        if name == "ours" and need_ref:
            ours_ref = sysm
        if not timed:
            continue
        for T in a.tokens:
            row = {"system": sysm.name, "T": T}
            if T > sysm.max_tokens():
                row["status"] = "skipped: buffers sized for T <= %d (--ll-max-gib)" % sysm.max_tokens()
                rows.append(row)
                continue
            status, check, timing, d, c = "ok", "-", "", [], []
            try:
                ctx.inputs(T)
                sysm.prepare(T)
                try:  # a check that raises is reported in the table; the timing still runs
                    if a.no_check:
                        pass
                    elif sysm is ours_ref or (isinstance(sysm, Ours) and sysm.checkable):
                        _, check = sysm.reference(T)
                        check = check if check != "yes" else "yes (vs sent tokens)"
                    elif ours_ref is not None and sysm.checkable:
                        ref, _ = ours_ref.reference(T)
                        check = sysm.check(T, ref)
                        del ref
                    else:
                        check = sysm.check(T, None)
                except Exception as e:
                    check = "NO: the check raised %s" % first_line(e)
                    traceback.print_exc()
                torch.cuda.synchronize()
                timing, d, c = time_system(ctx, sysm, T)
            except Exception as e:
                status = "failed: %s" % first_line(e)
                traceback.print_exc()
            torch.cuda.synchronize()
            per_rank = ctx.allgather_obj([status, check, timing, d, c])
            bad = [p[0] for p in per_rank if p[0] != "ok"]
            if bad:
                row["status"] = bad[0]
            else:
                row.update({"status": "ok", "timing": timing})
                row.update(summarize([(p[3], p[4]) for p in per_rank]))
                checks = [p[1] for p in per_rank]
                no = [x for x in checks if x.startswith("NO")]
                row["checked"] = no[0] if no else checks[0]
                if me == 0:
                    print("# %-14s T=%-5d %s dispatch %.1f us, combine %.1f us, checked %s" % (
                        sysm.name, T, timing, row["dispatch_p50_us"], row["combine_p50_us"], row["checked"]),
                        flush=True)
            rows.append(row)
            if bad and me == 0:
                print("# %s T=%d: %s" % (sysm.name, T, bad[0]), flush=True)
        if sysm is not ours_ref:
            try:
                sysm.close()
            except Exception as e:
                notes.append("%s: close failed: %s" % (sysm.name, first_line(e)))
    if ours_ref is not None:
        ours_ref.close()
    name = torch.cuda.get_device_name()
    where = "%d rank(s) on %s, %s" % (R, name, "nodes of %d (MOEFABRIC_NODE_SIZE) for ours" % a.node_size
                                      if a.node_size else "one node (NVLink)")
    dist.barrier()
    dist.destroy_process_group()
    return R, me, rows, where, notes


def main(argv=None):
    a = build_parser().parse_args(argv)
    if a.merge:
        docs = []
        for f in a.merge:
            with open(f) as fh:
                docs.append(json.load(fh))
        print(format_table(merge_docs(docs)))
        return 0
    if a.hidden % SCALE_BLOCK:
        print("--hidden must be a multiple of %d" % SCALE_BLOCK, file=sys.stderr)
        return 2
    notes = []
    if a.cpu:
        R, me, rows, where = run_cpu(a)
    else:
        R, me, rows, where, notes = run_gpu(a)
    if me != 0:
        return 0
    doc = {
        "meta": {"tool": "moefabric-peers", "experts": a.experts, "topk": a.topk, "hidden": a.hidden,
                 "dtype": a.dtype, "tokens": a.tokens, "iters": a.iters, "warmup": a.warmup, "ranks": R,
                 "node_size": a.node_size, "where": where, "seed": a.seed},
        "systems_order": [r["system"] for r in rows if r.get("T") == rows[0].get("T")] if rows else [],
        "reference": "ours",
        "notes": notes,
        "rows": rows,
    }
    print(format_table(doc), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)
    bad = [r for r in rows if str(r.get("checked", "")).startswith("NO")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
