// The host proxy: one thread per comm that owns the RDMA endpoint. It takes doorbells from the
// caller (or, later, from GPU kernels), posts one write per peer per phase, answers dispatch
// headers with overflow grants, turns arriving immediates into per-peer arrival sequence numbers
// the caller waits on, and reports write failures naming the peer.
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <climits>
#include <cstring>

#include "collectives/comm.h"
#include "collectives/rails.h"
#include "common/log.h"

namespace moefabric::moe {
namespace {
constexpr uint64_t cookie_of(int cls, int peer) {
  return (static_cast<uint64_t>(cls) << 32) | static_cast<uint32_t>(peer);
}
}  // namespace

void Comm::proxy_start() {
  stop_.store(false);
  proxy_ = std::thread([this] { proxy_loop(); });
}

void Comm::proxy_stop() {
  if (!proxy_.joinable()) return;
  stop_.store(true, std::memory_order_release);
  ep_->signal();
  proxy_.join();
}

void Comm::ring(WriteKind kind, uint64_t seq) {
  std::lock_guard<std::mutex> g(cmd_mu_);
  cmds_.push_back(Command{kind, seq, Clock::now()});
  last_ticket_[static_cast<int>(kind)] = ++cmds_rung_;
  if (proxy_blocked_.load(std::memory_order_seq_cst)) ep_->signal();
}

void Comm::wake_waiters() {
  if (!events_.exchange(false, std::memory_order_acq_rel)) return;
  wake_seq_.fetch_add(1, std::memory_order_release);
  if (waiters_.load(std::memory_order_seq_cst) > 0)
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&wake_seq_), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr,
            nullptr, 0);
}

void Comm::proxy_fail(const Status& s) {
  std::lock_guard<std::mutex> g(err_mu_);
  int expected = 0;
  if (async_status_.compare_exchange_strong(expected, static_cast<int>(s.code()))) {
    async_text_ = s.message();
    MF_WARN("rank %d: %s", me_, async_text_.c_str());
    if (abort_word_ != nullptr) *abort_word_ = 1;
  }
  events_.store(true, std::memory_order_release);
}

void Comm::post(int peer, int cls, const void* src, size_t len, uint64_t remote_off, WriteKind kind,
                uint64_t seq) {
  MF_TRACE(log::kProxy, "rank %d: posting %s write of %zu B to rank %d, seq %llu", me_, kind_name(kind), len,
           peer, static_cast<unsigned long long>(seq));
  outstanding_[cls].fetch_add(1, std::memory_order_relaxed);
  Status s = ep_->write(peers_[peer].rails, src, len, send_mr_, peers_[peer].recv_base + remote_off,
                        imm_encode(kind, seq, me_), cookie_of(cls, peer), kind == WriteKind::kBarrier);
  if (!s.ok()) {
    outstanding_[cls].fetch_sub(1, std::memory_order_release);
    proxy_fail(Status::remote_error(std::string("proxy: posting ") + kind_name(kind) + " write to rank " +
                                    std::to_string(peer) + " failed: " + s.message()));
  }
}

// Outgoing control slot for `peer` in the send block: grant (16), request (16), marker (16).
uint8_t* Comm::out_slot(int peer) { return send_block_.get() + l_.off_grant_out + l_.ctrl_slot_bytes * peer; }

// Every size comes from the client's plan in host memory (sh_.plan, sh_.ret): the proxy
// never reads a header or a record, so the blocks may be memory it cannot read.
void Comm::proxy_execute(const Command& c) {
  uint8_t* send = send_block_.get();
  auto dummy = [&](int peer, WriteKind kind) {
    // A 16-byte marker into our scratch slot at the peer: the immediate is the message.
    post(peer, static_cast<int>(kind), out_slot(peer) + 32, kMarkerBytes, l_.ctrl_offset(me_) + 32, kind,
         c.seq);
  };
  switch (c.kind) {
    case WriteKind::kDispatchPrivate: {
      for (int i = 1; i < R_; ++i) {
        int d = (me_ + i) % R_;
        if (!is_peer(d)) continue;
        const uint32_t n = sh_.plan[d].ntokens,
                       np = std::min<uint32_t>(n, static_cast<uint32_t>(l_.max_private));
        post(d, static_cast<int>(c.kind), send + sh_.plan[d].offset, l_.header_bytes + l_.record_bytes * np,
             l_.private_offset(me_), c.kind, c.seq);
        if (n > np) {
          auto* r = reinterpret_cast<Request*>(out_slot(d) + 16);
          *r = Request{c.seq, n, np};
          post(d, static_cast<int>(WriteKind::kRequest), r, sizeof(Request), l_.ctrl_offset(me_) + 16,
               WriteKind::kRequest, c.seq);
        }
      }
      post_ns_.store(static_cast<uint64_t>(
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - c.rung).count()));
      break;
    }
    case WriteKind::kCombine: {
      for (int i = 1; i < R_; ++i) {
        int h = (me_ + i) % R_;
        if (!is_peer(h)) continue;
        const ReturnPlan& rp = sh_.ret[h];
        uint32_t rows = rp.rows;
        if (rows == 0) {
          dummy(h, c.kind);
          continue;
        }
        post(h, static_cast<int>(c.kind), send + l_.off_csend + l_.y_row_bytes * rp.row_start,
             l_.y_row_bytes * rows, l_.combine_offset(rp.combine_base), c.kind, c.seq);
      }
      combine_post_ns_.store(static_cast<uint64_t>(
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - c.rung).count()));
      break;
    }
    case WriteKind::kBarrier:
      for (int i = 1; i < R_; ++i)
        if (is_peer((me_ + i) % R_)) dummy((me_ + i) % R_, c.kind);
      break;
    default:
      break;
  }
}

void Comm::on_remote_write(uint32_t imm) {
  ImmFields f{};
  if (Status s = imm_decode(imm, cur_seq_.load(std::memory_order_acquire), R_, me_, &f); !s.ok()) {
    // The immediate's source field is the only name the write carries here.
    const int claimed = static_cast<int>(imm & 0xfffu);
    char text[96];
    snprintf(text, sizeof text, "proxy: rejected an incoming write from rank %d (imm 0x%08x): ", claimed,
             imm);
    proxy_fail(s.prepend(text));
    return;
  }
  MF_TRACE(log::kProxy, "rank %d: %s write from rank %d, seq %llu", me_, kind_name(f.kind), f.src,
           static_cast<unsigned long long>(f.seq));
  const uint8_t* recv = recv_block_.get();
  uint8_t* send = send_block_.get();
  switch (f.kind) {
    case WriteKind::kRequest: {
      Request r;  // the peer may rewrite its slot: one copy, checked, used
      std::memcpy(&r, recv + l_.ctrl_offset(f.src) + 16, sizeof r);
      if (Status s = request_check(l_, r, f.seq); !s.ok()) {
        proxy_fail(s.prepend("dispatch: rank " + std::to_string(f.src) + " sent a "));
        return;
      }
      if (grant_seq_ != f.seq) {
        grant_seq_ = f.seq;
        grant_bump_ = 0;
      }
      const uint32_t count = r.ntokens - r.nprivate;
      if (static_cast<uint64_t>(grant_bump_) + count > l_.overflow_records) {
        proxy_fail(Status::internal_error("dispatch: overflow region exhausted granting rank " +
                                          std::to_string(f.src)));
        return;
      }
      std::atomic_ref<uint32_t>(sh_.overflow_off[f.src]).store(grant_bump_, std::memory_order_relaxed);
      std::atomic_ref<uint32_t>(sh_.granted[f.src]).store(count, std::memory_order_relaxed);
      auto* g = reinterpret_cast<Grant*>(out_slot(f.src));
      *g = Grant{f.seq, grant_bump_, count};
      grant_bump_ += count;
      grant_seq_of_[f.src].store(f.seq, std::memory_order_relaxed);
      post(f.src, static_cast<int>(WriteKind::kGrant), g, sizeof(Grant), l_.ctrl_offset(me_),
           WriteKind::kGrant, f.seq);
      break;
    }
    case WriteKind::kGrant: {
      Grant g;  // one copy, checked, used
      std::memcpy(&g, recv + l_.ctrl_offset(f.src), sizeof g);
      const uint32_t n = sh_.plan[f.src].ntokens,
                     np = std::min<uint32_t>(n, static_cast<uint32_t>(l_.max_private));
      if (g.seq != f.seq || f.seq != cur_seq_.load(std::memory_order_acquire) || n <= np ||
          g.count != n - np || static_cast<uint64_t>(g.offset) + g.count > l_.overflow_records) {
        proxy_fail(Status::remote_error("dispatch: rank " + std::to_string(f.src) +
                                        " sent a malformed grant (seq " + std::to_string(g.seq) +
                                        ", offset " + std::to_string(g.offset) + ", count " +
                                        std::to_string(g.count) + ")"));
        return;
      }
      post(f.src, static_cast<int>(WriteKind::kDispatchRest),
           send + sh_.plan[f.src].offset + l_.header_bytes + l_.record_bytes * np, l_.record_bytes * g.count,
           l_.overflow_offset(g.offset), WriteKind::kDispatchRest, f.seq);
      break;
    }
    default:
      break;
  }
  arrived(f.kind, f.src).store(f.seq, std::memory_order_release);
  events_.store(true, std::memory_order_release);
}

void Comm::on_write_done(uint64_t cookie, const Status& s) {
  int cls = static_cast<int>(cookie >> 32);
  int peer = static_cast<int>(cookie & 0xffffffffu);
  outstanding_[cls].fetch_sub(1, std::memory_order_release);
  events_.store(true, std::memory_order_release);
  MF_TRACE(log::kProxy, "rank %d: %s write to rank %d done (%s)", me_, kind_name(static_cast<WriteKind>(cls)),
           peer, status_name(s));
  if (!s.ok() && !stop_.load(std::memory_order_relaxed))
    proxy_fail(Status::remote_error(std::string(kind_name(static_cast<WriteKind>(cls))) + ": write to rank " +
                                    std::to_string(peer) + " failed (peer lost?): " + s.message()));
}

// The CUDA client's kernels ring by storing the op number into doorbell[0] (dispatch staged) or
// doorbell[1] (combine staged), in pinned host memory; each advances by one per op.
void Comm::poll_doorbells() {
  static constexpr WriteKind kKinds[2] = {WriteKind::kDispatchPrivate, WriteKind::kCombine};
  for (int b = 0; b < 2; ++b) {
    const uint64_t n = std::atomic_ref<uint64_t>(sh_.doorbell[b]).load(std::memory_order_acquire);
    if (n == bell_seen_[b]) continue;
    if (n != bell_seen_[b] + 1) {
      proxy_fail(Status::internal_error(std::string("proxy: ") + (b ? "combine" : "dispatch") +
                                        " doorbell jumped from op " + std::to_string(bell_seen_[b]) + " to " +
                                        std::to_string(n)));
      bell_seen_[b] = n;
      continue;
    }
    bell_seen_[b] = n;
    MF_TRACE(log::kProxy, "rank %d: %s doorbell rang for op %llu", me_, b ? "combine" : "dispatch",
             static_cast<unsigned long long>(n));
    if (b == 0) cur_seq_.store(n, std::memory_order_release);
    proxy_execute(Command{kKinds[b], n, Clock::now()});
    events_.store(true, std::memory_order_release);
  }
}

void Comm::proxy_loop() {
  pin_proxy_thread(proxy_cpus_, proxy_cpus_why_, "proxy", me_);
  const auto spin = std::chrono::microseconds(std::max<int64_t>(0, params_.proxy_spin_us));
  std::deque<Command> local;
  auto last_work = Clock::now();
  uint64_t idle_polls = 0;
  while (!stop_.load(std::memory_order_acquire)) {
    {
      std::lock_guard<std::mutex> g(cmd_mu_);
      local.swap(cmds_);
    }
    bool work = !local.empty();
    if (sh_.doorbell != nullptr) {
      const uint64_t before = bell_seen_[0] + bell_seen_[1];
      poll_doorbells();
      work |= bell_seen_[0] + bell_seen_[1] != before;
    }
    for (const Command& c : local) {
      proxy_execute(c);
      cmds_done_.fetch_add(1, std::memory_order_release);
      events_.store(true, std::memory_order_release);
    }
    local.clear();
    uint64_t before = ep_->stats().remote_writes + ep_->writes_in_flight();
    if (Status s = ep_->poll(this); !s.ok()) proxy_fail(Status::system_error("proxy: " + s.message()));
    uint64_t after = ep_->stats().remote_writes + ep_->writes_in_flight();
    work |= after != before || ep_->writes_in_flight() > 0;
    wake_waiters();
    auto now = Clock::now();
    if (work) {
      last_work = now;
    } else if (now - last_work > spin && sh_.doorbell == nullptr) {  // kernels ring without a signal
      // Idle: block in the CQ; ring() signals it, so a doorbell never waits for the timeout.
      proxy_blocked_.store(true, std::memory_order_seq_cst);
      bool empty;
      {
        std::lock_guard<std::mutex> g(cmd_mu_);
        empty = cmds_.empty();
      }
      if (empty && !stop_.load(std::memory_order_acquire))
        if (Status s = ep_->wait(this, 1); !s.ok()) proxy_fail(Status::system_error("proxy: " + s.message()));
      proxy_blocked_.store(false, std::memory_order_seq_cst);
      wake_waiters();
    } else if ((++idle_polls & 63) == 0) {
      sched_yield();
    }
  }
}

}  // namespace moefabric::moe
