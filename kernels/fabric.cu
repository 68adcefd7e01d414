// The CUDA backend's side of the MoE protocol (docs/moe-protocol.md) for its fabric peers: the
// kernels pack and unpack, the host proxy (collectives/proxy.cpp) only posts what they staged.
//
// Dispatch, before the NVLink send kernel (which rings the proxy's doorbell when it is done):
//   fabric_count  one warp per fabric destination d: its records (tokens routed there at least
//                 once), (token, k) pairs, and pairs per expert of d
//   fabric_plan   one block: each destination's chunk in the send block, its combine base, its
//                 header, and the proxy's plan (records, chunk offset) in host memory
//   fabric_pack   one warp per fabric destination: records in ascending token order (meta,
//                 the token's row, its scales), and where each (t, k) row will come back
// Dispatch, before the recv kernel (fabric_ingest_dispatch): block 0 waits for every fabric
//   source's first write (and the rest where it was granted), copies and checks its header, and
//   publishes the combine return plan; then one warp per source copies and checks its record
//   metadata into idx[s][i] (records renumbered 0..n-1, ascending token), every warp copies token
//   rows into slot (s, i), and every block counts itself at s, as s's blocks would over NVLink.
// Combine: the send kernel writes rows for fabric homes into the combine staging
//   (combine.cu); before the recv kernel, fabric_ingest_combine copies what the owners returned
//   into combine slot (t, k) and counts itself at each fabric owner.
// A malformed header or record is reported naming the source (kErrPeerData) and that source
// counts as empty; the op still completes so that no peer is left waiting.
#include <cuda_bf16.h>

#include "kernels/device_common.cuh"

namespace moefabric::moe::kern {
namespace {

__device__ __forceinline__ uint32_t lanemask_lt() {
  uint32_t m;
  asm("mov.u32 %0, %%lanemask_lt;" : "=r"(m));
  return m;
}

// (token, k) pairs of token t whose expert lies in [first, first + L).
__device__ __forceinline__ int pairs_in(const Args& a, int t, int first, int L) {
  const int32_t* row = a.idx + static_cast<size_t>(t) * a.l.topk;
  int n = 0;
  for (int k = 0; k < a.l.topk; ++k) n += static_cast<uint32_t>(row[k] - first) < static_cast<uint32_t>(L);
  return n;
}

__global__ void __launch_bounds__(kThreads) fabric_count_kernel(const __grid_constant__ Args a) {
  const CudaLayout& l = a.l;
  const int T = tokens_of_call(a, false);
  const int lane = threadIdx.x % 32, gw = blockIdx.x * kWarps + threadIdx.x / 32, nw = gridDim.x * kWarps;
  for (int d = gw; d < l.nranks; d += nw) {
    if (!is_remote(a, d)) continue;
    const int first = l.first_expert(d), L = l.local_count(d);
    for (int j = lane; j < L; j += 32) a.fs->expert_pairs[first + j] = 0;
    __syncwarp();
    uint32_t recs = 0, pairs = 0;
    for (int t0 = 0; t0 < T; t0 += 32) {
      const int t = t0 + lane;
      int n = 0;
      if (t < T) {
        const int32_t* row = a.idx + static_cast<size_t>(t) * l.topk;
        for (int k = 0; k < l.topk; ++k)
          if (static_cast<uint32_t>(row[k] - first) < static_cast<uint32_t>(L)) {
            ++n;
            atomicAdd(&a.fs->expert_pairs[row[k]], 1u);
          }
      }
      recs += __popc(__ballot_sync(0xffffffffu, n > 0));
      pairs += __reduce_add_sync(0xffffffffu, static_cast<uint32_t>(n));
    }
    if (lane == 0) {
      a.fs->dst_tokens[d] = recs;
      a.fs->dst_pairs[d] = pairs;
    }
  }
}

__global__ void __launch_bounds__(kThreads) fabric_plan_kernel(const __grid_constant__ Args a) {
  const CudaLayout& l = a.l;
  const Layout& pl = a.pl;
  const uint64_t epoch = a.st->seq + 1;
  __shared__ uint64_t s_off;
  __shared__ uint32_t s_base;
  // Destinations in rank order: chunk offsets and combine bases are prefix sums (one pass of
  // blockDim destinations at a time).
  if (threadIdx.x == 0) s_off = pl.off_send, s_base = 0;
  __syncthreads();
  for (int d0 = 0; d0 < l.nranks; d0 += blockDim.x) {
    const int d = d0 + threadIdx.x;
    const bool mine = d < l.nranks && is_remote(a, d);
    const uint32_t n = mine ? a.fs->dst_tokens[d] : 0, p = mine ? a.fs->dst_pairs[d] : 0;
    __shared__ uint64_t s_chunk[kThreads];
    __shared__ uint32_t s_rows[kThreads];
    s_chunk[threadIdx.x] = mine ? pl.send_chunk_bytes(n) : 0;
    s_rows[threadIdx.x] = mine ? static_cast<uint32_t>(pl.rows_returned(n, p)) : 0;
    __syncthreads();
    if (threadIdx.x == 0)
      for (int i = 0; i < static_cast<int>(blockDim.x); ++i) {
        const uint64_t c = s_chunk[i];
        const uint32_t r = s_rows[i];
        s_chunk[i] = s_off;
        s_rows[i] = s_base;
        s_off += c;
        s_base += r;
      }
    __syncthreads();
    if (mine) {
      const uint64_t off = s_chunk[threadIdx.x];
      a.fs->dst_cbase[d] = s_rows[threadIdx.x];
      auto* h = reinterpret_cast<DispatchHeader*>(a.psend + off);
      h->magic = kHeaderMagic;
      h->seq = static_cast<uint32_t>(epoch);
      h->src_rank = static_cast<uint32_t>(l.rank);
      h->ntokens = n;
      h->nprivate = n < static_cast<uint32_t>(pl.max_private) ? n : static_cast<uint32_t>(pl.max_private);
      h->npairs = p;
      h->combine_base = s_rows[threadIdx.x];
      const int first = l.first_expert(d), L = l.local_count(d);
      h->nlocal = static_cast<uint32_t>(L);
      auto* counts = reinterpret_cast<uint32_t*>(h + 1);
      for (int j = 0; j < L; ++j) counts[j] = a.fs->expert_pairs[first + j];
      a.plan[d].ntokens = n;
      a.plan[d].offset = off;
    }
    __syncthreads();
  }
  __threadfence_system();
}

template <class Elt>
__global__ void __launch_bounds__(kThreads) fabric_pack_kernel(const __grid_constant__ Args a) {
  const CudaLayout& l = a.l;
  const Layout& pl = a.pl;
  const int T = tokens_of_call(a, false), K = l.topk;
  const int lane = threadIdx.x % 32, gw = blockIdx.x * kWarps + threadIdx.x / 32, nw = gridDim.x * kWarps;
  const size_t xb = static_cast<size_t>(l.hidden) * sizeof(Elt), xb_pad = round_up(xb, 16);
  for (int d = gw; d < l.nranks; d += nw) {
    if (!is_remote(a, d)) continue;
    const int first = l.first_expert(d), L = l.local_count(d);
    uint8_t* chunk = a.psend + a.plan[d].offset + pl.header_bytes;
    const uint32_t cbase = a.fs->dst_cbase[d];
    uint32_t base_rec = 0, base_pair = 0;
    for (int t0 = 0; t0 < T; t0 += 32) {
      const int t = t0 + lane;
      const int n = t < T ? pairs_in(a, t, first, L) : 0;
      const uint32_t routed = __ballot_sync(0xffffffffu, n > 0);
      const uint32_t incl = warp_scan(static_cast<uint32_t>(n), lane);
      const uint32_t rec = base_rec + __popc(routed & lanemask_lt());
      if (n > 0) {
        auto* meta = reinterpret_cast<int32_t*>(chunk + pl.record_bytes * rec);
        meta[0] = t;
        const int32_t* row = a.idx + static_cast<size_t>(t) * K;
        uint32_t pair = base_pair + incl - static_cast<uint32_t>(n);
        for (int k = 0; k < K; ++k) {
          const int32_t e = row[k];
          meta[1 + k] = e >= 0 && e < l.experts ? e : -1;
          if (static_cast<uint32_t>(e - first) < static_cast<uint32_t>(L))
            a.fs->comb_pos[static_cast<size_t>(t) * K + k] = cbase + pair++;
        }
      }
      // The routed tokens' rows (and scales), one token at a time by the whole warp.
      for (uint32_t m = routed; m != 0; m &= m - 1) {
        const int src_lane = __ffs(m) - 1;
        const int tt = __shfl_sync(0xffffffffu, t, src_lane);
        const uint32_t rr = __shfl_sync(0xffffffffu, rec, src_lane);
        uint8_t* dst = chunk + pl.record_bytes * rr + pl.meta_bytes;
        warp_copy_row<kSrcLocal>(dst, static_cast<const uint8_t*>(a.x) + xb * tt, xb, lane);
        if (l.nscale > 0)
          for (int i = lane; i < l.nscale; i += 32)
            reinterpret_cast<float*>(dst + xb_pad)[i] =
                __ldg(a.x_scales + static_cast<size_t>(l.nscale) * tt + i);
      }
      base_rec += __popc(routed);
      base_pair += __shfl_sync(0xffffffffu, incl, 31);
    }
  }
  // Every store of this kernel is visible at system scope before the send kernel, later in the
  // stream, rings the doorbell.
  __threadfence_system();
}

// One thread per fabric source s (block 0): its header, copied once and checked. False with the
// reason reported (naming s).
__device__ bool ingest_header(const Args& a, int s, uint64_t epoch) {
  const CudaLayout& l = a.l;
  const Layout& pl = a.pl;
  if (!wait_arrival(a, static_cast<int>(WriteKind::kDispatchPrivate), s, epoch, kPhaseDispatchRecv))
    return false;
  const uint8_t* region = a.precv + pl.private_offset(s);
  DispatchHeader h;
  uint32_t* hw = reinterpret_cast<uint32_t*>(&h);
  for (size_t i = 0; i < sizeof h / 4; ++i) hw[i] = static_cast<uint32_t>(ld_sys_i32(region + 4 * i));
  const int L = l.local_count(l.rank);
  const uint32_t P = static_cast<uint32_t>(pl.max_private);
  const uint32_t np = h.ntokens < P ? h.ntokens : P;
  bool ok =
      h.magic == kHeaderMagic && h.seq == static_cast<uint32_t>(epoch) &&
      h.src_rank == static_cast<uint32_t>(s) && h.ntokens <= static_cast<uint32_t>(l.max_tokens) &&
      h.nprivate == np && h.nlocal == static_cast<uint32_t>(L) &&
      static_cast<uint64_t>(h.npairs) <= static_cast<uint64_t>(h.ntokens) * l.topk &&
      static_cast<uint64_t>(h.combine_base) + pl.rows_returned(h.ntokens, h.npairs) <= pl.combine_rows &&
      (h.ntokens == 0 || h.npairs > 0);
  uint64_t sum = 0;
  uint32_t* announced = a.fs->src_counts + static_cast<size_t>(s) * l.max_local;
  for (int j = 0; ok && j < L; ++j) {
    const uint32_t c = static_cast<uint32_t>(ld_sys_i32(region + sizeof h + 4 * static_cast<size_t>(j)));
    announced[j] = c;  // the record scan counts these down to zero
    sum += c;
  }
  ok = ok && sum == h.npairs;
  if (!ok) {
    report_error(a, kErrPeerData, kPhaseDispatchRecv, s, kBadHeader);
    return false;
  }
  if (h.ntokens > h.nprivate) {
    if (!wait_arrival(a, static_cast<int>(WriteKind::kDispatchRest), s, epoch, kPhaseDispatchRecv))
      return false;
    if (static_cast<uint32_t>(ld_sys_i32(a.granted + s)) != h.ntokens - h.nprivate) {
      report_error(a, kErrPeerData, kPhaseDispatchRecv, s, kBadGrant);
      return false;
    }
  }
  a.fs->ret[s].rows = static_cast<uint32_t>(pl.rows_returned(h.ntokens, h.npairs));
  a.fs->ret[s].combine_base = h.combine_base;
  a.fs->src_tokens[s] = h.ntokens;
  return true;
}

// Record i of fabric source s in the protocol receive block (private region, else overflow).
__device__ __forceinline__ const uint8_t* record_of(const Args& a, int s, uint32_t i, uint32_t np,
                                                    uint32_t ov) {
  const Layout& pl = a.pl;
  return i < np ? a.precv + pl.private_offset(s) + pl.header_bytes + pl.record_bytes * i
                : a.precv + pl.overflow_offset(ov + (i - np));
}

__global__ void __launch_bounds__(kThreads) fabric_ingest_dispatch_kernel(const __grid_constant__ Args a) {
  const CudaLayout& l = a.l;
  const Layout& pl = a.pl;
  const uint64_t epoch = a.st->seq + 1;
  const int K = l.topk, R = l.nranks;
  if (blockIdx.x == 0) {
    for (int s = threadIdx.x; s < R; s += blockDim.x)
      if (is_remote(a, s)) a.fs->src_ok[s] = ingest_header(a, s, epoch) ? 1 : 0;
    __syncthreads();
    if (threadIdx.x == 0) {  // the return plan, for the combine send kernel and the proxy
      uint32_t start = 0;
      for (int s = 0; s < R; ++s) {
        if (!is_remote(a, s)) continue;
        ReturnPlan rp = a.fs->ret[s];
        if (!a.fs->src_ok[s]) rp.rows = 0, rp.combine_base = 0;
        rp.row_start = start;
        start += rp.rows;
        a.fs->ret[s] = rp;
        a.ret[s] = rp;
      }
    }
  }
  release_grid(a, 0, epoch);
  const int lane = threadIdx.x % 32, gw = blockIdx.x * kWarps + threadIdx.x / 32, nw = gridDim.x * kWarps;
  const uint32_t P = static_cast<uint32_t>(pl.max_private);
  const int first = l.first_expert(l.rank), L = l.local_count(l.rank);
  // Metadata: one warp per source, records in order.
  for (int s = gw; s < R; s += nw) {
    if (!is_remote(a, s)) continue;
    const uint32_t n = a.fs->src_ok[s] ? a.fs->src_tokens[s] : 0, np = n < P ? n : P;
    const uint32_t ov = n > np ? static_cast<uint32_t>(ld_sys_i32(a.overflow_off + s)) : 0;
    int32_t* idx = reinterpret_cast<int32_t*>(a.local + l.idx_offset(s));
    uint32_t* announced = a.fs->src_counts + static_cast<size_t>(s) * l.max_local;
    int32_t bad = 0, prev = -1;
    uint32_t base_pair = 0;
    for (uint32_t i0 = 0; i0 < n; i0 += 32) {
      const uint32_t i = i0 + lane;
      int32_t tok = -1;
      uint32_t m = 0;
      if (i < n) {
        const uint8_t* rec = record_of(a, s, i, np, ov);
        tok = ld_sys_i32(rec);
        for (int k = 0; k < K; ++k) {
          int32_t e = ld_sys_i32(rec + 4 + 4 * k);
          if (e < -1 || e >= l.experts) {
            bad = kBadRecord;
            e = -1;
          }
          if (static_cast<uint32_t>(e - first) < static_cast<uint32_t>(L)) {
            ++m;
            atomicSub(&announced[e - first], 1u);
          }
          idx[static_cast<size_t>(i) * K + k] = e;
        }
        if (m == 0) bad = kBadNotOurs;
      }
      int32_t before = __shfl_up_sync(0xffffffffu, tok, 1);
      if (lane == 0) before = prev;
      if (i < n && (tok <= before || tok >= l.max_tokens)) bad = kBadRecord;
      const uint32_t incl = warp_scan(m, lane);
      if (i < n) a.fs->pair_base[static_cast<size_t>(s) * l.max_tokens + i] = base_pair + incl - m;
      base_pair += __shfl_sync(0xffffffffu, incl, 31);
      prev = __shfl_sync(0xffffffffu, tok, n - i0 >= 32 ? 31 : static_cast<int>(n - i0 - 1));
    }
    __syncwarp();
    for (int j = lane; j < L && n > 0; j += 32)
      if (atomicAdd(&announced[j], 0u) != 0) bad = kBadCounts;
    bad = __reduce_max_sync(0xffffffffu, bad);
    if (bad != 0 && lane == 0) report_error(a, kErrPeerData, kPhaseDispatchRecv, s, bad);
    if (lane == 0)
      *reinterpret_cast<int32_t*>(a.local + l.ntok_offset(s)) = bad ? 0 : static_cast<int32_t>(n);
  }
  // Token rows (x and scales): every warp of the grid, (source, record, chunk) items.
  const int warp = threadIdx.x / 32;
  const int nch = chunks_of(l.slot_bytes);
  for (int s = 0; s < R; ++s) {
    if (!is_remote(a, s) || !a.fs->src_ok[s]) continue;
    const uint32_t n = a.fs->src_tokens[s], np = n < P ? n : P;
    const uint32_t ov = n > np ? static_cast<uint32_t>(ld_sys_i32(a.overflow_off + s)) : 0;
    const int64_t items = static_cast<int64_t>(n) * nch;
    for (int64_t it = static_cast<int64_t>(warp) * a.blocks + blockIdx.x; it < items;
         it += static_cast<int64_t>(a.blocks) * kWarps) {
      const uint32_t i = static_cast<uint32_t>(it / nch);
      const int c = static_cast<int>(it % nch);
      warp_copy_chunk<kSrcSys>(a.local + l.token_offset(s, static_cast<int>(i)),
                               record_of(a, s, i, np, ov) + pl.meta_bytes, l.slot_bytes, c, lane);
    }
  }
  count_fabric_sources(a, l.off_dcount);
}

__global__ void __launch_bounds__(kThreads) fabric_ingest_combine_kernel(const __grid_constant__ Args a) {
  const CudaLayout& l = a.l;
  const uint64_t epoch = a.st->seq + 1;
  if (blockIdx.x == 0)
    for (int s = threadIdx.x; s < l.nranks; s += blockDim.x)
      if (is_remote(a, s))
        wait_arrival(a, static_cast<int>(WriteKind::kCombine), s, epoch, kPhaseCombineRecv);
  release_grid(a, 1, epoch);
  int T = *reinterpret_cast<const int32_t*>(a.local + l.ntok_offset(l.rank));
  if (T < 0 || T > l.max_tokens) T = 0;
  const int32_t* idx = reinterpret_cast<const int32_t*>(a.local + l.idx_offset(l.rank));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int nch = chunks_of(l.y_row_bytes);
  const int64_t items = static_cast<int64_t>(T) * l.topk * nch;
  for (int64_t it = static_cast<int64_t>(warp) * a.blocks + blockIdx.x; it < items;
       it += static_cast<int64_t>(a.blocks) * kWarps) {
    const int tk = static_cast<int>(it / nch), c = static_cast<int>(it % nch);
    const int32_t e = idx[tk];
    if (e < 0 || e >= l.experts || !is_remote(a, l.owner(e))) continue;
    warp_copy_chunk<kSrcSys>(a.local + l.combine_offset(tk),
                             a.precv + a.pl.combine_offset(a.fs->comb_pos[tk]), l.y_row_bytes, c, lane);
  }
  count_fabric_sources(a, l.off_ccount);
}

}  // namespace

cudaError_t launch_fabric_pack(const Args& a, cudaStream_t stream) {
  fabric_count_kernel<<<a.blocks, kThreads, 0, stream>>>(a);
  fabric_plan_kernel<<<1, kThreads, 0, stream>>>(a);
  if (a.l.elt_bytes == 1)
    fabric_pack_kernel<uint8_t><<<a.blocks, kThreads, 0, stream>>>(a);
  else
    fabric_pack_kernel<__nv_bfloat16><<<a.blocks, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t launch_fabric_ingest_dispatch(const Args& a, cudaStream_t stream) {
  fabric_ingest_dispatch_kernel<<<a.blocks, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t launch_fabric_ingest_combine(const Args& a, cudaStream_t stream) {
  fabric_ingest_combine_kernel<<<a.blocks, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace moefabric::moe::kern
