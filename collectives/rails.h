// Which NICs an MoE comm's proxy drives (the rails of its GPU) and where the proxy thread runs.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "plugin/common/params.h"
#include "plugin/common/status.h"
#include "plugin/fabric/info.h"
#include "topology/topology.h"

namespace moefabric::moe {

struct RailChoice {
  std::vector<fabric::NicInfo> nics;  // 1..4 rails, one provider
  std::string why;                    // how they were chosen, for the log
  std::vector<int> proxy_cpus;        // empty: leave the proxy unpinned
  std::string cpus_why;
};

// The NIC groups are the NCCL plugin's devices: MOEFABRIC_RAILS, or MOEFABRIC_TCP_IFACE with '+',
// else the topology's per-GPU rail groups, else one NIC each. With `gpu` (the CUDA backend's
// device) the group holding that GPU's rails is taken, else the first group. Proxy CPUs:
// MOEFABRIC_PROXY_CPU, else the GPU's NUMA slice, else the first rail's NUMA node.
Status choose_rails(const Params& params, const std::optional<topo::PciAddr>& gpu, RailChoice* out,
                    std::string* error);

// Pins the calling thread to `cpus` (logging the outcome; `who` names the thread's owner).
void pin_proxy_thread(const std::vector<int>& cpus, const std::string& why, const char* who, int rank);

}  // namespace moefabric::moe
