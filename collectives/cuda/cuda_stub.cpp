// Builds without CUDA: the CUDA backend is never picked, and asking for it says why.
#include "collectives/engine.h"

namespace moefabric::moe {

bool cuda_backend_probe(std::string* why) {
  *why = "this build of libmoefabric has no CUDA backend (configure with -Dcuda=enabled)";
  return false;
}

Status cuda_engine_create(int, int, ncclMoeAllGather_t, void*, const ResolvedConfig&, const Params&,
                          std::unique_ptr<Engine>*, std::string* error) {
  *error = "backend ncclMoeBackendCuda: this build of libmoefabric has no CUDA backend";
  return Status::kInvalidUsage;
}

}  // namespace moefabric::moe
