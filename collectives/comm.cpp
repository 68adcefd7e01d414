// Comm lifetime: config resolution and the cross-rank check, bootstrap over the caller's
// allgather, buffers and registrations, destroy/abort, errors and bounded waits.
#include "collectives/comm.h"

#include "collectives/agree.h"
#include "collectives/rails.h"

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstring>

#include "collectives/engine.h"
#include "common/log.h"

namespace moefabric::moe {
namespace {

constexpr uint32_t kBlobMagic = 0x4d664231u;

struct CfgBlob {
  uint32_t magic;
  int32_t nranks;
  ResolvedConfig rc;
};

bool is_set(int v) { return v != NCCL_MOE_UNDEF_INT; }

// Fills defaults and validates one rank's config (everything that can be checked locally).
Status resolve(const ncclMoeConfig_t* c, int nranks, const Params& params, ResolvedConfig* rc) {
  auto bad = [&](const std::string& w) { return Status::invalid_argument("invalid config: " + w); };
  if (c == nullptr) return bad("config is NULL (use NCCL_MOE_CONFIG_INITIALIZER)");
  if (c->magic != NCCL_MOE_CONFIG_MAGIC)
    return bad("magic mismatch (initialise with NCCL_MOE_CONFIG_INITIALIZER)");
  // Version 1 is version 2 without combineMode.
  const bool v1 = c->version == 1 && c->size == offsetof(ncclMoeConfig_t, combineMode);
  if (!v1 && (c->version != NCCL_MOE_CONFIG_VERSION || c->size != sizeof(ncclMoeConfig_t)))
    return bad("version/size mismatch: got version " + std::to_string(c->version) + ", size " +
               std::to_string(c->size) + "; this library takes version 1 (size " +
               std::to_string(offsetof(ncclMoeConfig_t, combineMode)) + ") or " +
               std::to_string(NCCL_MOE_CONFIG_VERSION) + " (size " + std::to_string(sizeof(ncclMoeConfig_t)) +
               ")");
  if (!is_set(c->numExperts)) return bad("numExperts is required");
  if (!is_set(c->numTopk)) return bad("numTopk is required");
  if (!is_set(c->hidden)) return bad("hidden is required");
  if (!is_set(c->maxTokensPerRank)) return bad("maxTokensPerRank is required");
  rc->experts = c->numExperts;
  rc->topk = c->numTopk;
  rc->hidden = c->hidden;
  rc->max_tokens = c->maxTokensPerRank;
  rc->dispatch_type = is_set(c->dispatchType) ? c->dispatchType : ncclBfloat16;
  rc->combine_type = is_set(c->combineType) ? c->combineType : ncclBfloat16;
  rc->scale_block = is_set(c->scaleBlock) ? c->scaleBlock : 128;
  rc->alignment = is_set(c->expertAlignment) ? c->expertAlignment : 1;
  rc->max_private = is_set(c->maxPrivateTokens) ? c->maxPrivateTokens : 128;
  rc->backend = is_set(c->backend) ? c->backend : ncclMoeBackendAuto;
  rc->timeout_ms = is_set(c->timeoutMs) ? c->timeoutMs : static_cast<int32_t>(params.timeout_ms);
  rc->combine_mode = !v1 && is_set(c->combineMode) ? c->combineMode : ncclMoeCombinePerPair;
  if (rc->experts < nranks || rc->experts > (1 << 20))
    return bad("numExperts " + std::to_string(rc->experts) + " must be in [nranks=" + std::to_string(nranks) +
               ", 1048576]");
  if (rc->topk < 1 || rc->topk > kMaxTopk)
    return bad("numTopk " + std::to_string(rc->topk) + " must be in [1, 16]");
  if (rc->hidden < 16 || rc->hidden % 16 != 0 || rc->hidden > 65536)
    return bad("hidden " + std::to_string(rc->hidden) + " must be a multiple of 16 in [16, 65536]");
  if (rc->max_tokens < 1 || rc->max_tokens > (1 << 20))
    return bad("maxTokensPerRank " + std::to_string(rc->max_tokens) + " must be in [1, 1048576]");
  if (rc->dispatch_type != ncclBfloat16 && rc->dispatch_type != ncclFloat8e4m3)
    return bad("dispatchType " + std::to_string(rc->dispatch_type) +
               " unsupported (ncclBfloat16 or ncclFloat8e4m3)");
  if (rc->combine_type != ncclBfloat16)
    return bad("combineType " + std::to_string(rc->combine_type) + " unsupported (ncclBfloat16)");
  if (rc->dispatch_type == ncclFloat8e4m3 && (rc->scale_block < 1 || rc->hidden % rc->scale_block != 0))
    return bad("hidden " + std::to_string(rc->hidden) + " is not a multiple of scaleBlock " +
               std::to_string(rc->scale_block));
  if (rc->alignment < 1 || rc->alignment > 4096)
    return bad("expertAlignment " + std::to_string(rc->alignment) + " must be in [1, 4096]");
  if (rc->max_private < 0) return bad("maxPrivateTokens must be >= 0");
  if (rc->backend < ncclMoeBackendAuto || rc->backend > ncclMoeBackendHost)
    return bad("backend " + std::to_string(rc->backend) + " unknown");
  if (rc->timeout_ms < 1) return bad("timeoutMs must be > 0");
  if (rc->combine_mode != ncclMoeCombinePerPair && rc->combine_mode != ncclMoeCombinePerRank)
    return bad("combineMode " + std::to_string(rc->combine_mode) +
               " unknown (ncclMoeCombinePerPair or ncclMoeCombinePerRank)");
  // Auto: CUDA when the caller's current device is a GPU (and this build has the CUDA backend).
  // (The host backend never touches CUDA.)
  const Status probe = rc->backend == ncclMoeBackendHost ? Status() : cuda_backend_probe();
  const bool cuda = rc->backend != ncclMoeBackendHost && probe.ok();
  if (rc->backend == ncclMoeBackendAuto) rc->backend = cuda ? ncclMoeBackendCuda : ncclMoeBackendHost;
  if (rc->backend == ncclMoeBackendCuda && !cuda)
    return Status::invalid_usage("backend ncclMoeBackendCuda requested but " + probe.message() +
                                 " (use Host or Auto)");
  if (rc->backend == ncclMoeBackendCuda && rc->combine_mode == ncclMoeCombinePerRank)
    return Status::invalid_usage(
        "combineMode ncclMoeCombinePerRank is not available on the CUDA backend yet (host backend only)");
  return Status::kOk;
}

// Names the first field on which two resolved configs differ.
const char* config_diff(const ResolvedConfig& a, const ResolvedConfig& b) {
  if (a.experts != b.experts) return "numExperts";
  if (a.topk != b.topk) return "numTopk";
  if (a.hidden != b.hidden) return "hidden";
  if (a.max_tokens != b.max_tokens) return "maxTokensPerRank";
  if (a.dispatch_type != b.dispatch_type) return "dispatchType";
  if (a.combine_type != b.combine_type) return "combineType";
  if (a.dispatch_type == ncclFloat8e4m3 && a.scale_block != b.scale_block) return "scaleBlock";
  if (a.alignment != b.alignment) return "expertAlignment";
  if (a.max_private != b.max_private) return "maxPrivateTokens";
  if (a.combine_mode != b.combine_mode) return "combineMode";
  if (a.backend != b.backend) return "backend (as resolved: Auto picks CUDA only where a GPU is current)";
  return nullptr;
}

// Waiting callers spin this long, then sleep on the proxy's futex word (woken on every event).
constexpr auto kCallerSpin = std::chrono::microseconds(50);

void* host_block_alloc(size_t bytes) {
  void* p = std::aligned_alloc(4096, bytes);
  if (p != nullptr) std::memset(p, 0, bytes);
  return p;
}

}  // namespace

Status config_agree(int nranks, int rank, ncclMoeAllGather_t fn, void* ctx, const ncclMoeConfig_t* cfg,
                    const Params& params, ResolvedConfig* out) {
  if (nranks < 1 || nranks > kMaxRanks || rank < 0 || rank >= nranks || fn == nullptr)
    return Status::invalid_argument("invalid arguments: nranks " + std::to_string(nranks) + ", rank " +
                                    std::to_string(rank) +
                                    (fn == nullptr ? ", allgather function NULL" : "") +
                                    " (need 1 <= nranks <= 4096, 0 <= rank < nranks)");
  // Local validation; every rank still joins the exchange so that all fail together.
  ResolvedConfig rc{};
  const Status local = resolve(cfg, nranks, params, &rc);
  const CfgBlob mine{kBlobMagic, nranks, rc};
  std::vector<CfgBlob> all;
  MF_CHECK(agree(fn, ctx, nranks,
                 {"init", "agreeing on the config", "rejected its config", Status::kInvalidUsage}, local,
                 mine, &all));
  for (int r = 0; r < nranks; ++r) {
    const CfgBlob& b = all[r];
    if (b.magic != kBlobMagic || b.nranks != nranks)
      return Status::invalid_usage("init: rank " + std::to_string(r) +
                                   " sent a malformed bootstrap record (nranks " + std::to_string(b.nranks) +
                                   ")");
    if (const char* f = config_diff(rc, b.rc))
      return Status::invalid_usage(std::string("init: config mismatch: ") + f + " differs between rank " +
                                   std::to_string(rank) + " and rank " + std::to_string(r) +
                                   " (configs must match on all ranks)");
  }
  *out = rc;
  return Status::kOk;
}

Status Comm::create(int nranks, int rank, ncclMoeAllGather_t fn, void* ctx, const ResolvedConfig& rc,
                    const Params& params, std::unique_ptr<Comm>* out, const ProtocolClient* client) {
  std::unique_ptr<Comm> c(new Comm());
  c->params_ = params;
  MF_CHECK(c->setup(nranks, rank, fn, ctx, rc, client));
  *out = std::move(c);
  return Status::kOk;
}

Status Comm::setup(int nranks, int rank, ncclMoeAllGather_t fn, void* ctx, const ResolvedConfig& rc,
                   const ProtocolClient* client) {
  cfg_ = rc;
  R_ = nranks;
  me_ = rank;
  RailsAddr mine{};
  bool fp8 = rc.dispatch_type == ncclFloat8e4m3;
  Status s =
      layout_init(&l_, nranks, rank, rc.experts, rc.topk, rc.hidden, rc.max_tokens, fp8 ? 1 : 2, fp8,
                  rc.scale_block, rc.alignment, rc.max_private, rc.combine_mode == ncclMoeCombinePerRank);
  if (s.ok()) {
    void* (*alloc)(size_t) = client ? client->alloc : host_block_alloc;
    void (*release)(void*) = client ? client->free : std::free;
    recv_block_ = Block(static_cast<uint8_t*>(alloc(l_.recv_block_bytes)), release);
    send_block_ = Block(static_cast<uint8_t*>(alloc(l_.send_block_bytes)), release);
    if (!recv_block_ || !send_block_)
      s = Status::system_error("out of host memory for " +
                               std::to_string(l_.recv_block_bytes + l_.send_block_bytes) + " B of buffers");
  }
  RailChoice rails;
  if (s.ok()) s = open_rails(params_, client ? client->gpu : std::nullopt, &ep_, &rails);
  proxy_cpus_ = rails.proxy_cpus;
  proxy_cpus_why_ = rails.cpus_why;
  rails_why_ = rails.why;
  if (s.ok()) s = ep_->reg(recv_block_.get(), l_.recv_block_bytes, fabric::MrAccess::kRemoteWrite, &recv_mr_);
  if (s.ok()) s = ep_->reg(send_block_.get(), l_.send_block_bytes, fabric::MrAccess::kLocal, &send_mr_);
  if (s.ok()) {
    registrations_ = ep_->registrations();
    rails_addr(*ep_, recv_mr_, recv_block_.get(), &mine);
  }
  std::vector<RailsAddr> all;
  MF_CHECK(agree(fn, ctx, nranks,
                 {"init", "exchanging addresses", "could not set up its transport", Status::kSystemError}, s,
                 mine, &all));
  if (client != nullptr) peer_mask_ = client->peers, abort_word_ = client->abort_word;
  peers_.resize(nranks);
  for (int r = 0; r < nranks; ++r) {
    peers_[r].recv_base = all[r].recv_base;
    if (is_peer(r)) MF_CHECK(rails_add_peer(*ep_, all[r], r, &peers_[r].rails).prepend("init: "));
  }
  owner_.resize(rc.experts);
  for (int e = 0; e < rc.experts; ++e) owner_[e] = l_.owner(e);
  if (client != nullptr) {
    sh_ = client->shared;
  } else {
    arrived_store_.assign(static_cast<size_t>(kNumKinds) * nranks, 0);
    overflow_store_.assign(nranks, 0);
    granted_store_.assign(nranks, 0);
    plan_store_.assign(nranks, SendPlan{});
    ret_store_.assign(nranks, ReturnPlan{});
    sh_ = ProxyShared{arrived_store_.data(), overflow_store_.data(), granted_store_.data(),
                      plan_store_.data(),    ret_store_.data(),      nullptr};
  }
  grant_seq_of_ = std::vector<std::atomic<uint64_t>>(nranks);
  peer_stats_.assign(nranks, ncclMoePeerStats_t{});
  expert_pairs_.assign(rc.experts, 0);
  hdr_.resize(nranks);
  for (HeaderCopy& c : hdr_) c.counts.assign(l_.local_count(rank), 0);
  sent_tokens_.assign(nranks, 0);
  sent_pairs_.assign(nranks, 0);
  combine_base_.assign(nranks, 0);
  src_pair_start_.assign(nranks + 1, 0);
  src_record_start_.assign(nranks + 1, 0);
  idx_copy_.reserve(static_cast<size_t>(rc.max_tokens) * rc.topk);
  row_of_pair_.reserve(l_.capacity_rows);
  meta_copy_.reserve(static_cast<size_t>(nranks) * rc.max_tokens * (1 + 2 * rc.topk));
  MF_INFO(log::kInit,
          "moe comm rank %d/%d: E %d K %d H %d maxT %d %s, %zu MiB recv + %zu MiB send buffers "
          "over %s %s (%d rail(s): %s)",
          rank, nranks, rc.experts, rc.topk, rc.hidden, rc.max_tokens, fp8 ? "fp8" : "bf16",
          l_.recv_block_bytes >> 20, l_.send_block_bytes >> 20, ep_->nic().provider.c_str(),
          ep_->name().c_str(), ep_->nrails(), rails_why_.c_str());
  proxy_start();
  return Status::kOk;
}

Comm::~Comm() { abort(); }

const std::string& Comm::provider() const { return ep_->nic().provider; }

std::string Comm::rails() const {
  return ep_->name() + " (" + std::to_string(ep_->nrails()) + " rail(s): " + rails_why_ + ")";
}

void Comm::abort() {
  proxy_stop();
  if (ep_) {
    ep_->dereg(&recv_mr_);  // no-ops for what was never registered
    ep_->dereg(&send_mr_);
    ep_.reset();
  }
  recv_block_.reset();
  send_block_.reset();
}

Status Comm::destroy(bool idle) {
  Status result = Status::kOk;
  bool any_peer = false;
  for (int r = 0; r < R_; ++r) any_peer |= is_peer(r);
  if (async_error() == Status::kOk && idle && any_peer) {
    // Every peer has stopped writing into our buffers once its barrier write arrives. (The op
    // counter is the doorbells' when kernels drive the ops.)
    seq_ = std::max(seq_, cur_seq_.load());
    uint64_t seq = ++seq_;
    cur_seq_.store(seq);
    ring(WriteKind::kBarrier, seq);
    result = wait_arrivals(WriteKind::kBarrier, seq, "destroy");
    if (result == Status::kOk) result = wait_local_writes(static_cast<int>(WriteKind::kBarrier), "destroy");
  }
  abort();
  return result;
}

Status Comm::fail(Status::Code s, const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  last_error_ = buf;
  if (s != Status::kInvalidArgument && s != Status::kInvalidUsage) {
    std::lock_guard<std::mutex> g(err_mu_);
    int expected = 0;
    if (async_status_.compare_exchange_strong(expected, static_cast<int>(s))) async_text_ = buf;
  }
  MF_WARN("rank %d: %s", me_, buf);
  return Status(s, buf);
}

Status Comm::check_usable() {
  const Status::Code s = static_cast<Status::Code>(async_status_.load());
  if (s != Status::kOk) [[unlikely]] {
    std::lock_guard<std::mutex> g(err_mu_);
    last_error_ = async_text_;
    return Status(s, async_text_);
  }
  return Status::kOk;
}

void Comm::sleep_for_event(uint32_t seen) {
  timespec ts{0, 1000000};  // 1 ms: deadlines stay checked even without events
  waiters_.fetch_add(1, std::memory_order_seq_cst);
  if (wake_seq_.load(std::memory_order_seq_cst) == seen)
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&wake_seq_), FUTEX_WAIT_PRIVATE, seen, &ts, nullptr, 0);
  waiters_.fetch_sub(1, std::memory_order_seq_cst);
}

Status Comm::wait_arrivals(WriteKind kind, uint64_t seq, const char* phase, const std::vector<bool>* only) {
  const auto start = Clock::now();
  auto deadline = start + std::chrono::milliseconds(cfg_.timeout_ms);
  for (uint64_t spin = 0;; ++spin) {
    const uint32_t seen = wake_seq_.load(std::memory_order_acquire);
    bool all = true;
    for (int s = 0; s < R_ && all; ++s)
      if (is_peer(s) && (only == nullptr || (*only)[s]) &&
          arrived(kind, s).load(std::memory_order_acquire) < seq)
        all = false;
    if (all) return Status::kOk;
    MF_CHECK(check_usable());
    if ((spin & 255) == 255 && Clock::now() > deadline) {
      std::string missing;
      int n = 0;
      for (int s = 0; s < R_; ++s)
        if (is_peer(s) && (only == nullptr || (*only)[s]) && arrived(kind, s).load() < seq) {
          if (n++ < 8) missing += (missing.empty() ? "" : ", ") + std::to_string(s);
        }
      if (n > 8) missing += " and " + std::to_string(n - 8) + " more";
      return fail(Status::kRemoteError,
                  "%s: timed out after %d ms waiting for %s from rank%s %s (peer stalled or lost)", phase,
                  cfg_.timeout_ms, kind_name(kind), n > 1 ? "s" : "", missing.c_str());
    }
    if (Clock::now() - start > kCallerSpin) sleep_for_event(seen);
  }
}

Status Comm::wait_local_writes(int cls, const char* phase) {
  const auto start = Clock::now();
  auto deadline = start + std::chrono::milliseconds(cfg_.timeout_ms);
  // Writes posted by a command exist only once the proxy has executed it.
  const uint64_t ticket = last_ticket_[cls];
  for (uint64_t spin = 0;; ++spin) {
    const uint32_t seen = wake_seq_.load(std::memory_order_acquire);
    if (cmds_done_.load(std::memory_order_acquire) >= ticket &&
        outstanding_[cls].load(std::memory_order_acquire) == 0)
      return Status::kOk;
    MF_CHECK(check_usable());
    if ((spin & 255) == 255 && Clock::now() > deadline)
      return fail(Status::kRemoteError, "%s: %d local writes still incomplete after %d ms", phase,
                  outstanding_[cls].load(), cfg_.timeout_ms);
    if (Clock::now() - start > kCallerSpin) sleep_for_event(seen);
  }
}

void Comm::peer_stats(ncclMoePeerStats_t* out) const {
  for (int r = 0; r < R_; ++r) {
    out[r] = peer_stats_[r];
    out[r].grantsSent = r != me_ && seq_ != 0 && granted_in(r, seq_);
  }
}

void Comm::stats(ncclMoeStats_t* s) const {
  s->ops = ops_;
  s->dispatchWritesMaxPeer = last_dispatch_writes_;
  s->combineWritesMaxPeer = last_combine_writes_;
  uint32_t grants = 0;
  for (int r = 0; r < R_; ++r) grants += seq_ != 0 && granted_in(r, seq_);
  s->grantsSent = grants;
  s->peers = static_cast<uint32_t>(R_ - 1);
  s->dispatchBytesSent = dispatch_bytes_;
  s->combineBytesSent = combine_bytes_;
  s->proxyPostUs = static_cast<double>(post_ns_.load()) / 1000.0;
  s->combinePostUs = static_cast<double>(combine_post_ns_.load()) / 1000.0;
  s->registrations = ep_ ? ep_->registrations() : registrations_;
}

}  // namespace moefabric::moe
