// The perf tools' view of libfabric, apart from perf_tool.cpp so that the NCCL-only tool does not
// link it.
#include "common/params.h"
#include "fabric/info.h"
#include "fabric/rma.h"
#include "perf/perf_tool.h"

namespace moefabric::perf {

std::optional<std::string> moe_provider() {
  std::vector<fabric::NicInfo> nics;
  if (!fabric::nic_discover(fabric::rma_params(Params::load()), &nics).ok() || nics.empty())
    return std::nullopt;
  return nics[0].provider;
}

}  // namespace moefabric::perf
