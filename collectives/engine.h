// What the C API drives: one backend's implementation of an ncclMoe comm. The host backend
// (comm.h, the RDMA protocol on CPU threads) and the CUDA backend (cuda_backend.cpp, kernels/)
// both implement it; engine_create resolves the config on every rank and picks one.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "include/moefabric/nccl_moe.h"
#include "common/status.h"

namespace moefabric {
struct Params;
}

namespace moefabric::moe {

// Resolved, validated configuration (what ranks compare at init). `backend` is never Auto.
struct ResolvedConfig {
  int32_t experts, topk, hidden, max_tokens, dispatch_type, combine_type, scale_block, alignment,
      max_private, backend, timeout_ms;
};

class Engine {
 public:
  virtual ~Engine() = default;

  // C API bodies. `stream` is NULL for the host backend (api.cpp checks it).
  virtual Status dispatch_send(const void* x, const float* scales, const int32_t* idx,
                               const float* w, const int32_t* ntokens, void* recv_x,
                               float* recv_scales, int32_t* recv_counts, cudaStream_t stream) = 0;
  virtual Status dispatch_recv(cudaStream_t stream) = 0;
  virtual Status combine_send(const void* expert_y, cudaStream_t stream) = 0;
  virtual Status combine_recv(void* y, cudaStream_t stream) = 0;
  virtual Status destroy() = 0;  // collective, then local teardown
  virtual void abort() = 0;      // local teardown

  virtual bool on_device() const = 0;  // pointers are device memory, calls are stream-ordered
  virtual size_t recv_capacity() const = 0;
  virtual int first_expert() const = 0;
  virtual int local_experts() const = 0;
  // Host-side knowledge of the op in flight: T when the host knows it (host backend), else -1.
  virtual int pending_tokens() const = 0;
  virtual Status async_error() = 0;
  virtual const std::string& last_error() const = 0;
  virtual void stats(ncclMoeStats_t* s) const = 0;
  // Records an error (last error; sticky async error unless it is a usage error); returns `s`.
  virtual Status record_error(Status s, const char* text) = 0;
  Status fail(Status s, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
};

// Collective over `fn`: resolves the config (Auto -> CUDA where a GPU is current), checks it
// matches on all ranks, and creates the backend's comm.
Status engine_create(int nranks, int rank, ncclMoeAllGather_t fn, void* ctx,
                     const ncclMoeConfig_t* cfg, std::unique_ptr<Engine>* out,
                     std::string* error);

// True when the CUDA backend can run here: built with CUDA and the calling thread's current
// device is a GPU. Otherwise false with *why ("this build has no CUDA backend", "no GPU: ...").
bool cuda_backend_probe(std::string* why);

// The CUDA backend's comm (cuda_backend.cpp; a stub that fails in builds without CUDA).
Status cuda_engine_create(int nranks, int rank, ncclMoeAllGather_t fn, void* ctx,
                          const ResolvedConfig& rc, const Params& params,
                          std::unique_ptr<Engine>* out, std::string* error);

}  // namespace moefabric::moe
