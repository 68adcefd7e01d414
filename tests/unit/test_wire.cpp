#include <catch2/catch.hpp>
#include <cstring>
#include <random>
#include <vector>

#include "plugin/fabric/wire.h"

using namespace moefabric::fabric::wire;

TEST_CASE("wire: immediate round-trips every field", "[wire]") {
  std::mt19937 rng(7);
  auto r = [&] { return static_cast<uint32_t>(rng()); };
  for (int i = 0; i < 100000; ++i) {
    Imm m = {r() & 0xffff, r() & 63, r() & 7, (r() & 1) != 0, (r() % 16) + 1, r() & 3};
    Imm d = imm_decode(imm_encode(m));
    REQUIRE(d.comm == m.comm);
    REQUIRE(d.slot == m.slot);
    REQUIRE(d.idx == m.idx);
    REQUIRE(d.full == m.full);
    REQUIRE(d.nseg == m.nseg);
    REQUIRE(d.kind == m.kind);
  }
}

namespace {
std::vector<uint8_t> make(MsgType t, const void* p, size_t n) {
  std::vector<uint8_t> b(sizeof(MsgHeader) + n);
  MsgHeader h = {kMagic, kVersion, static_cast<uint8_t>(t), 1, 2, static_cast<uint32_t>(n)};
  std::memcpy(b.data(), &h, sizeof h);
  if (n) std::memcpy(b.data() + sizeof h, p, n);
  return b;
}
}  // namespace

TEST_CASE("wire: parse_check accepts well-formed and rejects malformed messages", "[wire]") {
  MsgHeader h;
  CtrlMsg c = {};
  c.n = 3;
  auto ok = make(MsgType::kCtrl, &c, offsetof(CtrlMsg, entries) + 3 * sizeof(CtrlEntry));
  REQUIRE(parse_check(ok.data(), ok.size(), &h) == nullptr);
  c.n = 0;
  auto zero = make(MsgType::kCtrl, &c, offsetof(CtrlMsg, entries));
  REQUIRE(parse_check(zero.data(), zero.size(), &h) != nullptr);
  c.n = 9;
  auto wide = make(MsgType::kCtrl, &c, sizeof(CtrlMsg));
  REQUIRE(parse_check(wide.data(), wide.size(), &h) != nullptr);

  FinMsg f = {1, 8, 1, 10};
  auto badfin = make(MsgType::kFin, &f, sizeof f);
  REQUIRE(parse_check(badfin.data(), badfin.size(), &h) != nullptr);
  f.idx = 7;
  f.nseg = 17;
  auto badseg = make(MsgType::kFin, &f, sizeof f);
  REQUIRE(parse_check(badseg.data(), badseg.size(), &h) != nullptr);

  EagerMsg e = {0, 1, 100};
  auto eager = make(MsgType::kEager, &e, sizeof e);  // claims 100 bytes, carries none
  REQUIRE(parse_check(eager.data(), eager.size(), &h) != nullptr);

  ConnectMsg cm = {};
  cm.addr_len = 65;
  auto conn = make(MsgType::kConnect, &cm, sizeof cm);
  REQUIRE(parse_check(conn.data(), conn.size(), &h) != nullptr);

  auto bad_magic = ok;
  bad_magic[0] ^= 1;
  REQUIRE(parse_check(bad_magic.data(), bad_magic.size(), &h) != nullptr);
  REQUIRE(parse_check(ok.data(), 3, &h) != nullptr);
  REQUIRE(parse_check(ok.data(), ok.size() - 1, &h) != nullptr);
  auto unknown = make(static_cast<MsgType>(99), nullptr, 0);
  REQUIRE(parse_check(unknown.data(), unknown.size(), &h) != nullptr);
}

TEST_CASE("wire: random bytes never pass as a message with an inconsistent length", "[wire][fuzz]") {
  std::mt19937 rng(11);
  std::vector<uint8_t> buf(600);
  MsgHeader h;
  for (int i = 0; i < 200000; ++i) {
    size_t n = rng() % buf.size();
    for (size_t k = 0; k < n; ++k) buf[k] = static_cast<uint8_t>(rng());
    if (n >= 4 && (rng() & 1)) {  // often give it a valid prefix so deeper checks run
      MsgHeader g = {kMagic, kVersion, static_cast<uint8_t>(1 + rng() % 8), 0, 0,
                     static_cast<uint32_t>(n >= sizeof g ? n - sizeof g : 0)};
      std::memcpy(buf.data(), &g, std::min(n, sizeof g));
    }
    if (parse_check(buf.data(), n, &h) == nullptr) {
      REQUIRE(h.payload + sizeof(MsgHeader) == n);
      REQUIRE(h.magic == kMagic);
    }
  }
}
