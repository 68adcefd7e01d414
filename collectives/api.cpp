// The exported ncclMoe C API: argument checks that need no comm, the exception guard, and thin
// calls into the backend's moe::Engine. Nothing here knows the protocol.
#include <new>
#include <string>

#include "collectives/bootstrap.h"
#include "collectives/engine.h"
#include "include/moefabric/nccl_moe.h"

using moefabric::Status;
using moefabric::moe::Engine;

struct ncclMoeComm {
  std::unique_ptr<Engine> impl;
};

namespace {

thread_local std::string g_init_error;

ncclResult_t to_nccl(Status s) { return static_cast<ncclResult_t>(moefabric::status_to_nccl(s)); }

template <class F>
ncclResult_t guarded(ncclMoeComm_t moe, F&& f) {
  if (moe == nullptr || !moe->impl) {
    g_init_error = "NULL or destroyed ncclMoeComm_t";
    return ncclInvalidArgument;
  }
  try {
    return to_nccl(f(*moe->impl));
  } catch (const std::bad_alloc&) {
    (void)moe->impl->fail(Status::kSystemError, "out of host memory");
    return ncclSystemError;
  } catch (const std::exception& e) {
    (void)moe->impl->fail(Status::kInternalError, "internal error: %s", e.what());
    return ncclInternalError;
  }
}

ncclResult_t check_host_stream(ncclMoeComm_t moe, cudaStream_t stream, const char* fn) {
  if (stream != nullptr && moe != nullptr && moe->impl && !moe->impl->on_device()) {
    (void)moe->impl->fail(Status::kInvalidArgument,
                          "%s: the host backend takes stream NULL (calls complete on return)", fn);
    return ncclInvalidArgument;
  }
  return ncclSuccess;
}

}  // namespace

extern "C" {

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
    std::string err;
    Status s = moefabric::moe::engine_create(nranks, rank, fn, ctx, cfg, &c, &err);
    if (s != Status::kOk) {
      g_init_error = err;
      moefabric::log::write(moefabric::log::kWarn, moefabric::log::kInit, __FILE__, __LINE__,
                            "rank %d: %s", rank, err.c_str());
      return to_nccl(s);
    }
    *moe = new ncclMoeComm{std::move(c)};
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

NCCL_MOE_API ncclResult_t ncclMoeCommInit(ncclMoeComm_t* moe, ncclComm_t comm,
                                          const ncclMoeConfig_t* cfg) {
  if (moe == nullptr || comm == nullptr) {
    g_init_error = "ncclMoeCommInit: moe or comm is NULL";
    return ncclInvalidArgument;
  }
  moefabric::moe::NcclBootstrap boot;
  std::string err;
  Status s = moefabric::moe::nccl_bootstrap_open(comm, &boot, &err);
  if (s != Status::kOk) {
    g_init_error = "ncclMoeCommInit: " + err;
    return to_nccl(s);
  }
  ncclResult_t r = ncclMoeCommInitAllGather(moe, boot.nranks, boot.rank,
                                            moefabric::moe::nccl_bootstrap_allgather, &boot, cfg);
  moefabric::moe::nccl_bootstrap_close(&boot);
  return r;
}

NCCL_MOE_API ncclResult_t ncclMoeCommDestroy(ncclMoeComm_t moe) {
  if (moe == nullptr) return ncclInvalidArgument;
  ncclResult_t r = guarded(moe, [](Engine& c) { return c.destroy(); });
  delete moe;
  return r;
}

NCCL_MOE_API ncclResult_t ncclMoeCommAbort(ncclMoeComm_t moe) {
  if (moe == nullptr) return ncclInvalidArgument;
  if (moe->impl) moe->impl->abort();
  delete moe;
  return ncclSuccess;
}

NCCL_MOE_API const char* ncclMoeGetLastError(ncclMoeComm_t moe) {
  if (moe == nullptr || !moe->impl) return g_init_error.c_str();
  return moe->impl->last_error().c_str();
}

NCCL_MOE_API ncclResult_t ncclMoeCommGetAsyncError(ncclMoeComm_t moe, ncclResult_t* err) {
  if (err == nullptr) return ncclInvalidArgument;
  return guarded(moe, [&](Engine& c) {
    *err = to_nccl(c.async_error());
    return Status::kOk;
  });
}

NCCL_MOE_API ncclResult_t ncclMoeGetRecvCapacity(ncclMoeComm_t moe, size_t* rows) {
  if (rows == nullptr) return ncclInvalidArgument;
  return guarded(moe, [&](Engine& c) {
    *rows = c.recv_capacity();
    return Status::kOk;
  });
}

NCCL_MOE_API ncclResult_t ncclMoeGetLocalExperts(ncclMoeComm_t moe, int* first, int* count) {
  if (first == nullptr || count == nullptr) return ncclInvalidArgument;
  return guarded(moe, [&](Engine& c) {
    *first = c.first_expert();
    *count = c.local_experts();
    return Status::kOk;
  });
}

NCCL_MOE_API ncclResult_t ncclMoeDispatchSend(const void* x, const float* xScales,
                                              const int32_t* topkIdx, const float* topkWeights,
                                              const int32_t* numTokens, void* recvX,
                                              float* recvScales, int32_t* recvExpertCounts,
                                              ncclMoeComm_t moe, cudaStream_t stream) {
  if (ncclResult_t r = check_host_stream(moe, stream, "dispatch"); r != ncclSuccess) return r;
  return guarded(moe, [&](Engine& c) {
    return c.dispatch_send(x, xScales, topkIdx, topkWeights, numTokens, recvX, recvScales,
                           recvExpertCounts, stream);
  });
}

NCCL_MOE_API ncclResult_t ncclMoeDispatchRecv(ncclMoeComm_t moe, cudaStream_t stream) {
  if (ncclResult_t r = check_host_stream(moe, stream, "dispatch recv"); r != ncclSuccess) return r;
  return guarded(moe, [&](Engine& c) { return c.dispatch_recv(stream); });
}

NCCL_MOE_API ncclResult_t ncclMoeDispatch(const void* x, const float* xScales,
                                          const int32_t* topkIdx, const float* topkWeights,
                                          const int32_t* numTokens, void* recvX, float* recvScales,
                                          int32_t* recvExpertCounts, ncclMoeComm_t moe,
                                          cudaStream_t stream) {
  ncclResult_t r = ncclMoeDispatchSend(x, xScales, topkIdx, topkWeights, numTokens, recvX,
                                       recvScales, recvExpertCounts, moe, stream);
  return r != ncclSuccess ? r : ncclMoeDispatchRecv(moe, stream);
}

NCCL_MOE_API ncclResult_t ncclMoeCombineSend(const void* expertY, ncclMoeComm_t moe,
                                             cudaStream_t stream) {
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
  if (moe != nullptr && moe->impl && y == nullptr && moe->impl->pending_tokens() != 0) {
    return guarded(moe, [&](Engine& c) {
      return c.fail(Status::kInvalidArgument, "combine: y is NULL");
    });
  }
  ncclResult_t r = ncclMoeCombineSend(expertY, moe, stream);
  return r != ncclSuccess ? r : ncclMoeCombineRecv(y, moe, stream);
}

NCCL_MOE_API ncclResult_t ncclMoeGetStats(ncclMoeComm_t moe, ncclMoeStats_t* stats) {
  if (stats == nullptr || stats->size != sizeof(ncclMoeStats_t)) return ncclInvalidArgument;
  return guarded(moe, [&](Engine& c) {
    c.stats(stats);
    return Status::kOk;
  });
}

}  // extern "C"
