#include "plugin/nccl/topo_file.h"

#include <sys/mman.h>
#include <sys/utsname.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <regex>

namespace moefabric::fabric {
namespace {

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&':
        o += "&amp;";
        break;
      case '<':
        o += "&lt;";
        break;
      case '>':
        o += "&gt;";
        break;
      case '"':
        o += "&quot;";
        break;
      default:
        o += c;
    }
  }
  return o;
}

std::string attr(const char* key, const std::string& v) {
  return v.empty() ? std::string() : std::string(" ") + key + "=\"" + esc(v) + "\"";
}

std::string read_line(const std::string& p) {
  std::ifstream f(p);
  std::string s;
  std::getline(f, s);
  return s;
}

// A PCI tree node with the nets of the function it stands for.
struct Node {
  TopoPci pci;
  std::vector<const TopoNet*> nets;
  std::map<std::string, Node> children;  // by bus id
  std::vector<std::string> order;        // children in first-seen order
};

void emit_nic(const std::vector<const TopoNet*>& nets, const std::string& pad, std::string* out) {
  if (nets.empty()) return;
  *out += pad + "<nic>\n";
  for (const TopoNet* n : nets) {
    char guid[32], lat[32];
    snprintf(guid, sizeof guid, "0x%" PRIx64, n->guid);
    snprintf(lat, sizeof lat, "%.6f", static_cast<double>(n->latency_us));
    *out += pad + "  <net" + attr("name", n->name) + attr("dev", std::to_string(n->dev)) +
            attr("speed", std::to_string(n->speed_mbps)) + attr("port", std::to_string(n->port)) +
            attr("latency", lat) + attr("guid", guid) +
            attr("maxconn", n->maxconn > 0 ? std::to_string(n->maxconn) : "") +
            attr("gdr", n->gdr ? "1" : "0") + "/>\n";
  }
  *out += pad + "</nic>\n";
}

void emit_pci(const Node& node, const std::string& pad, std::string* out) {
  const TopoPci& p = node.pci;
  *out += pad + "<pci" + attr("busid", p.busid) + attr("class", p.cls) + attr("vendor", p.vendor) +
          attr("device", p.device) + " link_speed=\"" + esc(p.link_speed) + "\"" + " link_width=\"" +
          esc(p.link_width.empty() ? "0" : p.link_width) + "\">\n";
  for (const auto& id : node.order) emit_pci(node.children.at(id), pad + "  ", out);
  emit_nic(node.nets, pad + "  ", out);
  *out += pad + "</pci>\n";
}

}  // namespace

TopoCpu topo_host_cpu() {
  TopoCpu c;
  struct utsname u = {};
  if (uname(&u) == 0) c.arch = u.machine;
#if defined(__x86_64__)
  unsigned a = 0, b = 0, cx = 0, d = 0;
  if (__get_cpuid(0, &a, &b, &cx, &d)) {
    char v[13];
    std::memcpy(v, &b, 4);
    std::memcpy(v + 4, &d, 4);
    std::memcpy(v + 8, &cx, 4);
    v[12] = '\0';
    c.vendor = v;
  }
  if (__get_cpuid(1, &a, &b, &cx, &d)) {
    c.family = static_cast<int>(((a >> 8) & 0xf) + (((a >> 20) & 0xff) << 4));
    c.model = static_cast<int>(((a >> 4) & 0xf) + (((a >> 16) & 0xf) << 4));
  }
#endif
  for (int node = 0; node < 1024; ++node) {
    const std::string dir = "/sys/devices/system/node/node" + std::to_string(node);
    if (access(dir.c_str(), F_OK) != 0) {
      if (node > 64) break;  // node ids may have gaps; not this many
      continue;
    }
    std::string map = read_line(dir + "/cpumap");
    if (!map.empty()) c.affinity[node] = map;
  }
  return c;
}

std::string nccl_topo_xml(const std::vector<TopoNet>& nets, const TopoCpu& host) {
  struct Cpu {
    Node root;                                 // children: root-most PCI bridges
    std::vector<const TopoNet*> virtual_nets;  // NICs without PCI sit on the CPU
  };
  std::map<int, Cpu> cpus;
  for (const TopoNet& n : nets) {
    Cpu& cpu = cpus[n.numa < 0 ? -1 : n.numa];
    if (n.pci.empty()) {
      cpu.virtual_nets.push_back(&n);
      continue;
    }
    Node* at = &cpu.root;
    for (const TopoPci& p : n.pci) {
      auto [it, fresh] = at->children.try_emplace(p.busid);
      if (fresh) {
        it->second.pci = p;
        at->order.push_back(p.busid);
      }
      at = &it->second;
    }
    at->nets.push_back(&n);
  }
  std::string out = "<system version=\"1\">\n";
  for (const auto& [numa, cpu] : cpus) {
    auto aff = host.affinity.find(numa);
    out += "  <cpu" + attr("numaid", std::to_string(numa)) +
           attr("affinity", aff != host.affinity.end() ? aff->second : "") +
           attr("arch", host.arch == "aarch64" ? "arm64" : host.arch) + attr("vendor", host.vendor) +
           attr("familyid", host.family >= 0 ? std::to_string(host.family) : "") +
           attr("modelid", host.model >= 0 ? std::to_string(host.model) : "") + ">\n";
    for (const auto& id : cpu.root.order) emit_pci(cpu.root.children.at(id), "    ", &out);
    emit_nic(cpu.virtual_nets, "    ", &out);
    out += "  </cpu>\n";
  }
  out += "</system>\n";
  return out;
}

std::vector<TopoPci> topo_pci_chain(const std::string& sysfs_path) {
  static const std::regex bdf("^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\\.[0-7]$");
  std::vector<TopoPci> chain;
  std::string prefix;
  size_t pos = 0;
  while (pos <= sysfs_path.size()) {
    size_t next = sysfs_path.find('/', pos);
    if (next == std::string::npos) next = sysfs_path.size();
    std::string comp = sysfs_path.substr(pos, next - pos);
    prefix += (pos == 0 ? "" : "/") + comp;
    if (std::regex_match(comp, bdf)) {
      TopoPci p;
      p.busid = comp;
      for (char& c : p.busid) c = static_cast<char>(tolower(c));
      p.cls = read_line(prefix + "/class");
      p.vendor = read_line(prefix + "/vendor");
      p.device = read_line(prefix + "/device");
      // As NCCL derives them itself: the slower of the function's and its upstream port's
      // (../) maximum speed, the narrower of their widths, 0 where sysfs has none.
      const std::string ds = read_line(prefix + "/max_link_speed");
      const std::string ps = read_line(prefix + "/../max_link_speed");
      float dv = 0, pv = 0;
      const bool dk = sscanf(ds.c_str(), "%f GT/s", &dv) == 1, pk = sscanf(ps.c_str(), "%f GT/s", &pv) == 1;
      p.link_speed = pk && (!dk || pv < dv) ? ps : ds;
      const long dw = strtol(read_line(prefix + "/max_link_width").c_str(), nullptr, 0);
      const long pw = strtol(read_line(prefix + "/../max_link_width").c_str(), nullptr, 0);
      p.link_width = std::to_string(std::min(dw, pw));
      chain.push_back(std::move(p));
    }
    pos = next + 1;
  }
  return chain;
}

Status nccl_topo_install(const std::string& xml, TopoInstall* out) {
  *out = TopoInstall{};
  const char* user = std::getenv("NCCL_TOPO_FILE");
  if (user != nullptr && *user != '\0') {
    out->what = std::string("NCCL_TOPO_FILE=") + user + " set by the user: left alone";
    return Status::kOk;
  }
  int f = memfd_create("moefabric-nccl-topo.xml", MFD_CLOEXEC);
  if (f < 0) return Status::system_error(std::string("memfd_create failed: ") + strerror(errno));
  size_t off = 0;
  while (off < xml.size()) {
    ssize_t n = write(f, xml.data() + off, xml.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      Status s = Status::system_error(std::string("writing the topology memfd failed: ") + strerror(errno));
      close(f);
      return s;
    }
    off += static_cast<size_t>(n);
  }
  std::string path = "/proc/self/fd/" + std::to_string(f);
  setenv("NCCL_TOPO_FILE", path.c_str(), 1);
  out->fd = f;
  out->what = "NCCL_TOPO_FILE=" + path + " (" + std::to_string(xml.size()) + " bytes of topology XML)";
  return Status::kOk;
}

void nccl_topo_uninstall(int fd) {
  if (fd < 0) return;
  std::string path = "/proc/self/fd/" + std::to_string(fd);
  const char* cur = std::getenv("NCCL_TOPO_FILE");
  if (cur != nullptr && path == cur) unsetenv("NCCL_TOPO_FILE");
  close(fd);
}

}  // namespace moefabric::fabric
