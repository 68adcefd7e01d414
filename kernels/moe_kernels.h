// The CUDA backend's kernels: dispatch send/recv and combine send/recv over NVLink (peers' receive
// blocks mapped through CUDA IPC), launched through these wrappers. All kernel arguments travel
// in one Args struct; sequence numbers live on the device, so a captured launch replays as is.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "collectives/cuda_layout.h"

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
  kErrTimeout = 1,     // peer = the rank whose stores never completed
  kErrBadExpert = 2,   // value = the expert id (treated as -1)
  kErrBadTokens = 3,   // value = numTokens (treated as 0)
  kErrNullInput = 4,   // value: 0 x, 1 topkIdx, 2 topkWeights, 3 xScales, 4 expertY
  kErrPeerData = 5,    // peer sent T out of range (value)
  kErrAborted = 6,
};
struct DevError {
  int32_t code, phase, peer, value;
  int32_t abort;  // host -> device
};

// This rank's device-side state (local memory, zeroed at init).
struct DevState {
  uint64_t seq;          // ops completed (bumped by the last block of combine recv)
  uint64_t crecv_done;   // combine-recv blocks finished, all ops
  uint32_t total_rows;   // rows of the last dispatch, padding included
  int32_t err_code;      // first error (CAS), mirrored into DevError
};

struct Args {
  CudaLayout l;
  uint8_t* local;          // this rank's receive block
  uint8_t* const* peers;   // device array [R]: every rank's receive block mapped here
  DevState* st;
  DevError* err;           // host-mapped
  uint32_t* row_src;       // [capacity_rows]: (source * maxT + token) * K + k, ~0 for padding
  int blocks;              // grid of every kernel, equal on all ranks
  int64_t timeout_ns;
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
// Destroy: every rank tells every peer it will store nothing more, then waits for all of them.
cudaError_t launch_barrier(const Args& a, cudaStream_t stream);

}  // namespace moefabric::moe::kern
