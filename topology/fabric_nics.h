// libfabric NICs as the topology library describes them (header-only: the topology library itself
// does not depend on the fabric layer; its users that have NicInfo do).
#pragma once

#include <vector>

#include "fabric/info.h"
#include "topology/topology.h"

namespace moefabric::topo {

inline NicDesc nic_desc(const fabric::NicInfo& n) {
  NicDesc d;
  d.name = n.domain;
  d.provider = n.provider;
  d.pci = PciAddr::from_sysfs_path(n.pci_path);
  d.speed_mbps = n.speed_mbps;
  return d;
}

inline std::vector<NicDesc> nic_descs(const std::vector<fabric::NicInfo>& nics) {
  std::vector<NicDesc> out;
  for (const auto& n : nics) out.push_back(nic_desc(n));
  return out;
}

}  // namespace moefabric::topo
