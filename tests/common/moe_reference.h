// Test and benchmark workloads for ncclMoe and an independent reference: inputs generated from
// (seed, rank), the expected receive layout and combine result computed from all ranks' inputs
// with plain loops (no code shared with the library).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "include/moefabric/nccl_moe.h"

namespace moetest {

struct Shape {
  int nranks = 2, experts = 8, topk = 2, hidden = 64, max_tokens = 16;
  bool fp8 = false;
  int scale_block = 32, alignment = 1, max_private = 128;
  bool per_rank = false;  // ncclMoeCombinePerRank
  int first(int r) const { return static_cast<int>(static_cast<int64_t>(r) * experts / nranks); }
  int local(int r) const { return first(r + 1) - first(r); }
  int owner(int e) const {
    for (int r = 0; r < nranks; ++r)
      if (e < first(r + 1)) return r;
    return -1;
  }
  size_t x_bytes() const { return static_cast<size_t>(hidden) * (fp8 ? 1 : 2); }
  size_t nscale() const { return fp8 ? static_cast<size_t>(hidden / scale_block) : 0; }
  ncclMoeConfig_t config() const;
};

// kRandom: distinct experts per token, ~10% empty slots. kOneExpert: every slot on one expert
// (seed % E). kEmpty: every slot -1. kDuplicates: experts 0..2 only, so tokens repeat them.
// kSkewed: half the slots on rank 0's experts. kUniformDup: uniform with repeats allowed and ~10%
// empty slots. kToOneRank: every slot on the experts of rank seed % R.
enum class Routing { kRandom, kOneExpert, kEmpty, kDuplicates, kSkewed, kUniformDup, kToOneRank };

struct RankInput {
  int T = 0;
  std::vector<uint8_t> x;     // [T, x_bytes]
  std::vector<float> scales;  // [T, nscale]
  std::vector<int32_t> idx;   // [T, K]
  std::vector<float> w;       // [T, K]
};

RankInput make_input(const Shape& s, int rank, int T, uint64_t seed, Routing routing);

// Expected rows at rank `me`, in the contract's order (source rank, source token, k); src -1 for
// alignment padding.
struct ExpectedRow {
  int src, token, k;
};
struct ExpectedLayout {
  std::vector<int32_t> counts;
  std::vector<ExpectedRow> rows;
};
ExpectedLayout expected_layout(const Shape& s, const std::vector<RankInput>& all, int me);

// "" when recvX/recvScales/counts match; otherwise the first difference.
std::string check_dispatch(const Shape& s, const std::vector<RankInput>& all, int me,
                           const ExpectedLayout& ex, const uint8_t* recv_x, const float* recv_scales,
                           const int32_t* counts);

// The expert output the tests feed into combine: a function of (expert, source, token, k, column),
// so that two rows of one token (the same expert picked twice) differ and a row returned to the
// wrong (token, k) slot shows in y.
uint16_t expert_value(int expert, int src, int token, int k, int col);
void fill_expert_y(const Shape& s, const std::vector<RankInput>& all, int me, const ExpectedLayout& ex,
                   uint16_t* expert_y);
// Per pair: y = bf16(fmaf over k). Per rank: each owner rank's partial bf16(fmaf over its k, in k
// order), then bf16 of their fp32 sum in rank order.
std::string check_combine(const Shape& s, const RankInput& mine, int me, const uint16_t* y);

// What the protocol says `me` writes to each peer in one op (docs/moe-protocol.md,
// "Accounting"), computed from every rank's routing; "" when ncclMoeGetPeerStats agrees.
std::string check_peer_stats(const Shape& s, const std::vector<RankInput>& all, int me,
                             const ncclMoePeerStats_t* got);

// Allgather over the launcher's channel (ctx = moefabric::OobChannel*).
ncclResult_t oob_allgather(const void* send, void* recv, size_t bytes, void* ctx);

// Every rank's inputs, gathered through the channel (each rank generates only its own).
bool gather_inputs(void* oob, const Shape& s, const RankInput& mine, std::vector<RankInput>* all);

}  // namespace moetest
