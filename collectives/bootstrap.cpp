#include "collectives/bootstrap.h"

#include <dlfcn.h>

#include <memory>

namespace moefabric::moe {
namespace {

// The few entry points used, declared from their documented C signatures.
struct Api {
  ncclResult_t (*comm_count)(ncclComm_t, int*) = nullptr;
  ncclResult_t (*comm_user_rank)(ncclComm_t, int*) = nullptr;
  ncclResult_t (*all_gather)(const void*, void*, size_t, ncclDataType_t, ncclComm_t, cudaStream_t) = nullptr;
  int (*malloc)(void**, size_t) = nullptr;
  int (*free)(void*) = nullptr;
  int (*memcpy)(void*, const void*, size_t, int) = nullptr;
  int (*stream_sync)(cudaStream_t) = nullptr;
};

template <class F>
bool resolve(F* fn, const char* name, void* lib) {
  void* p = dlsym(RTLD_DEFAULT, name);
  if (p == nullptr && lib != nullptr) p = dlsym(lib, name);
  *fn = reinterpret_cast<F>(p);
  return p != nullptr;
}

}  // namespace

Status nccl_bootstrap_open(ncclComm_t comm, NcclBootstrap* b) {
  auto api = std::make_unique<Api>();
  void* nccl = dlopen("libnccl.so.2", RTLD_NOW | RTLD_NOLOAD);
  if (nccl == nullptr) nccl = dlopen("libnccl.so.2", RTLD_NOW);
  void* cudart = dlopen("libcudart.so", RTLD_NOW | RTLD_NOLOAD);
  if (cudart == nullptr) cudart = dlopen("libcudart.so.13", RTLD_NOW);
  if (cudart == nullptr) cudart = dlopen("libcudart.so.12", RTLD_NOW);
  bool ok = resolve(&api->comm_count, "ncclCommCount", nccl) &&
            resolve(&api->comm_user_rank, "ncclCommUserRank", nccl) &&
            resolve(&api->all_gather, "ncclAllGather", nccl);
  if (!ok)
    return Status::invalid_usage(
        "NCCL is not loaded in this process and libnccl.so.2 could not be opened, so there "
        "is no NCCL communicator to bootstrap over (use ncclMoeCommInitAllGather)");
  ok = resolve(&api->malloc, "cudaMalloc", cudart) && resolve(&api->free, "cudaFree", cudart) &&
       resolve(&api->memcpy, "cudaMemcpy", cudart) &&
       resolve(&api->stream_sync, "cudaStreamSynchronize", cudart);
  if (!ok) return Status::system_error("CUDA runtime entry points not found (libcudart)");
  if (api->comm_count(comm, &b->nranks) != ncclSuccess ||
      api->comm_user_rank(comm, &b->rank) != ncclSuccess) {
    return Status::invalid_argument("ncclCommCount/ncclCommUserRank failed on the given communicator");
  }
  b->comm = comm;
  b->api = api.release();
  return Status::kOk;
}

ncclResult_t nccl_bootstrap_allgather(const void* send, void* recv, size_t bytes, void* ctx) {
  auto* b = static_cast<NcclBootstrap*>(ctx);
  auto* api = static_cast<Api*>(b->api);
  constexpr int kH2D = 1, kD2H = 2;
  void* dsend = nullptr;
  void* drecv = nullptr;
  ncclResult_t r = ncclSystemError;
  if (api->malloc(&dsend, bytes) == 0 && api->malloc(&drecv, bytes * b->nranks) == 0 &&
      api->memcpy(dsend, send, bytes, kH2D) == 0) {
    r = api->all_gather(dsend, drecv, bytes, ncclUint8, b->comm, nullptr);
    if (r == ncclSuccess &&
        (api->stream_sync(nullptr) != 0 || api->memcpy(recv, drecv, bytes * b->nranks, kD2H) != 0))
      r = ncclUnhandledCudaError;
  }
  if (dsend) api->free(dsend);
  if (drecv) api->free(drecv);
  return r;
}

void nccl_bootstrap_close(NcclBootstrap* b) {
  delete static_cast<Api*>(b->api);
  b->api = nullptr;
}

}  // namespace moefabric::moe
