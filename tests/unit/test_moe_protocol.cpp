// The MoE buffer layout and the parsers applied to what peers send: immediates and dispatch
// headers. The fuzz loops feed random and mutated inputs; nothing may be accepted that implies
// an offset outside our regions.
#include <catch2/catch.hpp>

#include <random>

#include "collectives/layout.h"
#include "collectives/numeric.h"
#include "collectives/protocol.h"

using namespace moefabric::moe;

namespace {
Layout make(int R, int me, int E, int K, int H, int T, bool fp8, int P, int align = 1,
            bool per_rank = false) {
  Layout l;
  REQUIRE(layout_init(&l, R, me, E, K, H, T, fp8 ? 1 : 2, fp8, 128, align, P, per_rank).ok());
  return l;
}
}  // namespace

TEST_CASE("moe layout: expert ownership, record sizes, disjoint regions", "[moe][layout]") {
  for (int R : {1, 2, 3, 7, 8, 64})
    for (int E : {R, R + 1, 13, 256, 1023, 1024}) {
      if (E < R) continue;
      Layout l = make(R, R - 1, E, 8, 7168, 128, true, 16);
      int covered = 0;
      for (int r = 0; r < R; ++r) {
        REQUIRE(l.first_expert(r) == static_cast<int>(static_cast<int64_t>(r) * E / R));
        covered += l.local_count(r);
        for (int e = l.first_expert(r); e < l.first_expert(r + 1); ++e) REQUIRE(l.owner(e) == r);
        REQUIRE(l.local_count(r) <= l.max_local);
      }
      REQUIRE(covered == E);
    }
  Layout l = make(4, 1, 256, 8, 7168, 128, true, 16, 4);
  REQUIRE(l.x_bytes == 7168);
  REQUIRE(l.scale_bytes == 56 * 4);
  REQUIRE(l.record_bytes == 48 + 7168 + 224);
  REQUIRE(l.record_bytes % 16 == 0);
  REQUIRE(l.header_bytes % 64 == 0);
  REQUIRE(l.header_bytes >= sizeof(DispatchHeader) + 4 * 64);
  // receive block: private < overflow < combine < ctrl, all inside the block
  REQUIRE(l.private_offset(3) + l.private_bytes <= l.off_overflow);
  REQUIRE(l.overflow_offset(l.overflow_records) <= l.off_combine);
  REQUIRE(l.combine_offset(l.combine_rows) <= l.off_ctrl);
  REQUIRE(l.ctrl_offset(3) + l.ctrl_slot_bytes <= l.recv_block_bytes);
  // send block: the dispatch area holds every destination's chunk, each 64-byte aligned, for
  // maxT * min(K, R) records in all (one per (token, destination rank))
  REQUIRE(l.send_records == 128u * 4);
  size_t chunks = 0;
  for (int d = 0; d < 4; ++d) chunks += l.send_chunk_bytes(d == 0 ? l.send_records : 0);
  REQUIRE(l.off_send + chunks <= l.off_send + l.send_area_bytes);
  REQUIRE(l.off_send + l.send_area_bytes <= l.off_csend);
  REQUIRE(l.off_csend + l.y_row_bytes * l.return_rows <= l.off_grant_out);
  REQUIRE(l.return_rows == l.capacity_rows);
  REQUIRE(l.combine_rows == 128u * 8);
  // worst case: every token of every rank picks one of our experts in all K slots
  REQUIRE(l.capacity_rows == 4u * 128 * 8 + 64 * 3);
  REQUIRE(l.overflow_records == 3u * (128 - 16));
  // bf16: no scales
  Layout b = make(2, 0, 8, 2, 64, 16, false, 4);
  REQUIRE(b.scale_bytes == 0);
  REQUIRE(b.record_bytes == 16 + 128);
  // private tokens clamp to maxTokensPerRank
  REQUIRE(make(2, 0, 8, 2, 64, 16, false, 1000).max_private == 16);
}

TEST_CASE("moe layout: per-rank combine sizes; 256 ranks and 1024 experts", "[moe][layout]") {
  // Weights travel in the record's metadata; one combine row per (token, rank).
  Layout p = make(4, 1, 256, 8, 7168, 128, true, 16, 1, true);
  REQUIRE(p.meta_bytes == 80);  // 4 + 8 * 4 + 8 * 4, padded to 16
  REQUIRE(p.combine_rows == 128u * 4);
  REQUIRE(p.return_rows == 4u * 128);
  REQUIRE(p.rows_returned(5, 9) == 5);
  REQUIRE(make(4, 1, 256, 8, 7168, 128, true, 16).rows_returned(5, 9) == 9);
  // Scale: EP256 with 1024 experts initialises on every rank, and the ranks' expert ranges tile E.
  for (int me : {0, 1, 255}) {
    Layout l = make(256, me, 1024, 8, 7168, 128, true, 128, 1, me == 1);
    REQUIRE(l.local_count(me) == 4);
    REQUIRE(l.owner(1023) == 255);
    REQUIRE(l.ctrl_offset(255) + l.ctrl_slot_bytes <= l.recv_block_bytes);
  }
}

// Host memory per rank at the decode shape (T 128, H 7168, fp8, top-8 of 256, P = 128): what
// docs/moe-protocol.md's table states. Per-rank combine keeps EP64 within 0.5 GiB and EP256
// within 1 GiB; per-pair combine stages every (token, expert) row it may return.
TEST_CASE("moe layout: buffer bytes at EP64 and EP256", "[moe][layout]") {
  auto mib = [](const Layout& l) {
    return static_cast<double>(l.recv_block_bytes + l.send_block_bytes) / (1 << 20);
  };
  Layout r64 = make(64, 0, 256, 8, 7168, 128, true, 128, 1, true);
  Layout r256 = make(256, 0, 256, 8, 7168, 128, true, 128, 1, true);
  Layout p64 = make(64, 0, 256, 8, 7168, 128, true, 128, 1, false);
  INFO("per-rank EP64 " << mib(r64) << " MiB, EP256 " << mib(r256) << " MiB; per-pair EP64 " << mib(p64));
  REQUIRE(mib(r64) <= 512);
  REQUIRE(mib(r256) <= 1024);
  // The parts: receive = R private regions of P records + combine region; send = maxT * 8 records.
  REQUIRE(r64.recv_block_bytes >= 64u * 128 * r64.record_bytes);
  REQUIRE(r64.send_area_bytes < 64u * (r64.header_bytes + 64) + 128u * 8 * r64.record_bytes + 1);
  REQUIRE(p64.return_rows == 64u * 128 * 8);
}

TEST_CASE("moe immediates: round trip and rejection", "[moe][wire]") {
  for (uint64_t cur : {0ull, 1ull, 5ull, 32767ull, 32768ull, 32769ull, 131071ull, 131072ull, 1000000ull})
    for (uint64_t seq : {cur, cur + 1, cur > 0 ? cur - 1 : cur})
      for (int k = 0; k < kNumKinds; ++k) {
        if (seq == 0) continue;
        ImmFields f{};
        moefabric::Status st;
        uint32_t imm = imm_encode(static_cast<WriteKind>(k), seq, 3);
        REQUIRE((st = imm_decode(imm, cur, 8, 0, &f)).ok());
        REQUIRE(f.seq == seq);
        REQUIRE(f.src == 3);
        REQUIRE(static_cast<int>(f.kind) == k);
      }
  ImmFields f{};
  moefabric::Status st;
  REQUIRE_FALSE((st = imm_decode(imm_encode(WriteKind::kCombine, 5, 8), 5, 8, 0, &f)).ok());  // rank 8 of 8
  REQUIRE(st.message().find("source rank 8") != std::string::npos);
  REQUIRE_FALSE((st = imm_decode(imm_encode(WriteKind::kCombine, 5, 2), 5, 8, 2, &f)).ok());  // from self
  REQUIRE_FALSE((st = imm_decode(imm_encode(WriteKind::kCombine, 9, 1), 5, 8, 0, &f)).ok());  // stale/future
  REQUIRE(st.message().find("not within one op") != std::string::npos);
  REQUIRE_FALSE((st = imm_decode(7u << 29, 5, 8, 0, &f)).ok());  // unknown kind
  // the transport's stripe field never reaches the protocol
  REQUIRE((imm_encode(WriteKind::kBarrier, ~0ull, 0xfff) & kStripeField) == 0);
  REQUIRE_FALSE(
      (st = imm_decode(imm_encode(WriteKind::kCombine, 5, 1) | (1u << kStripeShift), 5, 8, 0, &f)).ok());
  REQUIRE(st.message().find("stripe bits") != std::string::npos);
  // fuzz: whatever is accepted names a real peer and a sequence within one op
  std::mt19937 rng(1);
  int accepted = 0;
  for (int i = 0; i < 200000; ++i) {
    uint64_t cur = rng() % 1000000;
    // near-valid immediates with random kinds, sources and one-op offsets, plus random bit flips
    uint32_t imm =
        imm_encode(static_cast<WriteKind>(rng() % 8), cur + rng() % 5 - 2, static_cast<int>(rng() % 32));
    if (rng() % 2) imm ^= 1u << (rng() % 32);
    if ((st = imm_decode(imm, cur, 16, 4, &f)).ok()) {
      ++accepted;
      REQUIRE(f.src >= 0);
      REQUIRE(f.src < 16);
      REQUIRE(f.src != 4);
      REQUIRE(f.seq + 1 >= cur);
      REQUIRE(f.seq <= cur + 1);
    }
  }
  REQUIRE(accepted > 0);
}

TEST_CASE("moe dispatch header: checks and fuzz", "[moe][wire]") {
  Layout l = make(4, 2, 16, 4, 64, 32, false, 8);
  struct Msg {
    DispatchHeader h;
    uint32_t counts[64];
  } m{};
  auto valid = [&] {
    m = Msg{};
    m.h = DispatchHeader{kHeaderMagic, 7, 1, 20, 8, 30, 90, 4};
    m.counts[0] = 10, m.counts[1] = 20;
  };
  moefabric::Status st;
  valid();
  REQUIRE((st = header_check(l, m.h, m.counts, 1, 7)).ok());
  struct Mut {
    const char* needle;
    void (*f)(Msg&);
  };
  const Mut muts[] = {
      {"magic", [](Msg& x) { x.h.magic ^= 1; }},
      {"sequence", [](Msg& x) { x.h.seq = 8; }},
      {"claims source", [](Msg& x) { x.h.src_rank = 2; }},
      {"maxTokensPerRank", [](Msg& x) { x.h.ntokens = 33; }},
      {"nprivate", [](Msg& x) { x.h.nprivate = 9; }},
      {"expert count", [](Msg& x) { x.h.nlocal = 5; }},
      {"pairs than tokens", [](Msg& x) { x.h.npairs = 81; }},
      {"combine range", [](Msg& x) { x.h.combine_base = 32 * 4 - 10; }},
      {"sum to", [](Msg& x) { x.counts[3] = 1; }},
  };
  for (const Mut& mu : muts) {
    INFO(mu.needle);
    valid();
    mu.f(m);
    REQUIRE_FALSE((st = header_check(l, m.h, m.counts, 1, 7)).ok());
    REQUIRE(st.message().find(mu.needle) != std::string::npos);
  }
  // fuzz: random bit flips; an accepted header must keep every derived range inside our regions
  std::mt19937 rng(2);
  for (int i = 0; i < 100000; ++i) {
    valid();
    auto* bytes = reinterpret_cast<uint8_t*>(&m);
    for (int f = 0; f < 1 + static_cast<int>(rng() % 3); ++f)
      bytes[rng() % (sizeof(DispatchHeader) + 16)] ^= static_cast<uint8_t>(1u << (rng() % 8));
    if (!(st = header_check(l, m.h, m.counts, 1, 7)).ok()) continue;
    REQUIRE(m.h.ntokens <= 32u);
    REQUIRE(m.h.nprivate <= m.h.ntokens);
    REQUIRE(l.private_offset(1) + l.header_bytes + l.record_bytes * m.h.nprivate <= l.private_offset(2));
    REQUIRE(static_cast<uint64_t>(m.h.combine_base) + m.h.npairs <= l.combine_rows);
  }
}

TEST_CASE("moe numerics: bf16 rounding and the combine order", "[moe][numeric]") {
  REQUIRE(float_to_bf16(1.0f) == 0x3f80);
  REQUIRE(float_to_bf16(bf16_to_float(0x1234)) == 0x1234);
  // ties to even: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7
  REQUIRE(float_to_bf16(1.0f + 0.00390625f) == 0x3f80);
  REQUIRE(float_to_bf16(1.0f + 3 * 0.00390625f) == 0x3f82);
  REQUIRE((float_to_bf16(std::nanf("")) & 0x7fc0) == 0x7fc0);
  // fmaf in k order, one rounding per step (differs from sum-then-round for these values)
  uint16_t r0[1] = {float_to_bf16(1.0f)}, r1[1] = {float_to_bf16(1e-8f)};
  const uint16_t* rows[2] = {r0, r1};
  float w[2] = {1.0f, 1.0f};
  uint16_t out[1];
  combine_row(out, rows, w, 2, 1);
  REQUIRE(out[0] == float_to_bf16(std::fmaf(1.0f, bf16_to_float(r1[0]), 1.0f)));
  combine_row(out, rows, w, 0, 1);
  REQUIRE(out[0] == 0);
}
