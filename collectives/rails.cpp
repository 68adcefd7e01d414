#include "collectives/rails.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>

#include "collectives/protocol.h"
#include "common/log.h"
#include "fabric/rail.h"
#include "topology/fabric_nics.h"
#include "topology/topology.h"

namespace moefabric::moe {

Status choose_rails(const Params& params, const std::optional<topo::PciAddr>& gpu, RailChoice* out) {
  *out = RailChoice{};
  const Params p = fabric::rma_params(params);
  std::vector<fabric::NicInfo> nics;
  MF_CHECK(fabric::nic_discover(p, &nics));
  const std::string spec = fabric::rail_spec(p);
  // One look at the machine (hwloc) serves the grouping, the GPU's rails and the proxy's CPUs.
  std::unique_ptr<topo::Topology> t;
  topo::Options o;
  o.xml = p.topo_xml;
  o.nics_given = true;
  o.nics = topo::nic_descs(nics);
  const Status topo_status = topo::Topology::load(o, &t);
  if (!topo_status.ok()) t.reset();
  const std::string& topo_err = topo_status.message();
  const int gi = t && gpu ? t->gpu_by_pci(*gpu) : -1;

  int on_pci = 0;
  for (const auto& d : o.nics) on_pci += d.pci.has_value();
  std::vector<std::vector<std::string>> topo_groups;
  std::string topo_why = t ? "fewer than two NICs on PCI" : "topology not available: " + topo_err;
  if (spec.empty() && t && on_pci >= 2) {
    topo::RailGroups g = t->rail_groups();
    topo_groups = std::move(g.groups);
    topo_why = std::move(g.why);
  }
  std::vector<std::vector<int>> groups;
  MF_CHECK(fabric::rail_groups(spec, nics, topo_groups, &groups));
  if (groups.empty())
    return Status::system_error("no NIC left after grouping (" +
                                (spec.empty() ? std::string("no NIC found") : "spec " + spec) + ")");
  size_t pick = 0;
  std::string why = spec.empty() ? (topo_groups.empty() ? "one NIC per device: " + topo_why : topo_why)
                                 : (p.rails.empty() ? "MOEFABRIC_TCP_IFACE=" : "MOEFABRIC_RAILS=") + spec;
  why = "first NIC group (" + why + ")";
  if (gpu) {
    bool found = false;
    if (gi >= 0)
      for (size_t g = 0; g < groups.size() && !found; ++g)
        for (int k : groups[g]) {
          const auto& rails = t->gpus()[gi].rails;
          if (std::find(rails.begin(), rails.end(), k) != rails.end()) {
            pick = g;
            found = true;
            break;
          }
        }
    if (found)
      why = "the rails of GPU " + gpu->str() + " per " + t->source();
    else
      why += gi < 0 ? "; GPU " + gpu->str() + " not in the topology"
                    : "; none of GPU " + gpu->str() + "'s rails is in a group";
  }
  const int nic0 = groups[pick][0];
  for (int k : groups[pick]) out->nics.push_back(std::move(nics[k]));
  out->why = why;

  if (p.proxy_cpu >= 0) {
    out->proxy_cpus = {static_cast<int>(p.proxy_cpu)};
    out->cpus_why = "MOEFABRIC_PROXY_CPU";
  } else if (t) {
    topo::ProxyCpus c = t->proxy_cpus_for(nic0, gi);
    out->proxy_cpus = std::move(c.cpus);
    out->cpus_why = std::move(c.why);
  } else {
    out->cpus_why = "topology unavailable: " + topo_err;
  }
  return Status::kOk;
}

Status open_rails(const Params& params, const std::optional<topo::PciAddr>& gpu,
                  std::unique_ptr<fabric::RmaRails>* ep, RailChoice* choice) {
  MF_CHECK(choose_rails(params, gpu, choice));
  Status s = fabric::RmaRails::open(params, std::move(choice->nics), kStripeShift, ep);
  choice->nics.clear();
  return s;
}

void rails_addr(fabric::RmaRails& ep, const fabric::RmaRails::Mr& recv_mr, const void* recv, RailsAddr* out) {
  *out = RailsAddr{};
  out->ok = 1;
  ep.local_addr(&out->addr);
  out->recv_base = ep.remote_addr(recv_mr, recv);
  out->recv_keys = ep.keys(recv_mr);
}

Status rails_add_peer(fabric::RmaRails& ep, const RailsAddr& a, int r, fabric::RmaRails::Peer* out) {
  Status s = ep.add_peer(a.addr, a.recv_keys, out);
  if (s.ok()) return s;
  return Status::system_error("rank " + std::to_string(r) + "'s address: " + s.message());
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
