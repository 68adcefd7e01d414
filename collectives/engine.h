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
  int32_t experts, topk, hidden, max_tokens, dispatch_type, combine_type, scale_block, alignment, max_private,
      backend, timeout_ms, combine_mode;
};

// Where a comm is in its dispatch -> combine cycle (one op in flight per comm).
enum class OpPhase : uint8_t { kIdle, kDispatchSent, kDispatched, kCombineSent };
const char* op_phase_text(OpPhase p);

// The pointers of one dispatch call, as the caller passed them.
struct DispatchCall {
  const void* x;
  const float* scales;
  const int32_t* idx;
  const float* w;
  const int32_t* ntokens;
  void* recv_x;
  float* recv_scales;
  int32_t* recv_counts;
  cudaStream_t stream;
};

// One comm. The Engine owns what both backends share: the op state machine, the argument checks
// (one set of rules and messages; those that read the caller's memory only where it is host
// memory, the kernels check the rest on the device) and error recording. A backend only moves
// data (move_*), after the checks passed, and the phase advances when it succeeds.
class Engine {
 public:
  virtual ~Engine() = default;

  // C API bodies. `stream` is NULL for the host backend (api.cpp checks it).
  Status dispatch_send(const void* x, const float* scales, const int32_t* idx, const float* w,
                       const int32_t* ntokens, void* recv_x, float* recv_scales, int32_t* recv_counts,
                       cudaStream_t stream);
  Status dispatch_recv(cudaStream_t stream);
  Status combine_send(const void* expert_y, cudaStream_t stream);
  Status combine_recv(void* y, cudaStream_t stream);
  Status destroy();          // collective (when idle and healthy), then local teardown
  virtual void abort() = 0;  // local teardown
  OpPhase phase() const { return phase_; }

  virtual bool on_device() const = 0;  // pointers are device memory, calls are stream-ordered
  virtual const ResolvedConfig& config() const = 0;
  virtual size_t recv_capacity() const = 0;
  virtual int first_expert() const = 0;
  virtual int local_experts() const = 0;
  // Host-side knowledge of the op in flight: T when the host knows it (host backend), else -1.
  virtual int pending_tokens() const = 0;
  // Expert rows the pending combine sends (host backend), else -1.
  virtual int64_t pending_rows() const = 0;
  virtual Status async_error() = 0;
  virtual const std::string& last_error() const = 0;
  virtual void stats(ncclMoeStats_t* s) const = 0;
  virtual int nranks() const = 0;
  // [nranks()] entries; kInvalidUsage (with the error recorded) where the backend cannot count.
  virtual Status peer_stats(ncclMoePeerStats_t* out) = 0;
  virtual void memory(size_t* device_bytes, size_t* host_bytes) const = 0;
  // Records an error (last error; sticky async error unless it is a usage error) and returns it.
  virtual Status record_error(Status::Code s, const char* text) = 0;
  // record_error with a printf-style text: `return fail(Status::kInvalidArgument, "x is NULL");`
  Status fail(Status::Code s, const char* fmt, ...) __attribute__((format(printf, 3, 4)));

 protected:
  // An earlier failure that makes the comm unusable (aborted, async error); `starts_op`: the
  // call begins a new op (a reported input error blocks only those).
  virtual Status check_usable(bool starts_op) = 0;
  virtual Status move_dispatch_send(const DispatchCall& c) = 0;
  virtual Status move_dispatch_recv(cudaStream_t stream) = 0;
  virtual Status move_combine_send(const void* expert_y, cudaStream_t stream) = 0;
  virtual Status move_combine_recv(void* y, cudaStream_t stream) = 0;
  virtual Status move_destroy(bool idle) = 0;

 private:
  Status check_dispatch(const DispatchCall& c);
  OpPhase phase_ = OpPhase::kIdle;
};

// Collective over `fn`: resolves the config (Auto -> CUDA where a GPU is current), checks it
// matches on all ranks, and creates the backend's comm.
Status engine_create(int nranks, int rank, ncclMoeAllGather_t fn, void* ctx, const ncclMoeConfig_t* cfg,
                     std::unique_ptr<Engine>* out);

// OK when the CUDA backend can run here: built with CUDA and the calling thread's current
// device is a GPU. Otherwise an invalid-usage status saying why ("this build has no CUDA
// backend", "no GPU: ...").
Status cuda_backend_probe();

// The CUDA backend's comm (cuda_backend.cpp; a stub that fails in builds without CUDA).
Status cuda_engine_create(int nranks, int rank, ncclMoeAllGather_t fn, void* ctx, const ResolvedConfig& rc,
                          const Params& params, std::unique_ptr<Engine>* out);

}  // namespace moefabric::moe
