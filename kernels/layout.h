// The CUDA backend's buffer layout: one receive block per rank, exported to the other ranks of
// the node through CUDA IPC, that peers store into over NVLink. Shared by the allocator
// (cuda_backend.cpp) and the kernels (kernels/); pure arithmetic, unit-tested on the CPU.
//
//   counters  u64 dispatch[R], combine[R], barrier[R]: blocks of each source that finished
//             their stores into this block (monotonic: op n is complete at n * blocks)
//   ntokens   i32 [R]: T of each source's current dispatch
//   idx       i32 [R][maxT][K]: each source's topkIdx (sanitised: anything invalid is -1)
//   tokens    [R][maxT] slots of x (padded to 16 B) + scales (padded to 16 B): source s stores
//             token t at slot (s, t) when t picked at least one of our experts (once per rank)
//   combine   [maxT * K] rows of bf16 H: the owner of (t, k)'s expert stores its output row here
//
// Peers on other nodes (MOEFABRIC_NODE_SIZE, MOEFABRIC_FORCE_FABRIC) speak the MoE protocol
// (docs/moe-protocol.md) through the proxy: the fabric kernels pack records into the protocol's
// send block and unpack what arrived in its receive block into the slots above, as if the source
// had stored them over NVLink, except that a fabric source's tokens are numbered by record (its
// i-th record in slot (s, i), its idx row in idx[s][i], ntokens[s] = its record count).
#pragma once

#include <cstddef>
#include <cstdint>

#include "collectives/layout.h"

namespace moefabric::moe {

inline constexpr int kCudaMaxLocalExperts = 4096;  // per-expert counters live in shared memory

struct CudaLayout {
  int nranks = 0, rank = 0;
  int experts = 0, topk = 0, hidden = 0, max_tokens = 0;
  int elt_bytes = 2, scale_block = 128, nscale = 0, alignment = 1, max_local = 0;
  size_t x_bytes = 0, scale_bytes = 0, slot_bytes = 0, y_row_bytes = 0, capacity_rows = 0;
  size_t off_dcount = 0, off_ccount = 0, off_bcount = 0, off_ntok = 0, off_idx = 0, off_tok = 0, off_comb = 0,
         block_bytes = 0;

  MF_HD int first_expert(int r) const { return static_cast<int>(static_cast<int64_t>(r) * experts / nranks); }
  MF_HD int local_count(int r) const { return first_expert(r + 1) - first_expert(r); }
  MF_HD int owner(int e) const {
    return static_cast<int>((static_cast<int64_t>(e + 1) * nranks + experts - 1) / experts) - 1;
  }
  MF_HD size_t dcount_offset(int src) const { return off_dcount + 8 * static_cast<size_t>(src); }
  MF_HD size_t ccount_offset(int src) const { return off_ccount + 8 * static_cast<size_t>(src); }
  MF_HD size_t bcount_offset(int src) const { return off_bcount + 8 * static_cast<size_t>(src); }
  MF_HD size_t ntok_offset(int src) const { return off_ntok + 4 * static_cast<size_t>(src); }
  MF_HD size_t idx_offset(int src) const {
    return off_idx + 4 * static_cast<size_t>(src) * max_tokens * topk;
  }
  MF_HD size_t token_offset(int src, int t) const {
    return off_tok + slot_bytes * (static_cast<size_t>(src) * max_tokens + t);
  }
  MF_HD size_t combine_offset(size_t tk) const { return off_comb + y_row_bytes * tk; }
};

// Fills every derived field; an invalid-argument status saying why when the configuration is
// beyond what the CUDA backend supports (local experts, 32-bit row indices). Host code, defined
// with the host layout (collectives/layout.cpp), where Status is known.
Status cuda_layout_init(CudaLayout* l, int nranks, int rank, int experts, int topk, int hidden,
                        int max_tokens, int elt_bytes, bool scales, int scale_block, int alignment);

}  // namespace moefabric::moe
