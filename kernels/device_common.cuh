// Device helpers shared by the kernels: system-scope flags, bounded waits, error reporting and
// 16-byte copies.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/moe_kernels.h"

namespace moefabric::moe::kern {

inline constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ uint64_t ld_acquire_sys(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void red_release_sys_add(uint64_t* p, uint64_t v) {
  asm volatile("red.release.sys.global.add.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ void st_release_sys(uint64_t* p, uint64_t v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

// Loads of pinned host memory that the NIC or the proxy wrote: relaxed at system scope, so that
// no stale line of an earlier op is served from a GPU cache.
__device__ __forceinline__ int32_t ld_sys_i32(const void* p) {
  int32_t v;
  asm volatile("ld.relaxed.sys.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ int4 ld_sys_v4(const void* p) {
  int4 v;
  asm volatile("ld.relaxed.sys.global.v4.b32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p)
               : "memory");
  return v;
}

__device__ __forceinline__ bool is_remote(const Args& a, int r) { return a.nfabric > 0 && a.fabric[r] != 0; }

__device__ __forceinline__ uint64_t global_timer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// First error wins; the host reads DevError without a CUDA call.
__device__ inline void report_error(const Args& a, int32_t code, int32_t phase, int32_t peer, int32_t value) {
  if (atomicCAS(&a.st->err_code, 0, code) != 0) return;
  volatile DevError* e = a.err;
  e->phase = phase;
  e->peer = peer;
  e->value = value;
  __threadfence_system();
  e->code = code;
  __threadfence_system();
}

// Waits until *counter reaches target (wrap-safe), for at most timeout_ns or until the host
// aborts. False after reporting the timeout (the caller goes on; its results are undefined).
__device__ inline bool wait_counter(const Args& a, const uint64_t* counter, uint64_t target, int32_t phase,
                                    int32_t peer, int64_t extra_ns = 0) {
  if (static_cast<int64_t>(ld_acquire_sys(counter) - target) >= 0) return true;
  const uint64_t start = global_timer_ns();
  for (uint32_t spin = 1;; ++spin) {
    if (static_cast<int64_t>(ld_acquire_sys(counter) - target) >= 0) return true;
    if ((spin & 1023) == 0) {
      if (*reinterpret_cast<volatile int32_t*>(&a.err->abort) != 0) {
        report_error(a, kErrAborted, phase, peer, 0);
        return false;
      }
      if (static_cast<int64_t>(global_timer_ns() - start) > a.timeout_ns + extra_ns) {
        report_error(a, kErrTimeout, phase, peer, 0);
        return false;
      }
    }
  }
}

// Each block, after its stores: a GPU-scope release (fence.acq_rel.gpu) and count itself in
// `done` (device memory, all ops). The last block of the op (done reaches a multiple of the grid) then
// adds the whole grid to the counter at every NVLink destination (the receiver waits for
// op * blocks) and, with fabric destinations, rings the doorbell (pinned host memory) with the op
// number, after which the proxy reads the staging segments. One system-scope add per
// destination instead of one per block: 132 blocks adding to one remote word serialise on it.
// Ordering (PTX memory model, causality order is transitive): each block's stores precede its
// GPU-scope release (fence + add to `done`); the last block's add reads them all (one RMW chain)
// and its fence.sc.sys then makes everything it has observed precede the system-scope release at
// the destinations, so every block's stores, NVLink and pinned host memory alike, happen before
// the receiver's (or the proxy's) acquire. Only the last block pays for a system-scope fence.
// (Checked by the gpu suite with EP2 across two H200s over NVLink, 1000 graph replays, and with EP2
// sharing one H100; racecheck clean on both.)
__device__ inline void signal_peers(const Args& a, size_t counter_offset_in_peer, uint64_t* done, int bell) {
  __shared__ unsigned long long s_op;  // op number when this block is the op's last, else 0
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    const unsigned long long n = atomicAdd(reinterpret_cast<unsigned long long*>(done), 1ull) + 1;
    const bool last = n % static_cast<unsigned long long>(a.blocks) == 0;
    if (last) __threadfence_system();
    s_op = last ? n / static_cast<unsigned long long>(a.blocks) : 0;
  }
  __syncthreads();
  if (s_op == 0) return;
  for (int r = threadIdx.x; r < a.l.nranks; r += blockDim.x)
    if (!is_remote(a, r))
      red_release_sys_add(reinterpret_cast<uint64_t*>(a.peers[r] + counter_offset_in_peer),
                          static_cast<uint64_t>(a.blocks));
  if (a.nfabric > 0 && threadIdx.x == 0) st_release_sys(a.doorbell + bell, s_op);
}

// Block-wide wait for every source's counter at `base` to reach `target`.
__device__ inline void wait_all_sources(const Args& a, size_t base, uint64_t target, int32_t phase) {
  for (int s = threadIdx.x; s < a.l.nranks; s += blockDim.x)
    wait_counter(a, reinterpret_cast<const uint64_t*>(a.local + base + 8 * static_cast<size_t>(s)), target,
                 phase, s);
  __syncthreads();
}

// Block 0 hands the grid on once it has seen what every fabric source sent for op `epoch` (and
// checked it, in the caller's `check`); the other blocks wait for that on a device word. Only
// block 0 polls the host flags: every block polling one pinned word over PCIe slows the proxy's
// store to it from 2 us to ~250 us round trip (H100, 132 pollers; tools/gpu_host_rtt.cu).
// Ordering: block 0's acquires of the flags (system scope), its barrier and GPU-scope release,
// then each block's acquire of the device word: the proxy's release happens before every
// block's loads of the protocol blocks. The other blocks allow block 0 a second of slack, so that
// a lost peer is reported by block 0, naming it.
__device__ inline void release_grid(const Args& a, int bell, uint64_t epoch) {
  uint64_t* go = &a.st->fabric_go[bell];
  __syncthreads();
  if (blockIdx.x == 0 && threadIdx.x == 0)
    asm volatile("st.release.gpu.global.u64 [%0], %1;" ::"l"(go), "l"(epoch) : "memory");
  if (blockIdx.x != 0 && threadIdx.x == 0)
    wait_counter(a, go, epoch, kPhaseDispatchRecv + 2 * bell, -1, 1000000000);
  __syncthreads();
}

// Waits (one thread) for fabric source s's write of `kind` for op `epoch` (arrival flags in host
// memory, raised by the proxy after the data landed).
__device__ inline bool wait_arrival(const Args& a, int kind, int s, uint64_t epoch, int32_t phase) {
  return wait_counter(a, a.arrived + static_cast<size_t>(kind) * a.l.nranks + s, epoch, phase, s);
}

// After a block's ingest copies: count it at our own counter of every fabric source, as the
// source's own blocks would have over NVLink.
__device__ inline void count_fabric_sources(const Args& a, size_t base) {
  __syncthreads();
  __threadfence();
  for (int s = threadIdx.x; s < a.l.nranks; s += blockDim.x)
    if (is_remote(a, s))
      red_release_sys_add(reinterpret_cast<uint64_t*>(a.local + base + 8 * static_cast<size_t>(s)), 1);
}

// Inclusive scan over the warp's lanes.
template <class T>
__device__ __forceinline__ T warp_scan(T v, int lane) {
  for (int o = 1; o < 32; o <<= 1) {
    const T u = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += u;
  }
  return v;
}

// Where a copy's source lives, which decides how it is loaded:
//   kSrcLocal  written before this kernel started: the read-only path (__ldg)
//   kSrcPeer   stored by another GPU, a copy engine or a NIC during this kernel (after an acquire
//              of its flag): through L2 (ld.global.cg), never the non-coherent read-only path
//   kSrcSys    pinned host memory the proxy or the NIC wrote: relaxed at system scope, so that no
//              stale line of an earlier op is served from a GPU cache
inline constexpr int kSrcLocal = 0, kSrcPeer = 1, kSrcSys = 2;
template <int kSrc>
__device__ __forceinline__ int4 load16(const int4* p) {
  if constexpr (kSrc == kSrcSys)
    return ld_sys_v4(p);
  else if constexpr (kSrc == kSrcPeer)
    return __ldcg(p);
  else
    return __ldg(p);
}

// A whole row by one warp, kUnroll 16-byte loads per lane in flight before their stores.
template <int kSrc, int kUnroll = 8>
__device__ __forceinline__ void warp_copy_row(uint8_t* dst, const uint8_t* src, size_t bytes, int lane) {
  const int4* s = reinterpret_cast<const int4*>(src);
  int4* d = reinterpret_cast<int4*>(dst);
  const size_t n = bytes / 16;
  size_t i = lane;
  for (; i + 32 * (kUnroll - 1) < n; i += 32 * kUnroll) {
    int4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) v[u] = load16<kSrc>(s + i + 32 * u);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) d[i + 32 * u] = v[u];
  }
  int4 v[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u)
    if (i + 32 * u < n) v[u] = load16<kSrc>(s + i + 32 * u);
#pragma unroll
  for (int u = 0; u < kUnroll; ++u)
    if (i + 32 * u < n) d[i + 32 * u] = v[u];
}

// Rows are copied in chunks of kChunkVecs 16-byte vectors (2 per lane), one chunk per warp and
// item, so that a few rows (small T) still spread over the whole grid and every lane has two
// loads in flight instead of a chain of dependent round trips.
inline constexpr int kChunkVecs = 64;
__host__ __device__ __forceinline__ int chunks_of(size_t bytes) {
  return static_cast<int>((bytes / 16 + kChunkVecs - 1) / kChunkVecs);
}

// Chunk `c` of a row of `bytes` (a multiple of 16, both ends 16-byte aligned), by one warp.
template <int kSrc>
__device__ __forceinline__ void warp_copy_chunk(uint8_t* dst, const uint8_t* src, size_t bytes, int c,
                                                int lane) {
  const int4* s = reinterpret_cast<const int4*>(src);
  int4* d = reinterpret_cast<int4*>(dst);
  const size_t n = bytes / 16;
  const size_t v0 = static_cast<size_t>(c) * kChunkVecs + lane, v1 = v0 + 32;
  int4 x0, x1;
  if (v0 < n) x0 = load16<kSrc>(s + v0);
  if (v1 < n) x1 = load16<kSrc>(s + v1);
  if (v0 < n) d[v0] = x0;
  if (v1 < n) d[v1] = x1;
}

// T of this dispatch call. Out of range, or inputs missing for T > 0: reported (with `report`, by
// one thread) and the call sends nothing.
__device__ inline int tokens_of_call(const Args& a, bool report) {
  const int T = *a.ntokens;
  const bool first = report && blockIdx.x == 0 && threadIdx.x == 0;
  if (T < 0 || T > a.l.max_tokens) {
    if (first) report_error(a, kErrBadTokens, kPhaseDispatchSend, a.l.rank, T);
    return 0;
  }
  if (T > 0) {
    const int which = a.x == nullptr                              ? 0
                      : a.idx == nullptr                          ? 1
                      : a.weights == nullptr                      ? 2
                      : (a.l.nscale > 0 && a.x_scales == nullptr) ? 3
                                                                  : -1;
    if (which >= 0) {
      if (first) report_error(a, kErrNullInput, kPhaseDispatchSend, a.l.rank, which);
      return 0;
    }
  }
  return T;
}

__device__ __forceinline__ int32_t clamp_expert(const Args& a, int32_t e, int32_t phase) {
  if (e < -1 || e >= a.l.experts) {
    report_error(a, kErrBadExpert, phase, a.l.rank, e);
    return -1;
  }
  return e;
}

}  // namespace moefabric::moe::kern
