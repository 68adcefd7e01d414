// 10^4 dispatch/combine rounds with fresh routing: registrations must not change after init and
// heap memory must stay flat (RSS within a per-provider bound); every 100th round is checked against the reference. Runs under
// ThreadSanitizer too (caller thread + proxy thread), with fewer rounds (MFTEST_MOE_ROUNDS).
#include <catch2/catch.hpp>

#include <malloc.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "include/moefabric/nccl_moe.h"
#include "common/launch.h"
#include "tests/common/check.h"
#include "tests/common/proc.h"
#include "tests/common/moe_reference.h"

using namespace moetest;
using moefabric::OobChannel;

namespace {}  // namespace

TEST_CASE("moe soak: 10^4 rounds, flat registrations and memory", "[moe][soak]") {
  const int rounds_env = getenv("MFTEST_MOE_ROUNDS") ? atoi(getenv("MFTEST_MOE_ROUNDS")) : 0;
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  const bool check_mem = false;  // the sanitizers' allocators and quarantines: memory says nothing
  const int default_rounds = 2000;
#else
  const bool check_mem = getenv("MFTEST_NO_RSS") == nullptr;
  const int default_rounds = 10000;
#endif
  const int rounds = rounds_env > 0 ? rounds_env : default_rounds;
  auto res = moefabric::launch_fork(
      3,
      [&](OobChannel& oob) {
        Shape s;
        s.nranks = 3;
        s.experts = 7;
        s.topk = 3;
        s.hidden = 32;
        s.max_tokens = 12;
        s.max_private = 4;
        const int me = oob.rank();
        ncclMoeConfig_t c = s.config();
        ncclMoeComm_t moe = nullptr;
        RANK_CHECK(ncclMoeCommInitAllGather(&moe, 3, me, oob_allgather, &oob, &c) == ncclSuccess, "init: %s",
                   ncclMoeGetLastError(nullptr));
        size_t rows = 0;
        ncclMoeGetRecvCapacity(moe, &rows);
        std::vector<uint8_t> rx(rows * s.x_bytes());
        std::vector<int32_t> counts(s.local(me));
        std::vector<uint16_t> ey(rows * s.hidden), y(static_cast<size_t>(s.max_tokens) * s.hidden);
        ncclMoeStats_t st0{}, st{};
        st0.size = st.size = sizeof st;
        ncclMoeGetStats(moe, &st0);
        long rss_warm = 0;
        size_t heap_warm = 0;
        const int warm = rounds / 5;
        for (int i = 0; i < rounds; ++i) {
          if (i == warm) rss_warm = testutil::rss_kib(), heap_warm = mallinfo2().uordblks;
          RankInput in = make_input(s, me, (i * 5 + me) % (s.max_tokens + 1), 50000 + i, Routing::kRandom);
          const bool verify = i % 100 == 0;
          std::vector<RankInput> all;
          ExpectedLayout ex;
          if (verify) {
            RANK_CHECK(gather_inputs(&oob, s, in, &all), "gather");
            ex = expected_layout(s, all, me);
          }
          int32_t T = in.T;
          RANK_CHECK(ncclMoeDispatch(in.x.data(), nullptr, in.idx.data(), in.w.data(), &T, rx.data(), nullptr,
                                     counts.data(), moe, nullptr) == ncclSuccess,
                     "round %d dispatch: %s", i, ncclMoeGetLastError(moe));
          if (verify) {
            std::string e = check_dispatch(s, all, me, ex, rx.data(), nullptr, counts.data());
            RANK_CHECK(e.empty(), "round %d: %s", i, e.c_str());
            fill_expert_y(s, all, me, ex, ey.data());
          }
          RANK_CHECK(ncclMoeCombine(ey.data(), y.data(), moe, nullptr) == ncclSuccess, "round %d combine: %s",
                     i, ncclMoeGetLastError(moe));
          if (verify) {
            std::string e = check_combine(s, in, me, y.data());
            RANK_CHECK(e.empty(), "round %d: %s", i, e.c_str());
          }
        }
        long rss_end = testutil::rss_kib();
        size_t heap_end = mallinfo2().uordblks;
        ncclMoeGetStats(moe, &st);
        fprintf(
            stderr,
            "rank %d: %d rounds, registrations %llu -> %llu, heap in use %zu -> %zu B, RSS %ld -> %ld KiB\n",
            me, rounds, static_cast<unsigned long long>(st0.registrations),
            static_cast<unsigned long long>(st.registrations), heap_warm, heap_end, rss_warm, rss_end);
        RANK_CHECK(st.ops == static_cast<uint64_t>(rounds), "ops %llu",
                   static_cast<unsigned long long>(st.ops));
        RANK_CHECK(st.registrations == st0.registrations, "registrations grew");
        // Everything malloc'd (ours and libfabric's) must be exactly flat; RSS also counts the pages
        // tcp;ofi_rxm's mmap'd pools touch over time, so its bound is set per provider.
        if (check_mem)
          RANK_CHECK(heap_end <= heap_warm + 16 * 1024, "heap in use grew by %zd B",
                     static_cast<ssize_t>(heap_end - heap_warm));
        const long slack = getenv("MFTEST_RSS_SLACK_KIB") ? atol(getenv("MFTEST_RSS_SLACK_KIB")) : 1024;
        if (check_mem) RANK_CHECK(rss_end - rss_warm < slack, "RSS grew by %ld KiB", rss_end - rss_warm);
        RANK_CHECK(ncclMoeCommDestroy(moe) == ncclSuccess, "destroy: %s", ncclMoeGetLastError(nullptr));
        return 0;
      },
      1200);
  INFO(res.report);
  REQUIRE(res.ok);
}
