#include "plugin/net/net.h"

#include <algorithm>

#include <dlfcn.h>
#include <pthread.h>

#include <fstream>

#include <chrono>
#include <mutex>

#include "common/log.h"

namespace moefabric::fabric {
namespace {

// The one process-wide pointer (trivially constructible: safe across dlopen/dlclose).
pthread_mutex_t g_net_mu = PTHREAD_MUTEX_INITIALIZER;
Net* g_net = nullptr;

Device* comm_device(void* comm) {
  // Every comm object we hand out starts with its Comm base; listen comms are separate.
  return static_cast<Comm*>(comm)->dev;
}

// NICs -> devices: MOEFABRIC_RAILS, else MOEFABRIC_TCP_IFACE when it joins rails with '+',
// else the topology's per-GPU rail groups (through the hook the NCCL plugin sets), else one NIC
// per device.
Status device_groups(const Params& params, const std::vector<NicInfo>& nics,
                     std::vector<std::vector<int>>* groups) {
  const std::string spec = rail_spec(params);
  std::vector<std::vector<std::string>> topo;
  if (spec.empty()) {
    if (TopoGroupsHook hook = topo_groups_hook()) {
      TopoGroups t = hook(params, nics);
      MF_INFO(log::kInit | log::kNet, "rail grouping by topology: %s", t.why.c_str());
      topo = std::move(t.groups);
    }
  }
  MF_CHECK(rail_groups(spec, nics, topo, groups));
  for (const auto& g : *groups) {
    if (g.size() < 2) continue;
    std::string names;
    for (int k : g) names += (names.empty() ? "" : "+") + nics[k].domain;
    MF_INFO(log::kInit | log::kNet, "device %s: %zu rails (%s)", names.c_str(), g.size(),
            spec.empty() ? "the rails of one GPU per the topology" : spec.c_str());
  }
  return Status::kOk;
}

}  // namespace

Status Net::acquire(Net** out) {
  pthread_mutex_lock(&g_net_mu);
  if (g_net == nullptr) {
    std::unique_ptr<Net> net(new Net());
    net->params_ = Params::load();
    net->params_.dump();
    std::vector<NicInfo> nics;
    std::vector<std::vector<int>> groups;
    Status s = nic_discover(net->params_, &nics);
    if (s.ok()) s = device_groups(net->params_, nics, &groups);
    for (size_t i = 0; s.ok() && i < groups.size(); ++i) {
      std::vector<NicInfo> rails;
      for (int k : groups[i]) rails.push_back(std::move(nics[k]));
      std::unique_ptr<Device> d;
      s = Device::open(net->params_, std::move(rails), &d);
      if (s.ok()) net->devices_.push_back(std::move(d));
    }
    if (!s.ok()) {
      pthread_mutex_unlock(&g_net_mu);
      return s;
    }
    net->progress_thread_ = std::thread([n = net.get()] { n->progress_loop(); });
    g_net = net.release();
  }
  ++g_net->refs_;
  *out = g_net;
  pthread_mutex_unlock(&g_net_mu);
  return Status::kOk;
}

Net* Net::current() {
  pthread_mutex_lock(&g_net_mu);
  Net* n = g_net;
  pthread_mutex_unlock(&g_net_mu);
  return n;
}

void Net::release(Net* net) {
  pthread_mutex_lock(&g_net_mu);
  if (net != nullptr && net == g_net && --net->refs_ == 0) {
    g_net = nullptr;
    delete net;
  }
  pthread_mutex_unlock(&g_net_mu);
}

void Net::shutdown() {
  pthread_mutex_lock(&g_net_mu);
  Net* net = g_net;
  g_net = nullptr;
  pthread_mutex_unlock(&g_net_mu);
  delete net;
}

Net::~Net() {
  stop_ = true;
  if (progress_thread_.joinable()) progress_thread_.join();
  devices_.clear();
}

// Background progress: answers pings and drains completions when the application is not
// calling in (manual-progress providers), and runs liveness checks.
void Net::progress_loop() {
  auto period = std::chrono::milliseconds(std::clamp<int64_t>(params_.keepalive_ms / 4, 5, 100));
  while (!stop_.load()) {
    std::this_thread::sleep_for(period);
    for (auto& d : devices_) {
      std::unique_lock<std::mutex> lock(d->mu, std::try_to_lock);
      if (!lock.owns_lock()) continue;  // the application is progressing it right now
      (void)d->progress();
      d->check_liveness(Clock::now());
    }
  }
}

Status Net::properties(int dev, NetProperties* p) const {
  Device* d = device(dev);
  if (d == nullptr) return Status::kInvalidArgument;
  const NicInfo& nic = d->nic();
  p->name = nic.name;
  p->pci_path = nic.pci_path;
  p->provider = nic.provider;
  p->guid = nic.guid;
  bool gdr = nic.hmem && (params_.gdr == "1" || params_.gdr == "auto") && cuda::loadable();
  p->ptr_support = 1 | (gdr ? 2 : 0);
#ifdef FI_MR_DMABUF
  p->dmabuf = gdr;
  if (gdr) p->ptr_support |= 4;
#endif
  p->speed_mbps = nic.speed_mbps;
  p->port = 1;
  p->latency_us = params_.latency_us > 0  ? static_cast<float>(params_.latency_us)
                  : nic.provider == "efa" ? 35.0f
                                          : 10.0f;
  p->max_comms = wire::kMaxCommId;
  p->max_recvs = d->tagged() ? 1 : wire::kMaxRecvs;
  p->max_p2p_bytes = d->max_write() * wire::kMaxSegments;
  if (d->tagged()) p->max_p2p_bytes = std::min<size_t>(nic.info->ep_attr->max_msg_size, size_t{1} << 40);
  p->reg_is_global = true;
  p->force_flush = gdr && nic.hmem_async;
  return Status::kOk;
}

Status net_listen(Net* net, int dev, void* handle, void** listen_comm) {
  Device* d = net->device(dev);
  if (d == nullptr) return Status::kInvalidArgument;
  std::lock_guard<std::mutex> lock(d->mu);
  ListenComm* lc = nullptr;
  MF_CHECK(d->listen(handle, &lc));
  *listen_comm = lc;
  return Status::kOk;
}

Status net_connect(Net* net, int dev, void* handle, void** send_comm) {
  *send_comm = nullptr;
  Device* d = net->device(dev);
  if (d == nullptr) return Status::kInvalidArgument;
  std::lock_guard<std::mutex> lock(d->mu);
  SendComm* c = nullptr;
  MF_CHECK(d->connect(handle, &c));
  *send_comm = c;
  return Status::kOk;
}

Status net_accept(void* listen_comm, void** recv_comm) {
  *recv_comm = nullptr;
  auto* lc = static_cast<ListenComm*>(listen_comm);
  std::lock_guard<std::mutex> lock(lc->dev->mu);
  RecvComm* c = nullptr;
  MF_CHECK(lc->dev->accept(lc, &c));
  *recv_comm = c;
  return Status::kOk;
}

Status net_reg_mr_dmabuf(void* comm, void* data, size_t size, int ptr_type, uint64_t offset, int fd,
                         void** mhandle) {
  *mhandle = nullptr;
  Device* d = comm_device(comm);
  MemType type = MemType::kHost;
  int cuda_dev = -1;
  if (ptr_type == 2 /* NCCL_PTR_CUDA */) {
    if (!d->nic().hmem) {
      MF_WARN("regMr: CUDA memory offered but %s cannot register device memory", d->nic().name.c_str());
      return Status::kInvalidArgument;
    }
    type = MemType::kCuda;
    cuda_dev = cuda::device_of(data);
  } else if (ptr_type != 1) {
    MF_WARN("regMr: unsupported pointer type %d", ptr_type);
    return Status::kInvalidArgument;
  }
  // Peers write only into receive buffers: registrations through a receive comm get remote
  // write, those through a send comm none (an irecv with one of those gets a writable one).
  const MrAccess access =
      static_cast<Comm*>(comm)->type == Comm::Type::kRecv ? MrAccess::kRemoteWrite : MrAccess::kLocal;
  std::lock_guard<std::mutex> lock(d->mu);
  MrEntry* e = nullptr;
  Status s = d->mr_cache().acquire(data, size, type, access, cuda_dev, fd, offset, &e);
  if (!s.ok()) {
    MF_WARN("%s: %s", d->nic().name.c_str(), s.message().c_str());
    return s;
  }
  *mhandle = e;
  return Status::kOk;
}

Status net_reg_mr(void* comm, void* data, size_t size, int ptr_type, void** mhandle) {
  return net_reg_mr_dmabuf(comm, data, size, ptr_type, 0, -1, mhandle);
}

Status net_dereg_mr(void* comm, void* mhandle) {
  Device* d = comm_device(comm);
  std::lock_guard<std::mutex> lock(d->mu);
  d->mr_cache().release(static_cast<MrEntry*>(mhandle));
  return Status::kOk;
}

Status net_isend(void* send_comm, void* data, size_t size, int tag, void* mhandle, void** request) {
  *request = nullptr;
  auto* c = static_cast<SendComm*>(send_comm);
  std::lock_guard<std::mutex> lock(c->dev->mu);
  SendReq* r = nullptr;
  MF_CHECK(c->dev->isend(c, data, size, tag, static_cast<MrEntry*>(mhandle), &r));
  *request = r;
  return Status::kOk;
}

Status net_irecv(void* recv_comm, int n, void** data, const size_t* sizes, const int* tags, void** mhandles,
                 void** request) {
  bool optional = reinterpret_cast<uintptr_t>(*request) == kOptionalRecvCompletion;
  *request = nullptr;
  auto* c = static_cast<RecvComm*>(recv_comm);
  std::lock_guard<std::mutex> lock(c->dev->mu);
  RecvGroup* g = nullptr;
  MF_CHECK(c->dev->irecv(c, n, data, sizes, tags, reinterpret_cast<MrEntry**>(mhandles), optional, &g));
  *request = g;
  return Status::kOk;
}

Status net_iflush(void* recv_comm, int n, void** data, const int* sizes, void** mhandles, void** request) {
  (void)data;
  *request = nullptr;
  auto* c = static_cast<RecvComm*>(recv_comm);
  // RDMA NICs: writes land through the provider's host-coherent path or, for GPU memory, through
  // a NIC whose writes Hopper orders before the completion: nothing to flush. Providers that copy
  // into GPU memory from the host need a fence after those copies.
  if (!c->dev->nic().hmem_async) return Status::kOk;
  bool gpu = false;
  for (int i = 0; i < n; ++i) {
    auto* mr = static_cast<MrEntry*>(mhandles[i]);
    gpu |= mr != nullptr && mr->type == MemType::kCuda && sizes[i] > 0;
  }
  if (!gpu) return Status::kOk;
  FlushReq* f = nullptr;
  for (auto& x : c->flushes)
    if (!x->in_use) {
      f = x.get();
      break;
    }
  if (f == nullptr) {
    if (c->flushes.size() >= 64) return Status::kOk;  // NCCL retries while none is free
    c->flushes.push_back(std::make_unique<FlushReq>());
    f = c->flushes.back().get();
  }
  if (Status s = f->fence.record(); !s.ok()) {
    MF_WARN("iflush on %s (peer rank %d): %s", c->dev->nic().name.c_str(), c->peer_rank, s.message().c_str());
    return s;
  }
  f->in_use = true;
  f->comm = c;
  f->start = Clock::now();
  *request = f;
  return Status::kOk;
}

Status net_test(void* request, int* done, size_t* sizes, int* nsizes) {
  *done = 0;
  auto* r = static_cast<Request*>(request);
  if (r->type == Request::Type::kFlush) {
    auto* f = static_cast<FlushReq*>(r);
    bool d = false;
    if (Status s = f->fence.query(&d); !s.ok()) {
      f->in_use = false;
      MF_WARN("iflush: %s", s.message().c_str());
      return s;
    }
    if (d) {
      f->in_use = false;
      *done = 1;
      if (nsizes) *nsizes = 0;
      return Status::kOk;
    }
    const int64_t waited =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - f->start).count();
    if (waited > f->comm->dev->params().peer_timeout_ms) {
      f->in_use = false;
      MF_WARN(
          "iflush on %s (peer rank %d): GPU copies into the receive buffer not finished after "
          "%lld ms (legacy default stream blocked?) (MOEFABRIC_PEER_TIMEOUT_MS=%lld)",
          f->comm->dev->nic().name.c_str(), f->comm->peer_rank, static_cast<long long>(waited),
          static_cast<long long>(f->comm->dev->params().peer_timeout_ms));
      return Status::kSystemError;
    }
    return Status::kOk;
  }
  Comm* c =
      r->type == Request::Type::kSend ? static_cast<SendReq*>(r)->comm : static_cast<RecvGroup*>(r)->comm;
  std::lock_guard<std::mutex> lock(c->dev->mu);
  bool d = false;
  if (nsizes) *nsizes = r->type == Request::Type::kSend ? 1 : static_cast<RecvGroup*>(r)->n;
  MF_CHECK(c->dev->test(r, &d, sizes));
  *done = d ? 1 : 0;
  return Status::kOk;
}

Status net_close_send(void* send_comm) {
  if (send_comm == nullptr) return Status::kOk;
  auto* c = static_cast<Comm*>(send_comm);
  Device* d = c->dev;
  std::lock_guard<std::mutex> lock(d->mu);
  d->close_comm(c);
  return Status::kOk;
}

Status net_close_recv(void* recv_comm) { return net_close_send(recv_comm); }

Status net_close_listen(void* listen_comm) {
  if (listen_comm == nullptr) return Status::kOk;
  auto* lc = static_cast<ListenComm*>(listen_comm);
  Device* d = lc->dev;
  std::lock_guard<std::mutex> lock(d->mu);
  d->close_listen(lc);
  return Status::kOk;
}

NetCounters net_counters(Net* net) {
  NetCounters n;
  for (int i = 0; i < net->device_count(); ++i) {
    Device* d = net->device(i);
    std::lock_guard<std::mutex> lock(d->mu);
    n.live_comms += d->live_comms();
    n.live_mrs += d->mr_cache().stats().live;
    n.registrations += d->mr_cache().stats().registrations;
    n.writes += d->stats().writes;
    n.msgs_sent += d->stats().msgs_sent;
  }
  return n;
}

}  // namespace moefabric::fabric
