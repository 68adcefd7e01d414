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
  kErrPeerData = 5,   // peer sent something malformed (value: kBad* below)
  kErrAborted = 6,
};
// What was malformed (DevError.value with kErrPeerData).
enum BadData : int32_t {
  kBadTokens = 1,   // T / record count out of range
  kBadHeader = 2,   // dispatch header: magic, op, source, sizes
  kBadGrant = 3,    // granted count differs from the header's
  kBadRecord = 4,   // a record's token out of order or range, or an expert id out of range
  kBadNotOurs = 5,  // a record selecting none of our experts
  kBadCounts = 6,   // per-expert counts differ from the header's
};
struct DevError {
  int32_t code, phase, peer, value;
  int32_t abort;  // host -> device
};

// Doorbells and arrival flags: one per phase that moves data through the proxy.
enum Bell : int { kBellDispatch = 0, kBellCombine = 1, kBells = 2 };

// The fabric kernels' device scratch (kernels/fabric.cu): per destination / source arrays of R,
// per expert of E, per (token, k) of maxT * K.
struct FabricScratch {
  uint32_t* dst_tokens;    // [R] records for each destination (this op)
  uint32_t* dst_pairs;     // [R] (token, k) pairs for each destination
  uint32_t* dst_cbase;     // [R] where each destination's combine rows land in our combine region
  uint32_t* expert_pairs;  // [E] pairs per expert id (our dispatch)
  uint32_t* comb_pos;      // [maxT * K] row of (t, k) in our protocol combine region (fabric owners)
  uint32_t* pair_base;     // [R * maxT] first pair of record i of fabric source s among its pairs here
  uint32_t* src_counts;    // [R * max_local] pairs per (fabric source, local expert), counted
  int32_t* src_ok;         // [R] the source's header passed the checks (else it counts as empty)
  uint32_t* src_tokens;    // [R] records from each fabric source (its header)
  ReturnPlan* ret;         // [R] device copy of the return plan
};

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
  DevError* err;       // host-mapped
  uint32_t* row_src;   // [capacity_rows]: (source * maxT + token) * K + k, ~0 for padding
  uint32_t* self_row;  // [maxT * K]: row of our own (t, k) pairs on our experts (this op)
  int blocks;          // grid of every kernel, equal on all ranks
  int nvlink_peers;    // NVLink ranks other than this one (0: no token travels over NVLink)
  int64_t timeout_ns;
  // Fabric peers (fabric[r] != 0: rank r is reached through the MoE protocol's proxy,
  // collectives/comm.h). The protocol's blocks and what the proxy shares (kernels/fabric.cu) are
  // pinned host memory mapped here; the scratch is device memory.
  const uint8_t* fabric;         // device [R]
  int nfabric;                   // fabric peers (0: NVLink only)
  Layout pl;                     // the protocol's layout (same config)
  uint8_t* psend;                // protocol send block: headers and records per destination, combine staging
  const uint8_t* precv;          // protocol receive block: what the peers wrote
  uint64_t* doorbell;            // [kBells]: ops staged (written by the last block of the send kernels)
  const uint64_t* arrived;       // [kinds][R]: op of each source's last write of a kind (proxy)
  const uint32_t* overflow_off;  // [R]: overflow offset granted to each source (proxy)
  const uint32_t* granted;       // [R]: records granted to each source (proxy)
  SendPlan* plan;                // [R]: records and chunk offset per destination (fabric pack)
  ReturnPlan* ret;               // [R]: combine rows per source (fabric ingest)
  FabricScratch* fs;             // device scratch of the fabric kernels
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
// Fabric peers (a.nfabric > 0). Before dispatch send: pack one record per (token, fabric
// destination rank) into the protocol's send block, headers and the proxy's plan included.
// Before each recv kernel: wait for the fabric sources' writes, check them, copy them into the
// receive block where an NVLink peer would have stored them, and count the block there, so that
// the recv kernels read every source alike.
cudaError_t launch_fabric_pack(const Args& a, cudaStream_t stream);
cudaError_t launch_fabric_ingest_dispatch(const Args& a, cudaStream_t stream);
cudaError_t launch_fabric_ingest_combine(const Args& a, cudaStream_t stream);
// Destroy: every NVLink rank tells every NVLink peer it will store nothing more, then waits for
// all of them (fabric peers meet through the proxy).
cudaError_t launch_barrier(const Args& a, cudaStream_t stream);

}  // namespace moefabric::moe::kern
