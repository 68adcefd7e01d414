#include <catch2/catch.hpp>
#include <cstring>
#include <random>
#include <vector>

#include "plugin/net/wire.h"

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
  MsgHeader h = {kMagic, kVersion, static_cast<uint8_t>(t), 1, 2, static_cast<uint32_t>(n), 0x1234};
  std::memcpy(b.data(), &h, sizeof h);
  if (n) std::memcpy(b.data() + sizeof h, p, n);
  return b;
}
// The header of a message that parses (the tests below look at lengths and headers only).
const char* parse_check(const void* buf, size_t len, MsgHeader* h) {
  Msg m;
  const char* bad = parse(buf, len, &m);
  *h = m.h;
  return bad;
}
}  // namespace

TEST_CASE("wire: parse accepts well-formed and rejects malformed messages", "[wire]") {
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
  cm.nrails = 1;
  cm.rails[0].len = 65;
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
      MsgHeader g = {kMagic, kVersion, static_cast<uint8_t>(1 + rng() % 8),
                     0,      0,        static_cast<uint32_t>(n >= sizeof g ? n - sizeof g : 0)};
      std::memcpy(buf.data(), &g, std::min(n, sizeof g));
    }
    if (parse_check(buf.data(), n, &h) == nullptr) {
      REQUIRE(h.payload + sizeof(MsgHeader) == n);
      REQUIRE(h.magic == kMagic);
    }
  }
}

TEST_CASE("wire: v2 multi-rail handshake and control entries", "[wire]") {
  MsgHeader h;
  REQUIRE(kVersion >= 2);
  ConnectMsg cm = {};
  cm.nrails = 2;
  cm.rails[0].len = 16;
  cm.rails[1].len = 16;
  auto ok = make(MsgType::kConnect, &cm, sizeof cm);
  REQUIRE(parse_check(ok.data(), ok.size(), &h) == nullptr);
  cm.rails[1].len = 0;  // a rail the sender announced without an address
  auto norail = make(MsgType::kConnect, &cm, sizeof cm);
  REQUIRE(parse_check(norail.data(), norail.size(), &h) != nullptr);
  cm.nrails = kMaxRails + 1;
  auto many = make(MsgType::kConnect, &cm, sizeof cm);
  REQUIRE(parse_check(many.data(), many.size(), &h) != nullptr);
  cm.nrails = 0;
  auto none = make(MsgType::kConnect, &cm, sizeof cm);
  REQUIRE(parse_check(none.data(), none.size(), &h) != nullptr);

  ConnectAckMsg ack = {};
  ack.nrails = 1;  // one rail: no addresses needed (rail 0 is in the listen handle)
  auto a1 = make(MsgType::kConnectAck, &ack, sizeof ack);
  REQUIRE(parse_check(a1.data(), a1.size(), &h) == nullptr);
  ack.nrails = 3;
  ack.rails[1].len = 16;
  auto a3 = make(MsgType::kConnectAck, &ack, sizeof ack);  // rail 2 has no address
  REQUIRE(parse_check(a3.data(), a3.size(), &h) != nullptr);
  ack.rails[2].len = 28;
  auto a3ok = make(MsgType::kConnectAck, &ack, sizeof ack);
  REQUIRE(parse_check(a3ok.data(), a3ok.size(), &h) == nullptr);
  ConnectAckMsg refused = {};
  refused.status = 1;
  auto ar = make(MsgType::kConnectAck, &refused, sizeof refused);
  REQUIRE(parse_check(ar.data(), ar.size(), &h) == nullptr);

  // Per-rail keys ride in each control entry; the listen handle still fits NCCL's 128 bytes.
  static_assert(sizeof(CtrlEntry) == 56);
  static_assert(sizeof(ListenHandle) == kHandleSize);
  static_assert(offsetof(ListenHandle, nrails) < kHandleSize);
  CtrlMsg c = {};
  c.n = kMaxRecvs;
  for (int i = 0; i < kMaxRecvs; ++i)
    for (int r = 0; r < kMaxRails; ++r) c.entries[i].key[r] = 100u * i + r;
  auto full = make(MsgType::kCtrl, &c, sizeof c);
  REQUIRE(parse_check(full.data(), full.size(), &h) == nullptr);
  CtrlMsg back;
  std::memcpy(&back, full.data() + sizeof(MsgHeader), sizeof back);
  REQUIRE(back.entries[7].key[3] == 703);
  // Every fixed message fits the receive buffers even with eager messages off.
  REQUIRE(msg_buffer_size(0) >= sizeof(MsgHeader) + sizeof(ConnectMsg));
  REQUIRE(msg_buffer_size(0) >= sizeof(MsgHeader) + sizeof(ConnectAckMsg));
  REQUIRE(msg_buffer_size(0) >= sizeof(MsgHeader) + sizeof(CtrlMsg));
}

TEST_CASE("wire: sequence comparisons hold across the 32-bit wrap", "[wire]") {
  REQUIRE(seq_before(1, 2));
  REQUIRE_FALSE(seq_before(2, 2));
  REQUIRE(seq_before(0xffffffffu, 0));  // the last number before the wrap precedes 0
  REQUIRE_FALSE(seq_before(3, 0xfffffffeu));
  REQUIRE(seq_in(0xffffffffu, 0xfffffffeu, 4));  // a group straddling the wrap
  REQUIRE(seq_in(1, 0xfffffffeu, 4));
  REQUIRE_FALSE(seq_in(2, 0xfffffffeu, 4));
  REQUIRE_FALSE(seq_in(0xfffffffdu, 0xfffffffeu, 4));
}

TEST_CASE("wire: v3 credentials: listen nonce, comm tokens, handle scratch", "[wire]") {
  REQUIRE(kVersion == 3);
  static_assert(sizeof(MsgHeader) == 24 && offsetof(MsgHeader, token) == 16);
  static_assert(sizeof(ListenHandle) == kHandleSize);
  // The listener's address fields keep their v2 offsets; the nonce follows them, then the
  // connector's scratch (a comm id and token, no pointer).
  static_assert(offsetof(ListenHandle, addr) == 8 && offsetof(ListenHandle, nonce) == 8 + kMaxAddrLen);
  static_assert(offsetof(ListenHandle, stage_comm) == 84 && offsetof(ListenHandle, stage_token) == 88);
  static_assert(offsetof(ConnectMsg, token) == 16 && offsetof(ConnectAckMsg, token) == 16);
  MsgHeader h;
  ConnectMsg cm = {};
  cm.nrails = 1;
  cm.rails[0].len = 16;
  auto ok = make(MsgType::kConnect, &cm, sizeof cm);
  REQUIRE(parse_check(ok.data(), ok.size(), &h) == nullptr);
  REQUIRE(h.token == 0x1234);
  REQUIRE(ok.size() <= msg_buffer_size(0));
}

TEST_CASE("wire: v3 ctrl entries carry the receive buffer's memory type", "[wire]") {
  static_assert(sizeof(CtrlEntry) == 56 && offsetof(CtrlEntry, mem_type) == 20);
  MsgHeader h;
  CtrlMsg c = {};
  c.n = 2;
  c.entries[1].mem_type = kMemCuda;
  auto ok = make(MsgType::kCtrl, &c, offsetof(CtrlMsg, entries) + 2 * sizeof(CtrlEntry));
  REQUIRE(parse_check(ok.data(), ok.size(), &h) == nullptr);
  c.entries[1].mem_type = 7;
  auto bad = make(MsgType::kCtrl, &c, offsetof(CtrlMsg, entries) + 2 * sizeof(CtrlEntry));
  REQUIRE(parse_check(bad.data(), bad.size(), &h) != nullptr);
}

// The receiver acts on one copy: what parse checked is what the handler gets, whatever happens
// to the receive buffer afterwards, and the error text is always terminated.
TEST_CASE("wire: parse hands out a checked copy, not the receive buffer", "[wire]") {
  CtrlMsg c = {};
  c.n = 2;
  c.entries[0].size = 100;
  auto buf = make(MsgType::kCtrl, &c, offsetof(CtrlMsg, entries) + 2 * sizeof(CtrlEntry));
  Msg m;
  REQUIRE(parse(buf.data(), buf.size(), &m) == nullptr);
  // A later change of the width in the buffer (to 200, past kMaxRecvs) reaches nothing.
  const uint16_t wide = 200;
  std::memcpy(buf.data() + sizeof(MsgHeader) + offsetof(CtrlMsg, n), &wide, sizeof wide);
  REQUIRE(m.body.ctrl.n == 2);
  REQUIRE(m.body.ctrl.entries[0].size == 100);
  REQUIRE(m.type() == MsgType::kCtrl);

  ErrorMsg e;
  std::memset(&e, 'x', sizeof e);  // no terminator anywhere
  auto eb = make(MsgType::kError, &e, sizeof e);
  REQUIRE(parse(eb.data(), eb.size(), &m) == nullptr);
  REQUIRE(std::strlen(m.body.error.text) == sizeof m.body.error.text - 1);

  std::vector<uint8_t> eager(sizeof(EagerMsg) + 5, 7);
  EagerMsg em = {3, 1, 5};
  std::memcpy(eager.data(), &em, sizeof em);
  auto gb = make(MsgType::kEager, eager.data(), eager.size());
  REQUIRE(parse(gb.data(), gb.size(), &m) == nullptr);
  REQUIRE(m.eager_data == gb.data() + sizeof(MsgHeader) + sizeof(EagerMsg));
  REQUIRE(m.body.eager.size == 5);
}
