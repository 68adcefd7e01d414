// 10^5 small messages through the transport's internal API (the same code the plugin ships):
// registrations must not grow at all, and memory must stay flat once the provider's own pools
// have reached their steady size (tcp;ofi_rxm grows its buffer pools over the first ~50000).
#include <catch2/catch.hpp>
#include <fstream>
#include <string>

#include "common/launch.h"
#include "tests/common/check.h"
#include "tests/common/proc.h"
#include "plugin/net/net.h"

using namespace moefabric;
using namespace moefabric::fabric;

namespace {}  // namespace

TEST_CASE("soak: 100000 small sends, stable memory and registrations", "[fabric][soak]") {
  auto res = launch_fork(
      2,
      [](OobChannel& oob) {
        Net* net = nullptr;
        RANK_OK(Net::acquire(&net));
        int me = oob.rank(), peer = 1 - me;
        char h[128] = {}, all[256];
        void* lc = nullptr;
        RANK_CHECK(net_listen(net, 0, h, &lc) == Status::kOk, "listen");
        RANK_OK(oob.allgather(h, all, 128));
        void *sc = nullptr, *rc = nullptr;
        for (int i = 0; (!sc || !rc) && i < 2000000; ++i) {
          if (!sc) RANK_CHECK(net_connect(net, 0, all + peer * 128, &sc) == Status::kOk, "connect");
          if (!rc) RANK_CHECK(net_accept(lc, &rc) == Status::kOk, "accept");
        }
        RANK_CHECK(sc && rc, "no connection");
        std::vector<uint8_t> sb(64), rb(64);
        void *smh = nullptr, *rmh = nullptr;
        RANK_CHECK(net_reg_mr(sc, sb.data(), sb.size(), 1, &smh) == Status::kOk, "reg");
        RANK_CHECK(net_reg_mr(rc, rb.data(), rb.size(), 1, &rmh) == Status::kOk, "reg");
        const int kTotal = 100000;
        const int kWarm = getenv("MFTEST_SOAK_WARM") ? atoi(getenv("MFTEST_SOAK_WARM")) : 50000;
        NetCounters before{};
        long rss0 = 0;
        for (int i = 0; i < kTotal; ++i) {
          if (i == kWarm) {
            before = net_counters(net);
            rss0 = testutil::rss_kib();
          }
          size_t n = 8 + (i % 57);
          for (size_t k = 0; k < n; ++k) sb[k] = static_cast<uint8_t>(i + k);
          void* rq = nullptr;
          void* data = rb.data();
          size_t sz = 64;
          int tag = peer;
          while (!rq) RANK_CHECK(net_irecv(rc, 1, &data, &sz, &tag, &rmh, &rq) == Status::kOk, "irecv");
          void* sq = nullptr;
          while (!sq) RANK_CHECK(net_isend(sc, sb.data(), n, me, smh, &sq) == Status::kOk, "isend");
          int ds = 0, dr = 0;
          size_t sizes[8];
          for (long spin = 0; !(ds && dr); ++spin) {
            if (!ds) RANK_CHECK(net_test(sq, &ds, sizes) == Status::kOk, "test send %d", i);
            if (!dr) RANK_CHECK(net_test(rq, &dr, sizes) == Status::kOk, "test recv %d", i);
            RANK_CHECK(spin < 100000000, "message %d stuck", i);
          }
          RANK_CHECK(sizes[0] == n, "message %d: %zu bytes, expected %zu", i, sizes[0], n);
          for (size_t k = 0; k < n; ++k)
            RANK_CHECK(rb[k] == static_cast<uint8_t>(i + k), "message %d byte %zu", i, k);
        }
        NetCounters after = net_counters(net);
        long rss1 = testutil::rss_kib();
        fprintf(stderr, "rank %d: registrations %llu -> %llu, live MRs %zu -> %zu, RSS %ld -> %ld KiB\n", me,
                static_cast<unsigned long long>(before.registrations),
                static_cast<unsigned long long>(after.registrations), before.live_mrs, after.live_mrs, rss0,
                rss1);
        RANK_CHECK(after.registrations == before.registrations, "registrations grew");
        RANK_CHECK(after.live_mrs == before.live_mrs, "live MRs grew");
        RANK_CHECK(after.live_comms == before.live_comms, "comms grew");
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
        (void)rss0, (void)rss1;  // the sanitizers' quarantines hold freed memory: RSS says nothing
#else
        RANK_CHECK(rss1 - rss0 < 4096, "RSS grew by %ld KiB", rss1 - rss0);
#endif
        RANK_OK(oob.barrier());
        RANK_CHECK(net_dereg_mr(sc, smh) == Status::kOk && net_dereg_mr(rc, rmh) == Status::kOk, "dereg");
        RANK_CHECK(net_close_send(sc) == Status::kOk && net_close_recv(rc) == Status::kOk &&
                       net_close_listen(lc) == Status::kOk,
                   "close");
        Net::release(net);
        return 0;
      },
      600);
  INFO(res.report);
  REQUIRE(res.ok);
}
