// fabric::RmaRails in one process over the provider of the environment (suite fabric: tcp, shm).
// Two endpoints opened on the same NIC stand in for two rails, which is all striping needs:
// separate endpoints, CQs and registrations. Checks that a large write goes as 128-byte aligned
// stripes over both rails and is reported once, with a clean immediate, after all its bytes
// landed; that small writes alternate rails whole; that a peer with fewer rails gets unstriped
// writes; and that the caller's immediate may not use the stripe bits. Also: a plugin device made of
// two such rails keeps every attribute of its NICs.
#include <catch2/catch.hpp>
#include <sys/mman.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/params.h"
#include "plugin/net/device.h"
#include "fabric/info.h"
#include "fabric/rma_rails.h"

using namespace moefabric;
using namespace moefabric::fabric;

namespace {

constexpr int kShift = 27;

struct Recorder : RmaHandler {
  std::vector<uint32_t> imms;
  std::vector<uint64_t> done;
  int errors = 0;
  const uint8_t* watch = nullptr;  // the receive buffer: must be complete when an imm arrives
  size_t watch_len = 0;
  uint8_t want = 0;
  bool complete_at_arrival = true;
  void on_remote_write(uint32_t imm) override {
    imms.push_back(imm);
    for (size_t i = 0; watch && i < watch_len; ++i)
      if (watch[i] != want) complete_at_arrival = false;
  }
  void on_write_done(uint64_t cookie, const Status& s) override {
    done.push_back(cookie);
    if (s != Status::kOk) ++errors;
  }
};

std::vector<NicInfo> nics(int n) {
  Params p = Params::load();
  std::vector<NicInfo> out;
  for (int i = 0; i < n; ++i) {
    std::vector<NicInfo> found;
    REQUIRE(nic_discover(p, &found) == Status::kOk);
    REQUIRE(!found.empty());
    out.push_back(std::move(found[0]));
  }
  return out;
}

struct Side {
  std::unique_ptr<RmaRails> rails;
  std::vector<uint8_t> buf;
  RmaRails::Mr mr;
  Recorder rec;
  Side(int nrails, size_t bytes, int shift = kShift) : buf(bytes, 0) {
    Params p = Params::load();
    p.stripe_min = 64 * 1024;
    REQUIRE(RmaRails::open(p, nics(nrails), shift, &rails) == Status::kOk);
    REQUIRE(rails->nrails() == nrails);
    REQUIRE(rails->reg(buf.data(), buf.size(), MrAccess::kRemoteWrite, &mr) == Status::kOk);
  }
  ~Side() { rails->dereg(&mr); }
};

RmaRails::Peer connect(Side& from, Side& to) {
  RmaRails::Addr a;
  to.rails->local_addr(&a);
  RmaRails::Peer peer;
  REQUIRE(from.rails->add_peer(a, to.rails->keys(to.mr), &peer) == Status::kOk);
  return peer;
}

// Polls both sides until `pred` holds (bounded).
template <class P>
bool drive(Side& a, Side& b, P pred) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    Status s = a.rails->poll(&a.rec);
    if (s.ok()) s = b.rails->poll(&b.rec);
    if (!s.ok()) {
      FAIL(s.message());
      return false;
    }
  }
  return true;
}

}  // namespace

TEST_CASE("rma rails: a large write is striped over both rails and arrives once", "[rails]") {
  constexpr size_t kLen = 1000 * 1000 + 77;  // odd size: the last stripe is short
  Side a(2, kLen), b(2, kLen + 4096);
  const RmaRails::Peer to_b = connect(a, b);
  REQUIRE(to_b.nrails == 2);
  std::memset(a.buf.data(), 0x5c, kLen);
  b.rec.watch = b.buf.data() + 4096;
  b.rec.watch_len = kLen;
  b.rec.want = 0x5c;
  const uint32_t imm = (3u << 29) | (77u << 12) | 5u;
  REQUIRE(a.rails->write(to_b, a.buf.data(), kLen, a.mr, b.rails->remote_addr(b.mr, b.buf.data() + 4096), imm,
                         42) == Status::kOk);
  REQUIRE(a.rails->writes_in_flight() == 1);
  REQUIRE(drive(a, b, [&] { return !b.rec.imms.empty() && !a.rec.done.empty(); }));
  REQUIRE(b.rec.imms == std::vector<uint32_t>{imm});  // one arrival, stripe bits cleared
  REQUIRE(b.rec.complete_at_arrival);                 // every stripe had landed
  REQUIRE(a.rec.done == std::vector<uint64_t>{42});
  REQUIRE(a.rec.errors == 0);
  REQUIRE(a.rails->writes_in_flight() == 0);
  // ceil(len / 2) rounded up to 128 B on rail 0, the rest on rail 1
  const size_t chunk = (kLen / 2 + 1 + 127) / 128 * 128;
  REQUIRE(a.rails->rail_bytes(0) == chunk);
  REQUIRE(a.rails->rail_bytes(1) == kLen - chunk);
  REQUIRE(b.rails->stats().remote_writes == 2);              // two stripes on the wire
  for (size_t i = 0; i < 4096; ++i) REQUIRE(b.buf[i] == 0);  // nothing before the target
}

TEST_CASE("rma rails: small writes go whole, alternating rails", "[rails]") {
  Side a(2, 64 * 1024), b(2, 64 * 1024);
  const RmaRails::Peer to_b = connect(a, b);
  for (uint32_t i = 0; i < 6; ++i)
    REQUIRE(a.rails->write(to_b, a.buf.data(), 1000, a.mr, b.rails->remote_addr(b.mr, b.buf.data()),
                           (1u << 29) | (i << 12) | 1u, i) == Status::kOk);
  REQUIRE(drive(a, b, [&] { return b.rec.imms.size() == 6 && a.rec.done.size() == 6; }));
  REQUIRE(a.rails->rail_bytes(0) == 3000);
  REQUIRE(a.rails->rail_bytes(1) == 3000);
  for (uint32_t imm : b.rec.imms) REQUIRE((imm & (3u << kShift)) == 0);
}

TEST_CASE("rma rails: a peer with fewer rails gets whole writes on the shared one", "[rails]") {
  Side a(2, 512 * 1024), b(1, 512 * 1024);
  const RmaRails::Peer to_b = connect(a, b);
  REQUIRE(to_b.nrails == 1);
  REQUIRE(a.rails->write(to_b, a.buf.data(), a.buf.size(), a.mr, b.rails->remote_addr(b.mr, b.buf.data()),
                         (2u << 29) | 9u, 7) == Status::kOk);
  REQUIRE(drive(a, b, [&] { return b.rec.imms.size() == 1 && a.rec.done.size() == 1; }));
  REQUIRE(a.rails->rail_bytes(0) == a.buf.size());
  REQUIRE(a.rails->rail_bytes(1) == 0);
  REQUIRE(b.rec.imms[0] == ((2u << 29) | 9u));
}

TEST_CASE("rma rails: lone stripes of distinct immediates do not grow the receiver's bookkeeping",
          "[rails]") {
  // The sender's stripe field sits elsewhere (shift 20), so it can send immediates whose bits
  // 27-28 claim 2 stripes, one write each: a peer that never sends the other stripe.
  Side rx(1, 4096), tx(1, 4096, 20);
  RmaRails::Peer peer = connect(tx, rx);
  const uint32_t n = 70000;
  uint32_t sent = 0;
  while (sent < n) {
    const uint32_t imm = (1u << kShift) | sent;  // distinct, "2 stripes"
    Status st = tx.rails->write(peer, tx.buf.data(), 16, tx.mr, rx.rails->remote_addr(rx.mr, rx.buf.data()),
                                imm, sent);
    if (st == Status::kAgain) {
      REQUIRE(drive(tx, rx, [&] { return true; }));
      continue;
    }
    REQUIRE(st == Status::kOk);
    ++sent;
    if ((sent & 255) == 0) REQUIRE(drive(tx, rx, [&] { return tx.rails->writes_in_flight() < 64; }));
  }
  REQUIRE(drive(tx, rx, [&] {
    return tx.rec.done.size() == n && rx.rails->striped_pending() + rx.rec.imms.size() == n;
  }));
  CHECK(rx.rails->striped_pending() <= 65536);
  // What did not fit went up as it came, stripe field set, for the protocol to refuse.
  REQUIRE(!rx.rec.imms.empty());
  for (uint32_t imm : rx.rec.imms) CHECK((imm >> kShift & 3u) == 1u);
}

TEST_CASE("rma rails: bad input is refused with a reason", "[rails]") {
  Side a(2, 4096), b(2, 4096);
  const RmaRails::Peer to_b = connect(a, b);
  Status s =
      a.rails->write(to_b, a.buf.data(), 16, a.mr, b.rails->remote_addr(b.mr, b.buf.data()), 1u << kShift, 1);
  REQUIRE(!s.ok());
  REQUIRE(s.message().find("stripe bits") != std::string::npos);
  REQUIRE(a.rails->writes_in_flight() == 0);
  RmaRails::Addr bad{};
  bad.nrails = 9;
  RmaRails::Peer p;
  s = a.rails->add_peer(bad, RmaRails::Keys{}, &p);
  REQUIRE(!s.ok());
  REQUIRE(s.message().find("9 rails") != std::string::npos);
  std::unique_ptr<RmaRails> none;
  s = RmaRails::open(Params::load(), {}, kShift, &none);
  REQUIRE(!s.ok());
  REQUIRE(s.message().find("1 to 4 NICs") != std::string::npos);
}

TEST_CASE("device: a multi-rail device keeps every attribute of its NICs", "[rails]") {
  std::vector<NicInfo> rails = nics(2);
  rails[0].speed_mbps = 1000;
  rails[1].speed_mbps = 2000;
  rails[1].hmem_async = true;  // one rail whose GPU copies need a fence: the device needs it
  const std::string name = rails[0].name + "+" + rails[1].name;
  std::unique_ptr<Device> dev;
  REQUIRE(Device::open(Params::load(), std::move(rails), &dev) == Status::kOk);
  REQUIRE(dev->nic().name == name);
  REQUIRE(dev->nic().hmem_async);
  REQUIRE(dev->nic().speed_mbps == 3000);
  REQUIRE(dev->nic().info != nullptr);
  dev.reset();
  // The tagged protocol moves data on rail 0 only: the device is as fast as rail 0.
  Params tagged = Params::load();
  tagged.protocol = "tagged";
  rails = nics(2);
  rails[0].speed_mbps = 1000;
  rails[1].speed_mbps = 2000;
  const bool can_tag = rails[0].tagged && rails[1].tagged;
  if (can_tag) {
    REQUIRE(Device::open(tagged, std::move(rails), &dev) == Status::kOk);
    REQUIRE(dev->nic().speed_mbps == 1000);
  }
}

// The registration cache after the caller frees and reuses memory. The cache holds a
// registration only while someone holds it (refcounted; the last dereg unregisters it), so
// memory deregistered, unmapped and mapped again at the same address (new pages: what verbs and
// efa pin is physical) is registered anew and writes land in the new pages. A cache hit happens
// only while the old registration is still held, which the dereg-before-free contract rules out.
TEST_CASE("rma rails: memory freed and mapped again at the same address is registered anew", "[rails][mr]") {
  constexpr size_t kLen = 64 * 1024;
  Side a(1, kLen), b(1, 4096);
  std::memset(a.buf.data(), 0x6d, kLen);
  void* p = mmap(nullptr, kLen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(p != MAP_FAILED);
  for (int round = 0; round < 3; ++round) {
    if (round > 0) {  // free the pages and take new ones at the same address
      REQUIRE(munmap(p, kLen) == 0);
      void* q =
          mmap(p, kLen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
      REQUIRE(q == p);
      for (size_t i = 0; i < kLen; ++i) REQUIRE(static_cast<uint8_t*>(p)[i] == 0);  // fresh pages
    }
    const uint64_t regs = b.rails->registrations();
    RmaRails::Mr mr;
    REQUIRE(b.rails->reg(p, kLen, MrAccess::kRemoteWrite, &mr) == Status::kOk);
    REQUIRE(b.rails->registrations() == regs + 1);  // not a stale hit
    RmaRails::Mr held;                              // a second holder of the same range shares it ...
    REQUIRE(b.rails->reg(p, kLen, MrAccess::kRemoteWrite, &held) == Status::kOk);
    REQUIRE(b.rails->registrations() == regs + 1);
    b.rails->dereg(&held);  // ... and leaves it registered for the first
    RmaRails::Addr addr;
    b.rails->local_addr(&addr);
    RmaRails::Peer to_b;
    REQUIRE(a.rails->add_peer(addr, b.rails->keys(mr), &to_b) == Status::kOk);
    const size_t n0 = b.rec.imms.size();
    REQUIRE(a.rails->write(to_b, a.buf.data(), kLen, a.mr, b.rails->remote_addr(mr, p), 7u + round,
                           static_cast<uint64_t>(round), true) == Status::kOk);
    REQUIRE(drive(a, b, [&] {
      return b.rec.imms.size() == n0 + 1 && a.rec.done.size() == static_cast<size_t>(round + 1);
    }));
    REQUIRE(a.rec.errors == 0);
    for (size_t i = 0; i < kLen; ++i) REQUIRE(static_cast<uint8_t*>(p)[i] == 0x6d);
    b.rails->dereg(&mr);
  }
  REQUIRE(munmap(p, kLen) == 0);
}
