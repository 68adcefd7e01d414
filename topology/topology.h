// Machine topology over hwloc: for each GPU, the NICs closest to it on PCIe (its rails), its
// NUMA node and the cores its proxy thread should run on, plus each NIC's sysfs pciPath.
//
// Inputs: hwloc's tree (the live machine, or a saved XML through MOEFABRIC_TOPO_XML), the NICs
// the caller will use (libfabric's list, with PCI addresses from fi_info's nic attributes or
// sysfs; or, when none are given, hwloc's own network/OpenFabrics PCI devices), and the GPUs'
// PCI bus ids (the CUDA driver's order when it loads; hwloc's NVIDIA PCI devices otherwise).
// RDMA devices are enumerated with rdma-core (libibverbs, loaded at run time) for their sysfs
// paths and port speeds.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

struct hwloc_obj;  // hwloc.h stays out of this header

namespace moefabric::topo {

struct PciAddr {
  unsigned domain = 0, bus = 0, dev = 0, func = 0;
  std::string str() const;  // "0000:4f:00.0"
  static std::optional<PciAddr> parse(const std::string& s);
  // The PCI function a sysfs path belongs to: its last component that is a bus id (a netdev's
  // device link can end below the function, e.g. .../0000:00:03.0/virtio0).
  static std::optional<PciAddr> from_sysfs_path(const std::string& path);
  bool operator==(const PciAddr&) const = default;
  auto operator<=>(const PciAddr&) const = default;
};

// How a GPU reaches a NIC, in nvidia-smi topo's words, closest first.
enum class Path : int {
  kPix = 0,   // through at most one PCIe switch
  kPxb = 1,   // through several PCIe bridges, without the host bridge
  kPhb = 2,   // through a PCIe host bridge
  kNode = 3,  // between host bridges of one NUMA node
  kSys = 4,   // across the SMP interconnect between NUMA nodes (or a virtual NIC)
};
const char* path_name(Path p);

// A NIC as the caller sees it (libfabric domain, RDMA device or netdev).
struct NicDesc {
  std::string name;            // rdmap79s0, mlx5_0, eth0, lo
  std::string provider;        // efa, verbs, tcp, shm; empty when taken from hwloc
  std::optional<PciAddr> pci;  // none: virtual (lo, veth, shm)
  int speed_mbps = 0;          // 0: unknown
};

struct Nic : NicDesc {
  int numa = -1;         // -1: unknown / virtual
  std::string pci_path;  // /sys/devices/pci0000:4e/.../0000:4f:00.0; empty when virtual
};

struct Gpu {
  int index = 0;  // CUDA ordinal (or hwloc order without CUDA)
  PciAddr pci;
  int numa = -1;
  std::vector<Path> path;       // path[i]: to nics()[i]
  std::vector<int> rails;       // indices into nics(): every NIC at the closest path
  std::vector<int> proxy_cpus;  // OS cpu indices (one PU per core) for this GPU's proxy
};

struct Options {
  std::string xml;          // hwloc XML instead of the live machine
  bool nics_given = false;  // use `nics` (else hwloc's network PCI devices)
  std::vector<NicDesc> nics;
  bool gpus_given = false;  // use `gpus` (else CUDA, else hwloc's NVIDIA devices)
  std::vector<PciAddr> gpus;
};

// NICs that are the rails of one GPU, by name, and what was found (for logs).
struct RailGroups {
  std::vector<std::vector<std::string>> groups;
  std::string why;
};
// Where an MoE proxy thread should run, and which rule applied (for logs).
struct ProxyCpus {
  std::vector<int> cpus;
  std::string why;
};

class Topology {
 public:
  static Status load(const Options& opts, std::unique_ptr<Topology>* out);
  ~Topology();
  Topology(const Topology&) = delete;
  Topology& operator=(const Topology&) = delete;

  const std::vector<Gpu>& gpus() const { return gpus_; }
  const std::vector<Nic>& nics() const { return nics_; }
  int numa_nodes() const { return numa_nodes_; }
  int cores() const { return cores_; }
  const std::string& source() const { return source_; }  // "live machine" or the XML path
  const std::string& gpu_source() const { return gpu_source_; }

  // Proxy CPUs for a NIC's NUMA node when no GPU is involved (host backend): empty if unknown.
  std::vector<int> cpus_near_nic(int nic) const;
  // NICs that are the rails of one GPU, by name: one group per GPU with two or more rails (GPUs
  // sharing the same rails give one group); `why` says what was found.
  RailGroups rail_groups() const;
  // Where an MoE proxy thread should run: GPU `gpu`'s slice of its NUMA node's cores when that
  // GPU is known (index into gpus(), -1: none), else every core of NIC `nic`'s NUMA node; empty
  // when neither has a NUMA node; `why` says which rule applied.
  ProxyCpus proxy_cpus_for(int nic, int gpu) const;
  // The GPU whose PCI bus id this is, or -1.
  int gpu_by_pci(const PciAddr& pci) const;

  // "nvidia-smi topo -m"-style report, and the same as JSON.
  std::string table() const;
  std::string json() const;

 private:
  Topology() = default;
  // build() runs these steps in order.
  Status build(const Options& opts);
  Status load_hwloc(const Options& opts);
  void collect_numa();
  std::vector<::hwloc_obj*> collect_nics(const Options& opts);
  void collect_gpus(const Options& opts, const std::vector<::hwloc_obj*>& nic_obj);
  void assign_proxy_cores();

  struct Hw;
  std::unique_ptr<Hw> hw_;
  std::vector<Gpu> gpus_;
  std::vector<Nic> nics_;
  int numa_nodes_ = 0;
  int cores_ = 0;
  bool live_ = true;  // the running machine, not an XML file
  std::string source_, gpu_source_;
  std::vector<std::vector<int>> numa_cpus_;  // per NUMA node os index: one PU per core
};

// RDMA devices rdma-core reports: name, PCI address (from sysfs) and port-1 rate. Empty when
// libibverbs is not installed or there are none.
std::vector<NicDesc> rdma_devices();

// Where an MoE proxy thread should run: the cores of `gpu_pci`'s slice when that GPU is known,
// else every core of the NIC's NUMA node; empty when the topology says nothing (virtual NIC,
// no NUMA information); `why` says which rule applied. Honours MOEFABRIC_TOPO_XML via `xml`.
ProxyCpus proxy_cpus(const std::string& xml, const NicDesc& nic, const std::optional<PciAddr>& gpu_pci);

// NICs that are the rails of one GPU, by name: one group per GPU with two or more rails (GPUs
// sharing the same rails give one group), for grouping NICs into multi-rail devices. Empty, with
// `why` saying so, when fewer than two NICs are on PCI, no GPU is found or the topology cannot be
// read. Honours MOEFABRIC_TOPO_XML via `xml`.
RailGroups gpu_rail_groups(const std::string& xml, const std::vector<NicDesc>& nics);

// PCI bus ids of the CUDA devices in CUDA's order, through the driver API loaded at run time.
// nullopt when the driver does not load or reports no device.
std::optional<std::vector<PciAddr>> cuda_gpus();

// Renders a cpu list as "0-3,8,10-11".
std::string cpu_list(const std::vector<int>& cpus);

}  // namespace moefabric::topo
