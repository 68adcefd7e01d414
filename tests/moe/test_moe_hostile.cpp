// A peer that rewrites what it already wrote (host backend, real processes over the environment's
// provider): after a source's dispatch header was copied and checked, the source's region is
// changed before the caller unpacks it. A rewritten header must change nothing (the unpack uses
// the caller's checked copy: results equal the reference, nothing is written past recvX, the comm
// stays usable); a rewritten record is refused with an error naming the peer, before any byte of
// recvX is written.
#include <catch2/catch.hpp>

#include <chrono>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "collectives/agree.h"
#include "collectives/comm.h"
#include "collectives/engine.h"
#include "collectives/rails.h"
#include "common/launch.h"
#include "common/params.h"
#include "tests/common/check.h"
#include "tests/common/moe_reference.h"

using namespace moetest;
using moefabric::OobChannel;
using moefabric::Status;
namespace moe = moefabric::moe;

namespace {

// Rank 0 sees every other source's header claim 8 more tokens (and private records) and 100
// more rows for its first expert than it sent, after the header was copied and checked.
void tamper_header(int rank, uint8_t* recv_block, const moe::Layout& l) {
  if (rank != 0) return;
  for (int s = 1; s < l.nranks; ++s) {
    auto* h = reinterpret_cast<moe::DispatchHeader*>(recv_block + l.private_offset(s));
    h->ntokens += 8;
    h->nprivate += 8;
    reinterpret_cast<uint32_t*>(h + 1)[0] += 100;
  }
}

// Rank 0 sees rank 1's first record name a token index out of range: refused, naming rank 1.
void tamper_record(int rank, uint8_t* recv_block, const moe::Layout& l) {
  if (rank != 0) return;
  auto* meta = reinterpret_cast<int32_t*>(recv_block + l.private_offset(1) + l.header_bytes);
  meta[0] = l.max_tokens + 1000;
}

int hostile_round(OobChannel& oob, int ops) {
  const int me = oob.rank();
  Shape s;
  s.nranks = oob.nranks();
  s.experts = 6, s.topk = 3, s.hidden = 64, s.max_tokens = 24, s.max_private = 24;
  ncclMoeConfig_t cfg = s.config();
  std::unique_ptr<moe::Engine> eng;
  std::string err;
  RANK_OK(moe::engine_create(s.nranks, me, oob_allgather, &oob, &cfg, &eng));
  moe::g_test_before_unpack = tamper_header;
  const size_t cap = eng->recv_capacity();
  constexpr uint8_t kGuard = 0xa5;
  for (int op = 0; op < ops; ++op) {
    const RankInput in = make_input(s, me, 16, 40 + op, Routing::kUniformDup);
    std::vector<RankInput> all;
    RANK_CHECK(gather_inputs(&oob, s, in, &all), "gather");
    const ExpectedLayout ex = expected_layout(s, all, me);
    std::vector<uint8_t> rx(cap * s.x_bytes() + 4096, kGuard);
    std::vector<int32_t> counts(s.local(me) + 4, -7);
    const int32_t T = in.T;
    Status st = eng->dispatch_send(in.x.data(), nullptr, in.idx.data(), in.w.data(), &T, rx.data(), nullptr,
                                   counts.data(), nullptr);
    RANK_CHECK(st == Status::kOk, "dispatch send: %s", eng->last_error().c_str());
    st = eng->dispatch_recv(nullptr);
    RANK_CHECK(st == Status::kOk, "dispatch recv: %s", eng->last_error().c_str());
    err = check_dispatch(s, all, me, ex, rx.data(), nullptr, counts.data());
    RANK_CHECK(err.empty(), "op %d: dispatch after the peer rewrote its region: %s", op, err.c_str());
    for (size_t i = cap * s.x_bytes(); i < rx.size(); ++i)
      RANK_CHECK(rx[i] == kGuard, "op %d: byte %zu past recvX's capacity was written", op,
                 i - cap * s.x_bytes());
    std::vector<uint16_t> ey(cap * s.hidden, 0), y(static_cast<size_t>(s.max_tokens) * s.hidden, 0);
    fill_expert_y(s, all, me, ex, ey.data());
    RANK_CHECK(eng->combine_send(ey.data(), nullptr) == Status::kOk, "combine: %s",
               eng->last_error().c_str());
    RANK_CHECK(eng->combine_recv(y.data(), nullptr) == Status::kOk, "combine: %s", eng->last_error().c_str());
    err = check_combine(s, in, me, y.data());
    RANK_CHECK(err.empty(), "op %d: combine: %s", op, err.c_str());
  }
  moe::g_test_before_unpack = nullptr;
  RANK_CHECK(eng->destroy() == Status::kOk, "destroy: %s", eng->last_error().c_str());
  return 0;
}

// Rank 0 refuses the rewritten record with an error naming rank 1, writes nothing past recvX,
// and the comms are aborted.
int hostile_record(OobChannel& oob) {
  const int me = oob.rank();
  Shape s;
  s.nranks = oob.nranks();
  s.experts = 6, s.topk = 3, s.hidden = 64, s.max_tokens = 24, s.max_private = 24;
  ncclMoeConfig_t cfg = s.config();
  cfg.timeoutMs = 3000;
  std::unique_ptr<moe::Engine> eng;
  std::string err;
  RANK_OK(moe::engine_create(s.nranks, me, oob_allgather, &oob, &cfg, &eng));
  moe::g_test_before_unpack = tamper_record;
  const size_t cap = eng->recv_capacity();
  // Every token picks one of rank 0's experts, so rank 1's first record goes to rank 0.
  const RankInput in = make_input(s, me, 16, 7, Routing::kSkewed);
  std::vector<uint8_t> rx(cap * s.x_bytes() + 4096, 0xa5);
  std::vector<int32_t> counts(s.local(me) + 4, -7);
  std::vector<int32_t> idx(in.idx.size(), 0);  // expert 0 (rank 0) for every slot
  const int32_t T = in.T;
  Status st = eng->dispatch_send(in.x.data(), nullptr, idx.data(), in.w.data(), &T, rx.data(), nullptr,
                                 counts.data(), nullptr);
  RANK_CHECK(st == Status::kOk, "dispatch send: %s", eng->last_error().c_str());
  if (me == 0) {
    st = eng->dispatch_recv(nullptr);
    RANK_CHECK(st != Status::kOk, "a rewritten record was accepted");
    RANK_CHECK(eng->last_error().find("rank 1") != std::string::npos, "error does not name rank 1: %s",
               eng->last_error().c_str());
    for (size_t i = 0; i < rx.size(); ++i)
      RANK_CHECK(rx[i] == 0xa5, "recvX byte %zu written by a refused dispatch", i);
  }
  moe::g_test_before_unpack = nullptr;
  eng->abort();
  return 0;
}

// A fake rank 1 that joins rank 0's comm exactly as a real rank does (config agreement, its own
// endpoint and registered blocks, the address allgather) and then writes `writes` random byte
// runs at random offsets of rank 0's receive block, each with an immediate drawn by `round`:
//   0 random kind and sequence bits (source field 1: the only name an immediate carries); 1 a
//   dispatch header write of the current op (kind, seq 1, src 1) with random
//   header bytes; 2 a grant for op 1 with random bytes; 3 replays and duplicates of valid-looking
//   immediates of every kind and seq 0..3.
struct NoHandler : moefabric::fabric::RmaHandler {
  void on_remote_write(uint32_t) override {}
  void on_write_done(uint64_t, const Status&) override {}
};

int fake_peer(OobChannel& oob, const Shape& s, const ncclMoeConfig_t& cfg, int round, int writes) {
  const int me = oob.rank();
  const moefabric::Params params = moefabric::Params::load();
  moe::ResolvedConfig rc{};
  RANK_OK(moe::config_agree(s.nranks, me, oob_allgather, &oob, &cfg, params, &rc));
  moe::Layout l;
  RANK_OK(moe::layout_init(&l, s.nranks, me, rc.experts, rc.topk, rc.hidden, rc.max_tokens, 2, false,
                           rc.scale_block, rc.alignment, rc.max_private, false));
  std::unique_ptr<moefabric::fabric::RmaRails> ep;
  moe::RailChoice choice;
  RANK_OK(moe::open_rails(params, std::nullopt, &ep, &choice));
  std::vector<uint8_t> recv(l.recv_block_bytes), send(1 << 16);
  moefabric::fabric::RmaRails::Mr recv_mr, send_mr;
  RANK_OK(ep->reg(recv.data(), recv.size(), moefabric::fabric::MrAccess::kRemoteWrite, &recv_mr));
  RANK_OK(ep->reg(send.data(), send.size(), moefabric::fabric::MrAccess::kLocal, &send_mr));
  moe::RailsAddr mine{};
  moe::rails_addr(*ep, recv_mr, recv.data(), &mine);
  std::vector<moe::RailsAddr> all;
  RANK_OK(moe::agree(oob_allgather, &oob, s.nranks,
                     {"init", "exchanging addresses", "could not set up its transport", Status::kSystemError},
                     Status::kOk, mine, &all));
  moefabric::fabric::RmaRails::Peer peer;
  RANK_OK(moe::rails_add_peer(*ep, all[0], 0, &peer));
  std::mt19937_64 rng(1234 + round);
  for (auto& b : send) b = static_cast<uint8_t>(rng());
  NoHandler h;
  const uint32_t kinds[] = {0, 1, 2, 3, 4};
  for (int i = 0; i < writes; ++i) {
    uint32_t imm = 0;
    size_t off = 0, len = 16 * (1 + rng() % 64);
    switch (round) {
      case 0:
        imm = (static_cast<uint32_t>(rng()) & ~(3u << 27) & ~0xfffu) | 1u;
        off = rng() % l.recv_block_bytes;
        break;
      case 1:
        imm = moe::imm_encode(moe::WriteKind::kDispatchPrivate, 1, 1);
        off = l.private_offset(1);
        len = std::min<size_t>(len, l.private_bytes);
        break;
      case 2:
        imm = moe::imm_encode(moe::WriteKind::kGrant, 1, 1);
        off = l.ctrl_offset(1);
        len = 16;
        break;
      default:
        imm = moe::imm_encode(static_cast<moe::WriteKind>(kinds[rng() % 5]), rng() % 4, 1);
        off = rng() % l.recv_block_bytes;
    }
    if (off + len > l.recv_block_bytes) off = l.recv_block_bytes - len;
    Status st;
    while ((st = ep->write(peer, send.data() + rng() % (send.size() - len), len, send_mr,
                           all[0].recv_base + off, imm, i)) == Status::kAgain)
      (void)ep->poll(&h);
    if (!st.ok()) break;  // rank 0 closed its endpoint after refusing us: done
    (void)ep->poll(&h);
  }
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (ep->writes_in_flight() > 0 && std::chrono::steady_clock::now() < until) (void)ep->poll(&h);
  (void)oob.barrier();  // rank 0 is done judging
  ep->dereg(&recv_mr);
  ep->dereg(&send_mr);
  return 0;
}

// Rank 0 (the real library) under a fake rank 1 writing garbage: its dispatch must fail within
// the timeout with an error naming rank 1, and nothing may crash or write outside its buffers.
int hostile_writer(OobChannel& oob, int round) {
  const int me = oob.rank();
  Shape s;
  s.nranks = oob.nranks();
  s.experts = 6, s.topk = 2, s.hidden = 64, s.max_tokens = 16, s.max_private = 4;
  ncclMoeConfig_t cfg = s.config();
  cfg.timeoutMs = 3000;
  if (me == 1) return fake_peer(oob, s, cfg, round, 3000);
  std::unique_ptr<moe::Engine> eng;
  std::string err;
  RANK_OK(moe::engine_create(s.nranks, me, oob_allgather, &oob, &cfg, &eng));
  const size_t cap = eng->recv_capacity();
  const RankInput in = make_input(s, me, 16, 3, Routing::kUniformDup);
  std::vector<uint8_t> rx(cap * s.x_bytes() + 4096, 0xa5);
  std::vector<int32_t> counts(s.local(me) + 4, -7);
  std::vector<uint16_t> ey(cap * s.hidden, 0), y(static_cast<size_t>(s.max_tokens) * s.hidden, 0);
  const int32_t T = in.T;
  const auto t0 = std::chrono::steady_clock::now();
  Status r = eng->dispatch_send(in.x.data(), nullptr, in.idx.data(), in.w.data(), &T, rx.data(), nullptr,
                                counts.data(), nullptr);
  if (r == Status::kOk) r = eng->dispatch_recv(nullptr);
  if (r == Status::kOk) r = eng->combine_send(ey.data(), nullptr);
  if (r == Status::kOk) r = eng->combine_recv(y.data(), nullptr);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::string text = eng->last_error();
  RANK_CHECK(r != Status::kOk, "round %d: a round trip with a peer writing garbage succeeded", round);
  RANK_CHECK(text.find("rank 1") != std::string::npos, "round %d: the error does not name rank 1: %s", round,
             text.c_str());
  RANK_CHECK(secs < 3.0 + 5.0, "round %d: the refusal took %.1f s (timeout 3 s)", round, secs);
  for (size_t i = cap * s.x_bytes(); i < rx.size(); ++i)
    RANK_CHECK(rx[i] == 0xa5, "round %d: byte %zu past recvX's capacity was written", round, i);
  eng->abort();
  (void)oob.barrier();
  return 0;
}

}  // namespace

TEST_CASE("moe: a peer writing random bytes and immediates into our regions is refused, named",
          "[moe][hostile]") {
  for (int round = 0; round < 4; ++round) {
    auto res = moefabric::launch_fork(
        2, [&](OobChannel& oob) { return hostile_writer(oob, round); }, 60);
    INFO("round " << round << ": " << res.report);
    REQUIRE(res.ok);
  }
}

TEST_CASE("moe: a peer rewriting its records after the header check is refused, named", "[moe][hostile]") {
  auto res = moefabric::launch_fork(
      2, [](OobChannel& oob) { return hostile_record(oob); }, 60);
  INFO(res.report);
  REQUIRE(res.ok);
}

TEST_CASE("moe: a peer rewriting its header after the check changes nothing", "[moe][hostile]") {
  for (int n : {2, 3}) {
    auto res = moefabric::launch_fork(
        n, [](OobChannel& oob) { return hostile_round(oob, 4); }, 120);
    INFO("ranks " << n << ": " << res.report);
    REQUIRE(res.ok);
  }
}
