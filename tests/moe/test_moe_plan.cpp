// The traffic planner (collectives/plan.h) against real runs: for several rank counts, shapes and
// routings (some with more tokens per destination than maxPrivateTokens, so that grants and second
// dispatch writes happen), every rank's ncclMoeGetStats after an op equals what the planner
// predicts from all ranks' routings. The scale model (perf/scale_model.cpp) counts traffic with
// this planner, so these are its traffic numbers, checked.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "include/moefabric/nccl_moe.h"
#include "collectives/layout.h"
#include "collectives/plan.h"
#include "common/launch.h"
#include "tests/common/check.h"
#include "tests/common/moe_reference.h"

using namespace moetest;
using moefabric::OobChannel;
namespace moe = moefabric::moe;

namespace {

struct Op {
  Routing routing;
  uint64_t seed;
};

// T of rank r in op i: varies over ranks and ops, 0 and max_tokens included.
int tokens_of(const Shape& s, int op, int r) {
  return (op * 7 + r * 5 + (op == 0 ? s.max_tokens : 0)) % (s.max_tokens + 1);
}

int run_rank(OobChannel& oob, const Shape& s, const std::vector<Op>& ops) {
  const int R = oob.nranks(), me = oob.rank();
  ncclMoeConfig_t cfg = s.config();
  ncclMoeComm_t comm = nullptr;
  RANK_CHECK(ncclMoeCommInitAllGather(&comm, R, me, oob_allgather, &oob, &cfg) == ncclSuccess, "init: %s",
             ncclMoeGetLastError(nullptr));
  moe::Layout l;
  RANK_OK(moe::layout_init(&l, R, me, s.experts, s.topk, s.hidden, s.max_tokens, s.fp8 ? 1 : 2, s.fp8,
                           s.scale_block, s.alignment, s.max_private, s.per_rank));
  size_t cap = 0;
  ncclMoeGetRecvCapacity(comm, &cap);
  std::vector<uint8_t> rx(cap * s.x_bytes() + 16);
  std::vector<float> rs(cap * s.nscale() + 4);
  std::vector<int32_t> counts(s.local(me) + 1);
  std::vector<uint16_t> ey(cap * s.hidden + 8), y(static_cast<size_t>(s.max_tokens) * s.hidden + 8);
  for (size_t i = 0; i < ops.size(); ++i) {
    // Every rank's input is a function of (seed, rank): each rank builds all of them.
    std::vector<RankInput> in(R);
    std::vector<const int32_t*> idx(R);
    std::vector<int> T(R);
    for (int r = 0; r < R; ++r) {
      in[r] = make_input(s, r, tokens_of(s, static_cast<int>(i), r), ops[i].seed, ops[i].routing);
      idx[r] = in[r].idx.data();
      T[r] = in[r].T;
    }
    const RankInput& x = in[me];
    int32_t t = x.T;
    RANK_CHECK(
        ncclMoeDispatch(x.x.data(), s.fp8 ? x.scales.data() : nullptr, x.idx.data(), x.w.data(), &t,
                        rx.data(), s.fp8 ? rs.data() : nullptr, counts.data(), comm, nullptr) == ncclSuccess,
        "dispatch: %s", ncclMoeGetLastError(comm));
    RANK_CHECK(ncclMoeCombine(ey.data(), y.data(), comm, nullptr) == ncclSuccess, "combine: %s",
               ncclMoeGetLastError(comm));
    ncclMoeStats_t st{};
    st.size = sizeof st;
    RANK_CHECK(ncclMoeGetStats(comm, &st) == ncclSuccess, "stats");
    // A peer that finished this op may already have sent its next dispatch header, and our proxy
    // counts the grant it answers with at once: every rank reads its stats before any goes on.
    RANK_OK(oob.barrier());
    moe::WorldPlan w;
    RANK_OK(
        moe::plan_world(l, idx, T, s.per_rank ? moe::CombineMode::kPerRank : moe::CombineMode::kPerPair, &w));
    const moe::RankStats p = moe::rank_stats(w, me);
    RANK_CHECK(st.dispatchBytesSent == p.dispatch_bytes_sent, "op %zu: dispatch bytes %llu, planned %llu", i,
               static_cast<unsigned long long>(st.dispatchBytesSent),
               static_cast<unsigned long long>(p.dispatch_bytes_sent));
    RANK_CHECK(st.combineBytesSent == p.combine_bytes_sent, "op %zu: combine bytes %llu, planned %llu", i,
               static_cast<unsigned long long>(st.combineBytesSent),
               static_cast<unsigned long long>(p.combine_bytes_sent));
    RANK_CHECK(st.dispatchWritesMaxPeer == p.dispatch_writes_max_peer,
               "op %zu: dispatch writes %u, planned %u", i, st.dispatchWritesMaxPeer,
               p.dispatch_writes_max_peer);
    RANK_CHECK(st.combineWritesMaxPeer == p.combine_writes_max_peer, "op %zu: combine writes %u, planned %u",
               i, st.combineWritesMaxPeer, p.combine_writes_max_peer);
    RANK_CHECK(st.grantsSent == p.grants_sent, "op %zu: grants %u, planned %u", i, st.grantsSent,
               p.grants_sent);
    // The run must exercise what the test claims: grants happen in the shapes meant to force them.
    const bool any_grant = [&] {
      for (int r = 0; r < R; ++r)
        if (moe::rank_stats(w, r).grants_sent > 0) return true;
      return false;
    }();
    if (ops[i].routing == Routing::kToOneRank && s.max_private < s.max_tokens / 2 && R > 1)
      RANK_CHECK(any_grant, "op %zu: meant to overflow maxPrivateTokens but planned no grant", i);
  }
  RANK_CHECK(ncclMoeCommDestroy(comm) == ncclSuccess, "destroy");
  return 0;
}

void run_all(int R, const Shape& base) {
  Shape s = base;
  s.nranks = R;
  const std::vector<Op> ops = {{Routing::kToOneRank, 3},  {Routing::kRandom, 1},    {Routing::kSkewed, 2},
                               {Routing::kDuplicates, 4}, {Routing::kEmpty, 5},     {Routing::kUniformDup, 6},
                               {Routing::kToOneRank, 8},  {Routing::kOneExpert, 9}, {Routing::kRandom, 10}};
  auto res = moefabric::launch_fork(
      R, [&](OobChannel& oob) { return run_rank(oob, s, ops); }, 300);
  INFO("ranks " << R << ", E " << s.experts << ", K " << s.topk << ", maxT " << s.max_tokens << ", P "
                << s.max_private << "\n"
                << res.report);
  REQUIRE(res.ok);
}

}  // namespace

// experts, top-k, hidden, max tokens, maxPrivateTokens, expertAlignment, fp8
static Shape shape(int E, int K, int H, int maxT, int P, int align, bool fp8) {
  Shape s;
  s.experts = E, s.topk = K, s.hidden = H, s.max_tokens = maxT, s.max_private = P, s.alignment = align;
  s.fp8 = fp8;
  s.scale_block = 128;
  return s;
}

TEST_CASE("moe plan: planned traffic equals ncclMoeGetStats (bf16, no overflow)", "[moe][plan]") {
  for (int R : {2, 3, 4, 8}) run_all(R, shape(8, 2, 64, 16, 128, 1, false));
}

TEST_CASE("moe plan: planned traffic equals ncclMoeGetStats (fp8, grants)", "[moe][plan]") {
  for (int R : {2, 3, 4, 8}) run_all(R, shape(13, 4, 256, 24, 3, 1, true));
}

TEST_CASE("moe plan: planned traffic equals ncclMoeGetStats (maxPrivateTokens 0)", "[moe][plan]") {
  for (int R : {2, 5}) run_all(R, shape(32, 8, 128, 32, 0, 4, false));
}

TEST_CASE("moe plan: planned traffic equals ncclMoeGetStats (per-rank combine, grants)", "[moe][plan]") {
  for (int R : {2, 3, 4}) {
    Shape s = shape(13, 6, 128, 24, 3, 1, true);
    s.per_rank = true;
    run_all(R, s);
  }
}
