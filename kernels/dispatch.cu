// Dispatch over NVLink. Send: every rank stores its sanitised topkIdx and T into every rank's
// receive block, then each token once into every other rank that owns one of its experts (slot
// (me, t)), then counts its block at each destination with a system-scope release. Recv: wait for
// all sources' blocks, lay the received tokens out expert-major (rows per expert by source, token,
// k, exactly as the host backend) and fan them out into recvX/recvScales, our own tokens straight
// from x (they are not copied through our slots).
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "kernels/device_common.cuh"

namespace moefabric::moe::kern {
namespace {

constexpr int kChunk = 1024;  // pairs ranked per pass of the layout loop

template <class Elt>
__global__ void __launch_bounds__(kThreads) dispatch_send_kernel(const __grid_constant__ Args a) {
  const CudaLayout& l = a.l;
  const int T = tokens_of_call(a, true);
  const int K = l.topk, R = l.nranks, me = l.rank;
  // topkIdx and T to every NVLink rank (ours too: our combine recv reads them back from there).
  // Fabric destinations get records from the fabric pack kernel instead.
  const int n = T * K;
  for (int i = blockIdx.x * kThreads + threadIdx.x; i < n; i += a.blocks * kThreads) {
    const int32_t e = clamp_expert(a, a.idx[i], kPhaseDispatchSend);
    for (int d = 0; d < R; ++d)
      if (!is_remote(a, d)) reinterpret_cast<int32_t*>(a.peers[d] + l.idx_offset(me))[i] = e;
  }
  if (blockIdx.x == 0)
    for (int d = threadIdx.x; d < R; d += blockDim.x)
      if (!is_remote(a, d)) *reinterpret_cast<int32_t*>(a.peers[d] + l.ntok_offset(me)) = T;
  auto slot = [&](int d, int t) { return a.peers[d] + l.token_offset(me, t); };

  // Work items (token, chunk of its row), one warp each; consecutive items on different blocks
  // (spreads the NVLink stores). The warp of chunk 0 also sends the token's scales.
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const size_t xb = static_cast<size_t>(l.hidden) * sizeof(Elt);
  const size_t xb_pad = round_up(xb, 16);
  const size_t nvec = xb / 16;
  const int nch = chunks_of(xb);
  const int64_t items = a.nvlink_peers > 0 ? static_cast<int64_t>(T) * nch : 0;
  for (int64_t it = static_cast<int64_t>(warp) * a.blocks + blockIdx.x; it < items;
       it += static_cast<int64_t>(a.blocks) * kWarps) {
    const int t = static_cast<int>(it / nch), c = static_cast<int>(it % nch);
    // Each NVLink destination rank once: the lowest lane naming it leads (a mask of lanes, K <= 16,
    // not of ranks).
    int d = -1;
    if (lane < K) {
      const int32_t e = a.idx[static_cast<size_t>(t) * K + lane];
      if (e >= 0 && e < l.experts) d = l.owner(e);
      // Fabric destinations get records from the pack kernel; our own recv reads x in place.
      if (d >= 0 && (is_remote(a, d) || d == me)) d = -1;
    }
    const uint32_t same = __match_any_sync(0xffffffffu, d);
    const uint32_t dests = __ballot_sync(0xffffffffu, d >= 0 && lane == __ffs(same) - 1);
    if (dests == 0) continue;
    // The destination ranks in registers, by the whole warp (later loops run on some lanes only).
    int dl[kMaxTopk];
    int nd = 0;
    for (uint32_t m = dests; m != 0; m &= m - 1) dl[nd++] = __shfl_sync(0xffffffffu, d, __ffs(m) - 1);
    const int4* src = reinterpret_cast<const int4*>(static_cast<const uint8_t*>(a.x) + xb * t);
    const size_t v0 = static_cast<size_t>(c) * kChunkVecs + lane, v1 = v0 + 32;
    int4 x0, x1;
    if (v0 < nvec) x0 = __ldg(src + v0);
    if (v1 < nvec) x1 = __ldg(src + v1);
    for (int j = 0; j < nd; ++j) {
      int4* dst = reinterpret_cast<int4*>(slot(dl[j], t));
      if (v0 < nvec) dst[v0] = x0;
      if (v1 < nvec) dst[v1] = x1;
    }
    if (c == 0 && l.nscale > 0) {
      const float* sc = a.x_scales + static_cast<size_t>(l.nscale) * t;
      for (int i = lane; i < l.nscale; i += 32) {
        const float f = __ldg(sc + i);
        for (int j = 0; j < nd; ++j) reinterpret_cast<float*>(slot(dl[j], t) + xb_pad)[i] = f;
      }
    }
  }
  signal_peers(a, l.dcount_offset(me), &a.st->dsend_done, kBellDispatch);
}

// Every block computes the per-expert totals and the counts before its own segment of the
// (source, token, k) pair sequence, so that it can rank and copy its segment with no other
// block's help: the redundant work is reading the small idx arrays, not the tokens.
template <class Elt>
__global__ void __launch_bounds__(kThreads) dispatch_recv_kernel(const __grid_constant__ Args a) {
  extern __shared__ int32_t smem[];
  const CudaLayout& l = a.l;
  const int R = l.nranks, K = l.topk, me = l.rank;
  const int L = l.local_count(me), first = l.first_expert(me);
  int* s_pstart = smem;  // R + 1 entries: first pair of each source
  int32_t* tot = s_pstart + R + 1;
  int32_t* cur = tot + L;
  int32_t* off = cur + L;  // L + 1 entries
  uint32_t* c_row = reinterpret_cast<uint32_t*>(off + L + 1);
  uint32_t* c_code = c_row + kChunk;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  const uint64_t epoch = a.st->seq + 1;
  wait_all_sources(a, l.off_dcount, epoch * static_cast<uint64_t>(a.blocks), kPhaseDispatchRecv);
  if (threadIdx.x == 0) {
    int acc = 0;
    for (int s = 0; s < R; ++s) {
      int ts = __ldcg(reinterpret_cast<const int32_t*>(a.local + l.ntok_offset(s)));
      if (ts < 0 || ts > l.max_tokens) {
        report_error(a, kErrPeerData, kPhaseDispatchRecv, s, kBadTokens);
        ts = 0;
      }
      s_pstart[s] = acc;
      acc += ts * K;
    }
    s_pstart[R] = acc;
  }
  for (int j = threadIdx.x; j < L; j += kThreads) tot[j] = cur[j] = 0;
  __syncthreads();

  const int N = s_pstart[R];
  const int S = (N + a.blocks - 1) / a.blocks;
  const int lo = min(N, static_cast<int>(blockIdx.x) * S), hi = min(N, lo + S);
  // Local expert index of pair p (or -1), and its source: the last s with s_pstart[s] <= p.
  auto local_of = [&](int p, int* src) {
    int lo = 0, hi = R - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (s_pstart[mid] <= p)
        lo = mid;
      else
        hi = mid - 1;
    }
    const int s = lo;
    *src = s;
    const int e = __ldcg(reinterpret_cast<const int32_t*>(a.local + l.idx_offset(s)) + (p - s_pstart[s]));
    const int j = e - first;
    return (j >= 0 && j < L) ? j : -1;
  };
  // Warp-aggregated: all tokens on one expert must not serialise on one shared counter. Eight
  // pairs per lane per pass, their loads issued before any is used (every block reads all N);
  // one match per pair serves both counts (the lanes before `lo` are a prefix of the warp).
  constexpr int kBatch = 8;
  for (int p0 = warp * 32; p0 < N; p0 += kThreads * kBatch) {
    int jj[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int p = p0 + u * kThreads + lane;
      int s;
      jj[u] = p < N ? local_of(p, &s) : -1;
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int p = p0 + u * kThreads + lane, j = jj[u];
      const uint32_t same = __match_any_sync(0xffffffffu, j);
      const uint32_t before = same & __ballot_sync(0xffffffffu, p < lo);
      if (j >= 0 && lane == __ffs(same) - 1) atomicAdd(&tot[j], __popc(same));
      if (j >= 0 && before != 0 && lane == __ffs(before) - 1) atomicAdd(&cur[j], __popc(before));
    }
  }
  __syncthreads();
  if (warp == 0) {  // off[j] = sum over i < j of roundup(tot[i], alignment)
    int carry = 0;
    for (int base = 0; base < L; base += 32) {
      const int j = base + lane;
      int v = warp_scan(j < L ? (tot[j] + l.alignment - 1) / l.alignment * l.alignment : 0, lane);
      if (j < L) off[j + 1] = carry + v;
      carry += __shfl_sync(0xffffffffu, v, 31);
    }
    if (lane == 0) off[0] = 0;
  }
  __syncthreads();
  if (blockIdx.x == 0) {
    for (int j = threadIdx.x; j < L; j += kThreads) {
      a.recv_counts[j] = tot[j];
      for (int r = off[j] + tot[j]; r < off[j + 1]; ++r) a.row_src[r] = ~0u;  // padding
    }
    if (threadIdx.x == 0) a.st->total_rows = static_cast<uint32_t>(off[L]);
  }
  for (int j = threadIdx.x; j < L; j += kThreads) cur[j] += off[j];
  __syncthreads();

  const size_t xb = static_cast<size_t>(l.hidden) * sizeof(Elt);
  const size_t xb_pad = round_up(xb, 16);
  auto* recv_x = static_cast<uint8_t*>(a.recv_x);
  for (int c0 = lo; c0 < hi; c0 += kChunk) {
    const int c1 = min(hi, c0 + kChunk);
    // Every thread looks its pairs up (the loads of the idx arrays in parallel), then warp 0
    // ranks them in order, 32 at a time, from shared memory alone.
    for (int p = c0 + threadIdx.x; p < c1; p += kThreads) {
      int s;
      const int j = local_of(p, &s);
      c_row[p - c0] = static_cast<uint32_t>(j);  // the local expert until warp 0 ranks it
      c_code[p - c0] = static_cast<uint32_t>(s) * l.max_tokens * K + static_cast<uint32_t>(p - s_pstart[s]);
    }
    __syncthreads();
    if (warp == 0) {
      for (int b = c0; b < c1; b += 32) {
        const int p = b + lane;
        const int j = p < c1 ? static_cast<int>(c_row[p - c0]) : -1;
        const uint32_t same = __match_any_sync(0xffffffffu, j);
        const int rank = __popc(same & ((1u << lane) - 1));
        const int base = j >= 0 ? cur[j] : 0;
        __syncwarp();
        if (j >= 0 && rank == 0) cur[j] = base + __popc(same);
        __syncwarp();
        if (p < c1) c_row[p - c0] = j >= 0 ? static_cast<uint32_t>(base + rank) : ~0u;
      }
    }
    __syncthreads();
    // Items over the block's warps: with at least a row per warp, whole rows (more loads in
    // flight per lane); else (pair, chunk of its row), so that a few rows still keep every warp
    // copying.
    const bool whole = c1 - c0 >= kWarps;
    const int nch = whole ? 1 : chunks_of(xb);
    for (int it = warp; it < (c1 - c0) * nch; it += kWarps) {
      const int i = it / nch, c = it % nch;
      const uint32_t row = c_row[i];
      if (row == ~0u) continue;
      const uint32_t code = c_code[i];
      const uint32_t st = code / K;  // s * maxT + t
      const uint32_t s = st / l.max_tokens, t = st % l.max_tokens;
      if (s == static_cast<uint32_t>(me)) {  // our own token: from x, which the send left in place
        if (whole)
          warp_copy_row<kSrcLocal, 4>(recv_x + xb * row, static_cast<const uint8_t*>(a.x) + xb * t, xb, lane);
        else
          warp_copy_chunk<kSrcLocal>(recv_x + xb * row, static_cast<const uint8_t*>(a.x) + xb * t, xb, c,
                                     lane);
        if (c != 0) continue;
        const float* sc = a.x_scales + static_cast<size_t>(l.nscale) * t;
        for (int q = lane; q < l.nscale; q += 32)
          a.recv_scales[static_cast<size_t>(l.nscale) * row + q] = __ldg(sc + q);
        if (lane == 0) {
          a.row_src[row] = code;
          a.self_row[code % (static_cast<uint32_t>(l.max_tokens) * K)] = row;
        }
        continue;
      }
      const uint8_t* slot = a.local + l.off_tok + l.slot_bytes * st;
      if (whole)
        warp_copy_row<kSrcPeer, 4>(recv_x + xb * row, slot, xb, lane);
      else
        warp_copy_chunk<kSrcPeer>(recv_x + xb * row, slot, xb, c, lane);
      if (c != 0) continue;
      if (l.nscale > 0) {
        const float* sc = reinterpret_cast<const float*>(slot + xb_pad);
        for (int q = lane; q < l.nscale; q += 32)
          a.recv_scales[static_cast<size_t>(l.nscale) * row + q] = __ldcg(sc + q);
      }
      if (lane == 0) a.row_src[row] = code;
    }
    __syncthreads();
  }
}

size_t recv_smem_bytes(const Args& a) {
  const int L = a.l.local_count(a.l.rank);
  return (static_cast<size_t>(a.l.nranks) + 1 + 3 * static_cast<size_t>(L) + 1) * 4 +
         2 * static_cast<size_t>(kChunk) * 4;
}

template <class Elt>
cudaError_t launch_recv(const Args& a, cudaStream_t stream) {
  const size_t smem = recv_smem_bytes(a);
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(dispatch_recv_kernel<Elt>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  dispatch_recv_kernel<Elt><<<a.blocks, kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_dispatch_send(const Args& a, cudaStream_t stream) {
  if (a.l.elt_bytes == 1)
    dispatch_send_kernel<__nv_fp8_e4m3><<<a.blocks, kThreads, 0, stream>>>(a);
  else
    dispatch_send_kernel<__nv_bfloat16><<<a.blocks, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t launch_dispatch_recv(const Args& a, cudaStream_t stream) {
  return a.l.elt_bytes == 1 ? launch_recv<__nv_fp8_e4m3>(a, stream) : launch_recv<__nv_bfloat16>(a, stream);
}

}  // namespace moefabric::moe::kern
