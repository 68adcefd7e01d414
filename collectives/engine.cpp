// Backend choice and the host backend's Engine adapter (the host Comm keeps its own interface).
#include "collectives/engine.h"

#include <cstdarg>
#include <cstdint>
#include <cstdio>

#include "collectives/comm.h"
#include "common/params.h"

namespace moefabric::moe {
namespace {

class HostEngine final : public Engine {
 public:
  explicit HostEngine(std::unique_ptr<Comm> c) : c_(std::move(c)) {}
  ~HostEngine() override = default;

  void abort() override { c_->abort(); }
  bool on_device() const override { return false; }
  const ResolvedConfig& config() const override { return c_->config(); }
  size_t recv_capacity() const override { return c_->layout().capacity_rows; }
  int first_expert() const override { return c_->layout().first_expert(c_->layout().rank); }
  int local_experts() const override { return c_->layout().local_count(c_->layout().rank); }
  int pending_tokens() const override { return c_->pending_tokens(); }
  int64_t pending_rows() const override { return c_->pending_rows(); }
  Status async_error() override { return c_->async_error(); }
  const std::string& last_error() const override { return c_->last_error(); }
  void stats(ncclMoeStats_t* s) const override { c_->stats(s); }
  int nranks() const override { return c_->layout().nranks; }
  Status peer_stats(ncclMoePeerStats_t* out) override {
    c_->peer_stats(out);
    return Status::kOk;
  }
  void memory(size_t* device_bytes, size_t* host_bytes) const override {
    *device_bytes = 0;
    *host_bytes = c_->host_bytes();
  }
  Status record_error(Status::Code s, const char* text) override { return c_->fail(s, "%s", text); }

 protected:
  Status check_usable(bool) override { return c_->check_usable(); }
  Status move_dispatch_send(const DispatchCall& a) override {
    return c_->dispatch_send(a.x, a.scales, a.idx, a.w, *a.ntokens, a.recv_x, a.recv_scales, a.recv_counts);
  }
  Status move_dispatch_recv(cudaStream_t) override { return c_->dispatch_recv(); }
  Status move_combine_send(const void* expert_y, cudaStream_t) override { return c_->combine_send(expert_y); }
  Status move_combine_recv(void* y, cudaStream_t) override { return c_->combine_recv(y); }
  Status move_destroy(bool idle) override { return c_->destroy(idle); }

 private:
  std::unique_ptr<Comm> c_;
};

bool aligned(const void* p, size_t a) { return (reinterpret_cast<uintptr_t>(p) % a) == 0; }

}  // namespace

const char* op_phase_text(OpPhase p) {
  switch (p) {
    case OpPhase::kIdle:
      return "no op in flight";
    case OpPhase::kDispatchSent:
      return "a dispatch send in flight";
    case OpPhase::kDispatched:
      return "a dispatch waiting for its combine";
    case OpPhase::kCombineSent:
      return "a combine send in flight";
  }
  return "?";
}

Status Engine::check_dispatch(const DispatchCall& c) {
  const ResolvedConfig& cfg = config();
  const bool fp8 = cfg.dispatch_type == ncclFloat8e4m3;
  if (c.ntokens == nullptr) return fail(Status::kInvalidArgument, "dispatch: numTokens is NULL");
  if (c.recv_x == nullptr || c.recv_counts == nullptr)
    return fail(Status::kInvalidArgument, "dispatch: %s is NULL", c.recv_x ? "recvExpertCounts" : "recvX");
  if (fp8 && c.recv_scales == nullptr)
    return fail(Status::kInvalidArgument, "dispatch: recvScales is NULL with fp8 dispatch");
  if (!fp8 && c.scales != nullptr)
    return fail(Status::kInvalidArgument, "dispatch: xScales must be NULL for bf16 dispatch");
  if ((c.x && !aligned(c.x, 16)) || !aligned(c.recv_x, 16))
    return fail(Status::kInvalidArgument, "dispatch: %s is not 16-byte aligned",
                (c.x && !aligned(c.x, 16)) ? "x" : "recvX");
  if ((c.scales && !aligned(c.scales, 4)) || (c.recv_scales && !aligned(c.recv_scales, 4)) ||
      (c.idx && !aligned(c.idx, 4)) || (c.w && !aligned(c.w, 4)) || !aligned(c.recv_counts, 4) ||
      !aligned(c.ntokens, 4))
    return fail(Status::kInvalidArgument,
                "dispatch: a scale, index, weight, count or numTokens pointer is not 4-byte aligned");
  if (on_device()) return Status::kOk;  // T and topkIdx are on the GPU: the kernels check them
  const int T = *c.ntokens;
  const int K = cfg.topk, E = cfg.experts;
  if (T < 0 || T > cfg.max_tokens)
    return fail(Status::kInvalidArgument, "dispatch: numTokens %d outside [0, maxTokensPerRank=%d]", T,
                cfg.max_tokens);
  if (T > 0) {
    if (c.x == nullptr) return fail(Status::kInvalidArgument, "dispatch: x is NULL");
    if (c.idx == nullptr) return fail(Status::kInvalidArgument, "dispatch: topkIdx is NULL");
    if (c.w == nullptr) return fail(Status::kInvalidArgument, "dispatch: topkWeights is NULL");
    if (fp8 && c.scales == nullptr)
      return fail(Status::kInvalidArgument, "dispatch: xScales is NULL with fp8 dispatch");
  }
  for (int64_t i = 0; i < static_cast<int64_t>(T) * K; ++i)
    if (c.idx[i] < -1 || c.idx[i] >= E)
      return fail(Status::kInvalidArgument,
                  "dispatch: topkIdx[%lld][%lld] = %d is not an expert (numExperts %d; -1 = empty)",
                  static_cast<long long>(i / K), static_cast<long long>(i % K), c.idx[i], E);
  return Status::kOk;
}

Status Engine::dispatch_send(const void* x, const float* scales, const int32_t* idx, const float* w,
                             const int32_t* ntokens, void* recv_x, float* recv_scales, int32_t* recv_counts,
                             cudaStream_t stream) {
  MF_CHECK(check_usable(true));
  if (phase_ != OpPhase::kIdle)
    return fail(Status::kInvalidUsage, "dispatch: the comm has %s; one dispatch->combine in flight per comm",
                op_phase_text(phase_));
  const DispatchCall c{x, scales, idx, w, ntokens, recv_x, recv_scales, recv_counts, stream};
  MF_CHECK(check_dispatch(c));
  MF_CHECK(move_dispatch_send(c));
  phase_ = OpPhase::kDispatchSent;
  return Status::kOk;
}

Status Engine::dispatch_recv(cudaStream_t stream) {
  MF_CHECK(check_usable(false));
  if (phase_ != OpPhase::kDispatchSent)
    return fail(Status::kInvalidUsage, "dispatch recv: no dispatch send in flight (%s)",
                op_phase_text(phase_));
  MF_CHECK(move_dispatch_recv(stream));
  phase_ = OpPhase::kDispatched;
  return Status::kOk;
}

Status Engine::combine_send(const void* expert_y, cudaStream_t stream) {
  MF_CHECK(check_usable(false));
  if (phase_ != OpPhase::kDispatched)
    return fail(Status::kInvalidUsage, "combine: no completed dispatch to combine (%s)",
                op_phase_text(phase_));
  if (expert_y == nullptr && pending_rows() > 0)
    return fail(Status::kInvalidArgument, "combine: expertY is NULL");
  if (expert_y != nullptr && !aligned(expert_y, 16))
    return fail(Status::kInvalidArgument, "combine: expertY is not 16-byte aligned");
  MF_CHECK(move_combine_send(expert_y, stream));
  phase_ = OpPhase::kCombineSent;
  return Status::kOk;
}

Status Engine::combine_recv(void* y, cudaStream_t stream) {
  MF_CHECK(check_usable(false));
  if (phase_ != OpPhase::kCombineSent)
    return fail(Status::kInvalidUsage, "combine recv: no combine send in flight (%s)", op_phase_text(phase_));
  // y is needed whenever this rank has tokens; on the GPU T is unknown here, so always.
  if (y != nullptr ? !aligned(y, 16) : pending_tokens() != 0)
    return fail(Status::kInvalidArgument, "combine: y is %s", y ? "not 16-byte aligned" : "NULL");
  MF_CHECK(move_combine_recv(y, stream));
  phase_ = OpPhase::kIdle;
  return Status::kOk;
}

Status Engine::destroy() { return move_destroy(phase_ == OpPhase::kIdle); }

Status Engine::fail(Status::Code s, const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return record_error(s, buf);
}

Status engine_create(int nranks, int rank, ncclMoeAllGather_t fn, void* ctx, const ncclMoeConfig_t* cfg,
                     std::unique_ptr<Engine>* out) {
  const Params params = Params::load();
  ResolvedConfig rc{};
  MF_CHECK(config_agree(nranks, rank, fn, ctx, cfg, params, &rc));
  if (rc.backend == ncclMoeBackendCuda) return cuda_engine_create(nranks, rank, fn, ctx, rc, params, out);
  std::unique_ptr<Comm> c;
  MF_CHECK(Comm::create(nranks, rank, fn, ctx, rc, params, &c));
  *out = std::make_unique<HostEngine>(std::move(c));
  return Status::kOk;
}

}  // namespace moefabric::moe
