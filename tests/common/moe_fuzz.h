// The differential fuzzer's case generator: one random configuration, per-rank token counts and a
// routing from a 64-bit seed, identical on every rank and on every backend, so that a printed
// seed replays the exact case (test-moe-fuzz --case SEED --ranks R).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tests/common/moe_reference.h"

namespace moetest {

struct FuzzCase {
  uint64_t seed = 0;
  Shape shape;         // nranks set
  bool split = false;  // DispatchSend/Recv + CombineSend/Recv instead of the whole calls
  Routing routing = Routing::kRandom;
  std::vector<int> T;       // per rank, each in [0, max_tokens]
  uint64_t input_seed = 0;  // op o: make_input(shape, rank, T[rank], input_seed + o, routing)
  int ops = 1;              // dispatch -> combine rounds on the same comms
  // How the CUDA run orders its calls: stream 0 a non-blocking stream, 1 a blocking one, 2 the
  // legacy NULL stream; sync_between: synchronise and read recvX back between dispatch and
  // combine (as a caller that computes the experts on the host would).
  int stream = 0;
  bool sync_between = false;
  std::string describe() const;  // one line: every field, for the failure report
};

// Limits on what the generator draws (the GPU run and CI use the defaults; a quick run lowers
// max_elements to keep every case small).
struct FuzzLimits {
  int max_experts = 300;
  int max_hidden = 7168;
  // Upper bound on max_tokens * hidden * topk (the combine rows at one rank) and on
  // nranks * max_tokens * hidden (the tokens one rank receives).
  int64_t max_elements = int64_t{1} << 22;
  // Draw ncclMoeCombinePerRank for half the cases (host-only runs: the CUDA backend has per-pair
  // combine only).
  bool per_rank_combine = false;
};

FuzzCase fuzz_case(uint64_t seed, int nranks, const FuzzLimits& lim = {});

// The inputs of `rank` for this case.
RankInput fuzz_input(const FuzzCase& c, int rank, int op = 0);

// SplitMix64: the case seed of case i of a run with base seed `base` and `nranks` ranks.
uint64_t fuzz_seed(uint64_t base, int nranks, uint64_t i);

// Fixed cases that once failed (or that pin a corner the random draw rarely reaches).
std::vector<FuzzCase> fuzz_regressions(int nranks);

}  // namespace moetest
