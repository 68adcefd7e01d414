#include "fabric/info.h"

#include <climits>
#include <csignal>
#include <dirent.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <random>
#include <unistd.h>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <set>
#include <atomic>
#include <cerrno>
#include <mutex>
#include <sstream>

#include <rdma/fi_errno.h>

#include "common/log.h"
#include "fabric/rail.h"

namespace moefabric::fabric {
namespace {

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

// What this machine has, for an error that found nothing usable: every libfabric provider (no
// filter) and every network interface, "down" marked.
std::string machine_inventory() {
  std::set<std::string> provs;
  fi_info* list = nullptr;
  if (fi_getinfo(FI_VERSION(FI_MAJOR_VERSION, FI_MINOR_VERSION), nullptr, nullptr, 0, nullptr, &list) == 0) {
    for (fi_info* fi = list; fi != nullptr; fi = fi->next)
      if (fi->fabric_attr != nullptr && fi->fabric_attr->prov_name != nullptr)
        provs.insert(fi->fabric_attr->prov_name);
    fi_freeinfo(list);
  }
  std::set<std::string> ifs;
  ifaddrs* ifa = nullptr;
  if (getifaddrs(&ifa) == 0) {
    for (ifaddrs* i = ifa; i != nullptr; i = i->ifa_next)
      if (i->ifa_name != nullptr)
        ifs.insert(std::string(i->ifa_name) + ((i->ifa_flags & IFF_UP) ? "" : " (down)"));
    freeifaddrs(ifa);
  }
  auto join = [](const std::set<std::string>& v) {
    std::string o;
    for (const auto& x : v) o += (o.empty() ? "" : ", ") + x;
    return o.empty() ? std::string("none") : o;
  };
  return "libfabric providers on this machine: " + join(provs) + "; network interfaces: " + join(ifs) +
         " (pick with MOEFABRIC_PROVIDER, MOEFABRIC_TCP_IFACE)";
}

std::string realpath_str(const std::string& p) {
  char buf[PATH_MAX];
  if (::realpath(p.c_str(), buf) == nullptr) return {};
  return buf;
}

int read_int_file(const std::string& p, int def) {
  std::ifstream f(p);
  long v = 0;
  if (f >> v && v > 0 && v < INT_MAX) return static_cast<int>(v);
  return def;
}

bool is_tcp_like(const std::string& prov) {
  return prov.rfind("tcp", 0) == 0 || prov.rfind("sockets", 0) == 0 || prov.rfind("udp", 0) == 0 ||
         prov.rfind("net", 0) == 0;
}

// Fills pci_path/speed/guid from libfabric's NIC attributes, falling back to sysfs.
void describe(NicInfo* nic) {
  const fi_info* fi = nic->info.get();
  if (fi->nic != nullptr && fi->nic->bus_attr != nullptr && fi->nic->bus_attr->bus_type == FI_BUS_PCI) {
    const auto& pci = fi->nic->bus_attr->attr.pci;
    char bdf[64];
    snprintf(bdf, sizeof bdf, "/sys/bus/pci/devices/%04x:%02x:%02x.%x", pci.domain_id, pci.bus_id,
             pci.device_id, pci.function_id);
    nic->pci_path = realpath_str(bdf);
  }
  if (nic->pci_path.empty() && is_tcp_like(nic->provider))
    nic->pci_path = realpath_str("/sys/class/net/" + nic->domain + "/device");
  if (fi->nic != nullptr && fi->nic->link_attr != nullptr && fi->nic->link_attr->speed > 0)
    nic->speed_mbps = static_cast<int>(fi->nic->link_attr->speed / 1000000ull);
  if (nic->speed_mbps <= 0 && is_tcp_like(nic->provider))
    nic->speed_mbps = read_int_file("/sys/class/net/" + nic->domain + "/speed", 10000);
  if (nic->speed_mbps <= 0) nic->speed_mbps = nic->provider == "shm" ? 100000 : 10000;
  nic->guid = std::hash<std::string>{}(nic->provider + "/" + nic->domain + "/" + nic->pci_path);
}

}  // namespace

InfoPtr nic_hints(const std::string& provider, bool want_hmem, bool want_tagged) {
  InfoPtr hints(fi_allocinfo());
  if (!hints) return hints;
  hints->caps = FI_MSG | FI_RMA | FI_WRITE | FI_REMOTE_WRITE;
  if (want_tagged) hints->caps = FI_MSG | FI_TAGGED;
  if (want_hmem) hints->caps |= FI_HMEM;
  hints->mode = FI_CONTEXT | FI_CONTEXT2;
  hints->ep_attr->type = FI_EP_RDM;
  hints->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY |
                                FI_MR_ENDPOINT | (want_hmem ? FI_MR_HMEM : 0);
  hints->domain_attr->threading = FI_THREAD_DOMAIN;
  hints->domain_attr->control_progress = FI_PROGRESS_UNSPEC;
  hints->domain_attr->data_progress = FI_PROGRESS_UNSPEC;
  if (!want_tagged) hints->domain_attr->cq_data_size = 4;
  hints->tx_attr->msg_order = FI_ORDER_NONE;
  hints->rx_attr->msg_order = FI_ORDER_NONE;
  hints->fabric_attr->prov_name = strdup(provider.c_str());
  return hints;
}

namespace {
constexpr char kShmPrefix[] = "moefabric-";
}  // namespace

// This process's PID namespace (the inode number of /proc/self/ns/pid), 0 if unknown.
uint64_t pid_namespace_id() {
  char link[64] = {};
  ssize_t n = readlink("/proc/self/ns/pid", link, sizeof link - 1);
  unsigned long long ino = 0;
  if (n > 0 && sscanf(link, "pid:[%llu]", &ino) == 1) return ino;
  return 0;
}

std::string shm_region_name(uint64_t pidns, int pid, uint32_t random, unsigned n) {
  char name[80];
  snprintf(name, sizeof name, "%s%llx-%d-%08x-%u", kShmPrefix, static_cast<unsigned long long>(pidns), pid,
           random, n);
  return name;
}

bool shm_region_stale(const char* name, uint64_t pidns, const std::function<bool(long)>& pid_alive) {
  if (pidns == 0 || strncmp(name, kShmPrefix, sizeof kShmPrefix - 1) != 0) return false;
  char* end = nullptr;
  const unsigned long long ns = strtoull(name + sizeof kShmPrefix - 1, &end, 16);
  if (end == nullptr || *end != '-' || ns != pidns) return false;  // another namespace's, or unknown
  const long pid = strtol(end + 1, &end, 10);
  if (end == nullptr || *end != '-' || pid <= 0) return false;
  return !pid_alive(pid);
}

// Regions of ours left in /dev/shm by processes that died without closing (SIGKILL). Only those
// of our own PID namespace: /dev/shm may be shared between containers whose pids mean other
// processes (or none) here, and unlinking a live process's region would cut it off.
void remove_stale_shm_regions(const char* dir) {
  DIR* d = opendir(dir);
  if (d == nullptr) return;
  const uint64_t ns = pid_namespace_id();
  auto alive = [](long pid) { return kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH; };
  while (dirent* e = readdir(d)) {
    if (!shm_region_stale(e->d_name, ns, alive)) continue;
    std::string path = std::string(dir) + "/" + e->d_name;
    if (unlink(path.c_str()) == 0) MF_INFO(log::kInit, "removed stale shm region %s", path.c_str());
  }
  closedir(d);
}

// shm names each endpoint's region after the process id by default, so a new process that gets
// the pid of one killed earlier finds its region still there and fi_enable fails with EBUSY.
// Name ours shm_region_name() instead (PID namespace, pid, random, counter), and clear regions
// of dead processes of our namespace first.
void set_unique_shm_name(fi_info* fi) {
  if (fi->fabric_attr == nullptr || fi->fabric_attr->prov_name == nullptr ||
      std::string(fi->fabric_attr->prov_name) != "shm" || fi->addr_format != FI_ADDR_STR)
    return;
  static std::once_flag once;
  static std::atomic<unsigned> counter{0};
  std::call_once(once, [] { remove_stale_shm_regions("/dev/shm"); });
  std::random_device rd;
  const std::string name =
      shm_region_name(pid_namespace_id(), static_cast<int>(getpid()), rd(), counter.fetch_add(1));
  free(fi->src_addr);
  fi->src_addr = strdup(name.c_str());
  fi->src_addrlen = name.size() + 1;
}

// tcp;ofi_rxm (libfabric 1.17 through at least 2.x): when a connection closes while the payload
// of an incoming write *with remote CQ data* is still arriving, tcp reports an error completion
// with a NULL context to rxm, and rxm dereferences it while closing the connection: the process
// dies with SIGSEGV inside libfabric (at fi_close(ep) when the peer is still sending, or during
// progress when the peer dies mid-write). Incoming writes without CQ data are internal to tcp
// and are dropped cleanly, and a zero-byte write with CQ data completes as soon as its header
// is in. So on this provider the payload goes as fi_write and the immediate follows as a
// zero-byte fi_writedata, which FI_ORDER_WAW orders after it.
// MOEFABRIC_SPLIT_IMM: auto (that provider only), 0 (never), 1 (any provider ordering writes).
bool imm_write_needs_split(const fi_info* fi, const std::string& mode) {
  if (mode == "0") return false;
  const char* prov = fi->fabric_attr != nullptr ? fi->fabric_attr->prov_name : nullptr;
  bool rxm_tcp = prov != nullptr && std::string(prov) == "tcp;ofi_rxm";
  if (mode != "1" && !rxm_tcp) return false;
  uint64_t tx = fi->tx_attr != nullptr ? fi->tx_attr->msg_order : 0;
  uint64_t rx = fi->rx_attr != nullptr ? fi->rx_attr->msg_order : 0;
  if (!(tx & FI_ORDER_WAW) || !(rx & FI_ORDER_WAW)) {
    MF_WARN("%s does not order writes (FI_ORDER_WAW): immediates stay with their payload%s",
            prov ? prov : "provider",
            rxm_tcp ? " (a connection dropping mid-write may crash inside the provider)" : "");
    return false;
  }
  return true;
}

Status nic_discover(const Params& params, std::vector<NicInfo>* out) {
  std::vector<std::string> candidates;
  const char* fi_prov = std::getenv("FI_PROVIDER");
  if (!params.provider.empty())
    candidates = split_list(params.provider);
  else if (fi_prov != nullptr && *fi_prov != '\0')
    candidates = split_list(fi_prov);
  else
    candidates = {"efa", "verbs", "tcp"};

  bool tagged = params.protocol == "tagged";
  std::string tried;
  for (const std::string& prov : candidates) {
    bool hmem_wanted = params.gdr == "1" || (params.gdr == "auto" && (prov == "efa" || prov == "verbs"));
    fi_info* list = nullptr;
    int rc = -FI_ENODATA;
    bool hmem = false;
    // With the sender's address in receive completions (FI_SOURCE; FI_DIRECTED_RECV on the
    // tagged path) where the provider has it, else without (no source checks; logged).
    auto getinfo = [&](bool want_hmem, bool want_tagged) {
      for (int source = 1; source >= 0; --source) {
        InfoPtr hints = nic_hints(prov, want_hmem, want_tagged);
        if (source) hints->caps |= FI_SOURCE | (want_tagged ? FI_DIRECTED_RECV : 0);
        int r = fi_getinfo(FI_VERSION(FI_MAJOR_VERSION, FI_MINOR_VERSION), nullptr, nullptr, 0, hints.get(),
                           &list);
        if (r == 0 || source == 0) return r;
      }
      return -FI_ENODATA;
    };
    for (int attempt = hmem_wanted ? 0 : 1; attempt < 2 && rc != 0; ++attempt) {
      rc = getinfo(attempt == 0, tagged);
      hmem = rc == 0 && attempt == 0;
    }
    if (rc != 0 && !tagged && params.protocol == "auto") {
      // No usable RMA (or no 32-bit remote CQ data): fall back to tagged messaging.
      rc = getinfo(false, true);
    }
    tried += (tried.empty() ? "" : ", ") + prov + " (" + fi_strerror(-rc) + ")";
    if (rc != 0) continue;

    std::vector<std::string> allowed = rail_spec_names(params.tcp_iface);  // "a+b,c": a, b, c
    std::set<std::string> seen;
    std::vector<NicInfo> found;
    for (fi_info* fi = list; fi != nullptr; fi = fi->next) {
      std::string domain = fi->domain_attr->name ? fi->domain_attr->name : "";
      std::string provider = fi->fabric_attr->prov_name ? fi->fabric_attr->prov_name : prov;
      if (seen.count(domain)) continue;  // one entry per NIC (first address family wins)
      if (is_tcp_like(provider)) {
        if (fi->addr_format != FI_SOCKADDR_IN && fi->addr_format != FI_SOCKADDR_IN6) continue;
        if (!allowed.empty()) {
          bool ok = false;
          for (const auto& a : allowed) ok |= a == domain;
          if (!ok) continue;
        }
      }
      NicInfo nic;
      nic.info.reset(fi_dupinfo(fi));
      nic.provider = provider;
      nic.domain = domain;
      nic.hmem = hmem && (fi->caps & FI_HMEM);
      nic.hmem_async = nic.hmem && (provider == "shm" || provider == "sockets" || is_tcp_like(provider));
      nic.rma = (fi->caps & FI_RMA) && fi->domain_attr->cq_data_size >= 4;
      nic.tagged = (fi->caps & FI_TAGGED) != 0;
      nic.split_imm = nic.rma && imm_write_needs_split(fi, params.split_imm);
      nic.source = (fi->caps & FI_SOURCE) != 0;
      nic.directed = nic.source && (fi->caps & FI_DIRECTED_RECV) != 0;
      nic.write_source = nic.source && provider == "shm";
      if (!nic.source)
        MF_WARN(
            "%s (%s): no FI_SOURCE: messages on a connection are not checked against its peer's "
            "address",
            domain.c_str(), provider.c_str());
      seen.insert(domain);
      found.push_back(std::move(nic));
    }
    fi_freeinfo(list);

    // Default tcp selection: skip loopback/docker unless nothing else is there.
    if (params.tcp_iface.empty() && !found.empty() && is_tcp_like(found[0].provider)) {
      std::vector<NicInfo> real;
      for (auto& n : found)
        if (n.domain != "lo" && n.domain.rfind("docker", 0) != 0) real.push_back(std::move(n));
      if (!real.empty()) {
        found = std::move(real);
      } else {
        std::vector<NicInfo> lo;
        for (auto& n : found)
          if (n.domain == "lo") lo.push_back(std::move(n));
        found = std::move(lo);
      }
    }
    if (found.empty()) {
      tried += " [no NIC matched MOEFABRIC_TCP_IFACE=" + params.tcp_iface + "]";
      continue;
    }
    for (auto& n : found) {
      describe(&n);
      n.name = n.domain;
    }
    *out = std::move(found);
    return Status::kOk;
  }
  return Status::system_error("no usable libfabric provider; tried " + tried + ". " + machine_inventory());
}

}  // namespace moefabric::fabric
