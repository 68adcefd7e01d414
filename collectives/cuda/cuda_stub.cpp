// Builds without CUDA: the CUDA backend is never picked, and asking for it says why.
#include "collectives/engine.h"

namespace moefabric::moe {

Status cuda_backend_probe() {
  return Status::invalid_usage(
      "this build of libmoefabric has no CUDA backend (configure with -Dcuda=enabled)");
}

Status cuda_engine_create(int, int, ncclMoeAllGather_t, void*, const ResolvedConfig&, const Params&,
                          std::unique_ptr<Engine>*) {
  return Status::invalid_usage("backend ncclMoeBackendCuda: this build of libmoefabric has no CUDA backend");
}

}  // namespace moefabric::moe
