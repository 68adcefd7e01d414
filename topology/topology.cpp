#include "topology/topology.h"

#include <dlfcn.h>
#include <hwloc.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

namespace moefabric::topo {

// ---- small helpers ------------------------------------------------------------------------

std::string PciAddr::str() const {
  char b[32];
  snprintf(b, sizeof b, "%04x:%02x:%02x.%x", domain, bus, dev, func);
  return b;
}

std::optional<PciAddr> PciAddr::parse(const std::string& s) {
  // [dddd:]bb:dd.f, hex digits only
  auto hex = [](const std::string& t, size_t max_len, unsigned* out) {
    if (t.empty() || t.size() > max_len) return false;
    for (char c : t)
      if (!isxdigit(static_cast<unsigned char>(c))) return false;
    *out = static_cast<unsigned>(strtoul(t.c_str(), nullptr, 16));
    return true;
  };
  size_t dot = s.rfind('.');
  if (dot == std::string::npos) return std::nullopt;
  std::string head = s.substr(0, dot), fn = s.substr(dot + 1);
  PciAddr a;
  size_t c2 = head.rfind(':');
  if (c2 == std::string::npos || !hex(fn, 1, &a.func) || !hex(head.substr(c2 + 1), 2, &a.dev))
    return std::nullopt;
  std::string rest = head.substr(0, c2);
  size_t c1 = rest.rfind(':');
  if (c1 == std::string::npos) {
    if (!hex(rest, 2, &a.bus)) return std::nullopt;
  } else if (!hex(rest.substr(c1 + 1), 2, &a.bus) || !hex(rest.substr(0, c1), 4, &a.domain)) {
    return std::nullopt;
  }
  if (a.dev > 0x1f || a.func > 7) return std::nullopt;
  return a;
}

std::optional<PciAddr> PciAddr::from_sysfs_path(const std::string& path) {
  size_t end = path.size();
  while (end > 0) {
    size_t s = path.rfind('/', end - 1);
    size_t begin = s == std::string::npos ? 0 : s + 1;
    std::string part = path.substr(begin, end - begin);
    if (part.find(':') != std::string::npos)
      if (auto a = parse(part)) return a;
    if (s == std::string::npos) break;
    end = s;
  }
  return std::nullopt;
}

const char* path_name(Path p) {
  switch (p) {
    case Path::kPix:
      return "PIX";
    case Path::kPxb:
      return "PXB";
    case Path::kPhb:
      return "PHB";
    case Path::kNode:
      return "NODE";
    case Path::kSys:
      return "SYS";
  }
  return "?";
}

std::string cpu_list(const std::vector<int>& cpus) {
  std::string out;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += std::to_string(cpus[i]);
    if (j > i) {
      out += '-';
      out += std::to_string(cpus[j]);
    }
    i = j + 1;
  }
  return out.empty() ? "-" : out;
}

namespace {

std::string realpath_str(const std::string& p) {
  char buf[PATH_MAX];
  return realpath(p.c_str(), buf) ? std::string(buf) : std::string();
}

std::string basename_of(const std::string& p) {
  size_t s = p.rfind('/');
  return s == std::string::npos ? p : p.substr(s + 1);
}

// "100 Gb/sec (4X EDR)" -> 100000
int read_rate_mbps(const std::string& path) {
  std::ifstream f(path);
  double gbps = 0;
  if (!(f >> gbps)) return 0;
  return static_cast<int>(gbps * 1000);
}

bool is_bridge(hwloc_obj_t o) { return o != nullptr && o->type == HWLOC_OBJ_BRIDGE; }
bool is_host_bridge(hwloc_obj_t o) {
  return is_bridge(o) && o->attr->bridge.upstream_type == HWLOC_OBJ_BRIDGE_HOST;
}

PciAddr addr_of(hwloc_obj_t o) {
  const auto& p = o->attr->pcidev;
  return PciAddr{static_cast<unsigned>(p.domain), p.bus, p.dev, p.func};
}

// Bridges strictly between `o` and its ancestor `anc`.
int bridges_below(hwloc_obj_t o, hwloc_obj_t anc) {
  int n = 0;
  for (hwloc_obj_t p = o->parent; p != nullptr && p != anc; p = p->parent)
    if (is_bridge(p)) ++n;
  return n;
}

}  // namespace

// ---- rdma-core and CUDA, loaded at run time ------------------------------------------------

std::vector<NicDesc> rdma_devices() {
  std::vector<NicDesc> out;
  void* h = dlopen("libibverbs.so.1", RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr) return out;
  using GetList = void** (*)(int*);
  using GetName = const char* (*)(void*);
  using FreeList = void (*)(void**);
  auto get_list = reinterpret_cast<GetList>(dlsym(h, "ibv_get_device_list"));
  auto get_name = reinterpret_cast<GetName>(dlsym(h, "ibv_get_device_name"));
  auto free_list = reinterpret_cast<FreeList>(dlsym(h, "ibv_free_device_list"));
  if (get_list && get_name && free_list) {
    int n = 0;
    void** list = get_list(&n);
    for (int i = 0; list != nullptr && i < n; ++i) {
      NicDesc d;
      d.name = get_name(list[i]);
      std::string dev = "/sys/class/infiniband/" + d.name;
      d.pci = PciAddr::parse(basename_of(realpath_str(dev + "/device")));
      d.speed_mbps = read_rate_mbps(dev + "/ports/1/rate");
      d.provider = d.name.rfind("efa", 0) == 0 || d.name.rfind("rdmap", 0) == 0 ? "efa" : "verbs";
      out.push_back(std::move(d));
    }
    if (list != nullptr) free_list(list);
  }
  dlclose(h);
  return out;
}

std::optional<std::vector<PciAddr>> cuda_gpus() {
  void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr) return std::nullopt;
  using Init = int (*)(unsigned);
  using Count = int (*)(int*);
  using Get = int (*)(int*, int);
  using BusId = int (*)(char*, int, int);
  auto init = reinterpret_cast<Init>(dlsym(h, "cuInit"));
  auto count = reinterpret_cast<Count>(dlsym(h, "cuDeviceGetCount"));
  auto get = reinterpret_cast<Get>(dlsym(h, "cuDeviceGet"));
  auto busid = reinterpret_cast<BusId>(dlsym(h, "cuDeviceGetPCIBusId"));
  std::optional<std::vector<PciAddr>> out;
  int n = 0;
  if (init && count && get && busid && init(0) == 0 && count(&n) == 0 && n > 0) {
    std::vector<PciAddr> v;
    for (int i = 0; i < n; ++i) {
      int dev = 0;
      char id[64] = "";
      if (get(&dev, i) != 0 || busid(id, sizeof id, dev) != 0) break;
      if (auto a = PciAddr::parse(id)) v.push_back(*a);
    }
    if (static_cast<int>(v.size()) == n) out = std::move(v);
  }
  // The driver stays loaded: unloading libcuda after cuInit is not supported.
  return out;
}

// ---- the topology -------------------------------------------------------------------------

struct Topology::Hw {
  hwloc_topology_t topo = nullptr;
  ~Hw() {
    if (topo != nullptr) hwloc_topology_destroy(topo);
  }
};

Topology::~Topology() = default;

Status Topology::load(const Options& opts, std::unique_ptr<Topology>* out) {
  std::unique_ptr<Topology> t(new Topology());
  MF_CHECK(t->build(opts));
  *out = std::move(t);
  return Status::kOk;
}

namespace {

// The NUMA node an I/O object hangs under, or -1.
int numa_of(hwloc_topology_t topo, hwloc_obj_t o) {
  if (o == nullptr) return -1;
  hwloc_obj_t a = hwloc_get_non_io_ancestor_obj(topo, o);
  if (a == nullptr || a->nodeset == nullptr || hwloc_bitmap_weight(a->nodeset) != 1) return -1;
  return hwloc_bitmap_first(a->nodeset);
}

hwloc_obj_t find_pci(hwloc_topology_t topo, const PciAddr& a) {
  return hwloc_get_pcidev_by_busid(topo, a.domain, a.bus, a.dev, a.func);
}

// sysfs path of a PCI function: the real one on the live machine, else built from the tree the
// way Linux lays it out (/sys/devices/pciDDDD:BB/<root port>/.../<function>).
std::string pci_path_of(bool live, hwloc_obj_t o, const PciAddr& a) {
  if (live) {
    std::string p = realpath_str("/sys/bus/pci/devices/" + a.str());
    if (!p.empty()) return p;
  }
  if (o == nullptr) return "";
  std::vector<std::string> parts{a.str()};
  hwloc_obj_t p = o->parent;
  for (; p != nullptr && is_bridge(p) && !is_host_bridge(p); p = p->parent) parts.push_back(addr_of(p).str());
  char root[32] = "";
  if (is_host_bridge(p)) {
    snprintf(root, sizeof root, "pci%04x:%02x", static_cast<unsigned>(p->attr->bridge.downstream.pci.domain),
             p->attr->bridge.downstream.pci.secondary_bus);
  } else {
    snprintf(root, sizeof root, "pci%04x:%02x", a.domain, a.bus);
  }
  std::string out = std::string("/sys/devices/") + root;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) out += "/" + *it;
  return out;
}

// How a GPU reaches a NIC, from their common ancestor in the PCI tree.
Path path_between(hwloc_topology_t topo, hwloc_obj_t gpu, hwloc_obj_t nic, int gpu_numa, int nic_numa) {
  if (gpu == nullptr || nic == nullptr) return Path::kSys;
  hwloc_obj_t anc = hwloc_get_common_ancestor_obj(topo, gpu, nic);
  if (is_host_bridge(anc)) return Path::kPhb;
  if (is_bridge(anc) || anc->type == HWLOC_OBJ_PCI_DEVICE)
    return std::max(bridges_below(gpu, anc), bridges_below(nic, anc)) <= 1 ? Path::kPix : Path::kPxb;
  return gpu_numa >= 0 && gpu_numa == nic_numa ? Path::kNode : Path::kSys;
}

}  // namespace

Status Topology::build(const Options& opts) {
  MF_CHECK(load_hwloc(opts));
  collect_numa();
  std::vector<hwloc_obj_t> nic_obj = collect_nics(opts);
  collect_gpus(opts, nic_obj);
  assign_proxy_cores();
  return Status::kOk;
}

Status Topology::load_hwloc(const Options& opts) {
  hw_ = std::make_unique<Hw>();
  if (hwloc_topology_init(&hw_->topo) != 0) return Status::system_error("hwloc_topology_init failed");
  hwloc_topology_t topo = hw_->topo;
  hwloc_topology_set_io_types_filter(topo, HWLOC_TYPE_FILTER_KEEP_ALL);
  // hwloc's PCI plugin uses libpciaccess and unloads it again with the topology, leaving its
  // allocations unreachable (a leak report under LeakSanitizer on every load). Keep it resident.
  static void* const pciaccess = dlopen("libpciaccess.so.0", RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
  (void)pciaccess;
  // Only PCI and sysfs matter here; the OpenCL and GL plugins load vendor libraries (slow, and
  // they leave allocations behind once hwloc unloads them).
  for (const char* c : {"opencl", "gl"})
    (void)hwloc_topology_set_components(topo, HWLOC_TOPOLOGY_COMPONENTS_FLAG_BLACKLIST, c);
  live_ = opts.xml.empty();
  if (!live_ && hwloc_topology_set_xml(topo, opts.xml.c_str()) != 0)
    return Status::invalid_argument("cannot read hwloc XML " + opts.xml + ": " + strerror(errno));
  if (hwloc_topology_load(topo) != 0)
    return Status::system_error("hwloc could not load the " +
                                (live_ ? std::string("live topology") : opts.xml) + ": " + strerror(errno));
  source_ = live_ ? "live machine" : opts.xml;
  return Status::kOk;
}

// NUMA nodes and, per node, one PU per core.
void Topology::collect_numa() {
  hwloc_topology_t topo = hw_->topo;
  int nnodes = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
  numa_nodes_ = nnodes;
  int max_node = -1;
  for (int i = 0; i < nnodes; ++i)
    max_node =
        std::max(max_node, static_cast<int>(hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, i)->os_index));
  numa_cpus_.assign(static_cast<size_t>(max_node + 1), {});
  cores_ = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
  for (int c = 0; c < cores_; ++c) {
    hwloc_obj_t core = hwloc_get_obj_by_type(topo, HWLOC_OBJ_CORE, c);
    int pu = hwloc_bitmap_first(core->cpuset);
    if (pu < 0) continue;
    for (int i = 0; i < nnodes; ++i) {
      hwloc_obj_t node = hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, i);
      if (hwloc_bitmap_isset(node->cpuset, static_cast<unsigned>(pu)))
        numa_cpus_[node->os_index].push_back(pu);
    }
  }
  for (auto& v : numa_cpus_) std::sort(v.begin(), v.end());
}

// The NICs given in `opts`, else every network controller on PCI; returns their hwloc objects
// (null where the topology does not have one) in the order of nics_.
std::vector<hwloc_obj_t> Topology::collect_nics(const Options& opts) {
  hwloc_topology_t topo = hw_->topo;
  std::vector<hwloc_obj_t> nic_obj;
  if (opts.nics_given) {
    for (const NicDesc& d : opts.nics) {
      Nic n;
      static_cast<NicDesc&>(n) = d;
      hwloc_obj_t o = d.pci ? find_pci(topo, *d.pci) : nullptr;
      n.numa = numa_of(topo, o);
      if (d.pci) n.pci_path = pci_path_of(live_, o, *d.pci);
      nics_.push_back(std::move(n));
      nic_obj.push_back(o);
    }
    return nic_obj;
  }
  for (hwloc_obj_t o = nullptr; (o = hwloc_get_next_pcidev(topo, o)) != nullptr;) {
    if ((o->attr->pcidev.class_id >> 8) != 0x02) continue;  // network controllers
    Nic n;
    n.pci = addr_of(o);
    std::string ofed, net;
    for (hwloc_obj_t c = o->io_first_child; c != nullptr; c = c->next_sibling) {
      if (c->type != HWLOC_OBJ_OS_DEVICE || c->name == nullptr) continue;
      if (c->attr->osdev.type == HWLOC_OBJ_OSDEV_OPENFABRICS && ofed.empty()) ofed = c->name;
      if (c->attr->osdev.type == HWLOC_OBJ_OSDEV_NETWORK && net.empty()) net = c->name;
    }
    n.name = !ofed.empty() ? ofed : !net.empty() ? net : n.pci->str();
    unsigned vendor = o->attr->pcidev.vendor_id;
    n.provider = vendor == 0x1d0f ? "efa" : vendor == 0x15b3 ? "verbs" : "tcp";
    n.numa = numa_of(topo, o);
    n.pci_path = pci_path_of(live_, o, *n.pci);
    nics_.push_back(std::move(n));
    nic_obj.push_back(o);
  }
  return nic_obj;
}

// The GPUs (given, from the CUDA driver, else NVIDIA PCI functions), each with its path to every
// NIC and its rails: the NICs at the best path.
void Topology::collect_gpus(const Options& opts, const std::vector<hwloc_obj_t>& nic_obj) {
  hwloc_topology_t topo = hw_->topo;
  std::vector<PciAddr> gpu_pci;
  if (opts.gpus_given) {
    gpu_pci = opts.gpus;
    gpu_source_ = "given";
  } else if (auto cuda = live_ ? cuda_gpus() : std::nullopt) {
    gpu_pci = *cuda;
    gpu_source_ = "CUDA driver";
  } else {
    for (hwloc_obj_t o = nullptr; (o = hwloc_get_next_pcidev(topo, o)) != nullptr;) {
      unsigned cls = o->attr->pcidev.class_id;
      if (o->attr->pcidev.vendor_id == 0x10de && (cls == 0x0300 || cls == 0x0302))
        gpu_pci.push_back(addr_of(o));
    }
    std::sort(gpu_pci.begin(), gpu_pci.end());
    gpu_source_ = live_ ? "hwloc PCI devices (no CUDA driver)" : "hwloc PCI devices";
  }
  for (size_t g = 0; g < gpu_pci.size(); ++g) {
    Gpu gpu;
    gpu.index = static_cast<int>(g);
    gpu.pci = gpu_pci[g];
    hwloc_obj_t go = find_pci(topo, gpu.pci);
    gpu.numa = numa_of(topo, go);
    Path best = Path::kSys;
    for (size_t n = 0; n < nics_.size(); ++n) {
      gpu.path.push_back(path_between(topo, go, nic_obj[n], gpu.numa, nics_[n].numa));
      best = std::min(best, gpu.path.back());
    }
    for (size_t n = 0; n < nics_.size(); ++n)
      if (gpu.path[n] == best) gpu.rails.push_back(static_cast<int>(n));
    gpus_.push_back(std::move(gpu));
  }
}

// Proxy cores: the cores of each NUMA node split evenly among the GPUs on it, in GPU order.
void Topology::assign_proxy_cores() {
  std::map<int, std::vector<int>> by_node;
  for (const Gpu& g : gpus_) by_node[g.numa].push_back(g.index);
  for (auto& [node, list] : by_node) {
    std::vector<int> cpus;
    if (node >= 0 && node < static_cast<int>(numa_cpus_.size())) {
      cpus = numa_cpus_[node];
    } else {
      for (const auto& v : numa_cpus_) cpus.insert(cpus.end(), v.begin(), v.end());
      std::sort(cpus.begin(), cpus.end());
    }
    size_t k = list.size(), per = k ? std::max<size_t>(1, cpus.size() / k) : 0;
    for (size_t i = 0; i < k && !cpus.empty(); ++i) {
      size_t lo = std::min(i * per, cpus.size() - 1), hi = std::min(lo + per, cpus.size());
      gpus_[list[i]].proxy_cpus.assign(cpus.begin() + static_cast<long>(lo),
                                       cpus.begin() + static_cast<long>(hi));
    }
  }
}

RailGroups gpu_rail_groups(const std::string& xml, const std::vector<NicDesc>& nics) {
  int on_pci = 0;
  for (const NicDesc& n : nics) on_pci += n.pci.has_value();
  if (on_pci < 2) return {{}, "fewer than two NICs on PCI"};
  Options opts;
  opts.xml = xml;
  opts.nics_given = true;
  opts.nics = nics;
  std::unique_ptr<Topology> topo;
  if (Status s = Topology::load(opts, &topo); !s.ok()) return {{}, "topology not available: " + s.message()};
  return topo->rail_groups();
}

RailGroups Topology::rail_groups() const {
  std::vector<std::vector<std::string>> groups;
  for (const Gpu& g : gpus_) {
    if (g.rails.size() < 2) continue;
    std::vector<std::string> names;
    for (int r : g.rails) names.push_back(nics_[r].name);
    if (std::find(groups.begin(), groups.end(), names) == groups.end()) groups.push_back(names);
  }
  std::string why = groups.empty() ? (gpus_.empty() ? "no GPU found" : "no GPU has two or more rails")
                                   : std::to_string(groups.size()) + " GPU rail group(s) from " + source_;
  return {std::move(groups), std::move(why)};
}

std::vector<int> Topology::cpus_near_nic(int nic) const {
  if (nic < 0 || nic >= static_cast<int>(nics_.size())) return {};
  int node = nics_[nic].numa;
  if (node < 0 || node >= static_cast<int>(numa_cpus_.size())) return {};
  return numa_cpus_[node];
}

int Topology::gpu_by_pci(const PciAddr& pci) const {
  for (const Gpu& g : gpus_)
    if (g.pci == pci) return g.index;
  return -1;
}

std::string Topology::table() const {
  std::ostringstream o;
  o << "# moefabric-topo: " << source_ << " (hwloc " << HWLOC_VERSION << "), " << numa_nodes_ << " NUMA node"
    << (numa_nodes_ == 1 ? "" : "s") << ", " << cores_ << " cores, " << gpus_.size() << " GPU"
    << (gpus_.size() == 1 ? "" : "s") << ", " << nics_.size() << " NIC" << (nics_.size() == 1 ? "" : "s")
    << "\n";
  char line[512];
  if (gpus_.empty()) {
    o << "# no GPU found (GPUs from " << gpu_source_ << ")\n";
  } else {
    o << "# GPUs from " << gpu_source_ << "; rails = every NIC at the GPU's closest PCIe path\n";
    bool matrix = nics_.size() <= 16;
    snprintf(line, sizeof line, "%-6s %-13s %-5s %-14s", "GPU", "bus id", "NUMA", "proxy CPUs");
    o << line;
    if (matrix)
      for (size_t n = 0; n < nics_.size(); ++n) {
        snprintf(line, sizeof line, " %-5s", ("NIC" + std::to_string(n)).c_str());
        o << line;
      }
    o << "  rails\n";
    for (const Gpu& g : gpus_) {
      snprintf(line, sizeof line, "%-6s %-13s %-5s %-14s", ("GPU" + std::to_string(g.index)).c_str(),
               g.pci.str().c_str(), g.numa >= 0 ? std::to_string(g.numa).c_str() : "-",
               cpu_list(g.proxy_cpus).c_str());
      o << line;
      if (matrix)
        for (Path p : g.path) {
          snprintf(line, sizeof line, " %-5s", path_name(p));
          o << line;
        }
      std::string rails;
      for (int r : g.rails) {
        if (!rails.empty()) rails += ',';
        rails += nics_[r].name;
      }
      o << "  " << (rails.empty() ? "-" : rails) << " ("
        << (g.rails.empty() ? "none" : path_name(g.path[g.rails[0]])) << ")\n";
    }
  }
  snprintf(line, sizeof line, "%-6s %-14s %-12s %-10s %-13s %-5s %s\n", "NIC", "name", "provider", "speed",
           "bus id", "NUMA", "pciPath");
  o << line;
  for (size_t n = 0; n < nics_.size(); ++n) {
    const Nic& x = nics_[n];
    std::string speed = x.speed_mbps > 0 ? std::to_string(x.speed_mbps / 1000) + " Gbps" : "-";
    snprintf(line, sizeof line, "%-6s %-14s %-12s %-10s %-13s %-5s %s\n", ("NIC" + std::to_string(n)).c_str(),
             x.name.c_str(), x.provider.empty() ? "-" : x.provider.c_str(), speed.c_str(),
             x.pci ? x.pci->str().c_str() : "virtual", x.numa >= 0 ? std::to_string(x.numa).c_str() : "-",
             x.pci_path.empty() ? "-" : x.pci_path.c_str());
    o << line;
  }
  return o.str();
}

std::string Topology::json() const {
  nlohmann::ordered_json j = {{"source", source_},
                              {"hwloc", HWLOC_VERSION},
                              {"numa_nodes", numa_nodes_},
                              {"cores", cores_},
                              {"gpu_source", gpu_source_},
                              {"nics", nlohmann::ordered_json::array()},
                              {"gpus", nlohmann::ordered_json::array()}};
  for (size_t n = 0; n < nics_.size(); ++n) {
    const Nic& x = nics_[n];
    j["nics"].push_back({{"index", n},
                         {"name", x.name},
                         {"provider", x.provider},
                         {"speed_mbps", x.speed_mbps},
                         {"pci", x.pci ? nlohmann::ordered_json(x.pci->str()) : nullptr},
                         {"numa", x.numa},
                         {"pci_path", x.pci_path}});
  }
  for (const Gpu& x : gpus_) {
    nlohmann::ordered_json path = nlohmann::ordered_json::array();
    for (auto p : x.path) path.push_back(path_name(p));
    j["gpus"].push_back({{"index", x.index},
                         {"pci", x.pci.str()},
                         {"numa", x.numa},
                         {"proxy_cpus", x.proxy_cpus},
                         {"rails", x.rails},
                         {"path", path}});
  }
  return j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
}

ProxyCpus proxy_cpus(const std::string& xml, const NicDesc& nic, const std::optional<PciAddr>& gpu_pci) {
  Options o;
  o.xml = xml;
  o.nics_given = true;
  o.nics = {nic};
  if (gpu_pci) {
    o.gpus_given = true;
    o.gpus = {*gpu_pci};
  }
  std::unique_ptr<Topology> t;
  if (Status s = Topology::load(o, &t); !s.ok()) return {{}, "topology unavailable: " + s.message()};
  return t->proxy_cpus_for(0, gpu_pci && !t->gpus().empty() ? 0 : -1);
}

ProxyCpus Topology::proxy_cpus_for(int nic, int gpu) const {
  if (gpu >= 0 && gpu < static_cast<int>(gpus_.size()) && gpus_[gpu].numa >= 0 &&
      !gpus_[gpu].proxy_cpus.empty())
    return {gpus_[gpu].proxy_cpus,
            "GPU " + gpus_[gpu].pci.str() + " on NUMA node " + std::to_string(gpus_[gpu].numa)};
  std::vector<int> cpus = cpus_near_nic(nic);
  if (cpus.empty())
    return {{},
            nic >= 0 && nic < static_cast<int>(nics_.size())
                ? "NIC " + nics_[nic].name + " has no NUMA node (virtual or unknown)"
                : "no NIC"};
  std::string why = "NIC " + nics_[nic].name + " on NUMA node " + std::to_string(nics_[nic].numa);
  return {std::move(cpus), std::move(why)};
}

}  // namespace moefabric::topo
