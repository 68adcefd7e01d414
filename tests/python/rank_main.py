"""One rank of a multi-process Python test, started by moefabric-run, torchrun-style or
OpenMPI-style variables (tests/python/test_*.py). Exits 0 when every check passed; otherwise
prints what differed and exits 1."""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import moefabric  # noqa: E402
from moefabric import numerics as num  # noqa: E402

import moe_ref  # noqa: E402


def fail(rank, what):
    print("rank %d: FAIL: %s" % (rank, what), flush=True)
    sys.exit(1)


def to_dev(a, dev):
    """numpy -> the array kind the test runs on: numpy for the host backend, a CUDA tensor."""
    if a is None or dev == "cpu":
        return a
    import torch

    if a.dtype == np.uint16:
        return torch.from_numpy(a.view(np.int16)).to(dev).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a)).to(dev)


def to_np(t):
    if t is None or isinstance(t, np.ndarray):
        return t
    import torch

    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).cpu().numpy().view(np.uint16)
    if t.dtype == torch.float8_e4m3fn:
        return t.view(torch.uint8).cpu().numpy()
    return t.cpu().numpy()


def make_comm(a, **cfg):
    if a.device != "cpu":
        import torch

        torch.cuda.set_device(0)  # every rank shares the one GPU
        cfg["backend"] = "cuda"
    if a.via == "python-callable":  # a Python allgather through ctypes, over the launcher's channel
        ch = moefabric.channel()
        return moefabric.Communicator.from_allgather(ch.allgather, ch.rank, ch.nranks, **cfg)
    return moefabric.init(**cfg)


def scenario_dispatch(a):
    """dispatch + combine (or the split halves) for several token counts, bit-exact against the
    reference, the receive buffers reused across calls."""
    fp8 = a.dtype == "fp8"
    comm = make_comm(a, num_experts=a.experts, topk=a.topk, hidden=a.hidden, max_tokens_per_rank=max(a.tokens),
                     dispatch_dtype=a.dtype, expert_alignment=a.align, backend="host")
    R, me = comm.nranks, comm.rank
    if a.device != "cpu" and comm.backend != "cuda":
        fail(me, "expected the CUDA backend")
    lo, hi = moe_ref.owner_range(me, R, a.experts)
    if (comm.first_expert, comm.num_local_experts) != (lo, hi - lo):
        fail(me, "local experts %s" % ((comm.first_expert, comm.num_local_experts),))
    buffers = None
    for it, T in enumerate(a.tokens):
        inputs = [moe_ref.make_inputs(a.seed + it, r, T, a.hidden, a.experts, a.topk, fp8) for r in range(R)]
        x, s, idx, w = inputs[me]
        dx, ds, didx, dw = (to_dev(v, a.device) for v in (x, s, idx.astype(np.int64) if it % 2 else idx, w))
        if a.split:
            res = comm.dispatch_send(dx, didx, dw, x_scales=ds)
            comm.dispatch_recv()
        else:
            res = comm.dispatch(dx, didx, dw, x_scales=ds)
        ptrs = (moefabric._arrays.ptr(res.x), moefabric._arrays.ptr(res.counts))
        if buffers is None:
            buffers = ptrs
        elif buffers != ptrs:
            fail(me, "receive buffers were not reused")
        counts, offsets, rows = moe_ref.expected_dispatch(inputs, me, R, a.experts, a.align)
        if not np.array_equal(to_np(res.counts), counts):
            fail(me, "T=%d counts %s, expected %s" % (T, res.counts.tolist(), counts.tolist()))
        if res.offsets()[0] != offsets:
            fail(me, "offsets %s, expected %s" % (res.offsets()[0], offsets))
        rx, rs = to_np(res.x), to_np(res.scales)
        views = [(rx[o : o + c], None if rs is None else rs[o : o + c]) for o, c in zip(offsets, counts)]
        if a.device == "cpu" and not all(np.shares_memory(v[0], res.x) for v in res.expert_views() if len(v[0])):
            fail(me, "expert_views are not views of the receive buffer")
        ey = np.zeros((comm.recv_capacity, a.hidden), np.uint16)
        for j, (vx, vs) in enumerate(views):
            want_x = np.array([r[0] for r in rows[j]]).reshape(len(rows[j]), a.hidden)
            if not np.array_equal(vx, want_x):
                fail(me, "T=%d expert %d rows differ from the reference" % (T, lo + j))
            if fp8:
                want_s = np.array([r[1] for r in rows[j]]).reshape(len(rows[j]), a.hidden // 128)
                if not np.array_equal(vs, want_s):
                    fail(me, "T=%d expert %d scales differ" % (T, lo + j))
                x32 = num.dequantize_fp8(vx, vs)
            else:
                x32 = num.f32_from_bf16(vx)
            o = offsets[j]
            ey[o : o + len(rows[j])] = moe_ref.expert_fn(lo + j, x32)
        if a.split:
            comm.combine_send(to_dev(ey, a.device))
            y = to_np(comm.combine_recv())
        else:
            y = to_np(comm.combine(to_dev(ey, a.device)))

        def expert_out(t, k, x=x, s=s, idx=idx):
            row = num.dequantize_fp8(x[t : t + 1], s[t : t + 1]) if fp8 else num.f32_from_bf16(x[t : t + 1])
            return moe_ref.expert_fn(int(idx[t, k]), row)[0]

        want = moe_ref.expected_combine(idx, w, expert_out)
        for t in range(T):
            wt = want[t] if want[t] is not None else np.zeros(a.hidden, np.uint16)
            if not np.array_equal(y[t], wt):
                fail(me, "T=%d token %d combine differs from the reference" % (T, t))
    st = comm.stats()
    if st["ops"] != len(a.tokens):
        fail(me, "stats ops %d, expected %d" % (st["ops"], len(a.tokens)))
    comm.close()
    print("rank %d/%d: ok (%d rounds, %s, align %d%s)" % (me, R, len(a.tokens), a.dtype, a.align,
                                                        ", split" if a.split else ""), flush=True)


def scenario_errors(a):
    """Misuse gives Python exceptions naming the problem; the comm stays usable afterwards."""
    E, K, H = 8, 2, 128
    comm = make_comm(a, num_experts=E, topk=K, hidden=H, max_tokens_per_rank=4, backend="host")
    me = comm.rank
    x, _, idx, w = moe_ref.make_inputs(1, me, 4, H, E, K, False, empty_frac=0)

    def expect(exc, text, fn):
        try:
            fn()
        except exc as e:
            if text not in str(e):
                fail(me, "%s raised %r, expected it to mention %r" % (exc.__name__, str(e), text))
            return e
        fail(me, "no %s (expected one mentioning %r)" % (exc.__name__, text))

    expect(TypeError, "x must be numpy.uint16", lambda: comm.dispatch(x.astype(np.float32), idx, w))
    expect(ValueError, "x has shape [4, 64]", lambda: comm.dispatch(x[:, :64].copy(), idx, w))
    expect(ValueError, "max_tokens_per_rank is 4", lambda: comm.dispatch(np.zeros((5, H), np.uint16),
                                                                      np.zeros((5, K), np.int32),
                                                                      np.zeros((5, K), np.float32)))
    expect(ValueError, "x_scales is for fp8", lambda: comm.dispatch(x, idx, w, x_scales=np.zeros((4, 1), np.float32)))
    expect(RuntimeError, "combine needs a dispatch", lambda: comm.combine(np.zeros((comm.recv_capacity, H), np.uint16)))
    bad = idx.copy()
    bad[0, 0] = E + 5
    e = expect(moefabric.MoeError, "ncclInvalidArgument", lambda: comm.dispatch(x, bad, w))
    if not e.text:
        fail(me, "MoeError without ncclMoeGetLastError's text")
    res = comm.dispatch(x, idx, w)  # still usable
    expect(RuntimeError, "already in flight", lambda: comm.dispatch(x, idx, w))
    expect(ValueError, "expert_y has shape", lambda: comm.combine(np.zeros((1, H), np.uint16)))
    comm.combine(np.zeros((comm.recv_capacity, H), np.uint16))
    del res
    comm.close()
    expect(moefabric.MoeError, "closed", lambda: comm.dispatch(x, idx, w))
    print("rank %d: errors ok" % me, flush=True)


def scenario_layer(a):
    """The adapter's MoE layer across ranks against the same layer computed whole here."""
    fp8 = a.dtype == "fp8"
    E, K, H, F = a.experts, a.topk, a.hidden, 64
    layer = moe_ref.MoeLayer(a.seed, E, K, H, F)
    comm = make_comm(a, num_experts=E, topk=K, hidden=H, max_tokens_per_rank=max(a.tokens), dispatch_dtype=a.dtype,
                     expert_alignment=a.align, backend="host")
    pf = moefabric.MoefabricPrepareAndFinalize(comm)
    me = comm.rank
    for it, T in enumerate(a.tokens):
        x32 = np.random.default_rng([a.seed, me, it]).standard_normal((T, H)).astype(np.float32)
        idx, w = layer.route(x32)
        d = a.device
        ex, ex_s, meta, _, _ = pf.prepare(to_dev(num.bf16_from_f32(x32), d), to_dev(w, d), to_dev(idx, d), E, None,
                                          False, "fp8" if fp8 else None)
        ex, ex_s = to_np(ex), to_np(ex_s)
        counts = [int(c) for c in to_np(meta.expert_num_tokens)]
        out = np.zeros((comm.recv_capacity, H), np.uint16)
        o = 0
        for j, c in enumerate(counts):  # the experts half: contiguous segments, expert-major
            rows = num.dequantize_fp8(ex[o : o + c], ex_s[o : o + c]) if fp8 else num.f32_from_bf16(ex[o : o + c])
            out[o : o + c] = layer.expert(comm.first_expert + j, rows)
            o += -(-c // a.align) * a.align
        if d == "cpu":
            y = np.zeros((T, H), np.float32)
            pf.finalize(y, out, w, idx, False, None)
        else:
            import torch

            yd = torch.zeros((T, H), dtype=torch.float32, device=d)  # finalize copies into it
            pf.finalize(yd, to_dev(out, d), to_dev(w, d), to_dev(idx, d), False, None)
            y = yd.cpu().numpy()
        want = num.f32_from_bf16(layer.whole(x32, fp8))
        if not np.array_equal(y, want):
            bad = np.argwhere(y != want)
            fail(me, "T=%d: the layer differs from the whole layer at %d values (first %s)" % (T, len(bad), bad[0]))
    comm.close()
    print("rank %d: MoE layer (%s) equals the whole layer" % (me, a.dtype), flush=True)


def scenario_graph(a):
    """CUDA backend: dispatch + an expert op + combine captured in a CUDA graph, replayed with new
    inputs copied into the captured tensors; each replay bit-exact against the reference."""
    import torch

    E, K, H, T = a.experts, a.topk, a.hidden, max(a.tokens)
    comm = make_comm(a, num_experts=E, topk=K, hidden=H, max_tokens_per_rank=T)
    R, me = comm.nranks, comm.rank
    first = [moe_ref.make_inputs(a.seed, r, T, H, E, K, False) for r in range(R)]
    sx, _, sidx, sw = (to_dev(v, "cuda") for v in first[me])

    def step():
        res = comm.dispatch(sx, sidx, sw)
        return comm.combine(res.x * 2)  # bf16 x 2 is exact: the expert is y = 2x

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up: the receive buffers are made outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        sy = step()
    for it in range(1, 4):
        inputs = [moe_ref.make_inputs(a.seed + it, r, T, H, E, K, False) for r in range(R)]
        x, _, idx, w = inputs[me]
        for dst, src in ((sx, x), (sidx, idx), (sw, w)):
            dst.copy_(to_dev(src, "cuda"))
        graph.replay()
        torch.cuda.synchronize()
        want = moe_ref.expected_combine(
            idx, w, lambda t, k, x=x: num.bf16_from_f32(num.f32_from_bf16(x[t]) * np.float32(2)))
        y = to_np(sy)
        for t in range(T):
            wt = want[t] if want[t] is not None else np.zeros(H, np.uint16)
            if not np.array_equal(y[t], wt):
                fail(me, "replay %d token %d differs from the reference" % (it, t))
    err = comm.async_error()
    if err is not None:
        fail(me, "async error %s" % err)
    comm.close()
    print("rank %d/%d: graph replays ok" % (me, R), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=["dispatch", "errors", "layer", "graph"])
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--topk", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--tokens", type=lambda s: [int(v) for v in s.split(",")], default=[24, 0, 7, 24])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp8"])
    p.add_argument("--align", type=int, default=1)
    p.add_argument("--split", action="store_true")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--via", default="env", choices=["env", "python-callable"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = p.parse_args()
    scenarios = {"dispatch": scenario_dispatch, "errors": scenario_errors, "layer": scenario_layer,
                 "graph": scenario_graph}
    scenarios[a.scenario](a)


if __name__ == "__main__":
    main()
