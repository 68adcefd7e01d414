"""perf/peers.py on the CPU: its options, the decoding of each peer's receive layout (DeepEP's and
UCCL-EP's low-latency and normal layouts, built here the way their kernels fill them, in their own
row order) into the keys ours receives, the tolerances, the statistics, the table with unavailable
systems, and its --cpu smoke run (ours on the host backend, checked against numpy) on 1 and 2 ranks."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, tool

_spec = importlib.util.spec_from_file_location("peers", ROOT / "perf" / "peers.py")
peers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peers)


def test_options():
    a = peers.build_parser().parse_args([])
    assert a.tokens == [1, 128, 512, 4096] and (a.hidden, a.topk, a.experts, a.dtype) == (7168, 8, 256, "fp8")
    assert a.systems == ["ours", "deepep-ll", "deepep-normal", "uccl-ll", "uccl-normal", "nccl-a2a"]
    a = peers.build_parser().parse_args(["--tokens", "1,128", "--systems", "ours,nccl-a2a", "--node-size", "4",
                                         "-J", "x.json", "-n", "5", "-w", "1", "-d", "bf16"])
    assert (a.tokens, a.systems, a.node_size, a.json, a.iters, a.warmup, a.dtype) == (
        [1, 128], ["ours", "nccl-a2a"], 4, "x.json", 5, 1, "bf16")
    with pytest.raises(SystemExit):
        peers.build_parser().parse_args(["--systems", "ours,deepep-v9"])


def test_routing_is_shared_and_valid():
    idx, w = peers.make_routing(3, 50, 4, 32, 8)
    idx2, w2 = peers.make_routing(3, 50, 4, 32, 8)
    assert np.array_equal(idx, idx2) and np.array_equal(w, w2)  # every process derives the same
    assert idx.shape == (4, 50, 8) and idx.dtype == np.int64 and w.dtype == np.float32
    assert all(len(set(row)) == 8 for row in idx.reshape(-1, 8).tolist())
    assert idx.min() >= 0 and idx.max() < 32 and (w > 0).all()
    keys = [peers.expected_keys(idx, r, 4, 32) for r in range(4)]
    assert sum(len(k) for ks in keys for k in ks) == 4 * 50 * 8
    for ks in keys:
        assert all(np.array_equal(k, np.sort(k)) for k in ks)


def _ll_layout(idx, me, R, E, max_tokens, rng):
    """What the low-latency dispatch leaves for rank `me`: per local expert, blocks per source rank
    in arrival order (shuffled), tokens in slot order (shuffled); src_info the source token; the
    range packed (count low, begin high)."""
    _, T, _ = idx.shape
    lo, hi = peers.owner_range(me, R, E)
    src_info = np.full((hi - lo, R * max_tokens), -1, np.int32)
    layout = np.zeros((hi - lo, R), np.int64)
    counts = np.zeros(hi - lo, np.int32)
    for j, e in enumerate(range(lo, hi)):
        begin = 0
        for src in rng.permutation(R):
            toks = np.nonzero((idx[src] == e).any(axis=1))[0]
            toks = rng.permutation(toks)
            src_info[j, begin : begin + len(toks)] = toks
            layout[j, src] = int(len(toks)) | (begin << 32)
            begin += len(toks)
        counts[j] = begin
    return src_info, layout, counts


def test_low_latency_layout_decodes_to_ours_keys():
    rng = np.random.default_rng(5)
    R, E, K, T = 4, 16, 4, 37
    idx, _ = peers.make_routing(1, T, R, E, K)
    for me in range(R):
        want = peers.expected_keys(idx, me, R, E)
        src_info, layout, counts = _ll_layout(idx, me, R, E, T, rng)
        for j in range(len(want)):
            rows, keys = peers.ll_rows(layout[j], src_info[j], T)
            assert peers.compare_keys(want[j], keys) == ""
            assert len(rows) == counts[j]
            assert np.array_equal(src_info[j][rows], keys % T)  # each row is the token its key names
    # a lost row is reported
    rows, keys = peers.ll_rows(layout[0], src_info[0], T)
    assert "1 missing" in peers.compare_keys(want[0], keys[1:])


def _normal_layout(idx, me, R, E):
    """What the intranode normal dispatch leaves for rank `me`: one row per token sent to it, by
    source rank then source token; the prefix matrix (tokens of ranks 0..i to rank j); the source
    token per row; the top-k indices made local (-1 for another rank's experts)."""
    _, T, K = idx.shape
    lo, hi = peers.owner_range(me, R, E)
    per = np.zeros((R, R), np.int64)
    src_idx, topk = [], []
    for src in range(R):
        for dst in range(R):
            a, b = peers.owner_range(dst, R, E)
            per[src, dst] = int(((idx[src] >= a) & (idx[src] < b)).any(axis=1).sum())
        for t in range(T):
            hit = (idx[src, t] >= lo) & (idx[src, t] < hi)
            if hit.any():
                src_idx.append(t)
                topk.append(np.where(hit, idx[src, t] - lo, -1))
    return np.cumsum(per, axis=0), np.array(src_idx, np.int64), np.array(topk, np.int64).reshape(-1, K)


def test_normal_layout_decodes_to_ours_keys():
    R, E, K, T = 4, 16, 4, 29
    idx, _ = peers.make_routing(2, T, R, E, K)
    for me in range(R):
        want = peers.expected_keys(idx, me, R, E)
        prefix, src_idx, topk = _normal_layout(idx, me, R, E)
        out = peers.normal_rows(prefix, me, src_idx, topk, T, len(want))
        for j, (rows, slots, keys) in enumerate(out):
            assert peers.compare_keys(want[j], keys) == ""
            assert (topk[rows, slots] == j).all()
            src = keys // T
            assert np.array_equal(idx[src, keys % T, slots], np.full(len(keys), peers.owner_range(me, R, E)[0] + j))


def test_moefabric_rows_and_tolerances():
    assert peers.ours_rows([3, 0, 5]) == [(0, 3), (3, 0), (3, 5)]
    assert peers.ours_rows([3, 0, 5], align=4) == [(0, 3), (4, 0), (4, 5)]
    a = np.array([1.0, -2.0, 3.0], np.float32)
    assert peers.close(a, a.copy(), peers.RTOL_EXACT)[0]
    ok, worst, nbad = peers.close(a, a * np.float32(1 + 2**-8), peers.RTOL_COMBINE)
    assert ok and 0 < worst < peers.RTOL_COMBINE and nbad == 0
    ok, worst, nbad = peers.close(a, a * np.float32(1.2), peers.RTOL_FP8_REQUANT)
    assert not ok and nbad == 3
    assert peers.close(np.zeros(0, np.float32), np.zeros(0, np.float32), 0.0) == (True, 0.0, 0)


def test_summary_is_the_slowest_ranks_p50():
    s = peers.summarize([([1, 2, 3, 100], [5, 5, 5]), ([4, 4, 4, 4], [1, 2, 9])])
    assert s["dispatch_p50_us"] == 4 and s["dispatch_p50_slow_rank"] == 1
    assert s["combine_p50_us"] == 5 and s["combine_p50_slow_rank"] == 0
    assert peers.percentile([3, 1, 2], 0.5) == 2


def _doc(rows, **meta):
    m = {"experts": 256, "topk": 8, "hidden": 7168, "dtype": "fp8", "iters": 10, "warmup": 2, "where": "test"}
    m.update(meta)
    return {"meta": m, "rows": rows, "systems_order": [], "notes": []}


def test_table_ratios_and_unavailable_systems():
    ok = {"status": "ok", "checked": "yes"}
    rows = [
        dict(ok, system="deepep-ll", T=128, timing="graph", dispatch_p50_us=30.0, combine_p50_us=40.0),
        dict(ok, system="ours", T=128, timing="graph", dispatch_p50_us=20.0, combine_p50_us=50.0),
        dict(ok, system="nccl-a2a", T=128, timing="graph", dispatch_p50_us=10.0, combine_p50_us=25.0, checked="-"),
    ] + peers.unavailable_rows("uccl-ll", "import uccl.ep: ImportError: libcudart.so.12", [128])
    doc = peers.merge_docs([_doc(rows[:1], where="A"), _doc(rows[1:], where="B")])
    text = peers.format_table(doc)
    lines = [l for l in text.splitlines() if not l.startswith("#")]
    assert lines[0].split()[1] == "ours"  # ours first after a merge
    dl = next(l for l in lines if "deepep-ll" in l).split()
    assert dl[2:7] == ["graph", "30.0", "40.0", "1.50", "0.80"] and dl[7] == "yes"
    assert "unavailable: import uccl.ep" in next(l for l in lines if "uccl-ll" in l)
    assert "A; B" in text
    json.dumps(doc)


def test_table_without_ours():
    rows = [{"system": "nccl-a2a", "T": 1, "status": "ok", "timing": "eager", "dispatch_p50_us": 9.0,
             "combine_p50_us": 9.5, "checked": "-"}]
    line = [l for l in peers.format_table(_doc(rows)).splitlines() if "nccl-a2a" in l][0]
    assert line.split()[5:7] == ["-", "-"]


def test_cpu_smoke_one_rank():
    p = subprocess.run([sys.executable, str(ROOT / "perf" / "peers.py"), "--cpu", "--tokens", "0,5", "--hidden", "256",
                        "-E", "8", "-k", "2", "-n", "2", "-w", "1", "--systems", "ours,deepep-ll"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert p.returncode == 0, p.stdout
    assert p.stdout.count("yes (vs numpy reference)") == 2, p.stdout
    assert "deepep-ll        unavailable" in p.stdout


@pytest.mark.parametrize("dtype", ["fp8", "bf16"])
def test_cpu_smoke_two_ranks(tmp_path, dtype):
    out = tmp_path / "r.json"
    cmd = [tool("moefabric-run"), "-n", "2", "-T", "120", "--", sys.executable, str(ROOT / "perf" / "peers.py"), "--cpu",
           "--tokens", "1,24", "--hidden", "256", "-E", "16", "-k", "4", "-n", "3", "-w", "1", "-d", dtype,
           "--systems", "ours,nccl-a2a", "-J", str(out)]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=150)
    assert p.returncode == 0, p.stdout
    doc = json.loads(out.read_text())
    ours = [r for r in doc["rows"] if r["system"] == "ours"]
    assert [r["T"] for r in ours] == [1, 24] and all(r["checked"].startswith("yes") for r in ours), doc
    assert doc["meta"]["ranks"] == 2 and len(ours[0]["dispatch_p50_per_rank"]) == 2
