// NCCL net-plugin adapters: ncclNetPlugin_v12 (NCCL 2.30+), ncclNetPlugin_v11 (NCCL 2.28-2.29)
// and v10/v9/v8 tables for older NCCLs, each member a few lines onto moefabric::fabric's one
// internal API. Every exported entry runs inside guard(), which turns exceptions into
// ncclInternalError and keeps the unload from tearing the state down under a call in progress.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>

#include "common/log.h"
#include "common/version.h"
#include "plugin/net/net.h"
#include "plugin/nccl/net_abi.h"
#include "plugin/nccl/net_topo.h"
#include "topology/fabric_nics.h"
#include "topology/topology.h"

#define MF_EXPORT __attribute__((visibility("default")))

namespace moefabric::nccl {
namespace {

using abi::result_t;
using fabric::Net;

struct Ctx {
  Net* net;
  uint64_t comm_id;
  int traffic_class;
};

result_t to_result(const Status& s) { return static_cast<result_t>(status_to_nccl(s)); }

// Calls inside the plugin right now, and whether it is being unloaded. A call counts itself in
// before it looks at the flag, the unload sets the flag before it counts the calls (both
// sequentially consistent), so once the unload sees no call inside, every later call sees the
// flag and returns without touching the state the unload frees.
std::atomic<int> g_inside{0};
std::atomic<bool> g_unloading{false};

template <class F>
result_t guard(const char* what, F&& f) {
  g_inside.fetch_add(1);
  struct Leave {
    ~Leave() { g_inside.fetch_sub(1); }
  } leave;
  if (g_unloading.load()) return abi::kInternalError;  // no logging: NCCL's logger may be gone
  try {
    return to_result(f());
  } catch (const std::bad_alloc&) {
    MF_WARN("%s: out of host memory", what);
    return abi::kSystemError;
  } catch (const std::exception& e) {
    MF_WARN("%s: unexpected exception: %s", what, e.what());
    return abi::kInternalError;
  } catch (...) {
    MF_WARN("%s: unexpected exception", what);
    return abi::kInternalError;
  }
}

Net* live_net() { return Net::current(); }

// Default NIC grouping: the NICs hwloc finds closest to one GPU (its rails) form one device.
fabric::TopoGroups topo_groups(const Params& params, const std::vector<fabric::NicInfo>& nics) {
  topo::RailGroups g = topo::gpu_rail_groups(params.topo_xml, topo::nic_descs(nics));
  return {std::move(g.groups), std::move(g.why)};
}

Status acquire_net(abi::logger_t log_fn, Net** out) {
  log::set_sink(reinterpret_cast<log::Sink>(log_fn));
  MF_INFO(log::kInit, "moefabric %s (%s)", MOEFABRIC_VERSION, MOEFABRIC_COMMIT);
  fabric::set_topo_groups_hook(&topo_groups);
  Status s = Net::acquire(out);
  if (!s.ok())
    MF_WARN("init failed: %s", s.message().c_str());
  else
    fabric::install_nccl_topo(**out);  // multi-rail devices only; before NCCL reads its topology
  return s;
}

// ---- v11 -----------------------------------------------------------------------------------
result_t init_v11(void** ctx, uint64_t comm_id, abi::comm_config_v11_t* config, abi::logger_t log_fn,
                  abi::profiler_callback_t) {
  return guard("init", [&]() -> Status {
    Net* net = nullptr;
    MF_CHECK(acquire_net(log_fn, &net));
    *ctx = new Ctx{net, comm_id, config ? config->trafficClass : abi::kTrafficClassUndef};
    MF_INFO(log::kInit | log::kNet, "init for comm 0x%llx: %d device(s)",
            static_cast<unsigned long long>(comm_id), net->device_count());
    return Status::kOk;
  });
}

result_t finalize_v11(void* ctx) {
  return guard("finalize", [&]() -> Status {
    auto* c = static_cast<Ctx*>(ctx);
    if (c == nullptr) return Status::kInvalidArgument;
    Net* net = c->net;
    delete c;
    Net::release(net);  // the last one joins the progress thread and closes every NIC
    if (Net::current() == nullptr) fabric::uninstall_nccl_topo();
    return Status::kOk;
  });
}

result_t devices(int* ndev) {
  return guard("devices", [&]() -> Status {
    Net* net = live_net();
    if (net == nullptr) return Status::kInternalError;
    *ndev = net->device_count();
    return Status::kOk;
  });
}

// Fills the fields every version shares; the callers add their own.
template <class P>
Status fill_common(int dev, P* p, fabric::NetProperties* np) {
  Net* net = live_net();
  if (net == nullptr) return Status::kInternalError;
  MF_CHECK(net->properties(dev, np));
  const fabric::NicInfo& nic = net->device(dev)->nic();
  p->name = const_cast<char*>(nic.name.c_str());
  p->pciPath = nic.pci_path.empty() ? nullptr : const_cast<char*>(nic.pci_path.c_str());
  p->guid = np->guid;
  p->ptrSupport = np->ptr_support;
  p->regIsGlobal = np->reg_is_global ? 1 : 0;
  p->speed = np->speed_mbps;
  p->port = np->port;
  p->latency = np->latency_us;
  p->maxComms = np->max_comms;
  p->maxRecvs = np->max_recvs;
  p->netDeviceType = abi::kNetDeviceHost;
  p->netDeviceVersion = 0;
  return Status::kOk;
}

template <class P>
Status fill_v9plus(int dev, P* p) {
  fabric::NetProperties np;
  MF_CHECK(fill_common(dev, p, &np));
  p->forceFlush = np.force_flush ? 1 : 0;
  p->vProps.ndevs = 1;
  p->vProps.devs[0] = dev;
  size_t cap = np.max_p2p_bytes < abi::kMaxNetSizeBytes ? np.max_p2p_bytes : abi::kMaxNetSizeBytes;
  p->maxP2pBytes = cap;
  p->maxCollBytes = cap;
  return Status::kOk;
}

template <class P>
Status fill_v11plus(int dev, P* p) {
  std::memset(p, 0, sizeof *p);
  MF_CHECK(fill_v9plus(dev, p));
  p->maxMultiRequestSize = 1;
  return Status::kOk;
}

result_t get_properties_v11(int dev, abi::properties_v11_t* p) {
  return guard("getProperties", [&] { return fill_v11plus(dev, p); });
}

// v12 adds the NIC's rail and plane. Each moefabric device (one NIC, or the rails of one GPU
// fused into one device) is its own rail, numbered by its device index: NCCL then keeps a ring
// that enters a node on device d leaving it on device d (as it does by NIC without a rail id),
// and takes device d of every host for one rail, which holds on a rail-optimized fabric where
// every host enumerates its GPUs' NICs in the same order. One plane (0) for all: NCCL refuses a
// path between two NICs only when their planes differ.
result_t get_properties_v12(int dev, abi::properties_v12_t* p) {
  return guard("getProperties", [&]() -> Status {
    MF_CHECK(fill_v11plus(dev, p));
    p->railId = static_cast<int16_t>(dev <= INT16_MAX ? dev : abi::kNetIdUndef);
    p->planeId = 0;
    return Status::kOk;
  });
}

result_t listen_v11(void* ctx, int dev, void* handle, void** listen_comm) {
  return guard("listen",
               [&] { return fabric::net_listen(static_cast<Ctx*>(ctx)->net, dev, handle, listen_comm); });
}

result_t connect_v11(void* ctx, int dev, void* handle, void** send_comm, abi::device_handle_t**) {
  return guard("connect",
               [&] { return fabric::net_connect(static_cast<Ctx*>(ctx)->net, dev, handle, send_comm); });
}

result_t accept_any(void* listen_comm, void** recv_comm, abi::device_handle_t**) {
  return guard("accept", [&] { return fabric::net_accept(listen_comm, recv_comm); });
}

result_t reg_mr(void* comm, void* data, size_t size, int type, void** mhandle) {
  return guard("regMr", [&] { return fabric::net_reg_mr(comm, data, size, type, mhandle); });
}

result_t reg_mr_dmabuf(void* comm, void* data, size_t size, int type, uint64_t offset, int fd,
                       void** mhandle) {
  return guard("regMrDmaBuf",
               [&] { return fabric::net_reg_mr_dmabuf(comm, data, size, type, offset, fd, mhandle); });
}

result_t dereg_mr(void* comm, void* mhandle) {
  return guard("deregMr", [&] { return fabric::net_dereg_mr(comm, mhandle); });
}

result_t isend_v11(void* send_comm, void* data, size_t size, int tag, void* mhandle, void*, void** request) {
  return guard("isend", [&] { return fabric::net_isend(send_comm, data, size, tag, mhandle, request); });
}

result_t irecv_v11(void* recv_comm, int n, void** data, size_t* sizes, int* tags, void** mhandles, void**,
                   void** request) {
  return guard("irecv",
               [&] { return fabric::net_irecv(recv_comm, n, data, sizes, tags, mhandles, request); });
}

result_t iflush(void* recv_comm, int n, void** data, int* sizes, void** mhandles, void** request) {
  return guard("iflush", [&] { return fabric::net_iflush(recv_comm, n, data, sizes, mhandles, request); });
}

result_t test(void* request, int* done, int* sizes) {
  return guard("test", [&]() -> Status {
    size_t s[fabric::wire::kMaxRecvs] = {};
    int n = 0;
    MF_CHECK(fabric::net_test(request, done, s, &n));
    if (*done && sizes != nullptr) {
      // NCCL passes room for n ints (n of the matching irecv; 1 for sends).
      for (int i = 0; i < n; ++i) sizes[i] = s[i] > INT_MAX ? INT_MAX : static_cast<int>(s[i]);
    }
    return Status::kOk;
  });
}

result_t close_send(void* c) {
  return guard("closeSend", [&] { return fabric::net_close_send(c); });
}
result_t close_recv(void* c) {
  return guard("closeRecv", [&] { return fabric::net_close_recv(c); });
}
result_t close_listen(void* c) {
  return guard("closeListen", [&] { return fabric::net_close_listen(c); });
}

result_t set_net_attr(void* ctx, abi::net_attr_v11_t* attr) {
  (void)ctx, (void)attr;  // hints accepted; rails/flows sizing comes with multi-rail support
  return abi::kSuccess;
}

// ---- v10 / v9 / v8: one process-wide reference, taken by the single init NCCL makes --------
Ctx* g_legacy_ctx = nullptr;  // trivially destructible; freed by unload()

Ctx* legacy_ctx() {
  if (g_legacy_ctx == nullptr) {
    Net* net = live_net();
    if (net != nullptr) g_legacy_ctx = new Ctx{net, 0, abi::kTrafficClassUndef};
  }
  return g_legacy_ctx;
}

result_t init_legacy(abi::logger_t log_fn) {
  return guard("init", [&]() -> Status {
    Net* net = nullptr;
    MF_CHECK(acquire_net(log_fn, &net));
    return legacy_ctx() ? Status::kOk : Status::kInternalError;
  });
}
result_t init_v10(abi::logger_t log_fn, abi::profiler_callback_t) { return init_legacy(log_fn); }

result_t get_properties_v10(int dev, abi::properties_v10_t* p) {
  return guard("getProperties", [&]() -> Status {
    std::memset(p, 0, sizeof *p);
    return fill_v9plus(dev, p);
  });
}

result_t get_properties_v8(int dev, abi::properties_v8_t* p) {
  return guard("getProperties", [&]() -> Status {
    std::memset(p, 0, sizeof *p);
    fabric::NetProperties np;
    return fill_common(dev, p, &np);
  });
}

result_t listen_legacy(int dev, void* handle, void** listen_comm) {
  Ctx* c = legacy_ctx();
  return c ? listen_v11(c, dev, handle, listen_comm) : abi::kInternalError;
}
result_t connect_v10(int dev, abi::comm_config_v10_t*, void* handle, void** send_comm,
                     abi::device_handle_t** dc) {
  Ctx* c = legacy_ctx();
  return c ? connect_v11(c, dev, handle, send_comm, dc) : abi::kInternalError;
}
result_t connect_v9(int dev, void* handle, void** send_comm, abi::device_handle_t** dc) {
  Ctx* c = legacy_ctx();
  return c ? connect_v11(c, dev, handle, send_comm, dc) : abi::kInternalError;
}
result_t isend_v9(void* send_comm, void* data, size_t size, int tag, void* mhandle, void** request) {
  return isend_v11(send_comm, data, size, tag, mhandle, nullptr, request);
}
result_t irecv_v9(void* recv_comm, int n, void** data, size_t* sizes, int* tags, void** mhandles,
                  void** request) {
  return irecv_v11(recv_comm, n, data, sizes, tags, mhandles, nullptr, request);
}
result_t isend_v8(void* send_comm, void* data, int size, int tag, void* mhandle, void** request) {
  if (size < 0) return abi::kInvalidArgument;
  return isend_v11(send_comm, data, static_cast<size_t>(size), tag, mhandle, nullptr, request);
}
result_t irecv_v8(void* recv_comm, int n, void** data, int* sizes, int* tags, void** mhandles,
                  void** request) {
  if (n < 1 || n > fabric::wire::kMaxRecvs) return abi::kInvalidArgument;
  size_t s[fabric::wire::kMaxRecvs];
  for (int i = 0; i < n; ++i) {
    if (sizes[i] < 0) return abi::kInvalidArgument;
    s[i] = static_cast<size_t>(sizes[i]);
  }
  return irecv_v11(recv_comm, n, data, s, tags, mhandles, nullptr, request);
}

// Runs when the plugin is unloaded (dlclose) or the process exits. NCCL before v11 never
// finalizes, and a v11 application may exit without destroying its communicators; both leave the
// Net alive with its progress thread polling. Left running, that thread would execute unmapped
// code after dlclose, or poll libfabric while libfabric's own destructor tears the providers down
// at exit (libfabric is our dependency, so its destructor runs after this one).
// Another thread of the application may still be inside a call (a proxy thread polling test()
// while main returns): the unload waits for it to leave, at most Device::kCloseLingerMs; later
// calls return ncclInternalError at once. A call still inside after that (stuck in the provider)
// keeps the state alive: it is left allocated rather than freed under the call.
__attribute__((destructor)) void unload() {
  g_unloading.store(true);
  const auto until =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(fabric::Device::kCloseLingerMs);
  while (g_inside.load() > 0 && std::chrono::steady_clock::now() < until) usleep(1000);
  if (g_inside.load() > 0) {
    fprintf(
        stderr,
        "NET/moefabric: unloaded with %d call(s) still inside it after %d ms; its state is left allocated\n",
        g_inside.load(), fabric::Device::kCloseLingerMs);
    return;
  }
  Net::shutdown();
  fabric::uninstall_nccl_topo();
  delete g_legacy_ctx;
  g_legacy_ctx = nullptr;
}

// ncclNetPlugin_v12 and _v11: one set of adapters, v12's comm config and net attributes being
// v11's structs; only getProperties differs. makeVDevice stays NULL, as in v10 and v9: NCCL
// (2.30 too) then uses the physical devices as they are, and moefabric already fuses the rails of
// one GPU into one device itself (MOEFABRIC_RAILS, the topology grouping), so there is nothing
// left for NCCL to merge.
template <class Table>
constexpr Table ctx_table(decltype(Table::getProperties) get_properties) {
  return Table{
      .name = "moefabric",
      .init = init_v11,
      .devices = devices,
      .getProperties = get_properties,
      .listen = listen_v11,
      .connect = connect_v11,
      .accept = accept_any,
      .regMr = reg_mr,
      .regMrDmaBuf = reg_mr_dmabuf,
      .deregMr = dereg_mr,
      .isend = isend_v11,
      .irecv = irecv_v11,
      .iflush = iflush,
      .test = test,
      .closeSend = close_send,
      .closeRecv = close_recv,
      .closeListen = close_listen,
      .getDeviceMr = nullptr,
      .irecvConsumed = nullptr,
      .makeVDevice = nullptr,
      .finalize = finalize_v11,
      .setNetAttr = set_net_attr,
  };
}

}  // namespace
}  // namespace moefabric::nccl

using namespace moefabric::nccl;  // NOLINT: the export tables below name the adapters

extern "C" {

MF_EXPORT extern const abi::net_v12_t ncclNetPlugin_v12;
MF_EXPORT extern const abi::net_v11_t ncclNetPlugin_v11;
MF_EXPORT extern const abi::net_v10_t ncclNetPlugin_v10;
MF_EXPORT extern const abi::net_v9_t ncclNetPlugin_v9;
MF_EXPORT extern const abi::net_v8_t ncclNetPlugin_v8;

// The per-communicator tables are built at compile time (constinit: in the library's data when
// NCCL dlsyms them, no constructor to run first).
constinit const abi::net_v12_t ncclNetPlugin_v12 = ctx_table<abi::net_v12_t>(get_properties_v12);
constinit const abi::net_v11_t ncclNetPlugin_v11 = ctx_table<abi::net_v11_t>(get_properties_v11);

const abi::net_v10_t ncclNetPlugin_v10 = {
    .name = "moefabric",
    .init = init_v10,
    .devices = devices,
    .getProperties = get_properties_v10,
    .listen = listen_legacy,
    .connect = connect_v10,
    .accept = accept_any,
    .regMr = reg_mr,
    .regMrDmaBuf = reg_mr_dmabuf,
    .deregMr = dereg_mr,
    .isend = isend_v11,
    .irecv = irecv_v11,
    .iflush = iflush,
    .test = test,
    .closeSend = close_send,
    .closeRecv = close_recv,
    .closeListen = close_listen,
    .getDeviceMr = nullptr,
    .irecvConsumed = nullptr,
    .makeVDevice = nullptr,
};

const abi::net_v9_t ncclNetPlugin_v9 = {
    .name = "moefabric",
    .init = init_legacy,
    .devices = devices,
    .getProperties = get_properties_v10,
    .listen = listen_legacy,
    .connect = connect_v9,
    .accept = accept_any,
    .regMr = reg_mr,
    .regMrDmaBuf = reg_mr_dmabuf,
    .deregMr = dereg_mr,
    .isend = isend_v9,
    .irecv = irecv_v9,
    .iflush = iflush,
    .test = test,
    .closeSend = close_send,
    .closeRecv = close_recv,
    .closeListen = close_listen,
    .getDeviceMr = nullptr,
    .irecvConsumed = nullptr,
    .makeVDevice = nullptr,
};

const abi::net_v8_t ncclNetPlugin_v8 = {
    .name = "moefabric",
    .init = init_legacy,
    .devices = devices,
    .getProperties = get_properties_v8,
    .listen = listen_legacy,
    .connect = connect_v9,
    .accept = accept_any,
    .regMr = reg_mr,
    .regMrDmaBuf = reg_mr_dmabuf,
    .deregMr = dereg_mr,
    .isend = isend_v8,
    .irecv = irecv_v8,
    .iflush = iflush,
    .test = test,
    .closeSend = close_send,
    .closeRecv = close_recv,
    .closeListen = close_listen,
    .getDeviceMr = nullptr,
    .irecvConsumed = nullptr,
};

}  // extern "C"
