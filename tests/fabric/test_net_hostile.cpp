// Peers that misbehave on the wire, against the net transport's internal API (the code the
// plugin ships). The hostile side calls Device::send_msg itself to send what an honest plugin
// never would; the victim runs the ordinary paths and must stay bounded and healthy, and report
// the abuse naming where it came from. Run over tcp on lo and over shm like test-net-plugin.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdarg>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "common/launch.h"
#include "plugin/net/device.h"
#include "plugin/net/net.h"
#include "fabric/rma.h"
#include "tests/common/check.h"
#include "tests/common/proc.h"

using namespace moefabric;
using namespace moefabric::fabric;
using Clock = std::chrono::steady_clock;

namespace {

int g_rank = -1;
std::mutex g_mu;
std::string g_warnings;

// Keeps the transport's warnings (the victim checks what they name) and prints them.
void capture(int level, unsigned long, const char*, int, const char* fmt, ...) {
  if (level != log::kWarn) return;
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  std::lock_guard<std::mutex> lock(g_mu);
  g_warnings += std::string(buf) + "\n";
  fprintf(stderr, "rank %d: warning: %s\n", g_rank, buf);
}

std::string warnings() {
  std::lock_guard<std::mutex> lock(g_mu);
  return g_warnings;
}

bool passed(Clock::time_point start, int seconds) {
  return Clock::now() - start > std::chrono::seconds(seconds);
}

// One connection from rank `from` to rank `to` (other ranks only take part in the exchange).
struct Link {
  wire::ListenHandle handle = {};  // the listener's, as every rank received it
  void* lc = nullptr;
  void* sc = nullptr;
  void* rc = nullptr;
};

int link(OobChannel& oob, Net* net, int from, int to, Link* l) {
  const int me = oob.rank();
  char mine[wire::kHandleSize] = {};
  std::vector<char> all(wire::kHandleSize * oob.nranks());
  if (me == to) RANK_CHECK(net_listen(net, 0, mine, &l->lc) == Status::kOk, "listen");
  RANK_OK(oob.allgather(mine, all.data(), sizeof mine));
  std::memcpy(&l->handle, all.data() + wire::kHandleSize * to, sizeof l->handle);
  char h[wire::kHandleSize];
  std::memcpy(h, &l->handle, sizeof h);
  auto start = Clock::now();
  while ((me == from && !l->sc) || (me == to && !l->rc)) {
    if (me == from) RANK_CHECK(net_connect(net, 0, h, &l->sc) == Status::kOk, "connect");
    if (me == to) RANK_CHECK(net_accept(l->lc, &l->rc) == Status::kOk, "accept");
    RANK_CHECK(!passed(start, 30), "no connection in 30 s");
  }
  return 0;
}

// One message of `size` bytes over l, checked byte for byte on the receiver.
int transfer(OobChannel& oob, Link& l, int from, int to, size_t size, uint8_t salt) {
  const int me = oob.rank();
  if (me != from && me != to) return 0;
  std::vector<uint8_t> buf(size + 1, 0);
  void* comm = me == from ? l.sc : l.rc;
  void* mh = nullptr;
  RANK_CHECK(net_reg_mr(comm, buf.data(), buf.size(), 1, &mh) == Status::kOk, "regMr");
  void* req = nullptr;
  auto start = Clock::now();
  if (me == from) {
    for (size_t i = 0; i < size; ++i) buf[i] = static_cast<uint8_t>(i * 7 + salt);
    while (!req) {
      RANK_CHECK(net_isend(comm, buf.data(), size, from, mh, &req) == Status::kOk, "isend");
      RANK_CHECK(!passed(start, 30), "isend not accepted");
    }
  } else {
    void* data = buf.data();
    size_t sz = size;
    int tag = from;
    while (!req) {
      RANK_CHECK(net_irecv(comm, 1, &data, &sz, &tag, &mh, &req) == Status::kOk, "irecv");
      RANK_CHECK(!passed(start, 30), "irecv not accepted");
    }
  }
  int done = 0;
  size_t sizes[wire::kMaxRecvs] = {};
  while (!done) {
    RANK_CHECK(net_test(req, &done, sizes) == Status::kOk, "test() failed on the honest connection");
    RANK_CHECK(!passed(start, 30), "transfer of %zu bytes not complete", size);
  }
  if (me == to) {
    RANK_CHECK(sizes[0] == size, "received %zu bytes, expected %zu", sizes[0], size);
    for (size_t i = 0; i < size; ++i)
      RANK_CHECK(buf[i] == static_cast<uint8_t>(i * 7 + salt), "byte %zu wrong", i);
  }
  RANK_CHECK(net_dereg_mr(comm, mh) == Status::kOk, "deregMr");
  return 0;
}

// Sends `count` eager messages of `size` bytes from this process's device to `to` (an address
// from a listen handle), naming comm `dst` (whose token it claims is `token`) at the receiver and
// `src` as ours, message numbers first, first+1, ...: what an honest sender does, without its
// window or its connection.
int flood(Net* net, const wire::ListenHandle& to, uint32_t dst, uint32_t src, uint64_t token, uint32_t first,
          int count, size_t size) {
  Device* d = net->device(0);
  fi_addr_t peer = FI_ADDR_UNSPEC;
  {
    std::lock_guard<std::mutex> lock(d->mu);
    RANK_CHECK(d->av_insert(to.addr, to.addr_len, &peer) == Status::kOk, "av_insert");
    size = std::min(size, d->eager_max());
  }
  std::vector<uint8_t> data(size, 0x5a);
  auto start = Clock::now();
  for (int i = 0; i < count; ++i) {
    wire::EagerMsg m = {first + static_cast<uint32_t>(i), g_rank, size};
    for (;;) {
      std::lock_guard<std::mutex> lock(d->mu);
      Status s =
          d->send_msg(nullptr, peer, wire::MsgType::kEager, dst, src, token, &m, sizeof m, data.data(), size);
      if (s == Status::kOk) break;
      RANK_CHECK(s == Status::kAgain, "send_msg failed");
      RANK_CHECK(d->progress() == Status::kOk, "progress");
      RANK_CHECK(!passed(start, 60), "flood stuck at message %d", i);
    }
  }
  // Every message handed to the provider and completed before the victim looks.
  const int ntx = static_cast<int>(std::clamp<int64_t>(d->params().tx_buffers, 16, 65536));
  for (;;) {
    std::lock_guard<std::mutex> lock(d->mu);
    if (d->tx_available(ntx)) break;
    RANK_CHECK(d->progress() == Status::kOk, "progress");
    RANK_CHECK(!passed(start, 60), "flood did not drain");
  }
  return 0;
}

uint64_t msgs_received(Net* net) {
  Device* d = net->device(0);
  std::lock_guard<std::mutex> lock(d->mu);
  return d->stats().msgs_recv;
}

// Drives the device (as NCCL's proxy does by calling test()) until `count` more messages than
// `before` have arrived.
int progress_until(Net* net, uint64_t before, int count) {
  Device* d = net->device(0);
  auto start = Clock::now();
  while (msgs_received(net) - before < static_cast<uint64_t>(count)) {
    {
      std::lock_guard<std::mutex> lock(d->mu);
      RANK_CHECK(d->progress() == Status::kOk, "progress");
    }
    RANK_CHECK(!passed(start, 60), "only %llu of %d messages arrived",
               static_cast<unsigned long long>(msgs_received(net) - before), count);
  }
  return 0;
}

// Runs body in n forked ranks, each with its own Net and the capturing logger.
void run(int n, const std::function<int(OobChannel&, Net*)>& body, int timeout_s = 120) {
  auto res = launch_fork(
      n,
      [&](OobChannel& oob) {
        g_rank = oob.rank();
        log::set_sink(capture);
        Net* net = nullptr;
        RANK_OK(Net::acquire(&net));
        int rc = body(oob, net);
        Net::release(net);
        return rc;
      },
      timeout_s);
  INFO(res.report);
  REQUIRE(res.ok);
}

constexpr long kRssSlackKib = 16 * 1024;  // the flood is 160 MiB

bool rss_meaningful() {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return false;  // the sanitizers' quarantines hold freed memory: RSS says nothing
#else
  return true;
#endif
}

}  // namespace

// Rank 1 is rank 0's honest peer; rank 2 knows rank 0's address (from the handle) and the ids of
// that connection (small integers), not its token, and sends 20,000 eager messages of 8 KiB
// naming it. Rank 0 must drop them (they do not come from the connection's peer), keep its
// memory, report the drops, and go on serving rank 1. Before the fix every one was stashed for a
// receive not posted yet (RSS +160 MiB, no error).
TEST_CASE("hostile: messages from an endpoint that is not the connection's peer are dropped",
          "[fabric][hostile]") {
  run(3, [](OobChannel& oob, Net* net) {
    const int me = oob.rank();
    Link l;
    if (link(oob, net, 1, 0, &l)) return 1;
    uint32_t ids[2] = {};  // the victim's comm id and its peer's, as a stranger might guess them
    if (me == 0) {
      auto* rc = static_cast<RecvComm*>(l.rc);
      ids[0] = rc->id;
      ids[1] = rc->remote_id;
    }
    std::vector<uint32_t> all(2 * oob.nranks());
    RANK_OK(oob.allgather(ids, all.data(), sizeof ids));
    const long rss0 = testutil::rss_kib();
    const uint64_t recv0 = me == 0 ? msgs_received(net) : 0;
    constexpr int kFlood = 20000;
    if (me == 2 && flood(net, l.handle, all[0], all[1], 0x5eed, 0, kFlood, 8192)) return 1;
    if (me == 0) {
      if (progress_until(net, recv0, kFlood)) return 1;
      const long grown = testutil::rss_kib() - rss0;
      fprintf(stderr, "rank 0: RSS grew by %ld KiB during the flood\n", grown);
      RANK_CHECK(!rss_meaningful() || grown < kRssSlackKib, "RSS grew by %ld KiB: foreign messages were kept",
                 grown);
      const std::string w = warnings();
      RANK_CHECK(w.find("dropped a message for recv comm") != std::string::npos,
                 "the drops were not reported:\n%s", w.c_str());
    }
    RANK_OK(oob.barrier());
    // The connection the stranger named still works both ways round its eager limit.
    if (transfer(oob, l, 1, 0, 100, 1) || transfer(oob, l, 1, 0, 100000, 2)) return 1;
    RANK_OK(oob.barrier());
    if (l.sc) RANK_CHECK(net_close_send(l.sc) == Status::kOk, "close");
    if (l.rc) RANK_CHECK(net_close_recv(l.rc) == Status::kOk, "close");
    if (l.lc) RANK_CHECK(net_close_listen(l.lc) == Status::kOk, "close");
    return 0;
  });
}

namespace {

// Sends `count` eager messages of `size` bytes with `tag` on the connected send comm `sc` (its
// token, its endpoint: everything a receiver checks is right), numbered by seq(i).
int flood_connected(Net* net, void* sc, int count, size_t size, int tag,
                    const std::function<uint32_t(int)>& seq) {
  Device* d = net->device(0);
  auto* c = static_cast<SendComm*>(sc);
  size = std::min(size, d->eager_max());
  std::vector<uint8_t> data(size, 0xa5);
  auto start = Clock::now();
  for (int i = 0; i < count; ++i) {
    wire::EagerMsg m = {seq(i), tag, size};
    for (;;) {
      std::lock_guard<std::mutex> lock(d->mu);
      Status s = d->send_to_peer(c, wire::MsgType::kEager, &m, sizeof m, data.data(), size);
      if (s == Status::kOk) break;
      RANK_CHECK(s == Status::kAgain, "send failed");
      RANK_CHECK(d->progress() == Status::kOk, "progress");
      RANK_CHECK(!passed(start, 60), "flood stuck at message %d", i);
    }
  }
  return 0;
}

}  // namespace

// A connected peer (its token, its address) that ignores the eager window: on one comm it sends
// 10,000 eager messages of 8 KiB numbered on past the receives (none posted), on another it sends
// the 64 numbers the window allows over and over (10,000 messages). The receiver may keep at most
// the window per comm: both comms fail with an error naming the peer's address and what it did,
// memory stays flat. Before the fix all 20,000 were stashed (RSS +160 MiB) with no error.
TEST_CASE("hostile: a connected peer running past the eager window fails its comm with memory bounded",
          "[fabric][hostile]") {
  run(2, [](OobChannel& oob, Net* net) {
    const int me = oob.rank();
    Link ahead, again;
    if (link(oob, net, 1, 0, &ahead) || link(oob, net, 1, 0, &again)) return 1;
    const long rss0 = testutil::rss_kib();
    const uint64_t recv0 = me == 0 ? msgs_received(net) : 0;
    constexpr int kFlood = 10000;
    if (me == 1) {
      const uint32_t first = static_cast<SendComm*>(ahead.sc)->next_msg;
      if (flood_connected(net, ahead.sc, kFlood, 8192, 0,
                          [&](int i) { return first + static_cast<uint32_t>(i); }) ||
          flood_connected(net, again.sc, kFlood, 8192, 0,
                          [&](int i) { return first + static_cast<uint32_t>(i) % wire::kEagerWindow; }))
        return 1;
    } else {
      if (progress_until(net, recv0, 2 * kFlood)) return 1;
      const long grown = testutil::rss_kib() - rss0;
      fprintf(stderr, "rank 0: RSS grew by %ld KiB during the floods\n", grown);
      RANK_CHECK(!rss_meaningful() || grown < kRssSlackKib, "RSS grew by %ld KiB: the stash is not bounded",
                 grown);
      for (Link* l : {&ahead, &again}) {
        auto* rc = static_cast<RecvComm*>(l->rc);
        std::vector<uint8_t> buf(8192);
        void* mh = nullptr;
        RANK_CHECK(net_reg_mr(rc, buf.data(), buf.size(), 1, &mh) == Status::kOk, "regMr");
        void* data = buf.data();
        size_t sz = buf.size();
        int tag = 0;
        void* req = nullptr;
        Status s = net_irecv(rc, 1, &data, &sz, &tag, &mh, &req);
        RANK_CHECK(s == Status::kRemoteError,
                   "irecv on the abused comm %u returned %d, expected a remote error", rc->id,
                   static_cast<int>(s.code()));
        RANK_CHECK(net_dereg_mr(rc, mh) == Status::kOk, "deregMr");
        const std::string w = warnings();
        const std::string what = l == &ahead ? "messages past the receives posted" : "sent twice";
        RANK_CHECK(w.find("comm " + std::to_string(rc->id) + " (peer rank") != std::string::npos &&
                       w.find(rc->peer_addr) != std::string::npos && w.find(what) != std::string::npos,
                   "no error naming the peer (%s) and \"%s\":\n%s", rc->peer_addr.c_str(), what.c_str(),
                   w.c_str());
        RANK_CHECK(rc->unexpected.empty(), "a failed comm still holds %zu stashed messages",
                   rc->unexpected.size());
      }
    }
    RANK_OK(oob.barrier());
    for (Link* l : {&ahead, &again}) {
      if (l->sc) RANK_CHECK(net_close_send(l->sc) == Status::kOk, "close");
      if (l->rc) RANK_CHECK(net_close_recv(l->rc) == Status::kOk, "close");
      if (l->lc) RANK_CHECK(net_close_listen(l->lc) == Status::kOk, "close");
    }
    return 0;
  });
}

namespace {

// Progresses the send comm until the control entry of its next receive group has arrived.
int wait_ctrl(Net* net, void* sc) {
  Device* d = net->device(0);
  auto* c = static_cast<SendComm*>(sc);
  auto start = Clock::now();
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(d->mu);
      RANK_CHECK(d->progress() == Status::kOk, "progress");
      const SendGroup& g = c->groups[c->cur_group % wire::kGroupRing];
      if (g.known && g.seq == c->cur_group) return 0;
    }
    RANK_CHECK(!passed(start, 30), "no control entry in 30 s");
  }
}

}  // namespace

// Eager data is copied with a plain memcpy, so it must never be bound for GPU memory. This
// machine has no GPU: the receive buffers are host memory the test marks as CUDA (the plugin's
// decisions read only MrEntry::type). A connected peer that sends an eager message into such a
// buffer anyway fails the comm and the buffer is left alone (before the fix it was memcpy'd into);
// an honest 100-byte send into one arrives by RDMA write, no message (before the fix tcp sent it
// eagerly: MOEFABRIC_EAGER_KNOWN).
TEST_CASE("hostile: eager data for a GPU receive buffer is refused and never copied", "[fabric][hostile]") {
  run(2, [](OobChannel& oob, Net* net) {
    const int me = oob.rank();
    Link rogue, honest;
    if (link(oob, net, 1, 0, &rogue) || link(oob, net, 1, 0, &honest)) return 1;
    constexpr size_t kSize = 100;
    std::vector<uint8_t> buf(2 * kSize, 0);
    void* rmh[2] = {};
    void* rreq[2] = {};
    if (me == 0) {
      Link* links[2] = {&rogue, &honest};
      for (int k = 0; k < 2; ++k) {
        RANK_CHECK(net_reg_mr(links[k]->rc, buf.data() + k * kSize, kSize, 1, &rmh[k]) == Status::kOk,
                   "regMr");
        static_cast<MrEntry*>(rmh[k])->type = MemType::kCuda;  // a GPU buffer, as far as the plugin knows
        void* data = buf.data() + k * kSize;
        size_t sz = kSize;
        int tag = 1;
        while (!rreq[k])
          RANK_CHECK(net_irecv(links[k]->rc, 1, &data, &sz, &tag, &rmh[k], &rreq[k]) == Status::kOk, "irecv");
      }
    }
    RANK_OK(oob.barrier());  // receives posted, control entries on their way
    if (me == 1) {
      if (wait_ctrl(net, rogue.sc) || wait_ctrl(net, honest.sc)) return 1;
      const uint32_t first = static_cast<SendComm*>(rogue.sc)->next_msg;
      if (flood_connected(net, rogue.sc, 1, kSize, 1, [&](int) { return first; })) return 1;
      std::vector<uint8_t> src(kSize, 0x77);
      void* smh = nullptr;
      RANK_CHECK(net_reg_mr(honest.sc, src.data(), kSize, 1, &smh) == Status::kOk, "regMr");
      void* sreq = nullptr;
      auto start = Clock::now();
      while (!sreq) {
        RANK_CHECK(net_isend(honest.sc, src.data(), kSize, 1, smh, &sreq) == Status::kOk, "isend");
        RANK_CHECK(!passed(start, 30), "isend not accepted");
      }
      int done = 0;
      while (!done) {
        RANK_CHECK(net_test(sreq, &done, nullptr) == Status::kOk, "honest send failed");
        RANK_CHECK(!passed(start, 30), "honest send not complete");
      }
      RANK_CHECK(net_dereg_mr(honest.sc, smh) == Status::kOk, "deregMr");
    } else {
      auto start = Clock::now();
      Status s = Status::kOk;
      int done = 0;
      while (s == Status::kOk && !done) {
        s = net_test(rreq[0], &done, nullptr);
        RANK_CHECK(!passed(start, 10),
                   "the eager message for a GPU buffer was neither refused nor delivered");
      }
      RANK_CHECK(s == Status::kRemoteError,
                 "eager data for a GPU receive buffer: test() returned %d, done %d",
                 static_cast<int>(s.code()), done);
      for (size_t i = 0; i < kSize; ++i)
        RANK_CHECK(buf[i] == 0, "the GPU receive buffer was written (byte %zu)", i);
      const std::string w = warnings();
      RANK_CHECK(w.find("eager message for GPU receive buffer") != std::string::npos, "not reported:\n%s",
                 w.c_str());
      const uint64_t msgs_before = msgs_received(net);  // the rogue's message is in
      done = 0;
      size_t sizes[wire::kMaxRecvs] = {};
      while (!done) {
        RANK_CHECK(net_test(rreq[1], &done, sizes) == Status::kOk, "honest receive failed");
        RANK_CHECK(!passed(start, 30), "honest receive not complete");
      }
      RANK_CHECK(sizes[0] == kSize, "received %zu bytes", sizes[0]);
      for (size_t i = 0; i < kSize; ++i) RANK_CHECK(buf[kSize + i] == 0x77, "byte %zu of the honest send", i);
      RANK_CHECK(msgs_received(net) == msgs_before,
                 "the honest send into a GPU buffer came as a message, not a write");
      for (int k = 0; k < 2; ++k) {
        static_cast<MrEntry*>(rmh[k])->type = MemType::kHost;
        RANK_CHECK(net_dereg_mr(k == 0 ? rogue.rc : honest.rc, rmh[k]) == Status::kOk, "deregMr");
      }
    }
    RANK_OK(oob.barrier());
    for (Link* l : {&rogue, &honest}) {
      if (l->sc) RANK_CHECK(net_close_send(l->sc) == Status::kOk, "close");
      if (l->rc) RANK_CHECK(net_close_recv(l->rc) == Status::kOk, "close");
      if (l->lc) RANK_CHECK(net_close_listen(l->lc) == Status::kOk, "close");
    }
    return 0;
  });
}

namespace moefabric::fabric {
// The device's message buffers, for the registration checks (device.h befriends this).
struct DeviceTestAccess {
  static const MrEntry* rx_mr(Device* d) { return d->rx_mr_; }
  static const MrEntry* tx_mr(Device* d) { return d->tx_mr_; }
};
}  // namespace moefabric::fabric

namespace {

struct WriteResults : RmaHandler {
  int done = 0;
  Status status = Status::kOk;
  void on_remote_write(uint32_t) override {}
  void on_write_done(uint64_t, const Status& s) override { ++done, status = s; }
};

// What the victim tells the attacker: a stronger attacker than one that has only the listen
// handle, it also knows where the buffers are (the virtual-address providers, shm, need that to
// aim at all; tcp addresses by offset, where 0 is in every registration).
struct Targets {
  uint64_t raddr[4];  // receive buffer, send buffer, message receive buffers, message send buffers
  uint64_t recv_key;  // the receive buffer's real key (for the control write)
  uint64_t send_key;  // the send buffer's real key
  uint64_t past_end;  // the address just past the receive buffer
};
constexpr int kTargets = 4;

// A process outside every connection, writing 8 bytes of 0xee into the victim with whatever
// address and key it likes. The victim's memory is the verdict; completions differ by provider.
// tcp completes a plain write once it is sent, and a rejected write drops the connection, which
// tcp;ofi_rxm 1.17 does not make again: there every write is delivery-complete (its status is
// the target's) and a rejection opens a new endpoint, so every guess reaches the victim. On shm
// a delivery-complete write with a bad key never completes, and each plain write is checked on
// its own: plain writes; the verdict is the victim's.
struct Attacker {
  Params params;
  wire::ListenHandle victim_handle;
  std::unique_ptr<RmaEndpoint> ep;
  fi_addr_t victim = FI_ADDR_UNSPEC;
  MrEntry* mr = nullptr;
  std::vector<uint8_t> src = std::vector<uint8_t>(8, 0xee);
  bool shm = false;

  int open() {
    std::vector<NicInfo> nics;
    RANK_OK(nic_discover(rma_params(params), &nics));
    shm = nics[0].provider == "shm";
    RANK_OK(RmaEndpoint::open_nic(params, std::move(nics[0]), 0, &ep));
    RANK_OK(ep->insert_peer(victim_handle.addr, victim_handle.addr_len, &victim));
    RANK_OK(ep->mr_cache().acquire(src.data(), src.size(), MemType::kHost, MrAccess::kLocal, -1, -1, 0, &mr));
    return 0;
  }
  void close() {
    if (ep && mr) ep->mr_cache().release(mr);
    mr = nullptr;
    ep.reset();
  }
  // *landed: 1 the target took it, 0 it refused it, -1 unknown here (shm).
  int write(uint64_t raddr, uint64_t key, int* landed) {
    if (!ep && open()) return 1;
    WriteResults res;
    // kind 3 in the immediate: not the net plugin's, so the victim drops the notification
    RANK_OK(ep->write(victim, src.data(), src.size(), mr->desc, raddr, key, 3u, 0, !shm));
    auto start = Clock::now();
    while (res.done == 0) {
      RANK_OK(ep->poll(&res));
      RANK_CHECK(!passed(start, 30), "a write never completed");
    }
    *landed = shm ? -1 : res.status.ok();
    if (*landed == 0) close();
    return 0;
  }
};

bool is_ee(const void* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v == 0xeeeeeeeeeeeeeeeeull;
}

}  // namespace

// Registrations: only receive buffers are writable by peers, exactly their bytes, under keys no
// one can guess. Rank 0 (the victim) has a connection each way with rank 1 and registers a
// 100-byte receive buffer inside a page and a send buffer; their access flags and extent are
// checked. Rank 2 has rank 0's listen handle and the buffers' addresses and writes with guessed
// keys 1..K at the receive buffer, the send buffer and both message buffer slabs; then with the
// real keys at the send buffer and just past the receive buffer; then (control) at the receive
// buffer with its key, delivered. Only the control writes may land. Before the fix keys were 1, 2,
// 3, ... (the message slabs 1 and 2), every registration remotely writable and readable, and host
// registrations widened to whole pages. K is 250 on tcp; on shm 200,
// because libfabric 1.17's shm leaks a command credit per rejected write and wedges after ~1000
// (see docs/wire-protocol.md).
TEST_CASE("hostile: only receive buffers are writable by peers, exactly, under unguessable keys",
          "[fabric][hostile]") {
  run(
      3,
      [](OobChannel& oob, Net* net) {
        const int me = oob.rank();
        Link in, out;
        if (link(oob, net, 1, 0, &in) || link(oob, net, 0, 1, &out)) return 1;
        std::vector<uint8_t> rbuf(8192, 0), sbuf(4096, 0x11);
        uint8_t* recv_at = rbuf.data() + 1000;  // 100 bytes inside a page, neighbours on both sides
        constexpr size_t kRecv = 100;
        void* rmh = nullptr;
        void* smh = nullptr;
        Device* d = net->device(0);
        const MrEntry* rx = DeviceTestAccess::rx_mr(d);
        const MrEntry* tx = DeviceTestAccess::tx_mr(d);
        Targets t = {};
        if (me == 0) {
          RANK_CHECK(net_reg_mr(in.rc, recv_at, kRecv, 1, &rmh) == Status::kOk, "regMr(recv)");
          RANK_CHECK(net_reg_mr(out.sc, sbuf.data(), sbuf.size(), 1, &smh) == Status::kOk, "regMr(send)");
          auto* r = static_cast<const MrEntry*>(rmh);
          auto* s = static_cast<const MrEntry*>(smh);
          constexpr uint64_t kRemote = FI_REMOTE_READ | FI_REMOTE_WRITE;
          RANK_CHECK((r->fi_access & kRemote) == FI_REMOTE_WRITE, "receive buffer access 0x%llx",
                     static_cast<unsigned long long>(r->fi_access));
          for (const MrEntry* e : {s, rx, tx})
            RANK_CHECK((e->fi_access & kRemote) == 0,
                       "a send-side or message buffer registration has remote access 0x%llx",
                       static_cast<unsigned long long>(e->fi_access & kRemote));
          RANK_CHECK(r->base == reinterpret_cast<uintptr_t>(recv_at) && r->len == kRecv,
                     "the receive buffer is registered as %zu bytes at %+lld from it", r->len,
                     static_cast<long long>(r->base - reinterpret_cast<uintptr_t>(recv_at)));
          t.raddr[0] = r->remote_addr(recv_at);
          t.raddr[1] = s->remote_addr(sbuf.data());
          t.raddr[2] = rx->remote_addr(reinterpret_cast<void*>(rx->base));
          t.raddr[3] = tx->remote_addr(reinterpret_cast<void*>(tx->base));
          t.recv_key = r->key;
          t.send_key = s->key;
          t.past_end = r->remote_addr(recv_at + kRecv);
        }
        std::vector<Targets> all(oob.nranks());
        RANK_OK(oob.allgather(&t, all.data(), sizeof t));
        t = all[0];
        if (me == 2) {
          Attacker a;
          a.params = net->params();
          a.victim_handle = in.handle;
          if (a.open()) return 1;
          // tcp opens a new endpoint after each rejected write: slow under the sanitizers.
          const uint64_t guesses = a.shm ? 200 : 250;
          std::vector<std::pair<uint64_t, uint64_t>> to;
          for (int k = 0; k < kTargets; ++k)
            for (uint64_t key = 1; key <= guesses; ++key) to.push_back({t.raddr[k], key});
          std::sort(to.begin(), to.end());  // tcp addresses every registration's start as offset 0
          to.erase(std::unique(to.begin(), to.end()), to.end());
          to.push_back({t.raddr[1], t.send_key});  // the send buffer's own key
          to.push_back({t.past_end, t.recv_key});  // the receive buffer's key, one byte too far
          auto start = Clock::now();
          int landed = 0;
          for (const auto& [raddr, key] : to) {
            int l = 0;
            if (a.write(raddr, key, &l)) return 1;
            RANK_CHECK(l != 1, "a write with key %llu at 0x%llx landed", static_cast<unsigned long long>(key),
                       static_cast<unsigned long long>(raddr));
            landed += l == 1;
          }
          fprintf(stderr, "rank 2: %zu writes with guessed or misused keys in %.1f s\n", to.size(),
                  std::chrono::duration<double>(Clock::now() - start).count());
          // Control: the receive buffer takes a write with its key (the attack path works). It is the
          // last write: once the victim sees it, it has seen every one above.
          int l = 0;
          if (a.write(t.raddr[0], t.recv_key, &l)) return 1;
          RANK_CHECK(l != 0, "the control write with the receive buffer's own key failed");
          a.close();
        }
        if (me == 0) {
          // Drives the device (as NCCL's proxy would) until the attacker's last write has landed.
          auto start = Clock::now();
          while (!is_ee(recv_at)) {
            {
              std::lock_guard<std::mutex> lock(d->mu);
              RANK_CHECK(d->progress() == Status::kOk, "progress");
            }
            RANK_CHECK(!passed(start, 120), "the control write never landed");
          }
        }
        RANK_OK(oob.barrier());
        if (me == 0) {
          // The control write at the receive buffer's start; nothing else anywhere.
          for (size_t i = 0; i < rbuf.size(); ++i) {
            const bool control = i >= 1000 && i < 1008;
            RANK_CHECK(rbuf[i] == (control ? 0xee : 0), "receive-side byte %zu is 0x%02x%s", i, rbuf[i],
                       i >= 1100 && i < 1108 ? " (just past the receive buffer)" : "");
          }
          for (size_t i = 0; i < sbuf.size(); ++i)
            RANK_CHECK(sbuf[i] == 0x11, "send buffer byte %zu was written", i);
          RANK_CHECK(!is_ee(reinterpret_cast<void*>(rx->base)),
                     "a guessed key wrote into the message receive buffers");
          RANK_CHECK(!is_ee(reinterpret_cast<void*>(tx->base)),
                     "a guessed key wrote into the message send buffers");
          RANK_CHECK(net_dereg_mr(in.rc, rmh) == Status::kOk && net_dereg_mr(out.sc, smh) == Status::kOk,
                     "deregMr");
        }
        RANK_OK(oob.barrier());
        for (Link* l : {&in, &out}) {
          if (l->sc) RANK_CHECK(net_close_send(l->sc) == Status::kOk, "close");
          if (l->rc) RANK_CHECK(net_close_recv(l->rc) == Status::kOk, "close");
          if (l->lc) RANK_CHECK(net_close_listen(l->lc) == Status::kOk, "close");
        }
        return 0;
      },
      300);
}

namespace {

uint64_t imms_received(Net* net) {
  Device* d = net->device(0);
  std::lock_guard<std::mutex> lock(d->mu);
  return d->stats().imms_recv;
}

// The fixed payload length of a message type (what parse expects), or a random one.
size_t random_length(std::mt19937_64& rng, int type) {
  switch (rng() % 2 ? type : 0) {
    case 1:
      return sizeof(wire::ConnectMsg);
    case 2:
      return sizeof(wire::ConnectAckMsg);
    case 3:
      return offsetof(wire::CtrlMsg, entries) + (1 + rng() % wire::kMaxRecvs) * sizeof(wire::CtrlEntry);
    case 4:
      return sizeof(wire::FinMsg);
    case 5:
      return sizeof(wire::EagerMsg) + rng() % 300;
    case 6:
    case 7:
      return sizeof(wire::PingMsg);
    case 8:
      return sizeof(wire::ErrorMsg);
    default:
      return rng() % 600;
  }
}

// Posts one zero-byte write carrying `imm` from this rank's device to the receive buffer of c's
// current group, on the connection's own endpoint (so the receiver takes it as the peer's), and
// waits for it to complete here.
int write_imm(Net* net, SendComm* c, const wire::CtrlEntry& e, MrEntry* src, uint8_t* buf, uint32_t imm) {
  Device* d = net->device(0);
  OpCtx op;
  op.kind = OpKind::kWrite;
  op.comm = c;  // counted in its inflight: done when that drops back
  op.buf = buf;
  op.len = 0;
  op.desc = src->desc_on[0];
  op.peer = c->rail_peer[0];
  op.raddr = e.addr;
  op.key = e.key[0];
  op.data = imm;
  op.imm = true;
  auto start = Clock::now();
  decltype(c->inflight) before = 0;
  {
    std::lock_guard<std::mutex> lock(d->mu);
    before = c->inflight++;
    ++c->rail_writes[0];
    RANK_CHECK(d->post(&op) == Status::kOk, "post");
  }
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(d->mu);
      RANK_CHECK(d->progress() == Status::kOk, "progress");
      if (c->inflight == before) return 0;
    }
    RANK_CHECK(!passed(start, 30), "a write with an immediate never completed");
  }
}

}  // namespace

// The real receive paths fed garbage by a connected peer (its token, its endpoint: every check a
// receiver makes on the sender passes). On one connection it sends 3,000 messages of random
// types, lengths and bytes (half of them the right length for their type, so the field checks
// run: ctrl widths, fin indices, eager sizes, error texts); on another, after one honest write
// that completes the posted receive, it replays that write's immediate and then sends 300 random
// immediates naming the connection. The receiver must not crash or write outside its buffers
// (ASan/UBSan in CI), must fail both connections with errors naming the peer, keep its memory,
// and go on serving a third connection from the same peer. Before the fix a replayed immediate
// counted as another write of a finished message (an 8-bit counter the peer drives) and the
// receive completed as if nothing had happened; a second fin rewrote a finished size.
TEST_CASE("hostile: random messages and replayed immediates from a connected peer fail its comm, named",
          "[fabric][hostile]") {
  run(2, [](OobChannel& oob, Net* net) {
    const int me = oob.rank();
    Link noise, replay, honest;
    if (link(oob, net, 1, 0, &noise) || link(oob, net, 1, 0, &replay) || link(oob, net, 1, 0, &honest))
      return 1;
    constexpr size_t kSize = 4096;
    constexpr int kMsgs = 3000, kRandomImms = 300, kReplays = 5;
    std::vector<uint8_t> guard(4 * kSize, 0x3c);  // receive buffers at kSize and 2 kSize
    void* rmh[2] = {};
    void* rreq[2] = {};
    Link* victims[2] = {&noise, &replay};
    const uint64_t seed = 0x4057113 ^ static_cast<uint64_t>(Clock::now().time_since_epoch().count());
    if (me == 0) {
      fprintf(stderr, "rank 1's random stream: seed 0x%llx\n", static_cast<unsigned long long>(seed));
      for (int k = 0; k < 2; ++k) {
        uint8_t* at = guard.data() + (k + 1) * kSize;
        RANK_CHECK(net_reg_mr(victims[k]->rc, at, kSize, 1, &rmh[k]) == Status::kOk, "regMr");
        void* data = at;
        size_t sz = kSize;
        int tag = 1;
        while (!rreq[k])
          RANK_CHECK(net_irecv(victims[k]->rc, 1, &data, &sz, &tag, &rmh[k], &rreq[k]) == Status::kOk,
                     "irecv");
      }
    }
    uint64_t seeds[2] = {seed, 0};
    std::vector<uint64_t> all(2 * oob.nranks());
    RANK_OK(oob.allgather(seeds, all.data(), sizeof seeds));
    const long rss0 = testutil::rss_kib();
    const uint64_t msgs0 = me == 0 ? msgs_received(net) : 0, imms0 = me == 0 ? imms_received(net) : 0;
    if (me == 1) {
      std::mt19937_64 rng(all[0]);
      Device* d = net->device(0);
      auto* nc = static_cast<SendComm*>(noise.sc);
      auto* rc = static_cast<SendComm*>(replay.sc);
      if (wait_ctrl(net, noise.sc) || wait_ctrl(net, replay.sc)) return 1;
      const SendGroup& ng = nc->groups[nc->cur_group % wire::kGroupRing];
      std::vector<uint8_t> payload(600);
      auto start = Clock::now();
      for (int i = 0; i < kMsgs; ++i) {
        const int type = 1 + static_cast<int>(rng() % 9);  // 9: no such type
        const size_t len = std::min(random_length(rng, type), d->eager_max() + sizeof(wire::EagerMsg));
        for (auto& b : payload) b = static_cast<uint8_t>(rng());
        if (rng() % 2) {  // plausible numbers for the connection's current group
          const uint32_t seqs[2] = {ng.seq, ng.first_msg};
          std::memcpy(payload.data(), &seqs[rng() % 2], 4);
        }
        for (;;) {
          std::lock_guard<std::mutex> lock(d->mu);
          Status s = d->send_to_peer(nc, static_cast<wire::MsgType>(type), payload.data(), len);
          if (s == Status::kOk) break;
          RANK_CHECK(s == Status::kAgain, "send_to_peer failed");
          RANK_CHECK(d->progress() == Status::kOk, "progress");
          RANK_CHECK(!passed(start, 60), "stuck at message %d", i);
        }
      }
      // The replay connection: one honest write that fills the posted buffer, the same immediate
      // again, then random ones naming the connection.
      const wire::CtrlEntry e = rc->groups[rc->cur_group % wire::kGroupRing].e[0];
      std::vector<uint8_t> src(16, 0);
      void* smh = nullptr;
      RANK_CHECK(net_reg_mr(rc, src.data(), src.size(), 1, &smh) == Status::kOk, "regMr");
      const wire::Imm honest_imm = {rc->remote_id, rc->cur_group % wire::kGroupRing, 0, true, 1, 0};
      for (int i = 0; i < 1 + kReplays + kRandomImms; ++i) {
        uint32_t imm = wire::imm_encode(honest_imm);
        if (i > kReplays) imm = (rc->remote_id << 16) | (static_cast<uint32_t>(rng()) & 0xfffcu);  // kind 0
        if (write_imm(net, rc, e, static_cast<MrEntry*>(smh), src.data(), imm)) return 1;
      }
      RANK_CHECK(net_dereg_mr(rc, smh) == Status::kOk, "deregMr");
    } else {
      // Driven as NCCL's proxy would, without testing the requests (a replay must not find the
      // receive already handed back), until every message and immediate has arrived.
      Device* d = net->device(0);
      auto start = Clock::now();
      while (msgs_received(net) - msgs0 < static_cast<uint64_t>(kMsgs) ||
             imms_received(net) - imms0 < static_cast<uint64_t>(1 + kReplays + kRandomImms)) {
        {
          std::lock_guard<std::mutex> lock(d->mu);
          RANK_CHECK(d->progress() == Status::kOk, "progress");
        }
        RANK_CHECK(!passed(start, 90), "%llu of %d messages and %llu of %d immediates arrived",
                   static_cast<unsigned long long>(msgs_received(net) - msgs0), kMsgs,
                   static_cast<unsigned long long>(imms_received(net) - imms0), 1 + kReplays + kRandomImms);
      }
      const long grown = testutil::rss_kib() - rss0;
      fprintf(stderr, "rank 0: RSS grew by %ld KiB\n", grown);
      RANK_CHECK(!rss_meaningful() || grown < kRssSlackKib, "RSS grew by %ld KiB", grown);
      const std::string w = warnings();
      for (int k = 0; k < 2; ++k) {
        auto* rc = static_cast<RecvComm*>(victims[k]->rc);
        int done = 0;
        Status s = net_test(rreq[k], &done, nullptr);
        RANK_CHECK(s == Status::kRemoteError,
                   "%s connection: test() returned %d, done %d; the comm should have failed",
                   k == 0 ? "random-message" : "replay", static_cast<int>(s.code()), done);
        RANK_CHECK(w.find("recv comm " + std::to_string(rc->id) + " (peer rank") != std::string::npos &&
                       w.find(rc->peer_addr) != std::string::npos,
                   "no error naming the peer (%s) for comm %u:\n%s", rc->peer_addr.c_str(), rc->id,
                   w.c_str());
        if (k == 1)
          RANK_CHECK(rc->error.message().find("replayed or duplicated immediate") != std::string::npos,
                     "the replay failed the comm for another reason: %s", rc->error.message().c_str());
        RANK_CHECK(rc->unexpected.size() <= wire::kEagerWindow, "comm %u stashes %zu messages", rc->id,
                   rc->unexpected.size());
      }
      for (size_t i = 0; i < guard.size(); ++i)
        if (i < kSize || i >= 3 * kSize)
          RANK_CHECK(guard[i] == 0x3c, "byte %zu outside the receive buffers was written", i);
      for (int k = 0; k < 2; ++k) RANK_CHECK(net_dereg_mr(victims[k]->rc, rmh[k]) == Status::kOk, "deregMr");
    }
    RANK_OK(oob.barrier());
    // The peer's third connection is unharmed, eager and by write.
    if (transfer(oob, honest, 1, 0, 100, 3) || transfer(oob, honest, 1, 0, 100000, 4)) return 1;
    RANK_OK(oob.barrier());
    for (Link* l : {&noise, &replay, &honest}) {
      if (l->sc) RANK_CHECK(net_close_send(l->sc) == Status::kOk, "close");
      if (l->rc) RANK_CHECK(net_close_recv(l->rc) == Status::kOk, "close");
      if (l->lc) RANK_CHECK(net_close_listen(l->lc) == Status::kOk, "close");
    }
    return 0;
  });
}
