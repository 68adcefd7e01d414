// Bootstrap over an existing NCCL communicator: rank, size and an allgather through NCCL itself
// (device staging buffers). NCCL and the CUDA runtime are taken from the process (the library
// that created the comm), else loaded by soname; nothing links against them.
#pragma once

#include <string>

#include "include/moefabric/nccl_moe.h"
#include "common/status.h"

namespace moefabric::moe {

struct NcclBootstrap {
  ncclComm_t comm = nullptr;
  int nranks = 0, rank = 0;
  void* api = nullptr;  // resolved entry points (opaque)
};

Status nccl_bootstrap_open(ncclComm_t comm, NcclBootstrap* b);
ncclResult_t nccl_bootstrap_allgather(const void* send, void* recv, size_t bytes, void* ctx);
void nccl_bootstrap_close(NcclBootstrap* b);

}  // namespace moefabric::moe
