// libmoefabric-bootstrap.so: the launcher's out-of-band channel (moefabric-run's socketpair, or
// the cross-host rendezvous under torchrun or mpirun; common/rendezvous.h) as a small C API for
// the Python package's ctypes binding. moefabricBootstrapAllGather has ncclMoeAllGather_t's
// signature, so the package hands it straight to ncclMoeCommInitAllGather.
#include <cstdio>
#include <memory>
#include <string>

#include "common/launch.h"
#include "common/rendezvous.h"

#define MF_BOOTSTRAP_API extern "C" __attribute__((visibility("default")))

namespace {
struct Handle {
  std::unique_ptr<moefabric::OobChannel> oob;
  std::string error;
};
void copy_text(const std::string& s, char* buf, size_t len) {
  if (buf && len > 0) snprintf(buf, len, "%s", s.c_str());
}
}  // namespace

// 0: *handle opened; 1: this process was not launched by moefabric-run, torchrun or mpirun;
// -1: it was, but the channel could not be set up. The reason goes to err in both last cases.
MF_BOOTSTRAP_API int moefabricBootstrapOpen(void** handle, int* rank, int* nranks, int* localRank, char* err,
                                            size_t errLen) {
  auto h = std::make_unique<Handle>();
  if (moefabric::Status s = moefabric::oob_from_env(&h->oob); !s.ok()) {
    copy_text(s.message(), err, errLen);
    return -1;
  }
  if (!h->oob) {
    copy_text(
        "no launcher in the environment (moefabric-run's MOEFABRIC_OOB_FD, torchrun's RANK/WORLD_SIZE, "
        "OpenMPI's OMPI_COMM_WORLD_RANK/SIZE)",
        err, errLen);
    return 1;
  }
  *rank = h->oob->rank();
  *nranks = h->oob->nranks();
  *localRank = moefabric::local_rank_from_env();
  *handle = h.release();
  return 0;
}

// ncclMoeAllGather_t: 0 (ncclSuccess) or 2 (ncclSystemError, the reason in LastError).
MF_BOOTSTRAP_API int moefabricBootstrapAllGather(const void* send, void* recv, size_t bytes, void* handle) {
  auto* h = static_cast<Handle*>(handle);
  if (!h) return 4;  // ncclInvalidArgument
  moefabric::Status s = h->oob->allgather(send, recv, bytes);
  h->error = s.message();
  return moefabric::status_to_nccl(s);
}

MF_BOOTSTRAP_API const char* moefabricBootstrapLastError(void* handle) {
  return handle ? static_cast<Handle*>(handle)->error.c_str() : "";
}

MF_BOOTSTRAP_API void moefabricBootstrapClose(void* handle) { delete static_cast<Handle*>(handle); }
