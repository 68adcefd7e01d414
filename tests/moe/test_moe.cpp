// ncclMoe end to end between real processes on the host backend, over whichever provider the
// environment selects (the suite runs it over tcp on lo and over shm). Every result is checked
// against tests/common/moe_reference, computed from all ranks' gathered inputs.
#include <catch2/catch.hpp>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>

#include "include/moefabric/nccl_moe.h"
#include "common/launch.h"
#include "tests/common/check.h"
#include "tests/common/moe_reference.h"

using namespace moetest;
using moefabric::OobChannel;

namespace {

void run_ranks(int n, const std::function<int(OobChannel&)>& fn, int timeout_s = 300) {
  auto res = moefabric::launch_fork(n, fn, timeout_s);
  INFO(res.report);
  REQUIRE(res.ok);
}

struct Buffers {
  std::vector<uint8_t> recv_x;
  std::vector<float> recv_scales;
  std::vector<int32_t> counts;
  std::vector<uint16_t> expert_y, y;
};

// Allocated with guard bytes behind every output to catch writes past the documented sizes.
constexpr uint8_t kGuard = 0xa5;

Buffers alloc(const Shape& s, ncclMoeComm_t moe, int me) {
  size_t rows = 0;
  ncclMoeGetRecvCapacity(moe, &rows);
  Buffers b;
  b.recv_x.assign(rows * s.x_bytes() + 64, kGuard);
  b.recv_scales.assign(rows * s.nscale() + 16, -1.0f);
  b.counts.assign(s.local(me) + 4, -7);
  b.expert_y.assign(rows * s.hidden + 32, 0);
  b.y.assign(static_cast<size_t>(s.max_tokens) * s.hidden + 32, 0xdead);
  return b;
}

// One dispatch + combine with `mine`, fully checked. Returns "" or the failure.
std::string round_trip(OobChannel& oob, const Shape& s, ncclMoeComm_t moe, const RankInput& mine, Buffers& b,
                       bool split = false) {
  const int me = oob.rank();
  std::vector<RankInput> all;
  if (!gather_inputs(&oob, s, mine, &all)) return "gathering inputs failed";
  ExpectedLayout ex = expected_layout(s, all, me);
  size_t rows = 0;
  ncclMoeGetRecvCapacity(moe, &rows);
  if (ex.rows.size() > rows) return "reference needs more rows than the capacity";
  const int32_t T = mine.T;
  const float* sc = s.fp8 ? mine.scales.data() : nullptr;
  float* rsc = s.fp8 ? b.recv_scales.data() : nullptr;
  ncclResult_t r;
  if (split) {
    r = ncclMoeDispatchSend(mine.x.data(), sc, mine.idx.data(), mine.w.data(), &T, b.recv_x.data(), rsc,
                            b.counts.data(), moe, nullptr);
    if (r == ncclSuccess) r = ncclMoeDispatchRecv(moe, nullptr);
  } else {
    r = ncclMoeDispatch(mine.x.data(), sc, mine.idx.data(), mine.w.data(), &T, b.recv_x.data(), rsc,
                        b.counts.data(), moe, nullptr);
  }
  if (r != ncclSuccess) return std::string("dispatch failed: ") + ncclMoeGetLastError(moe);
  std::string err = check_dispatch(s, all, me, ex, b.recv_x.data(), b.recv_scales.data(), b.counts.data());
  if (!err.empty()) return "dispatch: " + err;
  for (size_t i = rows * s.x_bytes(); i < b.recv_x.size(); ++i)
    if (b.recv_x[i] != kGuard) return "dispatch wrote past recvX's capacity";
  for (size_t i = s.local(me); i < b.counts.size(); ++i)
    if (b.counts[i] != -7) return "dispatch wrote past recvExpertCounts";
  fill_expert_y(s, all, me, ex, b.expert_y.data());
  std::fill(b.y.begin(), b.y.end(), 0xdead);
  if (split) {
    r = ncclMoeCombineSend(b.expert_y.data(), moe, nullptr);
    if (r == ncclSuccess) r = ncclMoeCombineRecv(b.y.data(), moe, nullptr);
  } else {
    r = ncclMoeCombine(b.expert_y.data(), b.y.data(), moe, nullptr);
  }
  if (r != ncclSuccess) return std::string("combine failed: ") + ncclMoeGetLastError(moe);
  err = check_combine(s, mine, me, b.y.data());
  if (!err.empty()) return "combine: " + err;
  std::vector<ncclMoePeerStats_t> ps(s.nranks);
  if (ncclMoeGetPeerStats(moe, ps.data(), s.nranks) != ncclSuccess)
    return std::string("peer stats: ") + ncclMoeGetLastError(moe);
  err = check_peer_stats(s, all, me, ps.data());
  if (!err.empty()) return err;
  for (size_t i = static_cast<size_t>(T) * s.hidden; i < b.y.size(); ++i)
    if (b.y[i] != 0xdead) return "combine wrote past y[T]";
  return "";
}

ncclMoeComm_t init(OobChannel& oob, const Shape& s, const ncclMoeConfig_t* cfg = nullptr) {
  ncclMoeConfig_t c = cfg ? *cfg : s.config();
  ncclMoeComm_t moe = nullptr;
  ncclResult_t r = ncclMoeCommInitAllGather(&moe, oob.nranks(), oob.rank(), oob_allgather, &oob, &c);
  if (r != ncclSuccess) {
    fprintf(stderr, "rank %d: init failed (%d): %s\n", oob.rank(), r, ncclMoeGetLastError(nullptr));
    return nullptr;
  }
  return moe;
}

// Many seeds of random routing plus the adversarial routings on one shape.
int sweep(OobChannel& oob, Shape s, int seeds) {
  s.nranks = oob.nranks();
  const int me = oob.rank();
  ncclMoeComm_t moe = init(oob, s);
  RANK_CHECK(moe != nullptr, "init");
  Buffers b = alloc(s, moe, me);
  for (int seed = 0; seed < seeds; ++seed) {
    int T = static_cast<int>((seed * 7 + me * 3) % (s.max_tokens + 1));
    std::string e = round_trip(oob, s, moe, make_input(s, me, T, 1000 + seed, Routing::kRandom), b, seed % 2);
    RANK_CHECK(e.empty(), "seed %d T %d: %s", seed, T, e.c_str());
  }
  struct Case {
    Routing r;
    int T;
    const char* name;
  };
  const Case cases[] = {
      {Routing::kOneExpert, s.max_tokens, "all tokens to one expert at full capacity"},
      {Routing::kRandom, me == 0 ? 0 : s.max_tokens, "rank 0 with T = 0"},
      {Routing::kEmpty, s.max_tokens, "all slots -1"},
      {Routing::kDuplicates, s.max_tokens, "duplicate experts in a token"},
      {Routing::kSkewed, s.max_tokens, "skewed to rank 0"},
      {Routing::kRandom, 0, "T = 0 everywhere"},
  };
  for (const Case& c : cases) {
    std::string e = round_trip(oob, s, moe, make_input(s, me, c.T, 77, c.r), b);
    RANK_CHECK(e.empty(), "%s: %s", c.name, e.c_str());
  }
  ncclMoeStats_t st{};
  st.size = sizeof st;
  RANK_CHECK(ncclMoeGetStats(moe, &st) == ncclSuccess, "stats");
  RANK_CHECK(st.dispatchWritesMaxPeer <= 2 && st.combineWritesMaxPeer <= 1, "writes per peer %u/%u",
             st.dispatchWritesMaxPeer, st.combineWritesMaxPeer);
  RANK_CHECK(ncclMoeCommDestroy(moe) == ncclSuccess, "destroy");
  return 0;
}

}  // namespace

TEST_CASE("moe: random and adversarial routing, 2/3/4/8 ranks, bf16", "[moe]") {
  for (int n : {2, 3, 4, 8}) {
    INFO("ranks " << n);
    Shape s;
    s.experts = 13;  // not a multiple of any rank count
    s.topk = 4;
    s.hidden = 48;
    s.max_tokens = 24;
    s.max_private = 5;
    run_ranks(n, [&](OobChannel& oob) { return sweep(oob, s, n >= 8 ? 6 : 12); });
  }
}

// Scale: 16 ranks (CI; moefabric-moe-perf runs 64 and more), 1024 experts, both combine modes.
TEST_CASE("moe: 16 ranks, 1024 experts, per-pair and per-rank combine", "[moe][scale]") {
  for (bool per_rank : {false, true}) {
    INFO((per_rank ? "per-rank" : "per-pair") << " combine");
    const Shape s{
        .experts = 1024, .topk = 8, .hidden = 64, .max_tokens = 16, .max_private = 4, .per_rank = per_rank};
    run_ranks(16, [&](OobChannel& oob) { return sweep(oob, s, 2); });
  }
}

TEST_CASE("moe: per-rank combine (pre-reduced at the expert rank)", "[moe]") {
  for (int n : {1, 2, 3, 5}) {
    INFO("ranks " << n);
    const Shape s{.experts = 13,
                  .topk = 6,
                  .hidden = 64,
                  .max_tokens = 20,
                  .fp8 = n % 2 == 1,
                  .scale_block = 32,
                  .alignment = n,
                  .max_private = 3,
                  .per_rank = true};
    run_ranks(n, [&](OobChannel& oob) { return sweep(oob, s, 6); });
  }
}

TEST_CASE("moe: fp8 with block scales, alignment, shapes", "[moe]") {
  SECTION("fp8 e4m3, 3 ranks, K 8 of 32, alignment 4") {
    Shape s;
    s.fp8 = true;
    s.experts = 32;
    s.topk = 8;
    s.hidden = 256;
    s.scale_block = 128;
    s.alignment = 4;
    s.max_tokens = 32;
    s.max_private = 8;
    run_ranks(3, [&](OobChannel& oob) { return sweep(oob, s, 6); });
  }
  SECTION("K 16, E 1024, odd hidden blocks, 4 ranks, no private tokens (all granted)") {
    Shape s;
    s.fp8 = true;
    s.experts = 1023;
    s.topk = 16;
    s.hidden = 96;
    s.scale_block = 32;
    s.max_tokens = 20;
    s.max_private = 0;
    run_ranks(4, [&](OobChannel& oob) { return sweep(oob, s, 4); });
  }
  SECTION("K 1, hidden 16384, 2 ranks") {
    Shape s;
    s.experts = 5;
    s.topk = 1;
    s.hidden = 16384;
    s.max_tokens = 8;
    run_ranks(2, [&](OobChannel& oob) { return sweep(oob, s, 4); });
  }
  SECTION("T up to 4096, 2 ranks") {
    Shape s;
    s.experts = 6;
    s.topk = 2;
    s.hidden = 16;
    s.max_tokens = 4096;
    s.max_private = 128;
    run_ranks(2, [&](OobChannel& oob) { return sweep(oob, s, 2); });
  }
}

TEST_CASE("moe: bad input is rejected before anything is sent", "[moe]") {
  run_ranks(2, [](OobChannel& oob) {
    Shape s;
    s.fp8 = true;
    s.experts = 8;
    s.topk = 2;
    s.hidden = 64;
    s.scale_block = 32;
    s.max_tokens = 8;
    const int me = oob.rank();
    ncclMoeComm_t moe = init(oob, s);
    RANK_CHECK(moe != nullptr, "init");
    Buffers b = alloc(s, moe, me);
    RankInput in = make_input(s, me, 8, 5, Routing::kRandom);
    int32_t T = 8;
    auto dispatch = [&](const void* x, const float* sc, const int32_t* idx, const int32_t* nt, void* rx,
                        cudaStream_t st = nullptr) {
      return ncclMoeDispatch(x, sc, idx, in.w.data(), nt, rx, b.recv_scales.data(), b.counts.data(), moe, st);
    };
    auto expect = [&](ncclResult_t got, ncclResult_t want, const char* needle, const char* what) {
      const char* msg = ncclMoeGetLastError(moe);
      if (got != want || std::strstr(msg, needle) == nullptr) {
        fprintf(stderr, "rank %d: %s: got %d '%s', expected %d with '%s'\n", me, what, got, msg, want,
                needle);
        return false;
      }
      return true;
    };
    int32_t big = 9, neg = -1;
    std::vector<int32_t> bad_idx = in.idx;
    bad_idx[3] = 8;
    std::vector<int32_t> bad_idx2 = in.idx;
    bad_idx2[0] = -2;
    RANK_CHECK(expect(dispatch(in.x.data(), in.scales.data(), in.idx.data(), &big, b.recv_x.data()),
                      ncclInvalidArgument, "numTokens 9", "T > max"),
               "rejected wrongly");
    RANK_CHECK(expect(dispatch(in.x.data(), in.scales.data(), in.idx.data(), &neg, b.recv_x.data()),
                      ncclInvalidArgument, "numTokens -1", "T < 0"),
               "rejected wrongly");
    RANK_CHECK(expect(dispatch(in.x.data(), in.scales.data(), bad_idx.data(), &T, b.recv_x.data()),
                      ncclInvalidArgument, "topkIdx[1][1] = 8", "expert id >= E"),
               "rejected wrongly");
    RANK_CHECK(expect(dispatch(in.x.data(), in.scales.data(), bad_idx2.data(), &T, b.recv_x.data()),
                      ncclInvalidArgument, "= -2", "expert id < -1"),
               "rejected wrongly");
    RANK_CHECK(expect(dispatch(nullptr, in.scales.data(), in.idx.data(), &T, b.recv_x.data()),
                      ncclInvalidArgument, "x is NULL", "x NULL"),
               "rejected wrongly");
    RANK_CHECK(expect(dispatch(in.x.data(), nullptr, in.idx.data(), &T, b.recv_x.data()), ncclInvalidArgument,
                      "xScales is NULL", "scales NULL"),
               "rejected wrongly");
    RANK_CHECK(expect(dispatch(in.x.data(), in.scales.data(), in.idx.data(), &T, b.recv_x.data() + 1),
                      ncclInvalidArgument, "recvX is not 16-byte aligned", "misaligned recvX"),
               "rejected wrongly");
    RANK_CHECK(expect(dispatch(in.x.data(), in.scales.data(), in.idx.data(), nullptr, b.recv_x.data()),
                      ncclInvalidArgument, "numTokens is NULL", "numTokens NULL"),
               "rejected wrongly");
    RANK_CHECK(expect(dispatch(in.x.data(), in.scales.data(), in.idx.data(), &T, b.recv_x.data(),
                               reinterpret_cast<cudaStream_t>(0x1)),
                      ncclInvalidArgument, "stream NULL", "stream for host backend"),
               "rejected wrongly");
    RANK_CHECK(expect(ncclMoeCombine(b.expert_y.data(), b.y.data(), moe, nullptr), ncclInvalidUsage,
                      "no completed dispatch", "combine before dispatch"),
               "rejected wrongly");
    RANK_CHECK(
        expect(ncclMoeDispatchRecv(moe, nullptr), ncclInvalidUsage, "no dispatch send", "recv before send"),
        "rejected wrongly");
    ncclResult_t ae = ncclSuccess;
    RANK_CHECK(ncclMoeCommGetAsyncError(moe, &ae) == ncclSuccess && ae == ncclSuccess,
               "rejections must not poison the comm");
    ncclMoeStats_t st{};
    st.size = sizeof st;
    RANK_CHECK(ncclMoeGetStats(moe, &st) == ncclSuccess && st.ops == 0, "an op ran");
    // Nothing was sent: the next valid round on both ranks is exact.
    std::string e = round_trip(oob, s, moe, in, b);
    RANK_CHECK(e.empty(), "after rejections: %s", e.c_str());
    // Double dispatch.
    RANK_CHECK(
        ncclMoeDispatchSend(in.x.data(), in.scales.data(), in.idx.data(), in.w.data(), &T, b.recv_x.data(),
                            b.recv_scales.data(), b.counts.data(), moe, nullptr) == ncclSuccess,
        "send");
    RANK_CHECK(
        expect(ncclMoeDispatchSend(in.x.data(), in.scales.data(), in.idx.data(), in.w.data(), &T,
                                   b.recv_x.data(), b.recv_scales.data(), b.counts.data(), moe, nullptr),
               ncclInvalidUsage, "one dispatch->combine in flight", "second dispatch"),
        "rejected wrongly");
    RANK_CHECK(ncclMoeDispatchRecv(moe, nullptr) == ncclSuccess, "recv: %s", ncclMoeGetLastError(moe));
    RANK_CHECK(ncclMoeCombine(b.expert_y.data(), b.y.data(), moe, nullptr) == ncclSuccess, "combine");
    RANK_CHECK(ncclMoeCommDestroy(moe) == ncclSuccess, "destroy: %s", ncclMoeGetLastError(nullptr));
    return 0;
  });
}

TEST_CASE("moe: invalid and mismatched configs fail init on every rank", "[moe]") {
  struct Bad {
    const char* name;
    void (*edit)(ncclMoeConfig_t*, int rank);
    ncclResult_t want;
    const char* needle;
  };
  const Bad bads[] = {
      {"missing numExperts", [](ncclMoeConfig_t* c, int) { c->numExperts = NCCL_MOE_UNDEF_INT; },
       ncclInvalidArgument, "numExperts is required"},
      {"K = 17", [](ncclMoeConfig_t* c, int) { c->numTopk = 17; }, ncclInvalidArgument, "numTopk 17"},
      {"hidden 40", [](ncclMoeConfig_t* c, int) { c->hidden = 40; }, ncclInvalidArgument, "multiple of 16"},
      {"fp8 hidden % scaleBlock",
       [](ncclMoeConfig_t* c, int) {
         c->dispatchType = ncclFloat8e4m3;
         c->scaleBlock = 48;
       },
       ncclInvalidArgument, "scaleBlock 48"},
      {"E < R", [](ncclMoeConfig_t* c, int) { c->numExperts = 1; }, ncclInvalidArgument, "numExperts 1"},
      {"bad magic", [](ncclMoeConfig_t* c, int) { c->magic = 0; }, ncclInvalidArgument, "magic"},
      {"float combine", [](ncclMoeConfig_t* c, int) { c->combineType = ncclFloat32; }, ncclInvalidArgument,
       "combineType"},
      {"hidden differs on rank 1",
       [](ncclMoeConfig_t* c, int r) {
         if (r == 1) c->hidden = 128;
       },
       ncclInvalidUsage, "hidden differs"},
      {"K invalid on rank 1 only",
       [](ncclMoeConfig_t* c, int r) {
         if (r == 1) c->numTopk = 0;
       },
       ncclInvalidUsage, "rank 1 rejected its config"},
  };
  for (const Bad& bad : bads) {
    INFO(bad.name);
    run_ranks(2, [&](OobChannel& oob) {
      Shape s;
      ncclMoeConfig_t c = s.config();
      bad.edit(&c, oob.rank());
      ncclMoeComm_t moe = nullptr;
      ncclResult_t r = ncclMoeCommInitAllGather(&moe, 2, oob.rank(), oob_allgather, &oob, &c);
      const char* msg = ncclMoeGetLastError(nullptr);
      // The rank whose own config is invalid reports the specific problem; the others report
      // which rank rejected it.
      bool own = std::strncmp(msg, "init: invalid config", 20) == 0;
      RANK_CHECK(r != ncclSuccess && moe == nullptr, "%s: init succeeded", bad.name);
      if (own) {
        RANK_CHECK(r == ncclInvalidArgument, "%s: own invalid config gave %d (%s)", bad.name, r, msg);
        RANK_CHECK(bad.want == ncclInvalidUsage || std::strstr(msg, bad.needle) != nullptr,
                   "%s: message '%s' lacks '%s'", bad.name, msg, bad.needle);
      } else {
        RANK_CHECK(r == bad.want && bad.want == ncclInvalidUsage, "%s: result %d (%s)", bad.name, r, msg);
        RANK_CHECK(std::strstr(msg, bad.needle) != nullptr, "%s: message '%s' lacks '%s'", bad.name, msg,
                   bad.needle);
      }
      return 0;
    });
  }
}

TEST_CASE("moe: a rank killed mid-dispatch is named by every survivor within the timeout", "[moe]") {
  const int kTimeoutMs = 3000;
  auto res = moefabric::launch_fork(
      4,
      [&](OobChannel& oob) {
        Shape s;
        s.nranks = 4;
        s.max_tokens = 16;
        ncclMoeConfig_t c = s.config();
        c.timeoutMs = kTimeoutMs;
        const int me = oob.rank();
        ncclMoeComm_t moe = init(oob, s, &c);
        RANK_CHECK(moe != nullptr, "init");
        Buffers b = alloc(s, moe, me);
        std::string e = round_trip(oob, s, moe, make_input(s, me, 16, 3, Routing::kRandom), b);
        RANK_CHECK(e.empty(), "warm-up round: %s", e.c_str());
        RankInput in = make_input(s, me, 16, 4, Routing::kRandom);
        int32_t T = in.T;
        RANK_OK(oob.barrier());
        if (me == 2) raise(SIGKILL);  // dies without sending its dispatch
        auto t0 = std::chrono::steady_clock::now();
        ncclResult_t r = ncclMoeDispatch(in.x.data(), nullptr, in.idx.data(), in.w.data(), &T,
                                         b.recv_x.data(), nullptr, b.counts.data(), moe, nullptr);
        if (r == ncclSuccess) r = ncclMoeCombine(b.expert_y.data(), b.y.data(), moe, nullptr);
        double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        const char* msg = ncclMoeGetLastError(moe);
        fprintf(stderr, "rank %d: after %.0f ms: %s\n", me, ms, msg);
        RANK_CHECK(r == ncclRemoteError, "result %d", r);
        RANK_CHECK(std::strstr(msg, "rank 2") != nullptr, "error does not name rank 2: %s", msg);
        RANK_CHECK(ms < kTimeoutMs + 2000, "took %.0f ms", ms);
        ncclResult_t ae = ncclSuccess;
        RANK_CHECK(ncclMoeCommGetAsyncError(moe, &ae) == ncclSuccess && ae == ncclRemoteError,
                   "async error %d", ae);
        auto t1 = std::chrono::steady_clock::now();
        RANK_CHECK(ncclMoeCommAbort(moe) == ncclSuccess, "abort");
        double abort_ms =
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t1).count();
        RANK_CHECK(abort_ms < 2000, "abort took %.0f ms", abort_ms);
        return 0;
      },
      120);
  INFO(res.report);
  // Exactly rank 2 failed, and by its own SIGKILL.
  CHECK(res.report == "rank 2: killed by signal 9\n");
}

// Scripts often exit without destroying their comms: exit() then runs the atexit handlers and
// library destructors (libfabric's included) while the proxy thread is still alive. The process
// must still exit cleanly, with status 0 and no signal.
TEST_CASE("moe: a process that exits without destroying its comm exits cleanly", "[moe]") {
  auto res = moefabric::launch_fork(
      2,
      [&](OobChannel& oob) {
        Shape s;
        s.nranks = 2;
        s.max_tokens = 16;
        const int me = oob.rank();
        ncclMoeComm_t moe = init(oob, s);
        RANK_CHECK(moe != nullptr, "init");
        Buffers b = alloc(s, moe, me);
        std::string e = round_trip(oob, s, moe, make_input(s, me, 16, 5, Routing::kRandom), b);
        RANK_CHECK(e.empty(), "round: %s", e.c_str());
        RANK_OK(oob.barrier());
        fflush(nullptr);
        exit(0);  // not launch_fork's _exit: atexit handlers and library destructors run
      },
      120);
  INFO(res.report);
  CHECK(res.report.empty());
  CHECK(res.ok);
}

TEST_CASE("moe: a destroyed or aborted comm is refused, never touched", "[moe]") {
  run_ranks(2, [](OobChannel& oob) {
    Shape s;
    s.nranks = 2;
    const int me = oob.rank();
    for (int how = 0; how < 2; ++how) {
      ncclMoeComm_t moe = init(oob, s);
      RANK_CHECK(moe != nullptr, "init");
      Buffers b = alloc(s, moe, me);
      std::string e = round_trip(oob, s, moe, make_input(s, me, 8, 3, Routing::kRandom), b);
      RANK_CHECK(e.empty(), "round: %s", e.c_str());
      // Abort is local: a rank that aborted while its combine write to the other was still in
      // flight would leave the other waiting. Both have their results before either tears down.
      RANK_OK(oob.barrier());
      if (how == 0)
        RANK_CHECK(ncclMoeCommDestroy(moe) == ncclSuccess, "destroy: %s", ncclMoeGetLastError(moe));
      else
        RANK_CHECK(ncclMoeCommAbort(moe) == ncclSuccess, "abort");
      // Every entry point with the dead handle: ncclInvalidArgument and a text saying why.
      const int32_t T = 0;
      size_t rows = 0;
      int first = 0, count = 0;
      ncclResult_t ae = ncclSuccess;
      ncclMoeStats_t st{};
      st.size = sizeof st;
      RANK_CHECK(ncclMoeCommDestroy(moe) == ncclInvalidArgument, "second destroy");
      RANK_CHECK(ncclMoeCommAbort(moe) == ncclInvalidArgument, "abort after teardown");
      RANK_CHECK(ncclMoeGetRecvCapacity(moe, &rows) == ncclInvalidArgument, "capacity");
      RANK_CHECK(ncclMoeGetLocalExperts(moe, &first, &count) == ncclInvalidArgument, "local experts");
      RANK_CHECK(ncclMoeCommGetAsyncError(moe, &ae) == ncclInvalidArgument, "async error");
      RANK_CHECK(ncclMoeGetStats(moe, &st) == ncclInvalidArgument, "stats");
      RANK_CHECK(ncclMoeDispatch(nullptr, nullptr, nullptr, nullptr, &T, b.recv_x.data(), nullptr,
                                 b.counts.data(), moe, nullptr) == ncclInvalidArgument,
                 "dispatch");
      RANK_CHECK(ncclMoeDispatchRecv(moe, nullptr) == ncclInvalidArgument, "dispatch recv");
      RANK_CHECK(ncclMoeCombine(nullptr, b.y.data(), moe, nullptr) == ncclInvalidArgument, "combine");
      RANK_CHECK(ncclMoeCombineRecv(b.y.data(), moe, nullptr) == ncclInvalidArgument, "combine recv");
      const std::string text = ncclMoeGetLastError(moe);
      RANK_CHECK(text.find("not a live comm") != std::string::npos, "text: %s", text.c_str());
      RANK_OK(oob.barrier());
    }
    // A value that never was a handle.
    int junk = 0;
    RANK_CHECK(ncclMoeCommDestroy(reinterpret_cast<ncclMoeComm_t>(&junk)) == ncclInvalidArgument, "junk");
    return 0;
  });
}
