#include "fabric/rail.h"

#include <atomic>
#include <set>
#include <sstream>

#include <rdma/fi_cm.h>

#include "common/log.h"

namespace moefabric::fabric {

Status Rail::open(int rail_index, NicInfo nic_info, const EndpointOptions& opt) {
  index = rail_index;
  nic = std::move(nic_info);
  fi_info* fi = nic.info.get();
  const std::string where = "rail " + std::to_string(index) + " (" + nic.domain + ")";
  fid_fabric* fab = nullptr;
  int rc = fi_fabric(fi->fabric_attr, &fab, nullptr);
  if (rc != 0) return Status::system_error(where + ": fi_fabric: " + fi_strerror(-rc));
  fabric.reset(fab);
  fid_domain* dom = nullptr;
  rc = fi_domain(fab, fi, &dom, nullptr);
  if (rc != 0) return Status::system_error(where + ": fi_domain: " + fi_strerror(-rc));
  domain.reset(dom);

  fi_av_attr av_attr = {};
  av_attr.type = FI_AV_TABLE;
  fid_av* a = nullptr;
  rc = fi_av_open(dom, &av_attr, &a, nullptr);
  if (rc != 0) return Status::system_error(where + ": fi_av_open: " + fi_strerror(-rc));
  av.reset(a);

  fi_cq_attr cq_attr = {};
  cq_attr.format = FI_CQ_FORMAT_DATA;
  cq_attr.size = 0;
  cq_attr.wait_obj = opt.wait_fd ? FI_WAIT_FD : FI_WAIT_NONE;
  fid_cq* q = nullptr;
  rc = fi_cq_open(dom, &cq_attr, &q, nullptr);
  if (rc != 0 && opt.wait_fd) {  // no wait fd on this provider: a polled CQ
    cq_attr.wait_obj = FI_WAIT_NONE;
    rc = fi_cq_open(dom, &cq_attr, &q, nullptr);
  }
  can_block = cq_attr.wait_obj != FI_WAIT_NONE;
  if (rc != 0) return Status::system_error(where + ": fi_cq_open: " + fi_strerror(-rc));
  cq.reset(q);

  fid_ep* e = nullptr;
  set_unique_shm_name(fi);
  rc = fi_endpoint(dom, fi, &e, nullptr);
  if (rc != 0) return Status::system_error(where + ": fi_endpoint: " + fi_strerror(-rc));
  ep.reset(e);
#ifdef FI_OPT_CUDA_API_PERMITTED
  if (opt.forbid_cuda_api && nic.provider == "efa") {
    bool permitted = false;
    (void)fi_setopt(&e->fid, FI_OPT_ENDPOINT, FI_OPT_CUDA_API_PERMITTED, &permitted, sizeof permitted);
  }
#endif
  if ((rc = fi_ep_bind(e, &a->fid, 0)) != 0 || (rc = fi_ep_bind(e, &q->fid, FI_TRANSMIT | FI_RECV)) != 0 ||
      (rc = fi_enable(e)) != 0) {
    return Status::system_error(where + ": endpoint bind/enable: " + fi_strerror(-rc));
  }
  addr_len = sizeof addr;
  rc = fi_getname(&e->fid, addr, &addr_len);
  if (rc != 0 || addr_len > kMaxAddrLen)
    return Status::system_error(where + ": fi_getname: " + (rc ? fi_strerror(-rc) : "address too long"));
  return Status::kOk;
}

Status Rail::av_insert(const uint8_t* peer_addr, size_t len, fi_addr_t* out) {
  std::string key(reinterpret_cast<const char*>(peer_addr), len);
  auto it = av_cache.find(key);
  if (it != av_cache.end()) {
    *out = it->second;
    return Status::kOk;
  }
  fi_addr_t fa = FI_ADDR_UNSPEC;
  int rc = fi_av_insert(av.get(), peer_addr, 1, &fa, 0, nullptr);
  if (rc != 1) {
    MF_WARN("rail %d (%s): fi_av_insert failed (%d): %s", index, nic.domain.c_str(), rc,
            rc < 0 ? fi_strerror(-rc) : "address rejected");
    return Status::kSystemError;
  }
  av_cache.emplace(std::move(key), fa);
  *out = fa;
  return Status::kOk;
}

std::string Rail::addr_str(const uint8_t* peer_addr, size_t len) const {
  char buf[160] = "";
  size_t n = sizeof buf;
  if (av == nullptr || fi_av_straddr(av.get(), peer_addr, buf, &n) == nullptr)
    return "an unprintable address";
  buf[sizeof buf - 1] = '\0';
  (void)len;
  return buf;
}

std::string Rail::lookup_str(fi_addr_t a) const {
  uint8_t name[kMaxAddrLen];
  size_t len = sizeof name;
  if (av == nullptr || fi_av_lookup(av.get(), a, name, &len) != 0 || len > sizeof name)
    return "AV entry " + std::to_string(a);
  return addr_str(name, len);
}

namespace {
std::atomic<TopoGroupsHook> g_topo_groups_hook{nullptr};  // trivially destructible
}  // namespace

void set_topo_groups_hook(TopoGroupsHook hook) { g_topo_groups_hook.store(hook); }
TopoGroupsHook topo_groups_hook() { return g_topo_groups_hook.load(); }

namespace {
std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep))
    if (!item.empty()) out.push_back(item);
  return out;
}
}  // namespace

std::string rail_spec(const Params& params) {
  if (!params.rails.empty()) return params.rails;
  return params.tcp_iface.find('+') != std::string::npos ? params.tcp_iface : std::string();
}

std::vector<std::string> rail_spec_names(const std::string& spec) {
  std::vector<std::string> out;
  for (const auto& dev : split(spec, ','))
    for (const auto& r : split(dev, '+')) out.push_back(r);
  return out;
}

Status rail_groups(const std::string& spec, const std::vector<NicInfo>& nics,
                   const std::vector<std::vector<std::string>>& topo_groups,
                   std::vector<std::vector<int>>* out) {
  out->clear();
  auto find = [&](const std::string& name) {
    for (size_t i = 0; i < nics.size(); ++i)
      if (nics[i].domain == name) return static_cast<int>(i);
    return -1;
  };
  std::set<int> used;
  if (!spec.empty()) {
    for (const auto& dev : split(spec, ',')) {
      std::vector<int> g;
      for (const auto& name : split(dev, '+')) {
        int i = find(name);
        if (i < 0) {
          std::string have;
          for (const auto& n : nics) have += (have.empty() ? "" : ", ") + n.domain;
          return Status::invalid_usage("rail spec '" + spec + "': no NIC named '" + name +
                                       "' (found: " + have + ")");
        }
        if (!used.insert(i).second)
          return Status::invalid_usage("rail spec '" + spec + "': NIC '" + name + "' named twice");
        g.push_back(i);
      }
      if (g.size() > static_cast<size_t>(kMaxRails))
        return Status::invalid_usage("rail spec '" + spec + "': device '" + dev + "' has more than " +
                                     std::to_string(kMaxRails) + " rails");
      if (!g.empty()) out->push_back(std::move(g));
    }
    if (out->empty()) return Status::invalid_usage("rail spec '" + spec + "' names no NIC");
    return Status::kOk;
  }
  // Default: the topology's GPU rail groups (complete groups of NICs we have), then every
  // remaining NIC alone, in discovery order (a group sits where its first NIC was).
  std::vector<int> group_of(nics.size(), -1);
  std::vector<std::vector<int>> tg;
  for (const auto& names : topo_groups) {
    std::vector<int> g;
    for (const auto& n : names) {
      int i = find(n);
      if (i >= 0 && group_of[i] < 0 && g.size() < static_cast<size_t>(kMaxRails)) g.push_back(i);
    }
    if (g.size() < 2) continue;
    for (int i : g) group_of[i] = static_cast<int>(tg.size());
    tg.push_back(std::move(g));
  }
  std::vector<bool> emitted(tg.size(), false);
  for (size_t i = 0; i < nics.size(); ++i) {
    int gi = group_of[i];
    if (gi < 0) {
      out->push_back({static_cast<int>(i)});
    } else if (!emitted[gi]) {
      emitted[gi] = true;
      out->push_back(tg[gi]);
    }
  }
  return Status::kOk;
}

}  // namespace moefabric::fabric
