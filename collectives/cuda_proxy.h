// The CUDA backend's fabric proxy: one host thread per comm that owns a libfabric RMA endpoint
// (plugin/fabric/rma.h) and moves the staging segments of cuda_layout.h between ranks. The GPU
// kernels are its only clients and talk to it through pinned host memory alone:
//
//   doorbell[b]       u64 written by the last block of a send kernel: ops whose phase b is
//                     staged. The proxy polls it; on a new op it posts one write per fabric peer
//                     (a prefix of that peer's send segment, to the same offsets of our segment
//                     at the peer) with the immediate imm_encode(kind, op, rank).
//   arrived[b][src]   u64 written by the proxy when src's write of phase b lands (its immediate
//                     is delivered after the data): the op number. Kernels wait on it.
//
// Nothing on the caller's path touches the proxy, so launches stay graph-capturable. Host code
// only uses it at init (address exchange) and destroy (a fabric barrier). No CUDA here: the
// buffers are plain host pointers (they happen to be cudaHostAlloc'ed and mapped).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "collectives/cuda_layout.h"
#include "plugin/common/params.h"
#include "plugin/common/status.h"
#include "collectives/rails.h"
#include "plugin/fabric/rma_rails.h"
#include "topology/topology.h"

namespace moefabric::moe {

class FabricProxy : public fabric::RmaHandler {
 public:
  static constexpr int kBells = 2;  // dispatch, combine (kern::Bell)

  struct Config {
    int nranks = 0, rank = 0;
    uint32_t remote = 0;  // bit r: rank r is a fabric peer (self included under FORCE_FABRIC)
    CudaLayout layout;
    uint8_t* send_stage = nullptr;        // [R][stage_bytes]
    uint8_t* recv_stage = nullptr;        // [R][stage_bytes]
    const uint64_t* doorbell = nullptr;   // [kBells], written by the GPU
    uint64_t* arrived = nullptr;          // [kBells + 1][R]; the last row is the destroy barrier
    volatile int32_t* abort_word = nullptr;  // set on a proxy failure: waiting kernels return
    int timeout_ms = 60000;
    std::optional<topo::PciAddr> gpu;  // this rank's GPU: its rails and NUMA slice are used
  };

  // Fixed-size record every rank contributes to the init allgather.
  using Addr = RailsAddr;

  // Opens an endpoint on each of the GPU's rails and registers both staging areas on them.
  static Status create(const Params& params, const Config& cfg, std::unique_ptr<FabricProxy>* out,
                       std::string* error);
  ~FabricProxy() override;
  FabricProxy(const FabricProxy&) = delete;
  FabricProxy& operator=(const FabricProxy&) = delete;

  void local_addr(Addr* a) const;
  // Inserts every fabric peer's address (ours too when we are our own fabric peer) and starts
  // the thread.
  Status start(const std::vector<Addr>& all, std::string* error);
  // Destroy: a 16-byte write to every fabric peer, then waits (timeout) until every fabric peer's
  // arrived and our own writes completed. Joins nothing; stop() does.
  Status barrier(std::string* error);
  void stop();

  // A transport failure the proxy saw (first one wins): kOk while none.
  Status failure(std::string* text) const;
  // Last op's posting cost: doorbell seen -> all its writes posted, on the proxy's clock.
  double post_us(int bell) const { return static_cast<double>(post_ns_[bell].load()) / 1000.0; }
  uint64_t bytes_posted(int bell) const { return bytes_[bell].load(); }
  const std::string& provider() const;
  std::string rails() const;  // "eth1+eth2 (2 rails: why)"

 private:
  using Clock = std::chrono::steady_clock;
  FabricProxy() = default;
  void loop();
  void post_phase(int bell, uint64_t op);
  void post_one(int peer, int kind, const uint8_t* src, size_t len, uint64_t offset, uint64_t op,
                bool delivered);
  void fail(Status s, const std::string& text);
  void on_remote_write(uint32_t imm) override;
  void on_write_done(uint64_t cookie, Status s, const char* text) override;
  void check_stuck_writes(Clock::time_point now);

  Params params_;
  Config cfg_;
  std::unique_ptr<fabric::RmaRails> ep_;
  fabric::RmaRails::Mr send_mr_, recv_mr_;
  std::string rails_why_;
  std::vector<int> proxy_cpus_;
  std::string proxy_cpus_why_;
  struct Peer {
    fabric::RmaRails::Peer rails;
    uint64_t recv_base = 0;
    int inflight[kBells + 1] = {};         // proxy thread only
    Clock::time_point posted[kBells + 1];  // when the oldest in-flight write was posted
  };
  std::vector<Peer> peers_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  // Destroy barrier: 0 none, 1 asked for by barrier(), 2 the proxy has posted its writes.
  std::atomic<int> barrier_state_{0};
  std::atomic<int> writes_inflight_{0};
  uint64_t posted_[kBells] = {};  // proxy thread: last op posted per phase
  std::atomic<uint64_t> post_ns_[kBells] = {};
  std::atomic<uint64_t> bytes_[kBells] = {};
  std::atomic<int> status_{0};
  mutable std::mutex err_mu_;
  std::string err_text_;
};

}  // namespace moefabric::moe
