// The CUDA backend's fabric proxy (collectives/cuda/cuda_proxy.h) without a GPU: each rank is a process
// whose "kernels" are this test's host code. It fills the staging segments, rings the doorbells
// in plain host memory exactly as the send kernels do, waits on the arrival flags as the ingest
// kernels do, and checks every byte that landed, over the libfabric provider the environment
// picks (suite fabric: shm and tcp). Covers one rank talking to itself through the fabric
// (MOEFABRIC_FORCE_FABRIC on one GPU), two and three ranks, T = 0 included, then the destroy
// barrier (also when no rank is its own fabric peer and one rank reaches it late); and two failures: a doorbell that skips an op, a peer that never reaches the barrier.
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tests/common/check.h"
#include "kernels/layout.h"
#include "collectives/cuda/cuda_proxy.h"
#include "common/launch.h"
#include "common/params.h"

using namespace moefabric;
using namespace moefabric::moe;

namespace {

struct FreeDel {
  void operator()(void* p) const { std::free(p); }
};

uint8_t pattern(uint64_t op, int src, int dst, size_t i) {
  return static_cast<uint8_t>(op * 131 + src * 31 + dst * 7 + i * 13 + (i >> 8));
}

// Waits until *flag reaches `want` (as a kernel would, with a bound).
bool wait_flag(const uint64_t* flag, uint64_t want) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (__atomic_load_n(flag, __ATOMIC_ACQUIRE) < want)
    if (std::chrono::steady_clock::now() > deadline) return false;
  return true;
}

// One rank's proxy over freshly allocated staging (what CudaComm::fabric_setup does).
struct Harness {
  CudaLayout l;
  std::unique_ptr<uint8_t, FreeDel> send, recv;
  std::vector<uint64_t> ctrl;
  std::vector<int32_t> stage_T;  // [1 + R]: what the kernels tell the proxy
  volatile int32_t abort_word = 0;
  std::unique_ptr<FabricProxy> proxy;
  std::string err;
  uint64_t* doorbell() { return ctrl.data(); }
  const uint64_t* arrived() const { return ctrl.data() + FabricProxy::kBells; }
  // Collective (one allgather); false with `err` set. `self`: this rank is its own fabric peer
  // (MOEFABRIC_FORCE_FABRIC); else only the other ranks are (MOEFABRIC_NODE_SIZE=1).
  bool init(OobChannel& oob, int timeout_ms, bool self = true) {
    const int R = oob.nranks();
    const char* why = nullptr;
    if (!cuda_layout_init(&l, R, oob.rank(), 8, 2, 64, 16, 2, false, 128, 1, &why)) {
      err = why;
      return false;
    }
    const size_t bytes = l.stage_bytes * R;
    send.reset(static_cast<uint8_t*>(std::aligned_alloc(4096, bytes)));
    recv.reset(static_cast<uint8_t*>(std::aligned_alloc(4096, bytes)));
    std::memset(send.get(), 0, bytes);
    std::memset(recv.get(), 0, bytes);
    ctrl.assign(FabricProxy::kBells + (FabricProxy::kBells + 1) * R, 0);
    stage_T.assign(1 + R, 0);
    FabricProxy::Config pc;
    pc.nranks = R;
    pc.rank = oob.rank();
    pc.remote = R == 32 ? ~0u : (1u << R) - 1;
    if (!self) pc.remote &= ~(1u << oob.rank());
    pc.layout = l;
    pc.doorbell = ctrl.data();
    pc.arrived = ctrl.data() + FabricProxy::kBells;
    pc.stage_T = stage_T.data();
    pc.abort_word = &abort_word;
    pc.timeout_ms = timeout_ms;
    Status s = FabricProxy::create(Params::load(), pc, &proxy, &err);
    if (s == Status::kOk) s = proxy->attach(send.get(), recv.get(), -1, &err);
    FabricProxy::Addr mine{};
    if (s == Status::kOk)
      proxy->local_addr(&mine);
    else
      snprintf(mine.why, sizeof mine.why, "%s", err.c_str());
    std::vector<FabricProxy::Addr> all(R);
    if (!oob.allgather(&mine, all.data(), sizeof mine)) {
      err = "allgather";
      return false;
    }
    return s == Status::kOk && proxy->start(all, &err) == Status::kOk;
  }
};

int rank_main(OobChannel& oob, int ops) {
  const int me = oob.rank(), R = oob.nranks();
  Harness h;
  RANK_CHECK(h.init(oob, 20000), "init: %s", h.err.c_str());
  // As CudaComm's init does: barrier 1 before any op, barrier 2 at destroy.
  RANK_CHECK(h.proxy->barrier(&h.err, "init") == Status::kOk, "init barrier: %s", h.err.c_str());
  const CudaLayout& l = h.l;
  auto& send = h.send;
  auto& recv = h.recv;
  auto& proxy = h.proxy;
  std::string err;
  auto seg = [&](uint8_t* base, int r) { return base + l.stage_bytes * r; };
  uint64_t* doorbell = h.doorbell();
  const uint64_t* arrived = h.arrived();
  auto T_of = [&](uint64_t op, int src) { return static_cast<int>((op * 5 + src * 3) % 17); };

  for (uint64_t op = 1; op <= static_cast<uint64_t>(ops); ++op) {
    // dispatch: T, idx[T][K], slots, to every rank (self included)
    const int T = op % 7 == 3 ? 0 : T_of(op, me);
    for (int d = 0; d < R; ++d) {
      uint8_t* p = seg(send.get(), d);
      std::memcpy(p, &T, 4);
      for (size_t i = 16; i < l.stage_dispatch_bytes(T); ++i) p[i] = pattern(op, me, d, i);
    }
    h.stage_T[0] = T;  // the send kernel's word for the proxy (it never reads the segments)
    __atomic_store_n(doorbell + 0, op, __ATOMIC_RELEASE);
    for (int src = 0; src < R; ++src) {
      RANK_CHECK(wait_flag(arrived + src, op), "op %llu: dispatch from rank %d never arrived",
                 static_cast<unsigned long long>(op), src);
      const uint8_t* p = seg(recv.get(), src);
      int32_t Ts = -1;
      std::memcpy(&Ts, p, 4);
      const int want = op % 7 == 3 ? 0 : T_of(op, src);
      RANK_CHECK(Ts == want, "op %llu: rank %d's T %d, expected %d", static_cast<unsigned long long>(op), src,
                 Ts, want);
      h.stage_T[1 + src] = Ts;  // as the dispatch ingest kernel tells the proxy
      for (size_t i = 16; i < l.stage_dispatch_bytes(Ts); ++i)
        RANK_CHECK(p[i] == pattern(op, src, me, i), "op %llu: dispatch byte %zu from rank %d",
                   static_cast<unsigned long long>(op), i, src);
    }
    // combine: rows of each home's T * K, back to it
    for (int h = 0; h < R; ++h) {
      int32_t Th = 0;
      std::memcpy(&Th, seg(recv.get(), h), 4);
      uint8_t* p = seg(send.get(), h) + l.stage_off_comb;
      for (size_t i = 0; i < static_cast<size_t>(Th) * l.topk * l.y_row_bytes; ++i)
        p[i] = pattern(op + 1000, me, h, i);
    }
    __atomic_store_n(doorbell + 1, op, __ATOMIC_RELEASE);
    for (int o = 0; o < R; ++o) {
      RANK_CHECK(wait_flag(arrived + R + o, op), "op %llu: combine from rank %d never arrived",
                 static_cast<unsigned long long>(op), o);
      const uint8_t* p = seg(recv.get(), o) + l.stage_off_comb;
      for (size_t i = 0; i < static_cast<size_t>(T) * l.topk * l.y_row_bytes; ++i)
        RANK_CHECK(p[i] == pattern(op + 1000, o, me, i), "op %llu: combine byte %zu from rank %d",
                   static_cast<unsigned long long>(op), i, o);
    }
    RANK_CHECK(proxy->failure(&err) == Status::kOk, "proxy: %s", err.c_str());
  }
  RANK_CHECK(proxy->post_us(0) > 0 && proxy->post_us(1) > 0, "posting cost not measured");
  RANK_CHECK(proxy->barrier(&err) == Status::kOk, "barrier: %s", err.c_str());
  for (int r = 0; r < R; ++r)
    RANK_CHECK(__atomic_load_n(arrived + FabricProxy::kBells * R + r, __ATOMIC_ACQUIRE) == 2,
               "rank %d's barrier count is not 2", r);
  proxy->stop();
  RANK_CHECK(h.abort_word == 0, "abort word set");
  return 0;
}

}  // namespace

TEST_CASE("cuda fabric proxy: one rank through the fabric to itself", "[moe][proxy]") {
  auto res = launch_fork(
      1, [](OobChannel& oob) { return rank_main(oob, 60); }, 120);
  INFO(res.report);
  REQUIRE(res.ok);
}

TEST_CASE("cuda fabric proxy: two ranks, every peer through the fabric", "[moe][proxy]") {
  auto res = launch_fork(
      2, [](OobChannel& oob) { return rank_main(oob, 200); }, 300);
  INFO(res.report);
  REQUIRE(res.ok);
}

TEST_CASE("cuda fabric proxy: three ranks", "[moe][proxy]") {
  auto res = launch_fork(
      3, [](OobChannel& oob) { return rank_main(oob, 60); }, 300);
  INFO(res.report);
  REQUIRE(res.ok);
}

TEST_CASE("cuda fabric proxy: a doorbell that skips an op fails the proxy and aborts the kernels",
          "[moe][proxy]") {
  auto res = launch_fork(
      1,
      [](OobChannel& oob) {
        Harness h;
        RANK_CHECK(h.init(oob, 5000), "init: %s", h.err.c_str());
        __atomic_store_n(h.doorbell(), 2, __ATOMIC_RELEASE);  // op 1 never rang
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        std::string text;
        while (h.proxy->failure(&text) == Status::kOk && std::chrono::steady_clock::now() < deadline)
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        RANK_CHECK(h.proxy->failure(&text) == Status::kInternalError, "no failure reported");
        RANK_CHECK(text.find("dispatch: doorbell went from op 0 to 2") != std::string::npos, "text: %s",
                   text.c_str());
        h.proxy->stop();  // joined: the abort word is ours to read
        RANK_CHECK(h.abort_word == 1, "abort word not set");
        return 0;
      },
      60);
  INFO(res.report);
  REQUIRE(res.ok);
}

TEST_CASE("cuda fabric proxy: destroy names the fabric peer that never reached its barrier", "[moe][proxy]") {
  auto res = launch_fork(
      2,
      [](OobChannel& oob) {
        const int me = oob.rank();
        Harness h;
        RANK_CHECK(h.init(oob, 300), "init: %s", h.err.c_str());
        if (me == 0) {
          std::string text;
          RANK_CHECK(h.proxy->barrier(&text) != Status::kOk, "barrier passed without rank 1");
          RANK_CHECK(text.find("barrier of fabric rank(s) 1") != std::string::npos, "text: %s", text.c_str());
        }
        RANK_CHECK(oob.barrier(), "oob barrier");  // rank 1 stays up until rank 0 has checked
        h.proxy->stop();
        return 0;
      },
      60);
  INFO(res.report);
  REQUIRE(res.ok);
}

// Without a self-write to wait on, the late rank finds every peer's barrier already landed; it
// must still post its own before leaving, or the early rank waits for it in vain.
TEST_CASE("cuda fabric proxy: destroy barrier with a late rank and no self peer", "[moe][proxy]") {
  auto res = launch_fork(
      2,
      [](OobChannel& oob) {
        const int me = oob.rank();
        Harness h;
        RANK_CHECK(h.init(oob, 5000, false), "init: %s", h.err.c_str());
        if (me == 0) {
          // Let rank 1's barrier write land first.
          const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
          while (__atomic_load_n(h.arrived() + FabricProxy::kBells * oob.nranks() + 1, __ATOMIC_ACQUIRE) <
                     1 &&
                 std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
          RANK_CHECK(std::chrono::steady_clock::now() < deadline, "rank 1's barrier write never landed");
        }
        std::string text;
        RANK_CHECK(h.proxy->barrier(&text) == Status::kOk, "barrier: %s", text.c_str());
        h.proxy->stop();
        return 0;
      },
      60);
  INFO(res.report);
  REQUIRE(res.ok);
}

// GPU staging needs FI_HMEM on every rail: without it attach says so, registers nothing, and the
// host staging the CUDA backend falls back to (MOEFABRIC_MOE_STAGING=auto) still attaches.
TEST_CASE("cuda fabric proxy: GPU staging without FI_HMEM is refused with the reason", "[moe][proxy]") {
  CudaLayout l;
  const char* why = nullptr;
  REQUIRE(cuda_layout_init(&l, 1, 0, 8, 2, 64, 16, 2, false, 128, 1, &why));
  std::vector<uint64_t> ctrl(FabricProxy::kBells + (FabricProxy::kBells + 1), 0);
  std::vector<int32_t> stage_T(2, 0);
  FabricProxy::Config pc;
  pc.nranks = 1;
  pc.remote = 1;
  pc.layout = l;
  pc.doorbell = ctrl.data();
  pc.arrived = ctrl.data() + FabricProxy::kBells;
  pc.stage_T = stage_T.data();
  Params p = Params::load();
  p.gdr.assign(1, '0');  // FI_HMEM never asked for (assign, not = "0": GCC 12 -O3 -Wrestrict false positive)
  std::unique_ptr<FabricProxy> proxy;
  std::string err;
  REQUIRE(FabricProxy::create(p, pc, &proxy, &err) == Status::kOk);
  CHECK_FALSE(proxy->hmem());
  std::unique_ptr<uint8_t, FreeDel> send(static_cast<uint8_t*>(std::aligned_alloc(4096, l.stage_bytes)));
  std::unique_ptr<uint8_t, FreeDel> recv(static_cast<uint8_t*>(std::aligned_alloc(4096, l.stage_bytes)));
  CHECK(proxy->attach(send.get(), recv.get(), 0, &err) == Status::kInvalidUsage);
  INFO(err);
  CHECK(err.find("did not grant FI_HMEM") != std::string::npos);
  CHECK(proxy->attach(send.get(), recv.get(), -1, &err) == Status::kOk);
  CHECK_FALSE(proxy->device_staging());
  CHECK(proxy->attach(send.get(), recv.get(), -1, &err) == Status::kInternalError);  // twice
}
