// The CUDA backend's kernels: dispatch send/recv and combine send/recv over NVLink (peers' receive
// blocks mapped through CUDA IPC), launched through these wrappers. All kernel arguments travel
// in one Args struct; sequence numbers live on the device, so a captured launch replays as is.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/layout.h"

namespace moefabric::moe::kern {

inline constexpr int kThreads = 512;  // every kernel's block size

// Where a kernel failed: first error wins. Lives in host-mapped pinned memory so that the host
// reads it with no CUDA call; `abort` is set by the host to make waiting kernels return.
enum Phase : int32_t {
  kPhaseDispatchSend = 1,
  kPhaseDispatchRecv = 2,
  kPhaseCombineSend = 3,
  kPhaseCombineRecv = 4,
  kPhaseBarrier = 5
};
enum ErrCode : int32_t {
  kErrNone = 0,
  kErrTimeout = 1,    // peer = the rank whose stores never completed
  kErrBadExpert = 2,  // value = the expert id (treated as -1)
  kErrBadTokens = 3,  // value = numTokens (treated as 0)
  kErrNullInput = 4,  // value: 0 x, 1 topkIdx, 2 topkWeights, 3 xScales, 4 expertY
  kErrPeerData = 5,   // peer sent T out of range (value)
  kErrAborted = 6,
};
struct DevError {
  int32_t code, phase, peer, value;
  int32_t abort;  // host -> device
};

// Doorbells and arrival flags: one per phase that moves data through the proxy.
enum Bell : int { kBellDispatch = 0, kBellCombine = 1, kBells = 2 };

// This rank's device-side state (local memory, zeroed at init).
struct DevState {
  uint64_t seq;                // ops completed (bumped by the last block of combine recv)
  uint64_t crecv_done;         // combine-recv blocks finished, all ops
  uint64_t dsend_done;         // dispatch-send blocks finished, all ops (fabric doorbell)
  uint64_t csend_done;         // combine-send blocks finished, all ops (fabric doorbell)
  uint64_t fabric_go[kBells];  // op whose fabric arrivals block 0 of the ingest kernel has seen
  uint32_t total_rows;         // rows of the last dispatch, padding included
  int32_t err_code;            // first error (CAS), mirrored into DevError
};

struct Args {
  CudaLayout l;
  uint8_t* local;         // this rank's receive block
  uint8_t* const* peers;  // device array [R]: every rank's receive block mapped here
  DevState* st;
  DevError* err;      // host-mapped
  uint32_t* row_src;  // [capacity_rows]: (source * maxT + token) * K + k, ~0 for padding
  int blocks;         // grid of every kernel, equal on all ranks
  int64_t timeout_ns;
  // Fabric peers (bit r of `remote`: rank r is reached through the host proxy). The staging
  // segments (kernels/layout.h) are GPU memory the provider reads and writes (FI_HMEM), or device
  // views of pinned, mapped host memory (MOEFABRIC_MOE_STAGING); the control words are always
  // pinned host memory.
  uint32_t remote;
  bool stage_dev;             // the segments are GPU memory (else pinned host memory)
  uint8_t* send_stage;        // [R][stage_bytes]: segment d holds what goes to rank d
  const uint8_t* recv_stage;  // [R][stage_bytes]: segment s holds what rank s wrote to us
  uint64_t* doorbell;         // [kBells]: ops whose send kernel finished (written by the last block)
  const uint64_t* arrived;    // [kBells][R]: per source, the last op whose write landed (proxy)
  // [1 + R]: [0] the T this rank's dispatch staged (dispatch send), [1 + s] fabric source s's T
  // (dispatch ingest). The proxy sizes its writes from these: it never reads the segments.
  int32_t* stage_T;
  // dispatch
  const void* x;
  const float* x_scales;
  const int32_t* idx;
  const int32_t* ntokens;
  void* recv_x;
  float* recv_scales;
  int32_t* recv_counts;
  // combine
  const void* expert_y;
  const float* weights;
  void* y;
};

cudaError_t launch_dispatch_send(const Args& a, cudaStream_t stream);
cudaError_t launch_dispatch_recv(const Args& a, cudaStream_t stream);
cudaError_t launch_combine_send(const Args& a, cudaStream_t stream);
cudaError_t launch_combine_recv(const Args& a, cudaStream_t stream);
// Fabric sources (a.remote != 0), launched before the matching recv kernel: wait for each fabric
// source's write of this op to land in the staging segment, copy it into the receive block where
// an NVLink peer would have stored it, and count the block there, so that the recv kernels read
// every source alike.
cudaError_t launch_fabric_ingest_dispatch(const Args& a, cudaStream_t stream);
cudaError_t launch_fabric_ingest_combine(const Args& a, cudaStream_t stream);
// Destroy: every NVLink rank tells every NVLink peer it will store nothing more, then waits for
// all of them (fabric peers meet through the proxy).
cudaError_t launch_barrier(const Args& a, cudaStream_t stream);

}  // namespace moefabric::moe::kern
