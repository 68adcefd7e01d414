// The transport core's public face inside moefabric: one process-wide Net (refcounted: the first
// acquire opens the NICs, the last release closes them and joins the progress thread), and
// comm/request operations with NCCL net-plugin semantics. plugin/nccl adapts this to each NCCL
// ABI version; the perf tool and tests call it directly.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/params.h"
#include "common/status.h"
#include "plugin/net/device.h"

namespace moefabric::fabric {

struct NetProperties {
  std::string name;
  std::string pci_path;  // empty: not a PCI device
  std::string provider;
  uint64_t guid = 0;
  int ptr_support = 1;  // NCCL_PTR_* bits
  int speed_mbps = 0;
  int port = 1;
  float latency_us = 0;
  int max_comms = 0;
  int max_recvs = 1;
  size_t max_p2p_bytes = 0;
  bool reg_is_global = true;
  bool dmabuf = false;
  bool force_flush = false;  // GPU receives need iflush on every GPU (NicInfo::hmem_async)
};

class Net {
 public:
  // Opens (first call) or references (later calls) the process-wide instance.
  static Status acquire(Net** out);
  static void release(Net* net);
  // Tears down the Net whatever references remain (NCCL before v11 never finalizes): the
  // plugin's unload (dlclose, or process exit) runs it, so no thread of ours or of the provider
  // is left running code being unmapped, or polling libfabric while libfabric's own destructor
  // runs. An application still inside a call on another thread at that point loses either way.
  static void shutdown();
  // The live instance without taking a reference (NCCL's devices()/getProperties() carry no
  // context); nullptr before the first acquire.
  static Net* current();

  int device_count() const { return static_cast<int>(devices_.size()); }
  Device* device(int dev) const { return dev >= 0 && dev < device_count() ? devices_[dev].get() : nullptr; }
  Status properties(int dev, NetProperties* props) const;
  const Params& params() const { return params_; }

  ~Net();

 private:
  Net() = default;
  void progress_loop();

  Params params_;
  std::vector<std::unique_ptr<Device>> devices_;
  std::thread progress_thread_;
  std::atomic<bool> stop_{false};
  int refs_ = 0;
};

// Comm handles handed out to callers. Each carries its device so every call can lock it.
struct ListenHandleObj {
  Device* dev;
  ListenComm* lc;
};

Status net_listen(Net* net, int dev, void* handle, void** listen_comm);
Status net_connect(Net* net, int dev, void* handle, void** send_comm);
Status net_accept(void* listen_comm, void** recv_comm);
Status net_reg_mr(void* comm, void* data, size_t size, int ptr_type, void** mhandle);
Status net_reg_mr_dmabuf(void* comm, void* data, size_t size, int ptr_type, uint64_t offset, int fd,
                         void** mhandle);
Status net_dereg_mr(void* comm, void* mhandle);
Status net_isend(void* send_comm, void* data, size_t size, int tag, void* mhandle, void** request);
// `*request` may hold kOptionalRecvCompletion on entry (NCCL's hint).
Status net_irecv(void* recv_comm, int n, void** data, const size_t* sizes, const int* tags, void** mhandles,
                 void** request);
Status net_iflush(void* recv_comm, int n, void** data, const int* sizes, void** mhandles, void** request);
// `sizes` has room for kMaxRecvs; *nsizes = entries filled (1 for sends, n for receives).
Status net_test(void* request, int* done, size_t* sizes, int* nsizes = nullptr);
Status net_close_send(void* send_comm);
Status net_close_recv(void* recv_comm);
Status net_close_listen(void* listen_comm);

// Counters for leak and registration checks (tests, perf tool).
struct NetCounters {
  size_t live_comms = 0;
  size_t live_mrs = 0;
  uint64_t registrations = 0;
  uint64_t writes = 0;
  uint64_t msgs_sent = 0;
};
NetCounters net_counters(Net* net);

inline constexpr uintptr_t kOptionalRecvCompletion = 0x1;

}  // namespace moefabric::fabric
