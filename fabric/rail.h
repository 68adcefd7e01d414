// One rail of a device: a NIC's own libfabric fabric, domain, AV, CQ and endpoint. A device
// stripes bulk writes over its rails; rail 0 also carries every message (connection handshake,
// control entries, eager data, fin/ping/error).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/params.h"
#include "common/status.h"
#include "fabric/info.h"
#include "fabric/resource.h"
#include "fabric/bounds.h"

namespace moefabric::fabric {

// How an endpoint is opened beyond what every user gets.
struct EndpointOptions {
  bool wait_fd = false;          // a CQ with a wait fd (fi_cq_sread, epoll), when the provider has one
  bool forbid_cuda_api = false;  // efa: no CUDA calls inside the provider (NCCL's rule for plugins)
};

// One endpoint on one NIC, the only way endpoints are opened (the net plugin's devices and the
// MoE library's RMA endpoints alike).
struct Rail {
  int index = 0;
  NicInfo nic;
  FabricPtr fabric;
  DomainPtr domain;
  AvPtr av;
  CqPtr cq;
  EpPtr ep;  // declared last: closed first
  uint8_t addr[kMaxAddrLen] = {};
  size_t addr_len = 0;
  bool can_block = false;                     // the CQ has a wait fd
  std::map<std::string, fi_addr_t> av_cache;  // endpoint name -> AV entry

  // Opens fabric, domain, AV (table), CQ (data format) and an enabled endpoint on `nic`.
  // A failure names the rail's NIC and the failing call.
  Status open(int rail_index, NicInfo nic_info, const EndpointOptions& opt);
  // Inserts (once) a peer endpoint name into this rail's AV.
  Status av_insert(const uint8_t* peer_addr, size_t len, fi_addr_t* out);
  // A peer endpoint name as the provider prints it (fi_av_straddr), for messages.
  std::string addr_str(const uint8_t* peer_addr, size_t len) const;
  // The same for an entry of this rail's AV (fi_av_lookup, then fi_av_straddr).
  std::string lookup_str(fi_addr_t a) const;
  // Releases the endpoint (cancels everything in flight) before MRs and the domain go.
  void close_endpoint() { ep.reset(); }
};

// How NICs form devices: groups of indices into `nics` (each group 1..kMaxRails NICs,
// every NIC at most once, in NCCL's device order). The spec is MOEFABRIC_RAILS, or
// MOEFABRIC_TCP_IFACE when it contains '+': devices separated by ',', rails of one device by
// '+', each item a NIC's libfabric domain name (the interface for tcp). NICs the spec does not
// name are not used. Without a spec every NIC is its own device, unless `topo_groups` (NICs
// the topology library found to be the rails of one GPU, by name) groups them.
Status rail_groups(const std::string& spec, const std::vector<NicInfo>& nics,
                   const std::vector<std::vector<std::string>>& topo_groups,
                   std::vector<std::vector<int>>* out);

// The topology's per-GPU rail groups (NIC domain names) for the default grouping, and what it
// found (for logs). The fabric layer does not load hwloc itself: whoever links the topology
// library (the NCCL plugin) sets this before the first Net::acquire. nullptr: no topology grouping.
struct TopoGroups {
  std::vector<std::vector<std::string>> groups;
  std::string why;
};
using TopoGroupsHook = TopoGroups (*)(const Params& params, const std::vector<NicInfo>& nics);
void set_topo_groups_hook(TopoGroupsHook hook);
TopoGroupsHook topo_groups_hook();

// The grouping spec in effect: MOEFABRIC_RAILS, else MOEFABRIC_TCP_IFACE when it joins rails
// with '+', else empty (the topology, or one NIC per device, decides).
std::string rail_spec(const Params& params);

// The spec's NIC names (for the tcp interface filter): "a+b,c" -> {a, b, c}.
std::vector<std::string> rail_spec_names(const std::string& spec);

}  // namespace moefabric::fabric
