// Combine over NVLink. Send: every expert output row goes back to its token's home rank, into
// combine slot (t, k) there, then each block counts itself at every rank; rows of our own tokens
// stay where they are. Recv: wait for all ranks' blocks, then y[t] = round_bf16(fmaf chain over k
// in order), reading our own experts' rows from expertY in place, bit-identical to the host
// backend (collectives/numeric.h). The last block to finish advances the op sequence.
#include <cuda_bf16.h>

#include "kernels/device_common.cuh"

namespace moefabric::moe::kern {
namespace {

// Same bits as numeric.h's float_to_bf16 (round to nearest even, NaN kept quiet).
__device__ __forceinline__ uint32_t bf16_bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return ((u >> 16) | 0x40u) & 0xffffu;
  u += 0x7fffu + ((u >> 16) & 1u);
  return u >> 16;
}

template <class Out>
__global__ void __launch_bounds__(kThreads) combine_send_kernel(const __grid_constant__ Args a) {
  const CudaLayout& l = a.l;
  uint32_t total = a.st->total_rows;
  if (total > l.capacity_rows) total = 0;
  if (total > 0 && a.expert_y == nullptr) {
    if (blockIdx.x == 0 && threadIdx.x == 0) report_error(a, kErrNullInput, kPhaseCombineSend, l.rank, 4);
    total = 0;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const size_t yb = static_cast<size_t>(l.hidden) * sizeof(Out);
  const uint32_t per_src = static_cast<uint32_t>(l.max_tokens) * l.topk;
  const auto* ey = static_cast<const uint8_t*>(a.expert_y);
  // Items (row, chunk of the row), one warp each, consecutive items on different blocks; with
  // at least a row per warp, whole rows (fewer index loads, longer runs per warp).
  const bool whole = total >= static_cast<uint32_t>(a.blocks) * kWarps;
  const int nch = whole ? 1 : chunks_of(yb);
  const int64_t items = static_cast<int64_t>(total) * nch;
  for (int64_t it = static_cast<int64_t>(warp) * a.blocks + blockIdx.x; it < items;
       it += static_cast<int64_t>(a.blocks) * kWarps) {
    const uint32_t r = static_cast<uint32_t>(it / nch);
    const int c = static_cast<int>(it % nch);
    const uint32_t code = a.row_src[r];
    if (code == ~0u) continue;
    const uint32_t s = code / per_src;
    // Our own tokens' rows stay in expertY: combine recv reads them there.
    if (s >= static_cast<uint32_t>(l.nranks) || s == static_cast<uint32_t>(l.rank)) continue;
    uint8_t* dst;
    if (is_remote(a, s)) {
      // The protocol's combine staging: s's rows in (record, k) order after its row_start.
      const uint32_t i = (code % per_src) / l.topk, k = code % l.topk;
      const int32_t* row =
          reinterpret_cast<const int32_t*>(a.local + l.idx_offset(s)) + static_cast<size_t>(i) * l.topk;
      const int first = l.first_expert(l.rank), L = l.local_count(l.rank);
      uint32_t before = 0;
      for (uint32_t kk = 0; kk < k; ++kk)
        before += static_cast<uint32_t>(row[kk] - first) < static_cast<uint32_t>(L);
      const uint32_t pos =
          a.fs->ret[s].row_start + a.fs->pair_base[static_cast<size_t>(s) * l.max_tokens + i] + before;
      dst = a.psend + a.pl.off_csend + a.pl.y_row_bytes * pos;
    } else {
      dst = a.peers[s] + l.combine_offset(code % per_src);
    }
    if (whole)
      warp_copy_row<kSrcLocal>(dst, ey + yb * r, yb, lane);
    else
      warp_copy_chunk<kSrcLocal>(dst, ey + yb * r, yb, c, lane);
  }
  signal_peers(a, l.ccount_offset(l.rank), &a.st->csend_done, kBellCombine);
}

template <class Out>
__global__ void __launch_bounds__(kThreads) combine_recv_kernel(const __grid_constant__ Args a) {
  const CudaLayout& l = a.l;
  const int K = l.topk;
  const uint64_t epoch = a.st->seq + 1;
  wait_all_sources(a, l.off_ccount, epoch * static_cast<uint64_t>(a.blocks), kPhaseCombineRecv);
  int T = *reinterpret_cast<const int32_t*>(a.local + l.ntok_offset(l.rank));
  if (T < 0 || T > l.max_tokens) T = 0;
  if (T > 0 && (a.weights == nullptr || a.y == nullptr)) {
    if (blockIdx.x == 0 && threadIdx.x == 0) report_error(a, kErrNullInput, kPhaseCombineRecv, l.rank, 2);
    T = 0;
  }
  const int32_t* idx = reinterpret_cast<const int32_t*>(a.local + l.idx_offset(l.rank));
  // (t, k) on one of our experts: its row is read from expertY in place (combine send skipped it).
  const int first = l.first_expert(l.rank), L = l.local_count(l.rank);
  const auto* ey = static_cast<const uint8_t*>(a.expert_y);
  const size_t nv = static_cast<size_t>(l.hidden) / 8;  // 16-byte vectors of 8 bf16
  const size_t n = static_cast<size_t>(T) * nv;
  auto* y = static_cast<uint8_t*>(a.y);
  for (size_t i = static_cast<size_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<size_t>(a.blocks) * kThreads) {
    const size_t t = i / nv, v = i % nv;
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    // Eight rows' loads in flight before any is used (an empty slot's row is loaded and
    // ignored), then the fmaf chain in k order as before.
    for (int k0 = 0; k0 < K; k0 += 8) {
      int4 q[8];
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (k0 + j < K) {
          const size_t tk = t * K + k0 + j;
          const int32_t e = idx[tk];
          if (static_cast<uint32_t>(e - first) < static_cast<uint32_t>(L))
            q[j] = ey != nullptr
                       ? __ldg(reinterpret_cast<const int4*>(ey + l.y_row_bytes * a.self_row[tk]) + v)
                       : int4{0, 0, 0, 0};
          else
            q[j] = __ldcg(reinterpret_cast<const int4*>(a.local + l.combine_offset(tk)) + v);
        }
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int k = k0 + j;
        if (k >= K || idx[t * K + k] < 0) continue;
        const float w = a.weights[t * K + k];
        const uint32_t u[4] = {static_cast<uint32_t>(q[j].x), static_cast<uint32_t>(q[j].y),
                               static_cast<uint32_t>(q[j].z), static_cast<uint32_t>(q[j].w)};
#pragma unroll
        for (int h = 0; h < 4; ++h) {
          acc[2 * h] = fmaf(w, __uint_as_float(u[h] << 16), acc[2 * h]);
          acc[2 * h + 1] = fmaf(w, __uint_as_float(u[h] & 0xffff0000u), acc[2 * h + 1]);
        }
      }
    }
    int4 o;
    o.x = static_cast<int>(bf16_bits(acc[0]) | (bf16_bits(acc[1]) << 16));
    o.y = static_cast<int>(bf16_bits(acc[2]) | (bf16_bits(acc[3]) << 16));
    o.z = static_cast<int>(bf16_bits(acc[4]) | (bf16_bits(acc[5]) << 16));
    o.w = static_cast<int>(bf16_bits(acc[6]) | (bf16_bits(acc[7]) << 16));
    reinterpret_cast<int4*>(y + l.y_row_bytes * t)[v] = o;
  }
  // The op is complete once every block is past its reads of the combine slots.
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    const unsigned long long done =
        atomicAdd(reinterpret_cast<unsigned long long*>(&a.st->crecv_done), 1ull) + 1;
    if (done == epoch * static_cast<uint64_t>(a.blocks)) a.st->seq = epoch;
  }
}

__global__ void barrier_kernel(const __grid_constant__ Args a) {
  __threadfence_system();
  for (int r = threadIdx.x; r < a.l.nranks; r += blockDim.x)
    if (!is_remote(a, r))
      red_release_sys_add(reinterpret_cast<uint64_t*>(a.peers[r] + a.l.bcount_offset(a.l.rank)), 1);
  __syncthreads();
  for (int r = threadIdx.x; r < a.l.nranks; r += blockDim.x)
    if (!is_remote(a, r))
      wait_counter(a, reinterpret_cast<const uint64_t*>(a.local + a.l.bcount_offset(r)), 1, kPhaseBarrier, r);
  __syncthreads();
}

}  // namespace

cudaError_t launch_combine_send(const Args& a, cudaStream_t stream) {
  combine_send_kernel<__nv_bfloat16><<<a.blocks, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t launch_combine_recv(const Args& a, cudaStream_t stream) {
  combine_recv_kernel<__nv_bfloat16><<<a.blocks, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t launch_barrier(const Args& a, cudaStream_t stream) {
  barrier_kernel<<<1, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace moefabric::moe::kern
