// The CUDA backend's fabric proxy (cuda_proxy.h): doorbells in, packed writes out, arrival flags
// back. One thread, one endpoint; every wait it owns is bounded by the comm's timeout.
#include "collectives/cuda/cuda_proxy.h"

#include <sys/prctl.h>

#include <algorithm>
#include <cstring>

#include "collectives/protocol.h"
#include "collectives/rails.h"
#include "common/log.h"

namespace moefabric::moe {
namespace {

constexpr int kBarrierRow =
    FabricProxy::kBells;  // arrived[] row and cookie class of the barriers (init, destroy)

WriteKind kind_of(int bell) {
  return bell == 0 ? WriteKind::kDispatchPrivate : bell == 1 ? WriteKind::kCombine : WriteKind::kBarrier;
}
int bell_of(uint32_t kind) {
  switch (static_cast<WriteKind>(kind)) {
    case WriteKind::kDispatchPrivate:
      return 0;
    case WriteKind::kCombine:
      return 1;
    case WriteKind::kBarrier:
      return kBarrierRow;
    default:
      return -1;
  }
}
const char* phase_of(int bell) { return bell == 0 ? "dispatch" : bell == 1 ? "combine" : "barrier"; }
uint64_t load_acquire(const uint64_t* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }

}  // namespace

Status FabricProxy::create(const Params& params, const Config& cfg, std::unique_ptr<FabricProxy>* out,
                           std::string* error) {
  std::unique_ptr<FabricProxy> p(new FabricProxy());
  p->params_ = params;
  p->cfg_ = cfg;
  p->peers_.resize(static_cast<size_t>(cfg.nranks));
  RailChoice rc;
  MF_CHECK(open_rails(params, cfg.gpu, &p->ep_, &rc, error));
  p->rails_why_ = rc.why;
  p->proxy_cpus_ = rc.proxy_cpus;
  p->proxy_cpus_why_ = rc.cpus_why;
  *out = std::move(p);
  return Status::kOk;
}

Status FabricProxy::attach(uint8_t* send_stage, uint8_t* recv_stage, int cuda_device, std::string* error) {
  if (thread_.joinable() || send_mr_.rail[0] != nullptr) {
    *error = "fabric proxy: staging attached twice";
    return Status::kInternalError;
  }
  if (std::string why; cuda_device >= 0 && !device_staging_ok(&why)) {
    *error = why;
    return Status::kInvalidUsage;
  }
  const size_t bytes = cfg_.layout.stage_bytes * static_cast<size_t>(cfg_.nranks);
  MF_CHECK(ep_->reg(send_stage, bytes, fabric::MrAccess::kLocal, &send_mr_, error, cuda_device));
  if (Status s = ep_->reg(recv_stage, bytes, fabric::MrAccess::kRemoteWrite, &recv_mr_, error, cuda_device);
      s != Status::kOk) {
    ep_->dereg(&send_mr_);
    return s;
  }
  send_stage_ = send_stage;
  recv_stage_ = recv_stage;
  cuda_device_ = cuda_device;
  return Status::kOk;
}

bool FabricProxy::device_staging_ok(std::string* why) const {
  if (!ep_->hmem()) {
    *why = "provider " + provider() + " on " + ep_->name() +
           " did not grant FI_HMEM: GPU memory cannot be registered";
    return false;
  }
  const bool crosses = (cfg_.remote & ~(1u << cfg_.rank)) != 0;
  if (ep_->hmem_async() && crosses) {
    // (Copies that may end after the write is reported and wait behind the caller's kernels.)
    *why = "provider " + provider() +
           " moves GPU memory by host-issued copies on the legacy "
           "stream; GPU staging needs a NIC that writes GPU memory itself (efa, verbs)";
    return false;
  }
  return true;
}

FabricProxy::~FabricProxy() {
  stop();
  if (ep_) {
    ep_->dereg(&send_mr_);  // no-ops for what was never registered
    ep_->dereg(&recv_mr_);
    ep_.reset();
  }
}

const std::string& FabricProxy::provider() const { return ep_->nic().provider; }

std::string FabricProxy::rails() const {
  return ep_->name() + " (" + std::to_string(ep_->nrails()) + " rail(s): " + rails_why_ + ")";
}

void FabricProxy::local_addr(Addr* a) const { rails_addr(*ep_, recv_mr_, recv_stage_, a); }

Status FabricProxy::start(const std::vector<Addr>& all, std::string* error) {
  if (recv_stage_ == nullptr) {
    *error = "fabric proxy: started with no staging attached";
    return Status::kInternalError;
  }
  for (int r = 0; r < cfg_.nranks; ++r) {
    if (!((cfg_.remote >> r) & 1u)) continue;
    if (!all[r].ok) {
      *error = "rank " + std::to_string(r) +
               " has no fabric endpoint: " + std::string(all[r].why, strnlen(all[r].why, sizeof all[r].why));
      return Status::kSystemError;
    }
    peers_[r].recv_base = all[r].recv_base;
    MF_CHECK(rails_add_peer(*ep_, all[r], r, &peers_[r].rails, error));
  }
  stop_.store(false);
  thread_ = std::thread([this] { loop(); });
  return Status::kOk;
}

void FabricProxy::stop() {
  if (!thread_.joinable()) return;
  stop_.store(true, std::memory_order_release);
  thread_.join();
}

Status FabricProxy::failure(std::string* text) const {
  const Status s = static_cast<Status>(status_.load(std::memory_order_acquire));
  if (s != Status::kOk && text != nullptr) {
    std::lock_guard<std::mutex> g(err_mu_);
    *text = err_text_;
  }
  return s;
}

void FabricProxy::fail(Status s, const std::string& text) {
  {
    std::lock_guard<std::mutex> g(err_mu_);
    int expected = 0;
    if (!status_.compare_exchange_strong(expected, static_cast<int>(s))) return;
    err_text_ = text;
  }
  MF_WARN("rank %d: fabric proxy: %s", cfg_.rank, text.c_str());
  // Kernels waiting for a write that will never land return now instead of at their timeout.
  if (cfg_.abort_word != nullptr) *cfg_.abort_word = 1;
}

void FabricProxy::post_one(int peer, int kind, const uint8_t* src, size_t len, uint64_t offset, uint64_t op,
                           bool delivered) {
  Peer& p = peers_[peer];
  std::string err;
  const uint64_t raddr = p.recv_base + cfg_.layout.stage_bytes * static_cast<uint64_t>(cfg_.rank) + offset;
  const uint64_t cookie = (static_cast<uint64_t>(kind) << 32) | static_cast<uint32_t>(peer);
  if (p.inflight[kind]++ == 0) p.posted[kind] = Clock::now();
  writes_inflight_.fetch_add(1, std::memory_order_relaxed);
  Status s = ep_->write(p.rails, src, len, send_mr_, raddr, imm_encode(kind_of(kind), op, cfg_.rank), cookie,
                        &err, delivered);
  if (s != Status::kOk) {
    --p.inflight[kind];
    writes_inflight_.fetch_sub(1, std::memory_order_relaxed);
    fail(Status::kRemoteError, std::string(phase_of(kind)) + ": posting the write of op " +
                                   std::to_string(op) + " to rank " + std::to_string(peer) +
                                   " failed: " + err);
  }
}

// One write per fabric peer: the prefix of its send segment that op `op` filled.
void FabricProxy::post_phase(int bell, uint64_t op) {
  const CudaLayout& l = cfg_.layout;
  const auto t0 = Clock::now();
  uint64_t bytes = 0;
  // Our dispatch's T as the send kernel staged it (already sanitised to [0, maxT]).
  int32_t T_ours = bell == 0 ? __atomic_load_n(cfg_.stage_T, __ATOMIC_RELAXED) : 0;
  if (T_ours < 0 || T_ours > l.max_tokens) {
    fail(Status::kInternalError, "dispatch: the send kernel staged T = " + std::to_string(T_ours));
    T_ours = 0;
  }
  for (int i = 1; i <= cfg_.nranks; ++i) {
    const int d = (cfg_.rank + i) % cfg_.nranks;  // self last
    if (!((cfg_.remote >> d) & 1u)) continue;
    if (self_short(d)) {
      on_remote_write(imm_encode(kind_of(bell), op, cfg_.rank));
      continue;
    }
    const uint8_t* seg = send_stage_ + l.stage_bytes * static_cast<size_t>(d);
    if (bell == 0) {
      const size_t len = l.stage_dispatch_bytes(T_ours);
      post_one(d, bell, seg, len, 0, op, false);
      bytes += len;
    } else {
      // Rows (t, k) of d's tokens: d's T as our dispatch ingest read it from d's write of this op
      // (d cannot send the next one before our combine reaches it).
      int32_t T = __atomic_load_n(cfg_.stage_T + 1 + d, __ATOMIC_RELAXED);
      if (T < 0 || T > l.max_tokens) T = 0;  // d's recv kernel reported it; send the marker
      const size_t rows = static_cast<size_t>(T) * l.topk;
      const size_t len = rows > 0 ? rows * l.y_row_bytes : 16;
      post_one(d, bell, seg + l.stage_off_comb, len, l.stage_off_comb, op, false);
      bytes += len;
    }
  }
  post_ns_[bell].store(
      static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count()));
  bytes_[bell].store(bytes, std::memory_order_relaxed);
}

void FabricProxy::on_remote_write(uint32_t imm) {
  const uint32_t kind = imm >> 29;
  const uint32_t seq_low = (imm >> 12) & kSeqMask;
  const int src = static_cast<int>(imm & 0xfffu);
  const int row = bell_of(kind);
  char hex[16];
  snprintf(hex, sizeof hex, "%08x", imm);
  if (row < 0 || src >= cfg_.nranks || !((cfg_.remote >> src) & 1u)) {
    fail(Status::kRemoteError,
         std::string("rejected an incoming write (imm 0x") + hex + "): unknown kind or not a fabric peer");
    return;
  }
  uint64_t* flag = cfg_.arrived + static_cast<size_t>(row) * cfg_.nranks + src;
  const uint64_t next = __atomic_load_n(flag, __ATOMIC_RELAXED) + 1;
  if ((next & kSeqMask) != seq_low) {
    fail(Status::kRemoteError, std::string(phase_of(row)) + ": rank " + std::to_string(src) + " wrote op " +
                                   std::to_string(seq_low) + " (low bits), expected op " +
                                   std::to_string(next) + " (imm 0x" + hex + ")");
    return;
  }
  MF_TRACE(log::kProxy, "rank %d: %s write of op %llu from rank %d landed", cfg_.rank, phase_of(row),
           static_cast<unsigned long long>(next), src);
  // The payload landed before its immediate was delivered; the kernel's acquire pairs with this.
  __atomic_store_n(flag, next, __ATOMIC_RELEASE);
}

void FabricProxy::on_write_done(uint64_t cookie, Status s, const char* text) {
  const int kind = static_cast<int>(cookie >> 32);
  const int peer = static_cast<int>(cookie & 0xffffffffu);
  if (peer < cfg_.nranks && kind <= kBarrierRow) --peers_[peer].inflight[kind];
  writes_inflight_.fetch_sub(1, std::memory_order_release);
  if (s != Status::kOk && !stop_.load(std::memory_order_relaxed))
    fail(Status::kRemoteError, std::string(phase_of(kind)) + ": write to rank " + std::to_string(peer) +
                                   " failed (peer lost?): " + (text ? text : ""));
}

void FabricProxy::check_stuck_writes(Clock::time_point now) {
  const auto limit = std::chrono::milliseconds(cfg_.timeout_ms);
  for (int r = 0; r < cfg_.nranks; ++r)
    for (int k = 0; k <= kBarrierRow; ++k)
      if (peers_[r].inflight[k] > 0 && now - peers_[r].posted[k] > limit) {
        fail(Status::kRemoteError, std::string(phase_of(k)) + ": " + std::to_string(peers_[r].inflight[k]) +
                                       " write(s) to rank " + std::to_string(r) + " not complete after " +
                                       std::to_string(cfg_.timeout_ms) + " ms (peer stalled or lost)");
        peers_[r].inflight[k] = 0;  // reported once
      }
}

void FabricProxy::loop() {
  // Naps while idle are short and should stay short: doorbells come from the GPU, which cannot
  // wake us, so the first op after an idle spell waits at most one nap.
  (void)prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
  pin_proxy_thread(proxy_cpus_, proxy_cpus_why_, "fabric proxy", cfg_.rank);
  const auto spin = std::chrono::microseconds(std::max<int64_t>(0, params_.proxy_spin_us));
  auto last_work = Clock::now();
  std::string err;
  for (uint64_t iter = 0; !stop_.load(std::memory_order_acquire); ++iter) {
    bool work = false;
    for (int b = 0; b < kBells; ++b) {
      const uint64_t v = load_acquire(cfg_.doorbell + b);
      if (v == posted_[b]) continue;
      work = true;
      if (v != posted_[b] + 1) {  // nothing is posted for ops that never rang
        fail(Status::kInternalError, std::string(phase_of(b)) + ": doorbell went from op " +
                                         std::to_string(posted_[b]) + " to " + std::to_string(v));
        posted_[b] = v;
        continue;
      }
      post_phase(b, v);
      posted_[b] = v;
    }
    if (const uint64_t want = barrier_req_.load(std::memory_order_acquire);
        want > barrier_posted_.load(std::memory_order_relaxed)) {
      work = true;
      const CudaLayout& l = cfg_.layout;
      for (int d = 0; d < cfg_.nranks; ++d) {
        if (!((cfg_.remote >> d) & 1u)) continue;
        if (self_short(d))
          on_remote_write(imm_encode(WriteKind::kBarrier, want, cfg_.rank));
        else
          post_one(d, kBarrierRow, send_stage_ + l.stage_bytes * (d + 1) - 16, 16, l.stage_bytes - 16, want,
                   true);
      }
      barrier_posted_.store(want, std::memory_order_release);
    }
    const uint64_t before = ep_->stats().remote_writes;
    if (ep_->poll(this, &err) != Status::kOk) fail(Status::kSystemError, "proxy: " + err);
    work |= ep_->stats().remote_writes != before || writes_inflight_.load() > 0;
    const auto now = Clock::now();
    if ((iter & 1023) == 0) check_stuck_writes(now);
    if (work) {
      last_work = now;
    } else if (now - last_work > spin) {
      std::this_thread::sleep_for(std::chrono::microseconds(10));
    }
  }
}

Status FabricProxy::barrier(std::string* error, const char* what) {
  const uint64_t n = barrier_req_.load(std::memory_order_relaxed) + 1;
  barrier_req_.store(n, std::memory_order_release);
  const auto deadline = Clock::now() + std::chrono::milliseconds(cfg_.timeout_ms);
  const uint64_t* row = cfg_.arrived + static_cast<size_t>(kBarrierRow) * cfg_.nranks;
  for (;;) {
    std::string missing;
    for (int r = 0; r < cfg_.nranks; ++r)
      if (((cfg_.remote >> r) & 1u) && load_acquire(row + r) < n)
        missing += (missing.empty() ? "" : ", ") + std::to_string(r);
    // Our own barrier writes must have been posted, not merely asked for: the peers' may all
    // have landed before the proxy thread got to ours (with no self-write to wait on, as when
    // every fabric peer is another rank), and leaving then strands the peers.
    const bool posted = barrier_posted_.load(std::memory_order_acquire) >= n;
    if (missing.empty() && posted && writes_inflight_.load(std::memory_order_acquire) == 0)
      return Status::kOk;
    std::string text;
    if (failure(&text) != Status::kOk) {
      *error = std::string(what) + ": " + text;
      return Status::kRemoteError;
    }
    if (Clock::now() > deadline) {
      *error = std::string(what) + ": timed out after " + std::to_string(cfg_.timeout_ms) +
               " ms waiting for " +
               (!posted           ? std::string("the proxy thread to post our barrier writes")
                : missing.empty() ? std::string("our barrier writes to complete")
                                  : "the barrier of fabric rank(s) " + missing) +
               " (peer stalled or lost)";
      return Status::kRemoteError;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

}  // namespace moefabric::moe
