// The traffic planner (collectives/plan.h): hand-worked cases, then random routings against an
// independent count written with sets (no code shared with the planner).
#include <catch2/catch.hpp>

#include <map>
#include <random>
#include <set>

#include "collectives/layout.h"
#include "collectives/plan.h"

using namespace moefabric::moe;

namespace {
Layout make(int R, int E, int K, int H, int T, bool fp8, int P) {
  Layout l;
  REQUIRE(layout_init(&l, R, 0, E, K, H, T, fp8 ? 1 : 2, fp8, 128, 1, P, false).ok());
  return l;
}
std::vector<PeerTraffic> plan(const Layout& l, int src, const std::vector<int32_t>& idx, CombineMode m) {
  std::vector<PeerTraffic> p;
  REQUIRE(plan_rank(l, src, idx.data(), static_cast<int>(idx.size()) / l.topk, m, &p).ok());
  return p;
}
}  // namespace

TEST_CASE("moe plan: records per (token, rank), pairs per (token, expert)", "[moe][plan]") {
  // 2 ranks, 4 experts: rank 0 owns 0-1, rank 1 owns 2-3. K = 3.
  Layout l = make(2, 4, 3, 256, 8, false, 4);
  // token 0: experts 0, 1 (rank 0) and 2 (rank 1); token 1: expert 3 twice and an empty slot;
  // token 2: all empty.
  std::vector<int32_t> idx = {0, 1, 2, 3, 3, -1, -1, -1, -1};
  auto p = plan(l, 0, idx, CombineMode::kPerPair);
  REQUIRE(p[0].records == 1);
  REQUIRE(p[0].pairs == 2);
  REQUIRE(p[1].records == 2);
  REQUIRE(p[1].pairs == 3);  // a repeated expert is a pair per slot
  // self: counted, never sent
  REQUIRE(p[0].dispatch_bytes == 0);
  REQUIRE(p[0].dispatch_writes == 0);
  REQUIRE(p[0].combine_writes == 0);
  REQUIRE(p[0].combine_rows == 2);
  // peer: header + 2 records in one write; 3 bf16 rows back in one write
  REQUIRE(p[1].dispatch_bytes == l.header_bytes + 2 * l.record_bytes);
  REQUIRE(p[1].dispatch_bytes_1 == p[1].dispatch_bytes);
  REQUIRE(p[1].dispatch_writes == 1);
  REQUIRE(p[1].grants == 0);
  REQUIRE(p[1].combine_rows == 3);
  REQUIRE(p[1].combine_bytes == 3 * 256 * 2);
  REQUIRE(p[1].combine_writes == 1);
  // per-rank combine: one pre-reduced row per record
  auto q = plan(l, 0, idx, CombineMode::kPerRank);
  REQUIRE(q[1].combine_rows == 2);
  REQUIRE(q[1].combine_bytes == 2 * 256 * 2);
  REQUIRE(q[0].combine_rows == 1);
}

TEST_CASE("moe plan: empty peers get a header and a marker, overflow costs a grant", "[moe][plan]") {
  Layout l = make(3, 6, 2, 128, 8, true, 2);  // fp8 with scales; at most 2 private records
  // 5 tokens all to rank 1 (experts 2, 3); nothing to rank 2.
  std::vector<int32_t> idx;
  for (int t = 0; t < 5; ++t) idx.insert(idx.end(), {2, 3});
  auto p = plan(l, 0, idx, CombineMode::kPerPair);
  REQUIRE(p[1].records == 5);
  REQUIRE(p[1].nprivate == 2);
  REQUIRE(p[1].dispatch_writes == 2);
  REQUIRE(p[1].grants == 1);
  REQUIRE(p[1].dispatch_bytes == l.header_bytes + 5 * l.record_bytes);
  REQUIRE(p[1].dispatch_bytes_1 == l.header_bytes + 2 * l.record_bytes);
  REQUIRE(p[1].combine_rows == 10);
  REQUIRE(p[2].records == 0);
  REQUIRE(p[2].dispatch_bytes == l.header_bytes);  // the header always goes
  REQUIRE(p[2].dispatch_writes == 1);
  REQUIRE(p[2].combine_bytes == 0);
  REQUIRE(p[2].combine_wire_bytes == kMarkerBytes);
  REQUIRE(p[2].combine_writes == 1);
  // exactly P records: no second write
  idx.resize(2 * 2);
  REQUIRE(plan(l, 0, idx, CombineMode::kPerPair)[1].dispatch_writes == 1);
  // maxPrivateTokens 0: every non-empty destination needs a grant
  Layout z = make(3, 6, 2, 128, 8, true, 0);
  auto pz = plan(z, 0, idx, CombineMode::kPerPair);
  REQUIRE(pz[1].dispatch_writes == 2);
  REQUIRE(pz[2].dispatch_writes == 1);
}

TEST_CASE("moe plan: ids outside the experts are refused", "[moe][plan]") {
  Layout l = make(2, 4, 2, 64, 4, false, 4);
  std::vector<int32_t> idx = {0, 4};
  std::vector<PeerTraffic> p;
  const moefabric::Status s = plan_rank(l, 0, idx.data(), 1, CombineMode::kPerPair, &p);
  REQUIRE(s == moefabric::Status::kInvalidArgument);
  REQUIRE(s.message().find("expert 4") != std::string::npos);
}

TEST_CASE("moe plan: random routings equal an independent count; stats add up", "[moe][plan]") {
  std::mt19937 rng(12345);
  for (int iter = 0; iter < 200; ++iter) {
    const int R = 1 + static_cast<int>(rng() % 9), E = R + static_cast<int>(rng() % 40);
    const int K = 1 + static_cast<int>(rng() % 8), maxT = 1 + static_cast<int>(rng() % 40);
    const int P = static_cast<int>(rng() % (maxT + 2));
    const bool fp8 = rng() % 2;
    const CombineMode mode = rng() % 2 ? CombineMode::kPerRank : CombineMode::kPerPair;
    Layout l = make(R, E, K, 256, maxT, fp8, P);
    std::vector<std::vector<int32_t>> idx(R);
    std::vector<const int32_t*> ptr(R);
    std::vector<int> T(R);
    for (int s = 0; s < R; ++s) {
      T[s] = static_cast<int>(rng() % (maxT + 1));
      for (int i = 0; i < T[s] * K; ++i)
        idx[s].push_back(rng() % 7 == 0 ? -1 : static_cast<int32_t>(rng() % E));  // repeats allowed
      ptr[s] = idx[s].data();
    }
    WorldPlan w;
    REQUIRE(plan_world(l, ptr, T, mode, &w).ok());
    std::vector<RankStats> st(R);
    for (int s = 0; s < R; ++s) {
      // independent: owner by search over first_expert, records as a set of (token, rank)
      std::set<std::pair<int, int>> recs;
      std::map<int, uint32_t> pairs;
      for (int t = 0; t < T[s]; ++t)
        for (int k = 0; k < K; ++k) {
          int e = idx[s][static_cast<size_t>(t) * K + k];
          if (e < 0) continue;
          int d = 0;
          while (l.first_expert(d + 1) <= e) ++d;
          recs.insert({t, d});
          ++pairs[d];
        }
      for (int d = 0; d < R; ++d) {
        uint32_t n = 0;
        for (auto& rc : recs) n += rc.second == d;
        const PeerTraffic& p = w[s][d];
        REQUIRE(p.records == n);
        REQUIRE(p.pairs == pairs[d]);
        REQUIRE(p.combine_rows == (mode == CombineMode::kPerRank ? n : pairs[d]));
        if (d == s) continue;
        REQUIRE(p.dispatch_bytes == l.header_bytes + l.record_bytes * n);
        REQUIRE(p.dispatch_writes == (static_cast<int>(n) > l.max_private ? 2u : 1u));
      }
      st[s] = rank_stats(w, s);
    }
    // every byte sent is a byte some rank received: totals agree both ways
    uint64_t comb_sent = 0, comb_expected = 0, grants = 0, overflowing = 0;
    for (int s = 0; s < R; ++s) {
      comb_sent += st[s].combine_bytes_sent;
      grants += st[s].grants_sent;
      for (int d = 0; d < R; ++d)
        if (d != s) {
          comb_expected += w[s][d].combine_rows ? w[s][d].combine_rows * l.y_row_bytes : 16;  // or the marker
          overflowing += w[s][d].dispatch_writes == 2;
        }
    }
    REQUIRE(comb_sent == comb_expected);
    REQUIRE(grants == overflowing);
  }
}
