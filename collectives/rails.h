// Which NICs an MoE comm's proxy drives (the rails of its GPU) and where the proxy thread runs.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/params.h"
#include "common/status.h"
#include "fabric/info.h"
#include "fabric/rma_rails.h"
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
Status choose_rails(const Params& params, const std::optional<topo::PciAddr>& gpu, RailChoice* out);

// choose_rails, then opens the chosen rails with the MoE immediate's stripe field. `choice` keeps
// the reasons and the proxy CPUs (its NICs are moved into the endpoint).
Status open_rails(const Params& params, const std::optional<topo::PciAddr>& gpu,
                  std::unique_ptr<fabric::RmaRails>* ep, RailChoice* choice);

// What each rank contributes to the init allgather for its proxy endpoint (fixed size).
struct RailsAddr {
  int32_t ok;
  uint64_t recv_base;  // remote address (or offset) of the receive region
  fabric::RmaRails::Addr addr;
  fabric::RmaRails::Keys recv_keys;
  char why[192];  // when !ok
};

// This rank's record: its endpoint and the receive region `recv` inside `recv_mr`.
void rails_addr(fabric::RmaRails& ep, const fabric::RmaRails::Mr& recv_mr, const void* recv, RailsAddr* out);
// Rank r's record into `out` (r's record must be ok); the error names the rank.
Status rails_add_peer(fabric::RmaRails& ep, const RailsAddr& a, int r, fabric::RmaRails::Peer* out);

// Pins the calling thread to `cpus` (logging the outcome; `who` names the thread's owner).
void pin_proxy_thread(const std::vector<int>& cpus, const std::string& why, const char* who, int rank);

}  // namespace moefabric::moe
