// The MoE proxy as the CUDA backend drives it (collectives/comm.h, ProtocolClient), without a GPU:
// host code stands in for the kernels of kernels/fabric.cu. Each rank packs one record per token
// for the token's destination rank into the protocol's send block, writes the headers and the
// proxy's plan, rings doorbell[0]; waits for the arrival flags, checks every header and record
// and publishes the combine return plan; fills the combine staging, rings doorbell[1]; waits and
// checks the returned rows. Small maxPrivateTokens, so that requests and grants happen; T varies
// per op (0 included); several ops; then destroy. Real processes over the environment's provider.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "collectives/comm.h"
#include "collectives/protocol.h"
#include "common/launch.h"
#include "common/params.h"
#include "tests/common/check.h"
#include "tests/common/moe_reference.h"

using moefabric::OobChannel;
using moefabric::Status;
namespace moe = moefabric::moe;

namespace {

void* zalloc(size_t bytes) {
  void* p = std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
  if (p != nullptr) std::memset(p, 0, bytes);
  return p;
}

// Token t of rank s in op n goes to rank (s + t + n) % R, expert first_expert of that rank; its
// row's bytes and the combine row's bytes are functions of (s, t, n).
int dest_of(int s, int t, uint64_t n, int R) { return static_cast<int>((s + t + n) % R); }
uint8_t byte_of(int s, int t, uint64_t n, size_t i) {
  return static_cast<uint8_t>(s * 31 + t * 7 + n * 3 + i);
}

// Waits for the arrival flag of (kind, src) to reach op n, as a kernel would.
bool wait_flag(const moe::ProxyShared& sh, int R, moe::WriteKind k, int src, uint64_t n, moe::Comm& c) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  std::atomic_ref<uint64_t> f(sh.arrived[static_cast<size_t>(k) * R + src]);
  while (f.load(std::memory_order_acquire) < n) {
    if (c.check_usable() != Status::kOk || std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

int client_rank(OobChannel& oob, int ops) {
  const int R = oob.nranks(), me = oob.rank();
  moetest::Shape s;
  s.nranks = R, s.experts = 2 * R, s.topk = 1, s.hidden = 32, s.max_tokens = 8, s.max_private = 2;
  ncclMoeConfig_t cfg = s.config();
  const moefabric::Params params = moefabric::Params::load();
  moe::ResolvedConfig rc{};
  RANK_OK(moe::config_agree(R, me, moetest::oob_allgather, &oob, &cfg, params, &rc));
  // What the CUDA backend keeps in pinned memory, here in plain host memory.
  std::vector<uint64_t> arrived(static_cast<size_t>(moe::kNumKinds) * R), bell(2);
  std::vector<uint32_t> ov(R), granted(R);
  std::vector<moe::SendPlan> plan(R);
  std::vector<moe::ReturnPlan> ret(R);
  int32_t abort_word = 0;
  moe::ProtocolClient client;
  client.alloc = zalloc;
  client.free = std::free;
  client.peers.assign(R, 1);
  client.peers[me] = 0;
  client.shared = {arrived.data(), ov.data(), granted.data(), plan.data(), ret.data(), bell.data()};
  client.abort_word = &abort_word;
  std::unique_ptr<moe::Comm> c;
  RANK_OK(moe::Comm::create(R, me, moetest::oob_allgather, &oob, rc, params, &c, &client));
  const moe::Layout& l = c->layout();
  uint8_t* send = c->send_block();
  const uint8_t* recv = c->recv_block();
  for (uint64_t n = 1; n <= static_cast<uint64_t>(ops); ++n) {
    const int T = static_cast<int>((me + n) % (s.max_tokens + 1));
    // Pack: records per destination in token order, headers, plan.
    size_t off = l.off_send;
    uint32_t base = 0;
    for (int d = 0; d < R; ++d) {
      if (d == me) continue;
      uint32_t nrec = 0;
      for (int t = 0; t < T; ++t) nrec += dest_of(me, t, n, R) == d;
      auto* h = reinterpret_cast<moe::DispatchHeader*>(send + off);
      std::memset(h, 0, l.header_bytes);
      *h = moe::DispatchHeader{moe::kHeaderMagic,
                               static_cast<uint32_t>(n),
                               static_cast<uint32_t>(me),
                               nrec,
                               std::min<uint32_t>(nrec, l.max_private),
                               nrec,
                               base,
                               static_cast<uint32_t>(l.local_count(d))};
      reinterpret_cast<uint32_t*>(h + 1)[0] = nrec;  // all on d's first expert
      uint32_t i = 0;
      for (int t = 0; t < T; ++t) {
        if (dest_of(me, t, n, R) != d) continue;
        uint8_t* rec = send + off + l.header_bytes + l.record_bytes * i++;
        reinterpret_cast<int32_t*>(rec)[0] = t;
        reinterpret_cast<int32_t*>(rec)[1] = l.first_expert(d);
        for (size_t b = 0; b < l.x_bytes; ++b) rec[l.meta_bytes + b] = byte_of(me, t, n, b);
      }
      plan[d] = moe::SendPlan{nrec, 0, off};
      off += l.send_chunk_bytes(nrec);
      base += nrec;
    }
    std::atomic_ref<uint64_t>(bell[0]).store(n, std::memory_order_release);
    // Ingest: headers (copied, checked), the rest where granted, records; the return plan.
    uint32_t start = 0;
    for (int src = 0; src < R; ++src) {
      if (src == me) continue;
      RANK_CHECK(wait_flag(client.shared, R, moe::WriteKind::kDispatchPrivate, src, n, *c),
                 "op %llu: no dispatch from rank %d: %s", static_cast<unsigned long long>(n), src,
                 c->last_error().c_str());
      moe::DispatchHeader h;
      std::memcpy(&h, recv + l.private_offset(src), sizeof h);
      std::vector<uint32_t> counts(l.local_count(me));
      std::memcpy(counts.data(), recv + l.private_offset(src) + sizeof h, 4 * counts.size());
      RANK_OK(moe::header_check(l, h, counts.data(), src, n)
                  .prepend("op " + std::to_string(n) + ": rank " + std::to_string(src) + ": "));
      if (h.ntokens > h.nprivate) {
        RANK_CHECK(wait_flag(client.shared, R, moe::WriteKind::kDispatchRest, src, n, *c), "no rest from %d",
                   src);
        RANK_CHECK(granted[src] == h.ntokens - h.nprivate, "granted %u, header says %u", granted[src],
                   h.ntokens - h.nprivate);
      }
      uint32_t i = 0;
      const int Ts = static_cast<int>((src + n) % (s.max_tokens + 1));
      for (int t = 0; t < Ts; ++t) {
        if (dest_of(src, t, n, R) != me) continue;
        const uint8_t* rec = i < h.nprivate
                                 ? recv + l.private_offset(src) + l.header_bytes + l.record_bytes * i
                                 : recv + l.overflow_offset(ov[src] + (i - h.nprivate));
        ++i;
        RANK_CHECK(reinterpret_cast<const int32_t*>(rec)[0] == t,
                   "op %llu: rank %d's record %u: token %d, want %d", static_cast<unsigned long long>(n), src,
                   i - 1, reinterpret_cast<const int32_t*>(rec)[0], t);
        for (size_t b = 0; b < l.x_bytes; ++b)
          RANK_CHECK(rec[l.meta_bytes + b] == byte_of(src, t, n, b), "op %llu: rank %d token %d byte %zu",
                     static_cast<unsigned long long>(n), src, t, b);
      }
      RANK_CHECK(i == h.ntokens, "rank %d: %u records, header says %u", src, i, h.ntokens);
      ret[src] = moe::ReturnPlan{i, start, h.combine_base, 0};
      for (uint32_t r = 0; r < i; ++r)  // the combine rows: a function of (src, row, n)
        std::memset(send + l.off_csend + l.y_row_bytes * (start + r), static_cast<int>(byte_of(src, r, n, 0)),
                    l.y_row_bytes);
      start += i;
    }
    std::atomic_ref<uint64_t>(bell[1]).store(n, std::memory_order_release);
    // Combine: the rows the owners returned, in our combine region at their bases.
    base = 0;
    for (int d = 0; d < R; ++d) {
      if (d == me) continue;
      RANK_CHECK(wait_flag(client.shared, R, moe::WriteKind::kCombine, d, n, *c),
                 "op %llu: no combine from %d", static_cast<unsigned long long>(n), d);
      const uint32_t nrec = plan[d].ntokens;
      for (uint32_t r = 0; r < nrec; ++r)
        RANK_CHECK(recv[l.combine_offset(base + r)] == byte_of(me, static_cast<int>(r), n, 0),
                   "op %llu: row %u from rank %d", static_cast<unsigned long long>(n), r, d);
      base += nrec;
    }
    RANK_OK(oob.barrier());  // (the harness reuses its staging next op)
  }
  RANK_CHECK(c->destroy(true) == Status::kOk, "destroy: %s", c->last_error().c_str());
  RANK_CHECK(abort_word == 0, "abort word set");
  return 0;
}

}  // namespace

TEST_CASE("moe client: the proxy driven through doorbells and shared flags, as by the kernels",
          "[moe][client]") {
  for (int R : {2, 3, 4}) {
    INFO("ranks " << R);
    auto res = moefabric::launch_fork(
        R, [](OobChannel& oob) { return client_rank(oob, 12); }, 300);
    INFO(res.report);
    REQUIRE(res.ok);
  }
}
