#include "collectives/rails.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>

#include "plugin/common/log.h"
#include "plugin/fabric/rail.h"
#include "topology/fabric_nics.h"

namespace moefabric::moe {

Status choose_rails(const Params& params, const std::optional<topo::PciAddr>& gpu, RailChoice* out,
                    std::string* error) {
  *out = RailChoice{};
  Params p = params;
  if (p.protocol == "tagged") p.protocol = "auto";  // one-sided protocol: RMA or nothing
  std::vector<fabric::NicInfo> nics;
  MF_CHECK(fabric::nic_discover(p, &nics, error));
  const std::vector<topo::NicDesc> descs = topo::nic_descs(nics);
  std::string spec = p.rails;
  if (spec.empty() && p.tcp_iface.find('+') != std::string::npos) spec = p.tcp_iface;
  std::vector<std::vector<std::string>> topo_groups;
  std::string topo_why;
  if (spec.empty()) topo_groups = topo::gpu_rail_groups(p.topo_xml, descs, &topo_why);
  std::vector<std::vector<int>> groups;
  MF_CHECK(fabric::rail_groups(spec, nics, topo_groups, &groups, error));
  if (groups.empty()) {
    *error = "no NIC left after grouping (" + (spec.empty() ? std::string("no NIC found") : "spec " + spec) + ")";
    return Status::kSystemError;
  }
  size_t pick = 0;
  std::string why = spec.empty() ? (topo_groups.empty() ? "one NIC per device" : topo_why)
                                 : (p.rails.empty() ? "MOEFABRIC_TCP_IFACE=" : "MOEFABRIC_RAILS=") + spec;
  why = "first NIC group (" + why + ")";
  if (gpu) {
    std::string gw;
    const std::vector<std::string> mine = topo::gpu_rails(p.topo_xml, descs, *gpu, &gw);
    bool found = false;
    for (size_t g = 0; g < groups.size() && !found; ++g)
      for (int k : groups[g])
        if (std::find(mine.begin(), mine.end(), nics[k].domain) != mine.end()) {
          pick = g;
          found = true;
          break;
        }
    if (found) why = gw;
    else why += "; " + gw;
  }
  for (int k : groups[pick]) out->nics.push_back(std::move(nics[k]));
  out->why = why;

  if (p.proxy_cpu >= 0) {
    out->proxy_cpus = {static_cast<int>(p.proxy_cpu)};
    out->cpus_why = "MOEFABRIC_PROXY_CPU";
  } else {
    out->proxy_cpus = topo::proxy_cpus(p.topo_xml, topo::nic_desc(out->nics[0]), gpu, &out->cpus_why);
  }
  return Status::kOk;
}

void pin_proxy_thread(const std::vector<int>& cpus, const std::string& why, const char* who, int rank) {
  if (cpus.empty()) {
    MF_INFO(log::kInit, "rank %d: %s not pinned (%s)", rank, who, why.c_str());
    return;
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cpus)
    if (c >= 0 && c < CPU_SETSIZE) CPU_SET(c, &set);
  if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0)
    MF_WARN("rank %d: could not pin the %s to CPUs %s (%s)", rank, who, topo::cpu_list(cpus).c_str(),
            why.c_str());
  else
    MF_INFO(log::kInit, "rank %d: %s on CPUs %s (%s)", rank, who, topo::cpu_list(cpus).c_str(), why.c_str());
}

}  // namespace moefabric::moe
