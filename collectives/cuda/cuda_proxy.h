// The CUDA backend's fabric proxy: one host thread per comm that owns a libfabric RMA endpoint
// (fabric/rma.h) and moves the staging segments of kernels/layout.h between ranks. The GPU
// kernels are its only clients and talk to it through pinned host memory alone:
//
//   doorbell[b]       u64 written by the last block of a send kernel: ops whose phase b is
//                     staged. The proxy polls it; on a new op it posts one write per fabric peer
//                     (a prefix of that peer's send segment, to the same offsets of our segment
//                     at the peer) with the immediate imm_encode(kind, op, rank).
//   arrived[b][src]   u64 written by the proxy when src's write of phase b lands (its immediate
//                     is delivered after the data): the op number. Kernels wait on it.
//   stage_T[1 + R]    i32 written by the kernels: [0] the T of our dispatch, [1 + s] source s's
//                     T; the lengths of our dispatch writes and of our combine write to s.
//
// The staging segments are GPU memory (MOEFABRIC_MOE_STAGING: registered with FI_HMEM_CUDA, the
// NIC reads and writes them by DMA; the proxy never touches their bytes) or pinned host memory.
// GPU staging needs a provider whose NIC writes GPU memory itself (efa, verbs): shm and tcp fill
// it with host-issued cudaMemcpy on the legacy default stream, which completes after the write is
// reported and waits behind the caller's kernels, so they get GPU staging only when no byte
// crosses them (every fabric peer is this rank, MOEFABRIC_FORCE_FABRIC on one GPU).
//
// Nothing on the caller's path touches the proxy, so launches stay graph-capturable. Host code
// only uses it at init (address exchange, a fabric barrier) and destroy (a fabric barrier). No
// CUDA here: the control words are plain host pointers (cudaHostAlloc'ed and mapped).
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

#include "kernels/layout.h"
#include "common/params.h"
#include "common/status.h"
#include "collectives/rails.h"
#include "fabric/rma_rails.h"
#include "topology/topology.h"

namespace moefabric::moe {

class FabricProxy : public fabric::RmaHandler {
 public:
  static constexpr int kBells = 2;  // dispatch, combine (kern::Bell)

  struct Config {
    int nranks = 0, rank = 0;
    uint32_t remote = 0;  // bit r: rank r is a fabric peer (self included under FORCE_FABRIC)
    CudaLayout layout;
    const uint64_t* doorbell = nullptr;      // [kBells], written by the GPU
    uint64_t* arrived = nullptr;             // [kBells + 1][R]; the last row counts barriers (init, destroy)
    const int32_t* stage_T = nullptr;        // [1 + R], written by the GPU
    volatile int32_t* abort_word = nullptr;  // set on a proxy failure: waiting kernels return
    int timeout_ms = 60000;
    std::optional<topo::PciAddr> gpu;  // this rank's GPU: its rails and NUMA slice are used
  };

  // Fixed-size record every rank contributes to the init allgather.
  using Addr = RailsAddr;

  // Opens an endpoint on each of the GPU's rails; attach() then registers the staging.
  static Status create(const Params& params, const Config& cfg, std::unique_ptr<FabricProxy>* out,
                       std::string* error);
  // Every rail registers GPU memory (FI_HMEM): device staging is possible.
  bool hmem() const { return ep_->hmem(); }
  // Some rail fills GPU memory with host-issued copies (shm, tcp), not NIC DMA.
  bool hmem_async() const { return ep_->hmem_async(); }
  // Whether GPU staging is possible, else why not: FI_HMEM on every rail, and NIC DMA unless no
  // byte crosses the provider.
  bool device_staging_ok(std::string* why) const;
  // Registers the staging areas ([R][stage_bytes] each) on every rail: host memory, or with
  // `cuda_device` >= 0 that GPU's memory (device_staging_ok). Fails, registering nothing, when
  // the provider refuses.
  Status attach(uint8_t* send_stage, uint8_t* recv_stage, int cuda_device, std::string* error);
  bool device_staging() const { return cuda_device_ >= 0; }
  ~FabricProxy() override;
  FabricProxy(const FabricProxy&) = delete;
  FabricProxy& operator=(const FabricProxy&) = delete;

  void local_addr(Addr* a) const;
  // Inserts every fabric peer's address (ours too when we are our own fabric peer) and starts
  // the thread.
  Status start(const std::vector<Addr>& all, std::string* error);
  // A 16-byte write to every fabric peer, then waits (timeout) until every fabric peer's has
  // arrived and our own writes completed; collective, numbered by call. Init calls it once (it
  // proves every path and lets the provider set up what it maps on first use, e.g. shm's CUDA IPC
  // handles, before any kernel waits on it), destroy once more. Joins nothing; stop() does.
  Status barrier(std::string* error, const char* what = "destroy");
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
  // With GPU staging a rank's own segment never goes through the provider (shm cannot CUDA-IPC
  // into its own process): the ingest kernels read our send segment, and its arrival is raised
  // here as the write's would be.
  bool self_short(int peer) const { return peer == cfg_.rank && cuda_device_ >= 0; }
  void fail(Status s, const std::string& text);
  void on_remote_write(uint32_t imm) override;
  void on_write_done(uint64_t cookie, Status s, const char* text) override;
  void check_stuck_writes(Clock::time_point now);

  Params params_;
  Config cfg_;
  std::unique_ptr<fabric::RmaRails> ep_;
  fabric::RmaRails::Mr send_mr_, recv_mr_;
  uint8_t* send_stage_ = nullptr;  // [R][stage_bytes]
  uint8_t* recv_stage_ = nullptr;
  int cuda_device_ = -1;  // staging in this GPU's memory; -1: pinned host memory
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
  // Barriers: the last one asked for by barrier(), the last one whose writes the proxy posted.
  std::atomic<uint64_t> barrier_req_{0}, barrier_posted_{0};
  std::atomic<int> writes_inflight_{0};
  uint64_t posted_[kBells] = {};  // proxy thread: last op posted per phase
  std::atomic<uint64_t> post_ns_[kBells] = {};
  std::atomic<uint64_t> bytes_[kBells] = {};
  std::atomic<int> status_{0};
  mutable std::mutex err_mu_;
  std::string err_text_;
};

}  // namespace moefabric::moe
