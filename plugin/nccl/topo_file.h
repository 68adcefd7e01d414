// An NCCL topology file for multi-rail devices. When the plugin groups NICs into one device,
// NCCL must place that device where its rails are and with their summed bandwidth, or its graph
// search plans for a NIC that does not exist. nccl_topo_xml() writes NCCL's topology XML
// (<system><cpu><pci>...<nic><net/></nic></pci></cpu></system>, the format NCCL_TOPO_FILE
// reads) for the plugin's devices; NCCL fills in what the file leaves out (GPUs, CPU affinity,
// link widths) from its own detection and fuses it with this file.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/status.h"

namespace moefabric::fabric {

struct TopoPci {
  std::string busid;           // "0000:4f:00.0" (lower case)
  std::string cls;             // PCI class, "0x020000"; empty: not known
  std::string vendor, device;  // empty: not known (left out; NCCL reads sysfs)
  // Always written, as NCCL requires them of a <pci> it did not create: link_speed may be empty
  // (unknown), link_width "0" when unknown.
  std::string link_speed, link_width;
};

struct TopoNet {
  std::string name;    // the device name NCCL gets from getProperties (e.g. "eth1+eth2")
  int dev = 0;         // NCCL device index
  int speed_mbps = 0;  // summed over the rails
  int port = 1;
  float latency_us = 0;
  uint64_t guid = 0;
  int maxconn = 0;
  bool gdr = false;
  int numa = -1;             // NUMA node of the (first rail's) NIC; -1: unknown
  std::vector<TopoPci> pci;  // root-most bridge first, the NIC's own function last; empty: virtual
};

// What NCCL needs on every <cpu> it reads from a file: it fills these only for CPUs it creates
// itself, and refuses an x86_64 <cpu> without vendor/familyid/modelid ("Attribute vendor of
// node cpu not found").
struct TopoCpu {
  std::string arch;                     // uname's machine: "x86_64", "aarch64" (written as NCCL's "arm64")
  std::string vendor;                   // x86: CPUID leaf 0, e.g. "GenuineIntel"; empty elsewhere
  int family = -1, model = -1;          // x86: CPUID leaf 1 with the extended fields; -1 elsewhere
  std::map<int, std::string> affinity;  // NUMA node -> its sysfs cpumap ("ffff,ffffffff")
};

// This host's CPU as NCCL's own detection would describe it.
TopoCpu topo_host_cpu();

// The XML text. Nets sharing a NUMA node share a <cpu>; nets on one PCI function share it.
// A net whose NUMA node is unknown goes on <cpu numaid="-1">, where NCCL puts devices whose
// sysfs has no NUMA node, so a GPU and NIC that NCCL would pair still meet under one CPU.
std::string nccl_topo_xml(const std::vector<TopoNet>& nets, const TopoCpu& cpu);

// The PCI chain of a sysfs device path (/sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0),
// with class, ids and link attributes read from sysfs when present.
std::vector<TopoPci> topo_pci_chain(const std::string& sysfs_path);

// What nccl_topo_install did: the memfd (-1: none) and, for the log, what was done.
struct TopoInstall {
  int fd = -1;
  std::string what;
};
// Writes `xml` into a memfd and points NCCL_TOPO_FILE at /proc/self/fd/N, unless NCCL_TOPO_FILE
// is already set (then nothing happens and the fd stays -1). The fd must stay open while NCCL
// may read it; close it with nccl_topo_uninstall.
Status nccl_topo_install(const std::string& xml, TopoInstall* out);
void nccl_topo_uninstall(int fd);

}  // namespace moefabric::fabric
