// Provider and NIC discovery: one fi_info per usable NIC (libfabric domain), in the order NCCL
// will number them.
#pragma once

#include <string>
#include <vector>

#include "plugin/common/params.h"
#include "plugin/common/status.h"
#include "plugin/fabric/resource.h"

namespace moefabric::fabric {

struct NicInfo {
  InfoPtr info;          // owned copy, used to open fabric/domain/endpoint
  std::string provider;  // e.g. "tcp;ofi_rxm", "shm", "efa"
  std::string domain;    // e.g. "lo", "rdmap16s27"
  std::string name;      // unique device name shown to NCCL
  std::string pci_path;  // /sys/devices/... of the PCI function, empty when none
  uint64_t guid = 0;
  int speed_mbps = 0;
  bool hmem = false;     // provider registers device memory (FI_HMEM)
  bool rma = false;      // FI_RMA with remote CQ data usable
  bool tagged = false;
};

// Finds the NICs of the provider chosen by MOEFABRIC_PROVIDER / FI_PROVIDER / the default order
// (efa, verbs, tcp; shm only when asked). Fails with a message naming what was tried.
Status nic_discover(const Params& params, std::vector<NicInfo>* out, std::string* error);

// The fi_info hints moefabric uses for `provider` (exposed for the perf tool's raw baseline).
InfoPtr nic_hints(const std::string& provider, bool want_hmem, bool want_tagged);

}  // namespace moefabric::fabric
