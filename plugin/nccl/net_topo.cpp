#include "plugin/nccl/net_topo.h"

#include <fstream>
#include <mutex>

#include "common/log.h"
#include "plugin/nccl/topo_file.h"

namespace moefabric::fabric {
namespace {
std::mutex g_mu;
const Net* g_installed_for = nullptr;  // compared, never dereferenced
int g_fd = -1;
}  // namespace

std::string nccl_topo_of(const Net& net) {
  std::vector<TopoNet> nets;
  for (int i = 0; i < net.device_count(); ++i) {
    NetProperties p;
    if (net.properties(i, &p) != Status::kOk) continue;
    TopoNet n;
    n.name = p.name;
    n.dev = i;
    n.speed_mbps = p.speed_mbps;
    n.port = p.port;
    n.latency_us = p.latency_us;
    n.guid = p.guid;
    n.maxconn = p.max_comms;
    n.gdr = (p.ptr_support & 2) != 0;
    if (!p.pci_path.empty()) {
      n.pci = topo_pci_chain(p.pci_path);
      // The NIC's PCI function has numa_node; pciPath may name a child of it (…/virtio2).
      n.numa = -1;
      for (std::string d = p.pci_path; d.rfind("/sys/devices/", 0) == 0;) {
        std::ifstream f(d + "/numa_node");
        if (f >> n.numa) break;
        n.numa = -1;
        d.resize(d.rfind('/'));
      }
    }
    nets.push_back(std::move(n));
  }
  return nccl_topo_xml(nets, topo_host_cpu());
}

void install_nccl_topo(const Net& net) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_installed_for == &net) return;
  g_installed_for = &net;
  bool grouped = false;
  for (int i = 0; i < net.device_count(); ++i) grouped |= net.device(i)->nrails() > 1;
  if (!grouped) return;
  if (!net.params().topo_file) {
    MF_INFO(log::kInit | log::kNet, "multi-rail devices: no NCCL topology file (MOEFABRIC_TOPO_FILE=0)");
    return;
  }
  std::string xml = nccl_topo_of(net);
  nccl_topo_uninstall(g_fd);
  g_fd = -1;
  TopoInstall installed;
  if (Status s = nccl_topo_install(xml, &installed); !s.ok()) {
    MF_WARN("multi-rail devices: no NCCL topology file: %s", s.message().c_str());
    return;
  }
  g_fd = installed.fd;
  MF_INFO(log::kInit | log::kNet | log::kGraph, "multi-rail devices: %s", installed.what.c_str());
  MF_TRACE(log::kGraph, "topology handed to NCCL:\n%s", xml.c_str());
}

void uninstall_nccl_topo() {
  std::lock_guard<std::mutex> lock(g_mu);
  nccl_topo_uninstall(g_fd);
  g_fd = -1;
  g_installed_for = nullptr;
}

}  // namespace moefabric::fabric
