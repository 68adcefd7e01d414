// The CUDA backend: an ncclMoe comm whose ranks are GPUs. Each rank allocates one receive block
// (kernels/layout.h), exports it through CUDA IPC over the bootstrap allgather and maps the blocks of
// the peers of its node; the kernels (kernels/) store straight into those over NVLink and signal
// with system-scope releases. Peers on other nodes (or every peer, with MOEFABRIC_FORCE_FABRIC;
// nodes of MOEFABRIC_NODE_SIZE ranks) are fabric peers: the kernels stage what goes to them in
// pinned host memory and ring a doorbell, and the comm's proxy thread (cuda_proxy.h) posts the
// writes and raises arrival flags the kernels wait on. Nothing on the path synchronises with the
// host: T is read on the device, sequence numbers live on the device, and every call is kernel
// launches on the caller's stream, so calls capture into CUDA graphs and replay.
#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <type_traits>
#include <vector>

#include "kernels/layout.h"
#include "collectives/agree.h"
#include "collectives/cuda/cuda_proxy.h"
#include "collectives/engine.h"
#include "kernels/moe_kernels.h"
#include "common/log.h"
#include "common/params.h"

namespace moefabric::moe {
namespace {

struct DeviceFree {
  void operator()(void* p) const { (void)cudaFree(p); }
};
struct HostFree {
  void operator()(void* p) const { (void)cudaFreeHost(p); }
};
template <class T>
using DevicePtr = std::unique_ptr<T, DeviceFree>;
template <class T>
using PinnedPtr = std::unique_ptr<T, HostFree>;

// A peer's receive block mapped through CUDA IPC.
struct IpcMapping {
  void* ptr = nullptr;
  IpcMapping() = default;
  IpcMapping(const IpcMapping&) = delete;
  IpcMapping& operator=(const IpcMapping&) = delete;
  ~IpcMapping() {
    if (ptr != nullptr) (void)cudaIpcCloseMemHandle(ptr);
  }
};

// Makes `dev` current for the scope (calls may come from a thread with another current device).
class DeviceScope {
 public:
  explicit DeviceScope(int dev) {
    if (cudaGetDevice(&prev_) == cudaSuccess && prev_ != dev && cudaSetDevice(dev) == cudaSuccess)
      restore_ = true;
  }
  ~DeviceScope() {
    if (restore_) (void)cudaSetDevice(prev_);
  }

 private:
  int prev_ = -1;
  bool restore_ = false;
};

std::string cuda_text(cudaError_t e) {
  return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}

// Identifies the machine: ranks with equal ids can reach each other over CUDA IPC.
void host_id(char* out, size_t n) {
  char host[128] = {};
  gethostname(host, sizeof host - 1);
  std::string boot;
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::getline(f, boot);
  snprintf(out, n, "%s/%s", host, boot.c_str());
}

struct InitBlob {
  int32_t sm_count;
  int32_t force_fabric, node_size;  // must agree on all ranks
  char host[128];
  cudaIpcMemHandle_t handle;
};

const char* phase_name(int32_t p) {
  switch (p) {
    case kern::kPhaseDispatchSend:
      return "dispatch send";
    case kern::kPhaseDispatchRecv:
      return "dispatch recv";
    case kern::kPhaseCombineSend:
      return "combine send";
    case kern::kPhaseCombineRecv:
      return "combine recv";
    case kern::kPhaseBarrier:
      return "destroy";
  }
  return "?";
}

class CudaComm final : public Engine {
 public:
  static Status create(int nranks, int rank, ncclMoeAllGather_t fn, void* ctx, const ResolvedConfig& rc,
                       const Params& params, std::unique_ptr<Engine>* out, std::string* error);
  ~CudaComm() override { abort(); }

  void abort() override;

  bool on_device() const override { return true; }
  const ResolvedConfig& config() const override { return cfg_; }
  int64_t pending_rows() const override { return -1; }
  size_t recv_capacity() const override { return args_.l.capacity_rows; }
  int first_expert() const override { return args_.l.first_expert(me_); }
  int local_experts() const override { return args_.l.local_count(me_); }
  int pending_tokens() const override { return -1; }
  Status async_error() override;
  const std::string& last_error() const override { return last_error_; }
  void stats(ncclMoeStats_t* s) const override;
  int nranks() const override { return R_; }
  Status peer_stats(ncclMoePeerStats_t*) override {
    return fail(Status::kInvalidUsage, "peer stats: the CUDA backend does not count per-peer traffic yet");
  }
  void memory(size_t* device_bytes, size_t* host_bytes) const override;
  Status record_error(Status s, const char* text) override;

 private:
  CudaComm() = default;
  Status setup(int nranks, int rank, ncclMoeAllGather_t fn, void* ctx, const ResolvedConfig& rc,
               std::string* error);
  // starts_op: a dispatch send (a new op). The later calls of an op in flight go on after an input
  // error the kernels absorbed, so that peers are not left waiting for this rank.
  Status check_usable(bool starts_op) override;
  Status move_dispatch_send(const DispatchCall& c) override;
  Status move_dispatch_recv(cudaStream_t stream) override;
  Status move_combine_send(const void* expert_y, cudaStream_t stream) override;
  Status move_combine_recv(void* y, cudaStream_t stream) override;
  Status move_destroy(bool idle) override;
  Status launched(cudaError_t e, const char* what);
  bool alloc_local(InitBlob* mine, void** err_dev, std::string* err);
  Status map_peers(const std::vector<InitBlob>& all, ncclMoeAllGather_t fn, void* ctx, std::string* error);
  // Which ranks are fabric peers (bit r), from every rank's host and the fabric switches.
  Status choose_paths(const std::vector<InitBlob>& all, std::string* error);
  Status fabric_setup(ncclMoeAllGather_t fn, void* ctx, std::string* error);
  bool fabric_open_proxy(const Params& pp, void** ctrl_dev, std::string* err);
  void fabric_device_staging(const Params& pp, void** send_dev, void** recv_dev, std::string* why_host);
  bool fabric_host_staging(void** send_dev, void** recv_dev, std::string* err);
  size_t ctrl_words() const;  // u64 doorbells and arrival flags; stage_T follows
  std::string fabric_error_;  // the proxy failed to start here: reported to all at the next allgather

  ResolvedConfig cfg_{};
  int me_ = 0, R_ = 0, dev_ = -1;
  kern::Args args_{};
  DevicePtr<uint8_t> block_;
  DevicePtr<kern::DevState> state_;
  DevicePtr<uint32_t> row_src_;
  DevicePtr<uint8_t*> peers_dev_;
  PinnedPtr<kern::DevError> err_;
  std::vector<std::unique_ptr<IpcMapping>> mapped_;
  // fabric path (remote_ != 0)
  Params params_;
  uint32_t remote_ = 0;
  PinnedPtr<uint8_t> send_stage_, recv_stage_;    // host staging
  DevicePtr<uint8_t> send_dstage_, recv_dstage_;  // GPU staging (FI_HMEM)
  PinnedPtr<uint64_t> ctrl_;                      // doorbell[kBells], then arrived[kBells + 1][R]
  std::unique_ptr<FabricProxy> proxy_;
  cudaStream_t internal_ = nullptr;
  bool torn_down_ = false;
  bool input_error_ = false;    // the sticky error is bad input the kernels absorbed (op completes)
  bool launch_failed_ = false;  // a launch failed: peers may be waiting for kernels that never ran

  uint64_t ops_ = 0;
  Status sticky_ = Status::kOk;
  std::string last_error_, async_text_;
};

Status CudaComm::create(int nranks, int rank, ncclMoeAllGather_t fn, void* ctx, const ResolvedConfig& rc,
                        const Params& params, std::unique_ptr<Engine>* out, std::string* error) {
  std::unique_ptr<CudaComm> c(new CudaComm());
  c->params_ = params;
  MF_CHECK(c->setup(nranks, rank, fn, ctx, rc, error));
  *out = std::move(c);
  return Status::kOk;
}

// Setup in steps: the layout and device memory (alloc_local), one allgather of the IPC handles
// and node identities, the paths (choose_paths), the fabric path (fabric_setup), the NVLink
// mappings (map_peers), then the fabric barrier.
Status CudaComm::setup(int nranks, int rank, ncclMoeAllGather_t fn, void* ctx, const ResolvedConfig& rc,
                       std::string* error) {
  cfg_ = rc;
  R_ = nranks;
  me_ = rank;
  InitBlob mine{};
  std::string err;
  void* err_dev = nullptr;
  const bool ok = alloc_local(&mine, &err_dev, &err);
  mine.force_fabric = params_.force_fabric ? 1 : 0;
  mine.node_size = static_cast<int32_t>(params_.node_size);
  host_id(mine.host, sizeof mine.host);
  std::vector<InitBlob> all;
  MF_CHECK(agree(fn, ctx, nranks,
                 {"init (CUDA backend)", "exchanging IPC handles", "could not set up", Status::kSystemError},
                 ok ? Status::kOk : Status::kCudaError, err, mine, &all, error));
  int blocks = mine.sm_count;
  for (int r = 0; r < nranks; ++r) blocks = std::min(blocks, static_cast<int>(all[r].sm_count));
  MF_CHECK(choose_paths(all, error));
  args_.blocks = std::max(1, blocks);
  args_.timeout_ns = static_cast<int64_t>(rc.timeout_ms) * 1000000;
  if (remote_ != 0) MF_CHECK(fabric_setup(fn, ctx, error));
  MF_CHECK(map_peers(all, fn, ctx, error));
  // Every fabric path once before any kernel waits on one (see FabricProxy::barrier).
  if (proxy_) {
    std::string text;
    if (proxy_->barrier(&text, "fabric path") != Status::kOk) {
      *error = "init (CUDA backend): " + text;
      return Status::kRemoteError;
    }
  }
  args_.local = block_.get();
  args_.peers = peers_dev_.get();
  args_.st = state_.get();
  args_.err = static_cast<kern::DevError*>(err_dev);
  args_.row_src = row_src_.get();
  const CudaLayout& l = args_.l;
  MF_INFO(
      log::kInit,
      "moe comm rank %d/%d: CUDA backend on device %d, E %d K %d H %d maxT %d %s, %zu MiB "
      "receive block over CUDA IPC, %d blocks per kernel, %d fabric peer(s)%s%s",
      rank, nranks, dev_, rc.experts, rc.topk, rc.hidden, rc.max_tokens, l.elt_bytes == 1 ? "fp8" : "bf16",
      l.block_bytes >> 20, args_.blocks, __builtin_popcount(remote_), proxy_ ? " over " : "",
      proxy_ ? (proxy_->provider() + " " + proxy_->rails() +
                (proxy_->device_staging() ? ", staging in GPU memory" : ", staging in pinned host memory"))
                   .c_str()
             : "");
  return Status::kOk;
}

// The layout, the receive block, device state, row map, peer table, the mapped error word and
// the internal stream; fills this rank's IPC handle and SM count. False with *err (the first
// failure) otherwise; the caller still takes part in the allgather.
bool CudaComm::alloc_local(InitBlob* mine, void** err_dev, std::string* err) {
  auto cuda_ok = [&](cudaError_t e, const char* what) {
    if (e == cudaSuccess) return true;
    if (err->empty()) *err = std::string(what) + " failed: " + cuda_text(e);
    return false;
  };
  const ResolvedConfig& rc = cfg_;
  const bool fp8 = rc.dispatch_type == ncclFloat8e4m3;
  const char* why = nullptr;
  CudaLayout& l = args_.l;
  bool ok = cuda_layout_init(&l, R_, me_, rc.experts, rc.topk, rc.hidden, rc.max_tokens, fp8 ? 1 : 2, fp8,
                             rc.scale_block, rc.alignment, &why);
  if (!ok) *err = why;
  ok = ok && cuda_ok(cudaGetDevice(&dev_), "cudaGetDevice");
  int sms = 0;
  ok = ok &&
       cuda_ok(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev_), "cudaDeviceGetAttribute");
  void* p = nullptr;
  if (ok && cuda_ok(cudaMalloc(&p, l.block_bytes), "cudaMalloc (receive block)"))
    block_.reset(static_cast<uint8_t*>(p));
  ok = ok && block_ && cuda_ok(cudaMemset(block_.get(), 0, l.block_bytes), "cudaMemset");
  if (ok && cuda_ok(cudaMalloc(&p, sizeof(kern::DevState)), "cudaMalloc (state)"))
    state_.reset(static_cast<kern::DevState*>(p));
  ok = ok && state_ && cuda_ok(cudaMemset(state_.get(), 0, sizeof(kern::DevState)), "cudaMemset");
  if (ok && cuda_ok(cudaMalloc(&p, sizeof(uint32_t) * std::max<size_t>(1, l.capacity_rows)),
                    "cudaMalloc (row map)"))
    row_src_.reset(static_cast<uint32_t*>(p));
  if (ok && row_src_ && cuda_ok(cudaMalloc(&p, sizeof(uint8_t*) * R_), "cudaMalloc (peers)"))
    peers_dev_.reset(static_cast<uint8_t**>(p));
  ok = ok && peers_dev_;
  if (ok &&
      cuda_ok(cudaHostAlloc(&p, sizeof(kern::DevError), cudaHostAllocMapped), "cudaHostAlloc (error word)")) {
    err_.reset(static_cast<kern::DevError*>(p));
    std::memset(p, 0, sizeof(kern::DevError));
  }
  ok = ok && err_;
  ok = ok && cuda_ok(cudaHostGetDevicePointer(err_dev, err_.get(), 0), "cudaHostGetDevicePointer");
  ok = ok && cuda_ok(cudaStreamCreateWithFlags(&internal_, cudaStreamNonBlocking), "cudaStreamCreate");
  ok = ok && cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize (init)");
  ok = ok && cuda_ok(cudaIpcGetMemHandle(&mine->handle, block_.get()), "cudaIpcGetMemHandle");
  mine->sm_count = sms;
  return ok;
}

// Maps every NVLink peer's receive block; all ranks learn whether everyone succeeded.
Status CudaComm::map_peers(const std::vector<InitBlob>& all, ncclMoeAllGather_t fn, void* ctx,
                           std::string* error) {
  std::vector<uint8_t*> bases(R_, nullptr);
  bool mapped = fabric_error_.empty();
  std::string map_err = fabric_error_;
  for (int r = 0; r < R_ && mapped; ++r) {
    if (r == me_) {
      bases[r] = block_.get();
      continue;
    }
    if ((remote_ >> r) & 1u) continue;  // reached through the proxy
    auto m = std::make_unique<IpcMapping>();
    cudaError_t e = cudaIpcOpenMemHandle(&m->ptr, all[r].handle, cudaIpcMemLazyEnablePeerAccess);
    if (e != cudaSuccess) {
      m->ptr = nullptr;
      mapped = false;
      map_err = "opening rank " + std::to_string(r) + "'s receive block over CUDA IPC failed (" +
                cuda_text(e) + "): the GPUs need peer access (NVLink or PCIe P2P)";
      (void)cudaGetLastError();
      break;
    }
    bases[r] = static_cast<uint8_t*>(m->ptr);
    mapped_.push_back(std::move(m));
  }
  if (mapped && cudaMemcpy(peers_dev_.get(), bases.data(), sizeof(uint8_t*) * R_, cudaMemcpyHostToDevice) !=
                    cudaSuccess) {
    mapped = false;
    map_err = "cudaMemcpy of the peer table failed";
  }
  std::vector<int32_t> unused;
  return agree(fn, ctx, R_, {"init (CUDA backend)", "mapping peers", "failed", Status::kSystemError},
               mapped ? Status::kOk : Status::kSystemError, map_err, int32_t{0}, &unused, error);
}

// Nodes: MOEFABRIC_NODE_SIZE groups consecutive ranks, else ranks on one host form a node. NVLink
// (CUDA IPC) inside a node, the fabric between nodes; MOEFABRIC_FORCE_FABRIC makes every rank,
// this one included, a fabric peer.
Status CudaComm::choose_paths(const std::vector<InitBlob>& all, std::string* error) {
  const InitBlob& mine = all[me_];
  for (int r = 0; r < R_; ++r)
    if (all[r].force_fabric != mine.force_fabric || all[r].node_size != mine.node_size) {
      *error =
          "init (CUDA backend): MOEFABRIC_FORCE_FABRIC / MOEFABRIC_NODE_SIZE differ between "
          "rank " +
          std::to_string(me_) + " (" + std::to_string(mine.force_fabric) + ", " +
          std::to_string(mine.node_size) + ") and rank " + std::to_string(r) + " (" +
          std::to_string(all[r].force_fabric) + ", " + std::to_string(all[r].node_size) +
          "): set them alike on every rank";
      return Status::kInvalidUsage;
    }
  auto same_host = [&](int a, int b) {
    return std::strncmp(all[a].host, all[b].host, sizeof all[a].host) == 0;
  };
  const int n = mine.node_size;
  // Checked over every pair, so that all ranks reach the same verdict.
  if (n > 0)
    for (int r = 0; r < R_; ++r)
      if (!same_host(r, r - r % n)) {
        *error = "init (CUDA backend): MOEFABRIC_NODE_SIZE=" + std::to_string(n) + " puts ranks " +
                 std::to_string(r - r % n) + " and " + std::to_string(r) +
                 " on one node, but they run on different hosts (" +
                 std::string(all[r].host, strnlen(all[r].host, sizeof all[r].host)) + ")";
        return Status::kInvalidUsage;
      }
  remote_ = 0;
  for (int r = 0; r < R_; ++r) {
    const bool same_node = n > 0 ? r / n == me_ / n : same_host(r, me_);
    if (mine.force_fabric || !same_node) remote_ |= 1u << r;
  }
  // Every rank has a fabric peer as soon as there are two nodes (or FORCE_FABRIC), so all ranks
  // agree on whether the fabric exchange below happens.
  return Status::kOk;
}

namespace {
// Pinned host memory the GPU sees (mapped), zeroed; false with *err (first failure) otherwise.
template <typename T>
bool host_alloc(size_t bytes, const char* what, PinnedPtr<T>* out, std::string* err) {
  void* p = nullptr;
  cudaError_t e = cudaHostAlloc(&p, bytes, cudaHostAllocMapped | cudaHostAllocPortable);
  if (e != cudaSuccess) {
    if (err->empty())
      *err = std::string("cudaHostAlloc (") + what + ", " + std::to_string(bytes) +
             " B) failed: " + cuda_text(e);
    return false;
  }
  std::memset(p, 0, bytes);
  out->reset(static_cast<T*>(p));
  return true;
}
}  // namespace

// The fabric path in steps: control words and the proxy's endpoint (fabric_open_proxy), the
// staging segments in GPU memory where the rails grant FI_HMEM and MOEFABRIC_MOE_STAGING allows
// (fabric_device_staging), else in pinned host memory, one allgather of the fabric addresses,
// then the proxy runs.
Status CudaComm::fabric_setup(ncclMoeAllGather_t fn, void* ctx, std::string* error) {
  std::string err;
  FabricProxy::Addr mine{};
  // GPU staging needs FI_HMEM from the provider. MOEFABRIC_GDR=auto asks for it where the NIC
  // writes GPU memory itself (efa, verbs), which is where auto staging can use it; `device` asks
  // every provider (it may still be refused below, with the reason).
  Params pp = params_;
  const std::string& mode = pp.moe_staging;
  if (mode == "device" && pp.gdr == "auto") pp.gdr = "1";
  bool ok = true;
  if (mode == "device" && pp.gdr == "0") {
    err = "MOEFABRIC_MOE_STAGING=device needs FI_HMEM, but MOEFABRIC_GDR=0 forbids asking for it";
    ok = false;
  }
  void* ctrl_dev = nullptr;
  ok = ok && fabric_open_proxy(pp, &ctrl_dev, &err);
  void *send_dev = nullptr, *recv_dev = nullptr;
  if (ok && mode != "host") {
    std::string why_host;
    fabric_device_staging(pp, &send_dev, &recv_dev, &why_host);
    if (send_dev == nullptr && mode == "device") {
      err = "MOEFABRIC_MOE_STAGING=device: " + why_host;
      ok = false;
    } else if (send_dev == nullptr) {
      MF_INFO(log::kInit, "rank %d: fabric staging in pinned host memory: %s", me_, why_host.c_str());
    }
  }
  if (ok && send_dev == nullptr) ok = fabric_host_staging(&send_dev, &recv_dev, &err);
  if (ok) proxy_->local_addr(&mine);
  // Every rank reaches the same verdict here (a rank that leaves alone would strand its NVLink
  // peers in the next allgather).
  std::vector<FabricProxy::Addr> all;
  MF_CHECK(agree(
      fn, ctx, R_,
      {"init (CUDA backend, fabric path)", "exchanging fabric addresses", "failed", Status::kSystemError},
      ok ? Status::kOk : Status::kSystemError, err, mine, &all, error));
  // A local failure from here on is reported through the mapping allgather that follows.
  if (proxy_->start(all, &err) != Status::kOk) fabric_error_ = "fabric path: " + err;
  args_.remote = remote_;
  args_.stage_dev = proxy_->device_staging();
  args_.send_stage = static_cast<uint8_t*>(send_dev);
  args_.recv_stage = static_cast<const uint8_t*>(recv_dev);
  args_.doorbell = static_cast<uint64_t*>(ctrl_dev);
  args_.arrived = static_cast<const uint64_t*>(ctrl_dev) + kern::kBells;
  args_.stage_T = reinterpret_cast<int32_t*>(static_cast<uint64_t*>(ctrl_dev) + ctrl_words());
  return Status::kOk;
}

size_t CudaComm::ctrl_words() const { return kern::kBells + static_cast<size_t>(kern::kBells + 1) * R_; }

// Doorbells, arrival flags and stage_T in pinned mapped host memory, and the proxy's endpoint.
bool CudaComm::fabric_open_proxy(const Params& pp, void** ctrl_dev, std::string* err) {
  const size_t ctrl = sizeof(uint64_t) * ctrl_words() + sizeof(int32_t) * (1 + static_cast<size_t>(R_));
  if (!host_alloc(ctrl, "doorbells and arrival flags", &ctrl_, err)) return false;
  if (cudaHostGetDevicePointer(ctrl_dev, ctrl_.get(), 0) != cudaSuccess) {
    *err = "cudaHostGetDevicePointer failed on the control words";
    return false;
  }
  FabricProxy::Config pc;
  pc.nranks = R_;
  pc.rank = me_;
  pc.remote = remote_;
  pc.layout = args_.l;
  pc.doorbell = ctrl_.get();
  pc.arrived = ctrl_.get() + kern::kBells;
  pc.stage_T = reinterpret_cast<const int32_t*>(ctrl_.get() + ctrl_words());
  pc.abort_word = &reinterpret_cast<volatile kern::DevError*>(err_.get())->abort;
  pc.timeout_ms = cfg_.timeout_ms;
  char bus[32] = {};
  if (cudaDeviceGetPCIBusId(bus, sizeof bus, dev_) == cudaSuccess) pc.gpu = topo::PciAddr::parse(bus);
  return FabricProxy::create(pp, pc, &proxy_, err) == Status::kOk;
}

// Staging in GPU memory, registered with FI_HMEM: *send_dev/*recv_dev set on success, else
// *why_host says why the staging goes to host memory.
void CudaComm::fabric_device_staging(const Params& pp, void** send_dev, void** recv_dev,
                                     std::string* why_host) {
  const size_t stage = args_.l.stage_bytes * static_cast<size_t>(R_);
  int order = cudaGPUDirectRDMAWritesOrderingNone;
  if (!proxy_->device_staging_ok(why_host)) {
    if (!proxy_->hmem()) {
      const std::string& prov = proxy_->provider();
      *why_host += pp.gdr == "0" ? " (MOEFABRIC_GDR=0)"
                   : pp.gdr == "auto" && prov != "efa" && prov != "verbs"
                       ? " (MOEFABRIC_GDR=auto asks for FI_HMEM of efa and verbs only)"
                       : " (libfabric built without CUDA?)";
    }
    return;
  }
  if (!proxy_->hmem_async() &&
      (cudaDeviceGetAttribute(&order, cudaDevAttrGPUDirectRDMAWritesOrdering, dev_) != cudaSuccess ||
       order < cudaGPUDirectRDMAWritesOrderingOwner)) {
    // The NIC writes the staging itself and the proxy raises the arrival flag right after the
    // write's completion, with no flush between: this GPU's kernels must see NIC writes in
    // order on their own.
    (void)cudaGetLastError();
    *why_host = "GPU " + std::to_string(dev_) +
                " does not order NIC writes to its memory for its own kernels "
                "(cudaDevAttrGPUDirectRDMAWritesOrdering " +
                std::to_string(order) + ", 100 needed)";
    return;
  }
  void *s = nullptr, *r = nullptr;
  cudaError_t e = cudaMalloc(&s, stage);
  if (e == cudaSuccess) {
    send_dstage_.reset(static_cast<uint8_t*>(s));
    e = cudaMalloc(&r, stage);
  }
  if (e == cudaSuccess) {
    recv_dstage_.reset(static_cast<uint8_t*>(r));
    e = cudaMemset(s, 0, stage);
  }
  if (e == cudaSuccess) e = cudaMemset(r, 0, stage);
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  std::string why;
  if (e != cudaSuccess) {
    why = "cudaMalloc/cudaMemset of " + std::to_string(2 * stage) + " B: " + cuda_text(e);
    (void)cudaGetLastError();
  } else if (proxy_->attach(send_dstage_.get(), recv_dstage_.get(), dev_, &why) == Status::kOk) {
    *send_dev = s;
    *recv_dev = r;
    return;
  }
  *why_host = "GPU staging failed: " + why;
  send_dstage_.reset();
  recv_dstage_.reset();
}

// Staging in pinned host memory, mapped for the kernels and registered with the proxy.
bool CudaComm::fabric_host_staging(void** send_dev, void** recv_dev, std::string* err) {
  const size_t stage = args_.l.stage_bytes * static_cast<size_t>(R_);
  bool ok = host_alloc(stage, "fabric send staging", &send_stage_, err) &&
            host_alloc(stage, "fabric receive staging", &recv_stage_, err);
  ok = ok && cudaHostGetDevicePointer(send_dev, send_stage_.get(), 0) == cudaSuccess &&
       cudaHostGetDevicePointer(recv_dev, recv_stage_.get(), 0) == cudaSuccess;
  if (!ok && err->empty()) *err = "cudaHostGetDevicePointer failed on the fabric staging";
  return ok && proxy_->attach(send_stage_.get(), recv_stage_.get(), -1, err) == Status::kOk;
}

void CudaComm::memory(size_t* device_bytes, size_t* host_bytes) const {
  const CudaLayout& l = args_.l;
  const size_t stage = l.stage_bytes * static_cast<size_t>(R_);
  *device_bytes = l.block_bytes + sizeof(kern::DevState) + sizeof(uint32_t) * l.capacity_rows +
                  sizeof(uint8_t*) * R_ + (send_dstage_ ? 2 * stage : 0);
  *host_bytes =
      sizeof(kern::DevError) + (send_stage_ ? 2 * stage : 0) +
      (ctrl_ ? sizeof(uint64_t) * ctrl_words() + sizeof(int32_t) * (1 + static_cast<size_t>(R_)) : 0);
}

Status CudaComm::record_error(Status s, const char* text) {
  last_error_ = text;
  if (s != Status::kInvalidArgument && s != Status::kInvalidUsage && sticky_ == Status::kOk) {
    sticky_ = s;
    async_text_ = text;
  }
  MF_WARN("rank %d: %s", me_, text);
  return s;
}

// Turns the device's error word into the sticky async error (read without any CUDA call).
Status CudaComm::async_error() {
  if (sticky_ != Status::kOk || !err_) return sticky_;
  std::string proxy_text;
  if (proxy_ && proxy_->failure(&proxy_text) != Status::kOk)
    return fail(Status::kRemoteError, "fabric proxy: %s", proxy_text.c_str());
  volatile kern::DevError* e = err_.get();
  const int32_t code = e->code;
  if (code == kern::kErrNone) return Status::kOk;
  const int32_t phase = e->phase, peer = e->peer, value = e->value;
  switch (code) {
    case kern::kErrTimeout:
      return fail(Status::kRemoteError,
                  "%s: timed out after %d ms waiting for rank %d's %s (peer stalled or lost)",
                  phase_name(phase), cfg_.timeout_ms, peer,
                  peer >= 0 && peer < 32 && phase != kern::kPhaseBarrier && ((remote_ >> peer) & 1u)
                      ? "write through the fabric proxy"
                      : "stores over NVLink");
    case kern::kErrBadExpert:
      input_error_ = true;
      return fail(Status::kRemoteError,
                  "%s: topkIdx holds %d, not an expert (numExperts %d; -1 = empty); the slot was "
                  "treated as empty",
                  phase_name(phase), value, cfg_.experts);
    case kern::kErrBadTokens:
      return fail(Status::kRemoteError, "%s: numTokens %d outside [0, maxTokensPerRank=%d]; nothing was sent",
                  phase_name(phase), value, cfg_.max_tokens);
    case kern::kErrNullInput: {
      static const char* const names[] = {"x", "topkIdx", "topkWeights", "xScales", "expertY"};
      return fail(Status::kRemoteError, "%s: %s is NULL with tokens to move", phase_name(phase),
                  value >= 0 && value < 5 ? names[value] : "an input");
    }
    case kern::kErrPeerData:
      return fail(Status::kRemoteError, "%s: rank %d announced %d tokens (maxTokensPerRank %d)",
                  phase_name(phase), peer, value, cfg_.max_tokens);
    case kern::kErrAborted:
      return fail(Status::kRemoteError, "%s: aborted while waiting for rank %d", phase_name(phase), peer);
  }
  return fail(Status::kInternalError, "%s: device error %d", phase_name(phase), code);
}

Status CudaComm::check_usable(bool starts_op) {
  if (torn_down_) return fail(Status::kInvalidUsage, "the comm was aborted");
  Status s = async_error();
  if (s == Status::kOk) return s;
  last_error_ = async_text_;
  if (!starts_op && input_error_) return Status::kOk;  // reported by GetAsyncError and the next dispatch
  return s;
}

Status CudaComm::launched(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::kOk;
  launch_failed_ = true;
  return fail(Status::kCudaError, "%s: kernel launch failed: %s", what, cuda_text(e).c_str());
}

Status CudaComm::move_dispatch_send(const DispatchCall& c) {
  DeviceScope scope(dev_);
  args_.x = c.x;
  args_.x_scales = c.scales;
  args_.idx = c.idx;
  args_.weights = c.w;
  args_.ntokens = c.ntokens;
  args_.recv_x = c.recv_x;
  args_.recv_scales = c.recv_scales;
  args_.recv_counts = c.recv_counts;
  return launched(kern::launch_dispatch_send(args_, c.stream), "dispatch send");
}

Status CudaComm::move_dispatch_recv(cudaStream_t stream) {
  DeviceScope scope(dev_);
  if (remote_ != 0)
    MF_CHECK(launched(kern::launch_fabric_ingest_dispatch(args_, stream), "dispatch recv (fabric)"));
  return launched(kern::launch_dispatch_recv(args_, stream), "dispatch recv");
}

Status CudaComm::move_combine_send(const void* expert_y, cudaStream_t stream) {
  DeviceScope scope(dev_);
  args_.expert_y = expert_y;
  return launched(kern::launch_combine_send(args_, stream), "combine send");
}

Status CudaComm::move_combine_recv(void* y, cudaStream_t stream) {
  DeviceScope scope(dev_);
  args_.y = y;
  if (remote_ != 0)
    MF_CHECK(launched(kern::launch_fabric_ingest_combine(args_, stream), "combine recv (fabric)"));
  MF_CHECK(launched(kern::launch_combine_recv(args_, stream), "combine recv"));
  ++ops_;
  return Status::kOk;
}

// Errors after which the peers are still in step (the op completed with the bad input treated
// as empty), so destroy can still meet them at the barrier.
bool peers_in_step(const volatile kern::DevError* e) {
  const int32_t c = e->code;
  return c == kern::kErrNone || c == kern::kErrBadExpert || c == kern::kErrBadTokens ||
         c == kern::kErrNullInput;
}

Status CudaComm::move_destroy(bool idle) {
  Status result = Status::kOk;
  const bool in_step = err_ && peers_in_step(err_.get()) && (async_error() == Status::kOk || !launch_failed_);
  if (!torn_down_ && in_step && idle && (R_ > 1 || proxy_)) {
    // Every op this rank launched is done; then no peer stores into our block once every rank
    // has passed the barrier.
    DeviceScope scope(dev_);
    cudaError_t e = cudaDeviceSynchronize();
    if (e == cudaSuccess) e = kern::launch_barrier(args_, internal_);
    if (e == cudaSuccess) e = cudaStreamSynchronize(internal_);
    if (e != cudaSuccess) {
      result = fail(Status::kCudaError, "destroy: %s", cuda_text(e).c_str());
    } else if (!peers_in_step(err_.get())) {
      result = async_error();  // the barrier itself timed out
    } else if (proxy_) {
      // Fabric peers: no write of theirs lands in our staging once their barrier write has.
      std::string text;
      if (proxy_->barrier(&text) != Status::kOk) result = fail(Status::kRemoteError, "%s", text.c_str());
    }
  }
  abort();
  return result;
}

void CudaComm::abort() {
  if (torn_down_) return;
  torn_down_ = true;
  DeviceScope scope(dev_);
  if (err_) reinterpret_cast<volatile kern::DevError*>(err_.get())->abort = 1;
  // Waiting kernels see the abort word within microseconds; then nothing of ours runs.
  (void)cudaDeviceSynchronize();
  proxy_.reset();  // joins the proxy thread, then deregisters and closes the endpoint
  send_stage_.reset();
  recv_stage_.reset();
  send_dstage_.reset();
  recv_dstage_.reset();
  ctrl_.reset();
  mapped_.clear();
  if (internal_ != nullptr) (void)cudaStreamDestroy(internal_);
  internal_ = nullptr;
  peers_dev_.reset();
  row_src_.reset();
  state_.reset();
  block_.reset();
  err_.reset();
  (void)cudaGetLastError();
}

void CudaComm::stats(ncclMoeStats_t* s) const {
  s->ops = ops_;
  s->dispatchWritesMaxPeer = s->combineWritesMaxPeer = s->grantsSent = 0;
  s->peers = static_cast<uint32_t>(R_ - 1);
  // Over NVLink the bytes are known on the device only; fabric writes are the proxy's.
  s->dispatchBytesSent = proxy_ ? proxy_->bytes_posted(kern::kBellDispatch) : 0;
  s->combineBytesSent = proxy_ ? proxy_->bytes_posted(kern::kBellCombine) : 0;
  s->proxyPostUs = proxy_ ? proxy_->post_us(kern::kBellDispatch) : 0;
  s->combinePostUs = proxy_ ? proxy_->post_us(kern::kBellCombine) : 0;
  s->registrations = 0;
}

}  // namespace

bool cuda_backend_probe(std::string* why) {
  int dev = -1, n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e == cudaSuccess && n > 0) e = cudaGetDevice(&dev);
  if (e != cudaSuccess || n == 0) {
    *why = "no GPU is current (" + (e != cudaSuccess ? cuda_text(e) : std::string("no devices")) + ")";
    (void)cudaGetLastError();
    return false;
  }
  return true;
}

Status cuda_engine_create(int nranks, int rank, ncclMoeAllGather_t fn, void* ctx, const ResolvedConfig& rc,
                          const Params& params, std::unique_ptr<Engine>* out, std::string* error) {
  return CudaComm::create(nranks, rank, fn, ctx, rc, params, out, error);
}

}  // namespace moefabric::moe
