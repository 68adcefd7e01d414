// The exported ncclMoe C API: argument checks that need no comm, the exception guard, and thin
// calls into the backend's moe::Engine. Nothing here knows the protocol.
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>

#include "collectives/bootstrap.h"
#include "collectives/engine.h"
#include "include/moefabric/nccl_moe.h"

using moefabric::Status;
using moefabric::moe::Engine;

namespace {

thread_local std::string g_init_error;

// Live comms by handle. A handle is a token drawn from a counter that never repeats, not a
// pointer the library dereferences, so a destroyed or aborted handle, a second destroy or a stray
// value finds no entry and gets ncclInvalidArgument instead of touching freed memory. A call holds
// its comm (shared_ptr) for its duration. The table is never destroyed, so that calls made while
// the process exits stay safe.
struct Registry {
  std::mutex mu;
  std::unordered_map<uintptr_t, std::shared_ptr<Engine>> live;
  uintptr_t next = 0;
};
Registry& registry() {
  static Registry* r = new Registry;
  return *r;
}
constexpr uintptr_t kHandleBase = 0x4d6f450000000000ull;  // "MoE": far from heap addresses

ncclMoeComm_t registry_add(std::unique_ptr<Engine> e) {
  Registry& r = registry();
  std::lock_guard<std::mutex> g(r.mu);
  const uintptr_t h = kHandleBase + (++r.next << 4);
  r.live.emplace(h, std::shared_ptr<Engine>(std::move(e)));
  return reinterpret_cast<ncclMoeComm_t>(h);
}
std::shared_ptr<Engine> registry_find(ncclMoeComm_t moe) {
  Registry& r = registry();
  std::lock_guard<std::mutex> g(r.mu);
  auto it = r.live.find(reinterpret_cast<uintptr_t>(moe));
  return it == r.live.end() ? nullptr : it->second;
}
std::shared_ptr<Engine> registry_remove(ncclMoeComm_t moe) {
  Registry& r = registry();
  std::lock_guard<std::mutex> g(r.mu);
  auto it = r.live.find(reinterpret_cast<uintptr_t>(moe));
  if (it == r.live.end()) return nullptr;
  std::shared_ptr<Engine> e = std::move(it->second);
  r.live.erase(it);
  return e;
}
ncclResult_t not_live(ncclMoeComm_t moe) {
  g_init_error = moe == nullptr ? "ncclMoeComm_t is NULL"
                                : "ncclMoeComm_t is not a live comm (destroyed, aborted, or never "
                                  "returned by ncclMoeCommInit*)";
  return ncclInvalidArgument;
}

ncclResult_t to_nccl(const Status& s) { return static_cast<ncclResult_t>(moefabric::status_to_nccl(s)); }

template <class F>
ncclResult_t run_guarded(Engine& c, F&& f) {
  try {
    return to_nccl(f(c));
  } catch (const std::bad_alloc&) {
    (void)c.fail(Status::kSystemError, "out of host memory");
    return ncclSystemError;
  } catch (const std::exception& e) {
    (void)c.fail(Status::kInternalError, "internal error: %s", e.what());
    return ncclInternalError;
  }
}

template <class F>
ncclResult_t guarded(ncclMoeComm_t moe, F&& f) {
  std::shared_ptr<Engine> c = registry_find(moe);
  if (!c) return not_live(moe);
  return run_guarded(*c, f);
}

ncclResult_t check_host_stream(ncclMoeComm_t moe, cudaStream_t stream, const char* fn) {
  if (stream == nullptr) return ncclSuccess;
  std::shared_ptr<Engine> c = registry_find(moe);
  if (c && !c->on_device()) {
    (void)c->fail(Status::kInvalidArgument,
                  "%s: the host backend takes stream NULL (calls complete on return)", fn);
    return ncclInvalidArgument;
  }
  return ncclSuccess;
}

}  // namespace

extern "C" {

NCCL_MOE_API ncclResult_t ncclMoeGetVersion(int* version) {
  if (version == nullptr) {
    g_init_error = "ncclMoeGetVersion: version is NULL";
    return ncclInvalidArgument;
  }
  *version = NCCL_MOE_VERSION_CODE;
  return ncclSuccess;
}

NCCL_MOE_API ncclResult_t ncclMoeCommInitAllGather(ncclMoeComm_t* moe, int nranks, int rank,
                                                   ncclMoeAllGather_t fn, void* ctx,
                                                   const ncclMoeConfig_t* cfg) {
  if (moe == nullptr) {
    g_init_error = "ncclMoeCommInitAllGather: moe is NULL";
    return ncclInvalidArgument;
  }
  *moe = nullptr;
  try {
    std::unique_ptr<Engine> c;
    Status s = moefabric::moe::engine_create(nranks, rank, fn, ctx, cfg, &c);
    if (!s.ok()) {
      g_init_error = s.message();
      moefabric::log::write(moefabric::log::kWarn, moefabric::log::kInit, __FILE__, __LINE__, "rank %d: %s",
                            rank, g_init_error.c_str());
      return to_nccl(s);
    }
    *moe = registry_add(std::move(c));
    g_init_error.clear();
    return ncclSuccess;
  } catch (const std::bad_alloc&) {
    g_init_error = "ncclMoeCommInitAllGather: out of host memory";
    return ncclSystemError;
  } catch (const std::exception& e) {
    g_init_error = std::string("ncclMoeCommInitAllGather: ") + e.what();
    return ncclInternalError;
  }
}

NCCL_MOE_API ncclResult_t ncclMoeCommInit(ncclMoeComm_t* moe, ncclComm_t comm, const ncclMoeConfig_t* cfg) {
  if (moe == nullptr || comm == nullptr) {
    g_init_error = "ncclMoeCommInit: moe or comm is NULL";
    return ncclInvalidArgument;
  }
  moefabric::moe::NcclBootstrap boot;
  if (Status s = moefabric::moe::nccl_bootstrap_open(comm, &boot); !s.ok()) {
    g_init_error = s.prepend("ncclMoeCommInit: ").message();
    return to_nccl(s);
  }
  ncclResult_t r = ncclMoeCommInitAllGather(moe, boot.nranks, boot.rank,
                                            moefabric::moe::nccl_bootstrap_allgather, &boot, cfg);
  moefabric::moe::nccl_bootstrap_close(&boot);
  return r;
}

NCCL_MOE_API ncclResult_t ncclMoeCommDestroy(ncclMoeComm_t moe) {
  std::shared_ptr<Engine> c = registry_remove(moe);
  if (!c) return not_live(moe);
  ncclResult_t r = run_guarded(*c, [](Engine& e) { return e.destroy(); });
  if (r != ncclSuccess) g_init_error = "ncclMoeCommDestroy: " + c->last_error();
  return r;
}

NCCL_MOE_API ncclResult_t ncclMoeCommAbort(ncclMoeComm_t moe) {
  std::shared_ptr<Engine> c = registry_remove(moe);
  if (!c) return not_live(moe);
  c->abort();
  return ncclSuccess;
}

NCCL_MOE_API const char* ncclMoeGetLastError(ncclMoeComm_t moe) {
  std::shared_ptr<Engine> c = moe != nullptr ? registry_find(moe) : nullptr;
  // The comm's text stays valid while the comm lives (the caller holds the handle).
  return c ? c->last_error().c_str() : g_init_error.c_str();
}

NCCL_MOE_API ncclResult_t ncclMoeCommGetAsyncError(ncclMoeComm_t moe, ncclResult_t* err) {
  if (err == nullptr) return ncclInvalidArgument;
  return guarded(moe, [&](Engine& c) -> Status {
    *err = to_nccl(c.async_error());
    return Status::kOk;
  });
}

NCCL_MOE_API ncclResult_t ncclMoeGetRecvCapacity(ncclMoeComm_t moe, size_t* rows) {
  if (rows == nullptr) return ncclInvalidArgument;
  return guarded(moe, [&](Engine& c) -> Status {
    *rows = c.recv_capacity();
    return Status::kOk;
  });
}

NCCL_MOE_API ncclResult_t ncclMoeGetLocalExperts(ncclMoeComm_t moe, int* first, int* count) {
  if (first == nullptr || count == nullptr) return ncclInvalidArgument;
  return guarded(moe, [&](Engine& c) -> Status {
    *first = c.first_expert();
    *count = c.local_experts();
    return Status::kOk;
  });
}

NCCL_MOE_API ncclResult_t ncclMoeDispatchSend(const void* x, const float* xScales, const int32_t* topkIdx,
                                              const float* topkWeights, const int32_t* numTokens, void* recvX,
                                              float* recvScales, int32_t* recvExpertCounts, ncclMoeComm_t moe,
                                              cudaStream_t stream) {
  if (ncclResult_t r = check_host_stream(moe, stream, "dispatch"); r != ncclSuccess) return r;
  return guarded(moe, [&](Engine& c) -> Status {
    return c.dispatch_send(x, xScales, topkIdx, topkWeights, numTokens, recvX, recvScales, recvExpertCounts,
                           stream);
  });
}

NCCL_MOE_API ncclResult_t ncclMoeDispatchRecv(ncclMoeComm_t moe, cudaStream_t stream) {
  if (ncclResult_t r = check_host_stream(moe, stream, "dispatch recv"); r != ncclSuccess) return r;
  return guarded(moe, [&](Engine& c) { return c.dispatch_recv(stream); });
}

NCCL_MOE_API ncclResult_t ncclMoeDispatch(const void* x, const float* xScales, const int32_t* topkIdx,
                                          const float* topkWeights, const int32_t* numTokens, void* recvX,
                                          float* recvScales, int32_t* recvExpertCounts, ncclMoeComm_t moe,
                                          cudaStream_t stream) {
  ncclResult_t r = ncclMoeDispatchSend(x, xScales, topkIdx, topkWeights, numTokens, recvX, recvScales,
                                       recvExpertCounts, moe, stream);
  return r != ncclSuccess ? r : ncclMoeDispatchRecv(moe, stream);
}

NCCL_MOE_API ncclResult_t ncclMoeCombineSend(const void* expertY, ncclMoeComm_t moe, cudaStream_t stream) {
  if (ncclResult_t r = check_host_stream(moe, stream, "combine"); r != ncclSuccess) return r;
  return guarded(moe, [&](Engine& c) { return c.combine_send(expertY, stream); });
}

NCCL_MOE_API ncclResult_t ncclMoeCombineRecv(void* y, ncclMoeComm_t moe, cudaStream_t stream) {
  if (ncclResult_t r = check_host_stream(moe, stream, "combine recv"); r != ncclSuccess) return r;
  return guarded(moe, [&](Engine& c) { return c.combine_recv(y, stream); });
}

NCCL_MOE_API ncclResult_t ncclMoeCombine(const void* expertY, void* y, ncclMoeComm_t moe,
                                         cudaStream_t stream) {
  // y is checked before anything is sent (always on the CUDA backend, where T is on the device).
  std::shared_ptr<Engine> live = registry_find(moe);
  if (live && y == nullptr && live->pending_tokens() != 0) {
    return guarded(moe, [&](Engine& c) { return c.fail(Status::kInvalidArgument, "combine: y is NULL"); });
  }
  ncclResult_t r = ncclMoeCombineSend(expertY, moe, stream);
  return r != ncclSuccess ? r : ncclMoeCombineRecv(y, moe, stream);
}

NCCL_MOE_API ncclResult_t ncclMoeGetStats(ncclMoeComm_t moe, ncclMoeStats_t* stats) {
  if (stats == nullptr || stats->size != sizeof(ncclMoeStats_t)) return ncclInvalidArgument;
  return guarded(moe, [&](Engine& c) -> Status {
    c.stats(stats);
    return Status::kOk;
  });
}

NCCL_MOE_API ncclResult_t ncclMoeGetPeerStats(ncclMoeComm_t moe, ncclMoePeerStats_t* peers, int count) {
  return guarded(moe, [&](Engine& c) -> Status {
    if (peers == nullptr) return c.fail(Status::kInvalidArgument, "peer stats: peers is NULL");
    if (count != c.nranks())
      return c.fail(Status::kInvalidArgument, "peer stats: count %d, the comm has %d ranks", count,
                    c.nranks());
    return c.peer_stats(peers);
  });
}

NCCL_MOE_API ncclResult_t ncclMoeGetMemoryUsage(ncclMoeComm_t moe, size_t* deviceBytes, size_t* hostBytes) {
  return guarded(moe, [&](Engine& c) -> Status {
    if (deviceBytes == nullptr || hostBytes == nullptr)
      return c.fail(Status::kInvalidArgument, "memory usage: deviceBytes or hostBytes is NULL");
    c.memory(deviceBytes, hostBytes);
    return Status::kOk;
  });
}

}  // extern "C"
