// The CUDA backend: an ncclMoe comm whose ranks are GPUs. Each rank allocates one receive block
// (kernels/layout.h), exports it through CUDA IPC over the bootstrap allgather and maps the blocks of
// the peers of its node; the kernels (kernels/) store straight into those over NVLink and signal
// with system-scope releases. Peers on other nodes (or every peer, with MOEFABRIC_FORCE_FABRIC;
// nodes of MOEFABRIC_NODE_SIZE ranks) are fabric peers: they speak the MoE protocol
// (docs/moe-protocol.md) through the same proxy as the host backend (collectives/comm.h): the
// kernels (kernels/fabric.cu) pack records into the protocol's blocks in pinned host memory and
// ring a doorbell, the proxy posts the writes and raises arrival flags the kernels wait on. Nothing on the path synchronises with the
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
#include "collectives/comm.h"
#include "collectives/rails.h"
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
                       const Params& params, std::unique_ptr<Engine>* out);
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
  Status peer_stats(ncclMoePeerStats_t* out) override;
  void memory(size_t* device_bytes, size_t* host_bytes) const override;
  Status record_error(Status::Code s, const char* text) override;

 private:
  CudaComm() = default;
  Status setup(int nranks, int rank, ncclMoeAllGather_t fn, void* ctx, const ResolvedConfig& rc);
  // starts_op: a dispatch send (a new op). The later calls of an op in flight go on after an input
  // error the kernels absorbed, so that peers are not left waiting for this rank.
  Status check_usable(bool starts_op) override;
  Status move_dispatch_send(const DispatchCall& c) override;
  Status move_dispatch_recv(cudaStream_t stream) override;
  Status move_combine_send(const void* expert_y, cudaStream_t stream) override;
  Status move_combine_recv(void* y, cudaStream_t stream) override;
  Status move_destroy(bool idle) override;
  Status launched(cudaError_t e, const char* what);
  Status alloc_local(InitBlob* mine, void** err_dev);
  Status map_peers(const std::vector<InitBlob>& all, ncclMoeAllGather_t fn, void* ctx);
  // Which ranks are fabric peers, from every rank's host and the fabric switches.
  Status choose_paths(const std::vector<InitBlob>& all);
  Status fabric_setup(ncclMoeAllGather_t fn, void* ctx);
  Status fabric_alloc(ProtocolClient* client);
  Status fabric_error_;  // the proxy failed to start here: reported to all at the next allgather
  bool fabric(int r) const { return !fabric_peers_.empty() && fabric_peers_[r]; }

  ResolvedConfig cfg_{};
  int me_ = 0, R_ = 0, dev_ = -1;
  kern::Args args_{};
  DevicePtr<uint8_t> block_;
  DevicePtr<kern::DevState> state_;
  DevicePtr<uint32_t> row_src_;
  DevicePtr<uint32_t> self_row_;
  DevicePtr<uint8_t*> peers_dev_;
  PinnedPtr<kern::DevError> err_;
  std::vector<std::unique_ptr<IpcMapping>> mapped_;
  // fabric peers (nfabric_ > 0): the protocol's comm and proxy, what they share with the kernels
  // (pinned, mapped) and the kernels' scratch (device)
  Params params_;
  std::vector<uint8_t> fabric_peers_;  // [R]
  int nfabric_ = 0;
  std::unique_ptr<Comm> proto_;
  PinnedPtr<uint8_t> shared_;
  ProxyShared host_shared_;  // host views of shared_
  size_t shared_bytes_ = 0;
  DevicePtr<uint8_t> fabric_dev_;  // fabric flags, FabricScratch and its arrays
  size_t fabric_dev_bytes_ = 0;
  cudaStream_t internal_ = nullptr;
  bool torn_down_ = false;
  bool input_error_ = false;    // the sticky error is bad input the kernels absorbed (op completes)
  bool launch_failed_ = false;  // a launch failed: peers may be waiting for kernels that never ran

  uint64_t ops_ = 0;
  Status sticky_;  // the async error and its text (record_error: first wins)
  std::string last_error_;
};

Status CudaComm::create(int nranks, int rank, ncclMoeAllGather_t fn, void* ctx, const ResolvedConfig& rc,
                        const Params& params, std::unique_ptr<Engine>* out) {
  std::unique_ptr<CudaComm> c(new CudaComm());
  c->params_ = params;
  MF_CHECK(c->setup(nranks, rank, fn, ctx, rc));
  *out = std::move(c);
  return Status::kOk;
}

// Setup in steps: the layout and device memory (alloc_local), one allgather of the IPC handles
// and node identities, the paths (choose_paths), the fabric path (fabric_setup), the NVLink
// mappings (map_peers), then the fabric barrier.
Status CudaComm::setup(int nranks, int rank, ncclMoeAllGather_t fn, void* ctx, const ResolvedConfig& rc) {
  cfg_ = rc;
  R_ = nranks;
  me_ = rank;
  InitBlob mine{};
  void* err_dev = nullptr;
  const Status local = alloc_local(&mine, &err_dev);
  mine.force_fabric = params_.force_fabric ? 1 : 0;
  mine.node_size = static_cast<int32_t>(params_.node_size);
  host_id(mine.host, sizeof mine.host);
  std::vector<InitBlob> all;
  MF_CHECK(agree(fn, ctx, nranks,
                 {"init (CUDA backend)", "exchanging IPC handles", "could not set up", Status::kSystemError},
                 local, mine, &all));
  int blocks = mine.sm_count;
  for (int r = 0; r < nranks; ++r) blocks = std::min(blocks, static_cast<int>(all[r].sm_count));
  MF_CHECK(choose_paths(all));
  args_.blocks = std::max(1, blocks);
  args_.timeout_ns = static_cast<int64_t>(rc.timeout_ms) * 1000000;
  args_.nvlink_peers = nranks - 1 - nfabric_;
  if (nfabric_ > 0) MF_CHECK(fabric_setup(fn, ctx));
  MF_CHECK(map_peers(all, fn, ctx));
  args_.local = block_.get();
  args_.peers = peers_dev_.get();
  args_.st = state_.get();
  args_.err = static_cast<kern::DevError*>(err_dev);
  args_.row_src = row_src_.get();
  args_.self_row = self_row_.get();
  const CudaLayout& l = args_.l;
  MF_INFO(
      log::kInit,
      "moe comm rank %d/%d: CUDA backend on device %d, E %d K %d H %d maxT %d %s, %zu MiB "
      "receive block over CUDA IPC, %d blocks per kernel, %d fabric peer(s)%s%s",
      rank, nranks, dev_, rc.experts, rc.topk, rc.hidden, rc.max_tokens, l.elt_bytes == 1 ? "fp8" : "bf16",
      l.block_bytes >> 20, args_.blocks, nfabric_, proto_ ? " over " : "",
      proto_
          ? (proto_->provider() + " " + proto_->rails() + ", protocol blocks in pinned host memory").c_str()
          : "");
  return Status::kOk;
}

// The layout, the receive block, device state, row map, peer table, the mapped error word and
// the internal stream; fills this rank's IPC handle and SM count. Otherwise the first failure (a
// CUDA error); the caller still takes part in the allgather.
Status CudaComm::alloc_local(InitBlob* mine, void** err_dev) {
  Status failed;
  auto cuda_ok = [&](cudaError_t e, const char* what) {
    if (e == cudaSuccess) return true;
    if (failed.ok()) failed = Status::cuda_error(std::string(what) + " failed: " + cuda_text(e));
    return false;
  };
  const ResolvedConfig& rc = cfg_;
  const bool fp8 = rc.dispatch_type == ncclFloat8e4m3;
  CudaLayout& l = args_.l;
  if (Status s = cuda_layout_init(&l, R_, me_, rc.experts, rc.topk, rc.hidden, rc.max_tokens, fp8 ? 1 : 2,
                                  fp8, rc.scale_block, rc.alignment);
      !s.ok())
    failed = Status::cuda_error(s.message());  // this rank's init fails as a CUDA error, as before
  bool ok = failed.ok();
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
  if (ok && row_src_ &&
      cuda_ok(cudaMalloc(&p, sizeof(uint32_t) * static_cast<size_t>(rc.max_tokens) * rc.topk),
              "cudaMalloc (own rows)"))
    self_row_.reset(static_cast<uint32_t*>(p));
  if (ok && self_row_ && cuda_ok(cudaMalloc(&p, sizeof(uint8_t*) * R_), "cudaMalloc (peers)"))
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
  if (!ok && failed.ok()) failed = Status::cuda_error("CUDA setup failed");
  return failed;
}

// Maps every NVLink peer's receive block; all ranks learn whether everyone succeeded.
Status CudaComm::map_peers(const std::vector<InitBlob>& all, ncclMoeAllGather_t fn, void* ctx) {
  std::vector<uint8_t*> bases(R_, nullptr);
  Status local = fabric_error_;
  for (int r = 0; r < R_ && local.ok(); ++r) {
    if (r == me_) {
      bases[r] = block_.get();
      continue;
    }
    if (fabric(r)) continue;  // reached through the proxy
    auto m = std::make_unique<IpcMapping>();
    cudaError_t e = cudaIpcOpenMemHandle(&m->ptr, all[r].handle, cudaIpcMemLazyEnablePeerAccess);
    if (e != cudaSuccess) {
      m->ptr = nullptr;
      local = Status::system_error("opening rank " + std::to_string(r) +
                                   "'s receive block over CUDA IPC failed (" + cuda_text(e) +
                                   "): the GPUs need peer access (NVLink or PCIe P2P)");
      (void)cudaGetLastError();
      break;
    }
    bases[r] = static_cast<uint8_t*>(m->ptr);
    mapped_.push_back(std::move(m));
  }
  if (local.ok() && cudaMemcpy(peers_dev_.get(), bases.data(), sizeof(uint8_t*) * R_,
                               cudaMemcpyHostToDevice) != cudaSuccess)
    local = Status::system_error("cudaMemcpy of the peer table failed");
  std::vector<int32_t> unused;
  return agree(fn, ctx, R_, {"init (CUDA backend)", "mapping peers", "failed", Status::kSystemError}, local,
               int32_t{0}, &unused);
}

// Nodes: MOEFABRIC_NODE_SIZE groups consecutive ranks, else ranks on one host form a node. NVLink
// (CUDA IPC) inside a node, the fabric between nodes; MOEFABRIC_FORCE_FABRIC makes every other
// rank a fabric peer (a rank always reaches itself in its own memory).
Status CudaComm::choose_paths(const std::vector<InitBlob>& all) {
  const InitBlob& mine = all[me_];
  for (int r = 0; r < R_; ++r)
    if (all[r].force_fabric != mine.force_fabric || all[r].node_size != mine.node_size)
      return Status::invalid_usage(
          "init (CUDA backend): MOEFABRIC_FORCE_FABRIC / MOEFABRIC_NODE_SIZE differ between rank " +
          std::to_string(me_) + " (" + std::to_string(mine.force_fabric) + ", " +
          std::to_string(mine.node_size) + ") and rank " + std::to_string(r) + " (" +
          std::to_string(all[r].force_fabric) + ", " + std::to_string(all[r].node_size) +
          "): set them alike on every rank");
  auto same_host = [&](int a, int b) {
    return std::strncmp(all[a].host, all[b].host, sizeof all[a].host) == 0;
  };
  const int n = mine.node_size;
  // Checked over every pair, so that all ranks reach the same verdict.
  if (n > 0)
    for (int r = 0; r < R_; ++r)
      if (!same_host(r, r - r % n))
        return Status::invalid_usage("init (CUDA backend): MOEFABRIC_NODE_SIZE=" + std::to_string(n) +
                                     " puts ranks " + std::to_string(r - r % n) + " and " +
                                     std::to_string(r) + " on one node, but they run on different hosts (" +
                                     std::string(all[r].host, strnlen(all[r].host, sizeof all[r].host)) +
                                     ")");
  fabric_peers_.assign(R_, 0);
  nfabric_ = 0;
  for (int r = 0; r < R_; ++r) {
    const bool same_node = n > 0 ? r / n == me_ / n : same_host(r, me_);
    if (r != me_ && (mine.force_fabric || !same_node)) fabric_peers_[r] = 1, ++nfabric_;
  }
  // Every rank has a fabric peer as soon as there are two nodes (or FORCE_FABRIC), so all ranks
  // agree on whether the fabric exchange below happens.
  return Status::kOk;
}

namespace {
void* pinned_alloc(size_t bytes) {
  void* p = nullptr;
  if (cudaHostAlloc(&p, bytes, cudaHostAllocMapped | cudaHostAllocPortable) != cudaSuccess) {
    (void)cudaGetLastError();
    return nullptr;
  }
  std::memset(p, 0, bytes);
  return p;
}
void pinned_free(void* p) {
  if (p != nullptr) (void)cudaFreeHost(p);
}
template <class T>
T* device_view(void* host) {
  void* d = nullptr;
  return cudaHostGetDevicePointer(&d, host, 0) == cudaSuccess ? static_cast<T*>(d) : nullptr;
}
}  // namespace

// The fabric path: what the proxy shares with the kernels (pinned, mapped), the kernels' scratch
// (device), then the protocol's comm over the fabric peers (collective: its address exchange
// rides on the caller's allgather, and all ranks learn whether everyone succeeded).
Status CudaComm::fabric_setup(ncclMoeAllGather_t fn, void* ctx) {
  ProtocolClient client;
  Status local;
  if (params_.moe_staging == "device")
    local = Status::system_error(
        "MOEFABRIC_MOE_STAGING=device: the protocol blocks are pinned host memory in this version");
  if (local.ok()) local = fabric_alloc(&client);
  if (local.ok()) {
    char bus[32] = {};
    if (cudaDeviceGetPCIBusId(bus, sizeof bus, dev_) == cudaSuccess) client.gpu = topo::PciAddr::parse(bus);
  }
  // A rank that failed here still takes part in Comm::create's exchange (with its error), so that
  // all ranks fail together.
  if (!local.ok()) {
    fabric_error_ = local;
    std::vector<RailsAddr> all;
    RailsAddr mine{};
    return agree(fn, ctx, R_,
                 {"init (CUDA backend, fabric path)", "exchanging addresses", "could not set up",
                  Status::kSystemError},
                 local, mine, &all);
  }
  MF_CHECK(Comm::create(R_, me_, fn, ctx, cfg_, params_, &proto_, &client));
  const Layout& pl = proto_->layout();
  args_.nfabric = nfabric_;
  args_.pl = pl;
  args_.psend = device_view<uint8_t>(proto_->send_block());
  args_.precv = device_view<uint8_t>(proto_->recv_block());
  if (args_.psend == nullptr || args_.precv == nullptr)
    fabric_error_ = Status::system_error("cudaHostGetDevicePointer failed on the protocol blocks");
  return Status::kOk;
}

// Pinned: doorbells, arrival flags, grants, plans (ProxyShared). Device: the fabric flags, the
// FabricScratch and its arrays. Fills the client and the kernels' arguments.
Status CudaComm::fabric_alloc(ProtocolClient* client) {
  const size_t R = static_cast<size_t>(R_), E = static_cast<size_t>(cfg_.experts);
  const CudaLayout& l = args_.l;
  // pinned
  size_t off = 0;
  auto take = [&](size_t bytes) {
    const size_t at = off;
    off = round_up(off + bytes, 64);
    return at;
  };
  const size_t o_bell = take(8 * 2), o_arr = take(8 * kNumKinds * R), o_ov = take(4 * R), o_gr = take(4 * R),
               o_plan = take(sizeof(SendPlan) * R), o_ret = take(sizeof(ReturnPlan) * R);
  shared_bytes_ = off;
  shared_.reset(static_cast<uint8_t*>(pinned_alloc(shared_bytes_)));
  if (!shared_)
    return Status::system_error("cudaHostAlloc of " + std::to_string(shared_bytes_) +
                                " B (proxy flags) failed");
  uint8_t* h = shared_.get();
  uint8_t* hd = device_view<uint8_t>(h);
  if (hd == nullptr) return Status::system_error("cudaHostGetDevicePointer failed on the proxy flags");
  client->shared =
      ProxyShared{reinterpret_cast<uint64_t*>(h + o_arr),   reinterpret_cast<uint32_t*>(h + o_ov),
                  reinterpret_cast<uint32_t*>(h + o_gr),    reinterpret_cast<SendPlan*>(h + o_plan),
                  reinterpret_cast<ReturnPlan*>(h + o_ret), reinterpret_cast<uint64_t*>(h + o_bell)};
  host_shared_ = client->shared;
  client->alloc = pinned_alloc;
  client->free = pinned_free;
  client->peers = fabric_peers_;
  client->abort_word = &reinterpret_cast<volatile kern::DevError*>(err_.get())->abort;
  args_.doorbell = reinterpret_cast<uint64_t*>(hd + o_bell);
  args_.arrived = reinterpret_cast<const uint64_t*>(hd + o_arr);
  args_.overflow_off = reinterpret_cast<const uint32_t*>(hd + o_ov);
  args_.granted = reinterpret_cast<const uint32_t*>(hd + o_gr);
  args_.plan = reinterpret_cast<SendPlan*>(hd + o_plan);
  args_.ret = reinterpret_cast<ReturnPlan*>(hd + o_ret);
  // device
  off = 0;
  const size_t d_flags = take(R), d_fs = take(sizeof(kern::FabricScratch)), d_dt = take(4 * R),
               d_dp = take(4 * R), d_cb = take(4 * R), d_ep = take(4 * E),
               d_cp = take(4 * static_cast<size_t>(l.max_tokens) * l.topk), d_pb = take(4 * R * l.max_tokens),
               d_sc = take(4 * R * l.max_local), d_ok = take(4 * R), d_st = take(4 * R),
               d_ret = take(sizeof(ReturnPlan) * R);
  fabric_dev_bytes_ = off;
  void* p = nullptr;
  if (cudaMalloc(&p, fabric_dev_bytes_) != cudaSuccess) {
    (void)cudaGetLastError();
    return Status::system_error("cudaMalloc of " + std::to_string(fabric_dev_bytes_) +
                                " B (fabric scratch) failed");
  }
  fabric_dev_.reset(static_cast<uint8_t*>(p));
  uint8_t* d = fabric_dev_.get();
  kern::FabricScratch fs{reinterpret_cast<uint32_t*>(d + d_dt), reinterpret_cast<uint32_t*>(d + d_dp),
                         reinterpret_cast<uint32_t*>(d + d_cb), reinterpret_cast<uint32_t*>(d + d_ep),
                         reinterpret_cast<uint32_t*>(d + d_cp), reinterpret_cast<uint32_t*>(d + d_pb),
                         reinterpret_cast<uint32_t*>(d + d_sc), reinterpret_cast<int32_t*>(d + d_ok),
                         reinterpret_cast<uint32_t*>(d + d_st), reinterpret_cast<ReturnPlan*>(d + d_ret)};
  if (cudaMemset(d, 0, fabric_dev_bytes_) != cudaSuccess ||
      cudaMemcpy(d + d_flags, fabric_peers_.data(), R, cudaMemcpyHostToDevice) != cudaSuccess ||
      cudaMemcpy(d + d_fs, &fs, sizeof fs, cudaMemcpyHostToDevice) != cudaSuccess) {
    (void)cudaGetLastError();
    return Status::system_error("initialising the fabric scratch failed");
  }
  args_.fabric = d + d_flags;
  args_.fs = reinterpret_cast<kern::FabricScratch*>(d + d_fs);
  return {};
}

// What the kernels' plans say this rank wrote to each fabric peer in the last op (read after the
// caller's stream has completed it). NVLink stores are not counted: a comm with NVLink peers
// other than this rank says so.
Status CudaComm::peer_stats(ncclMoePeerStats_t* out) {
  for (int r = 0; r < R_; ++r)
    if (r != me_ && !fabric(r))
      return fail(Status::kInvalidUsage,
                  "peer stats: rank %d is an NVLink peer; the CUDA backend counts fabric peers only", r);
  const Layout* pl = proto_ ? &proto_->layout() : nullptr;
  const uint64_t op = proto_ ? proto_->current_op() : 0;
  for (int r = 0; r < R_; ++r) {
    out[r] = ncclMoePeerStats_t{};
    if (r == me_ || pl == nullptr || op == 0) continue;
    const uint32_t n = host_shared_.plan[r].ntokens, rows = host_shared_.ret[r].rows;
    out[r].records = n;
    out[r].dispatchBytes = pl->dispatch_bytes(n);
    out[r].dispatchWrites = pl->dispatch_writes(n);
    out[r].grantsSent = proto_->granted_in(r, op) ? 1 : 0;
    out[r].rowsReturned = rows;
    out[r].combineBytes = pl->combine_wire_bytes(rows);
    out[r].combineWrites = 1;
  }
  return Status::kOk;
}

void CudaComm::memory(size_t* device_bytes, size_t* host_bytes) const {
  const CudaLayout& l = args_.l;
  *device_bytes = l.block_bytes + sizeof(kern::DevState) + sizeof(uint32_t) * l.capacity_rows +
                  sizeof(uint32_t) * static_cast<size_t>(l.max_tokens) * l.topk + sizeof(uint8_t*) * R_ +
                  fabric_dev_bytes_;
  *host_bytes = sizeof(kern::DevError) + shared_bytes_ + (proto_ ? proto_->host_bytes() : 0);
}

Status CudaComm::record_error(Status::Code s, const char* text) {
  last_error_ = text;
  if (s != Status::kInvalidArgument && s != Status::kInvalidUsage && sticky_.ok()) sticky_ = Status(s, text);
  MF_WARN("rank %d: %s", me_, text);
  return Status(s, text);
}

// Turns the device's error word into the sticky async error (read without any CUDA call).
Status CudaComm::async_error() {
  if (!sticky_.ok() || !err_) return sticky_;
  if (proto_)
    if (Status s = proto_->check_usable(); !s.ok())
      return fail(s.code(), "fabric proxy: %s", s.message().c_str());
  volatile kern::DevError* e = err_.get();
  const int32_t code = e->code;
  if (code == kern::kErrNone) return Status::kOk;
  const int32_t phase = e->phase, peer = e->peer, value = e->value;
  switch (code) {
    case kern::kErrTimeout:
      return fail(Status::kRemoteError,
                  "%s: timed out after %d ms waiting for rank %d's %s (peer stalled or lost)",
                  phase_name(phase), cfg_.timeout_ms, peer,
                  peer >= 0 && peer < R_ && phase != kern::kPhaseBarrier && fabric(peer)
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
    case kern::kErrPeerData: {
      static const char* const what[] = {
          "?",
          "a token count out of range",
          "a malformed dispatch header",
          "more records than it was granted",
          "a record whose token is out of order or range, or an expert id out of range",
          "a record selecting none of our experts",
          "per-expert counts that differ from its records"};
      return fail(Status::kRemoteError, "%s: rank %d sent %s; its tokens were dropped", phase_name(phase),
                  peer, value >= 1 && value <= 6 ? what[value] : what[0]);
    }
    case kern::kErrAborted:
      return fail(Status::kRemoteError, "%s: aborted while waiting for rank %d", phase_name(phase), peer);
  }
  return fail(Status::kInternalError, "%s: device error %d", phase_name(phase), code);
}

Status CudaComm::check_usable(bool starts_op) {
  if (torn_down_) return fail(Status::kInvalidUsage, "the comm was aborted");
  Status s = async_error();
  if (s.ok()) return s;
  last_error_ = s.message();
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
  if (nfabric_ > 0) MF_CHECK(launched(kern::launch_fabric_pack(args_, c.stream), "dispatch send (fabric)"));
  return launched(kern::launch_dispatch_send(args_, c.stream), "dispatch send");
}

Status CudaComm::move_dispatch_recv(cudaStream_t stream) {
  DeviceScope scope(dev_);
  if (nfabric_ > 0)
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
  if (nfabric_ > 0)
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
  if (!torn_down_ && in_step && idle && R_ > 1) {
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
    } else if (proto_) {
      // Fabric peers: no write of theirs lands in our blocks once their barrier write has.
      if (proto_->destroy(true) != Status::kOk)
        result = fail(Status::kRemoteError, "%s", proto_->last_error().c_str());
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
  proto_.reset();  // joins the proxy thread, then deregisters and frees the blocks
  shared_.reset();
  fabric_dev_.reset();
  mapped_.clear();
  if (internal_ != nullptr) (void)cudaStreamDestroy(internal_);
  internal_ = nullptr;
  peers_dev_.reset();
  row_src_.reset();
  self_row_.reset();
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
  s->dispatchBytesSent = s->combineBytesSent = 0;
  s->proxyPostUs = s->combinePostUs = 0;
  if (proto_) {
    ncclMoeStats_t p{};
    proto_->stats(&p);
    s->proxyPostUs = p.proxyPostUs;
    s->combinePostUs = p.combinePostUs;
  }
  s->registrations = 0;
}

}  // namespace

Status cuda_backend_probe() {
  int dev = -1, n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e == cudaSuccess && n > 0) e = cudaGetDevice(&dev);
  if (e != cudaSuccess || n == 0) {
    (void)cudaGetLastError();
    return Status::invalid_usage("no GPU is current (" +
                                 (e != cudaSuccess ? cuda_text(e) : std::string("no devices")) + ")");
  }
  return {};
}

Status cuda_engine_create(int nranks, int rank, ncclMoeAllGather_t fn, void* ctx, const ResolvedConfig& rc,
                          const Params& params, std::unique_ptr<Engine>* out) {
  return CudaComm::create(nranks, rank, fn, ctx, rc, params, out);
}

}  // namespace moefabric::moe
