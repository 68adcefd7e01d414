// Backend choice and the host backend's Engine adapter (the host Comm keeps its own interface).
#include "collectives/engine.h"

#include <cstdarg>
#include <cstdio>

#include "collectives/comm.h"
#include "common/params.h"

namespace moefabric::moe {
namespace {

class HostEngine final : public Engine {
 public:
  explicit HostEngine(std::unique_ptr<Comm> c) : c_(std::move(c)) {}
  ~HostEngine() override = default;

  Status dispatch_send(const void* x, const float* scales, const int32_t* idx, const float* w,
                       const int32_t* ntokens, void* recv_x, float* recv_scales,
                       int32_t* recv_counts, cudaStream_t) override {
    return c_->dispatch_send(x, scales, idx, w, ntokens, recv_x, recv_scales, recv_counts);
  }
  Status dispatch_recv(cudaStream_t) override { return c_->dispatch_recv(); }
  Status combine_send(const void* expert_y, cudaStream_t) override {
    return c_->combine_send(expert_y);
  }
  Status combine_recv(void* y, cudaStream_t) override { return c_->combine_recv(y); }
  Status destroy() override { return c_->destroy(); }
  void abort() override { c_->abort(); }
  bool on_device() const override { return false; }
  size_t recv_capacity() const override { return c_->layout().capacity_rows; }
  int first_expert() const override { return c_->layout().first_expert(c_->layout().rank); }
  int local_experts() const override { return c_->layout().local_count(c_->layout().rank); }
  int pending_tokens() const override { return c_->pending_tokens(); }
  Status async_error() override { return c_->async_error(); }
  const std::string& last_error() const override { return c_->last_error(); }
  void stats(ncclMoeStats_t* s) const override { c_->stats(s); }
  Status record_error(Status s, const char* text) override { return c_->fail(s, "%s", text); }

 private:
  std::unique_ptr<Comm> c_;
};

}  // namespace

Status Engine::fail(Status s, const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return record_error(s, buf);
}

Status engine_create(int nranks, int rank, ncclMoeAllGather_t fn, void* ctx,
                     const ncclMoeConfig_t* cfg, std::unique_ptr<Engine>* out,
                     std::string* error) {
  const Params params = Params::load();
  ResolvedConfig rc{};
  MF_CHECK(config_agree(nranks, rank, fn, ctx, cfg, params, &rc, error));
  if (rc.backend == ncclMoeBackendCuda)
    return cuda_engine_create(nranks, rank, fn, ctx, rc, params, out, error);
  std::unique_ptr<Comm> c;
  MF_CHECK(Comm::create(nranks, rank, fn, ctx, rc, params, &c, error));
  *out = std::make_unique<HostEngine>(std::move(c));
  return Status::kOk;
}

}  // namespace moefabric::moe
