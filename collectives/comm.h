// One ncclMoe communicator: the resolved config, the buffer layout, the RDMA endpoint with its
// registered regions and every peer's keys, the proxy thread, and the state of the op in flight.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "collectives/engine.h"
#include "collectives/layout.h"
#include "collectives/protocol.h"
#include "include/moefabric/nccl_moe.h"
#include "common/params.h"
#include "common/status.h"
#include "fabric/rma_rails.h"
#include "topology/topology.h"

namespace moefabric::moe {

using Clock = std::chrono::steady_clock;

using Block = std::unique_ptr<uint8_t, void (*)(void*)>;

struct PeerInfo {
  fabric::RmaRails::Peer rails;  // addresses and receive keys, per shared rail
  uint64_t recv_base = 0;        // remote address (or offset) of the peer's receive block
};

// What the proxy shares with its client, all host memory: the host backend's own, or the CUDA
// backend's pinned and mapped memory that its kernels read and write. Null members: the comm
// allocates them.
struct ProxyShared {
  uint64_t* arrived = nullptr;       // [kNumKinds][R]: op whose write of a kind last landed, per source
  uint32_t* overflow_off = nullptr;  // [R]: overflow record offset granted to each source (this op)
  uint32_t* granted = nullptr;       // [R]: records granted to each source (this op)
  SendPlan* plan = nullptr;          // [R] (client writes)
  ReturnPlan* ret = nullptr;         // [R] (client writes)
  uint64_t* doorbell = nullptr;      // [2]: ops whose dispatch / combine is staged (GPU); null: ring()
};

// How a client other than the host backend runs the protocol (the CUDA backend: its kernels pack
// and unpack, the proxy only moves what they staged).
struct ProtocolClient {
  void* (*alloc)(size_t bytes) = nullptr;  // zeroed, 4096-aligned blocks the kernels can reach
  void (*free)(void* p) = nullptr;
  std::vector<uint8_t> peers;  // [R]: 1 where rank r is reached through the protocol
  ProxyShared shared;          // every member set
  std::optional<topo::PciAddr> gpu;
  volatile int32_t* abort_word = nullptr;  // set to 1 on a proxy failure (waiting kernels return)
};

// Resolves and validates the caller's config, then checks through one allgather that every
// rank resolved the same one (all ranks fail together, naming the first mismatch).
Status config_agree(int nranks, int rank, ncclMoeAllGather_t fn, void* ctx, const ncclMoeConfig_t* cfg,
                    const Params& params, ResolvedConfig* out);

// Tests only (tests/moe/test_moe_hostile.cpp): dispatch recv calls it after the arrivals are in
// and before the unpack, standing in for a peer that rewrites its region after the proxy checked
// it. Null in every other program.
extern void (*g_test_before_unpack)(int rank, uint8_t* recv_block, const Layout& l);

// The host backend's comm (and the RDMA protocol's owner).
class Comm : public fabric::RmaHandler {
 public:
  // Collective: buffers, endpoint, address exchange, proxy. `rc` comes from config_agree.
  static Status create(int nranks, int rank, ncclMoeAllGather_t fn, void* ctx, const ResolvedConfig& rc,
                       const Params& params, std::unique_ptr<Comm>* out,
                       const ProtocolClient* client = nullptr);
  uint8_t* send_block() const { return send_block_.get(); }
  uint8_t* recv_block() const { return recv_block_.get(); }
  const std::string& provider() const;
  std::string rails() const;  // "eth1+eth2 (2 rails: why)"
  ~Comm() override;

  // The data movement of the C API's calls, after the Engine (engine.h) checked the arguments
  // and the op's phase: T tokens of host memory.
  Status dispatch_send(const void* x, const float* scales, const int32_t* idx, const float* w, int T,
                       void* recv_x, float* recv_scales, int32_t* recv_counts);
  Status dispatch_recv();
  Status combine_send(const void* expert_y);
  Status combine_recv(void* y);
  Status destroy(bool idle);  // collective barrier (when idle and healthy), then teardown
  void abort();               // local teardown
  Status check_usable();      // the async error and its text, if any
  int64_t pending_rows() const { return static_cast<int64_t>(row_of_pair_.size()); }

  const Layout& layout() const { return l_; }
  int pending_tokens() const { return T_; }
  const ResolvedConfig& config() const { return cfg_; }
  Status async_error() const { return static_cast<Status::Code>(async_status_.load()); }  // the code only
  const std::string& last_error() const { return last_error_; }
  void stats(ncclMoeStats_t* s) const;
  void peer_stats(ncclMoePeerStats_t* out) const;  // [R]
  // Whether this rank granted `src` overflow space in op `op` (the CUDA client's stats).
  bool granted_in(int src, uint64_t op) const {
    return grant_seq_of_[src].load(std::memory_order_relaxed) == op;
  }
  uint64_t current_op() const { return cur_seq_.load(std::memory_order_acquire); }
  size_t host_bytes() const { return l_.recv_block_bytes + l_.send_block_bytes; }

  // Records an error (first wins for the async state); returns it, code and message.
  Status fail(Status::Code s, const char* fmt, ...) __attribute__((format(printf, 3, 4)));

 private:
  Comm() = default;
  Status setup(int nranks, int rank, ncclMoeAllGather_t fn, void* ctx, const ResolvedConfig& rc,
               const ProtocolClient* client);
  bool is_peer(int r) const { return r != me_ && (peer_mask_.empty() || peer_mask_[r]); }
  std::atomic_ref<uint64_t> arrived(WriteKind k, int src) const {
    return std::atomic_ref<uint64_t>(sh_.arrived[static_cast<size_t>(k) * R_ + src]);
  }
  void poll_doorbells();  // CUDA client: ops the kernels staged

  // proxy (proxy.cpp)
  struct Command {
    WriteKind kind;
    uint64_t seq;
    Clock::time_point rung;
  };
  void proxy_start();
  void proxy_stop();
  void proxy_loop();
  void ring(WriteKind kind, uint64_t seq);  // hands a command to the proxy
  void proxy_execute(const Command& c);
  uint8_t* out_slot(int peer);
  void on_remote_write(uint32_t imm) override;
  void on_write_done(uint64_t cookie, const Status& s) override;
  void proxy_fail(const Status& s);  // records the async error (first wins) and aborts waiting kernels
  void wake_waiters();               // futex-wakes a caller sleeping in a wait when something happened
  void sleep_for_event(uint32_t seen);
  void post(int peer, int cls, const void* src, size_t len, uint64_t remote_off, WriteKind kind,
            uint64_t seq);

  // waits (bounded by the timeout) until every peer's `kind` has reached `seq`
  Status wait_arrivals(WriteKind kind, uint64_t seq, const char* phase,
                       const std::vector<bool>* only = nullptr);
  Status wait_local_writes(int cls, const char* phase);

  // host backend (host_backend.cpp)
  Status host_pack_dispatch(const void* x, const float* scales, const int32_t* idx, const float* w, int T);
  int token_dests(const int32_t* row, int* dests) const;
  Status host_unpack_dispatch();
  Status copy_headers();  // every source's header and counts, copied once and checked
  void host_pack_combine(const void* expert_y);
  void host_reduce_combine(void* y);

  Params params_;
  ResolvedConfig cfg_{};
  Layout l_{};
  int me_ = 0, R_ = 0;
  std::vector<int> owner_;  // expert -> rank

  std::unique_ptr<fabric::RmaRails> ep_;  // the rails of this rank's NIC group
  std::vector<int> proxy_cpus_;           // affinity of the proxy thread (empty: not pinned)
  std::string proxy_cpus_why_;
  std::string rails_why_;
  Block recv_block_{nullptr, std::free}, send_block_{nullptr, std::free};
  std::vector<uint8_t> peer_mask_;  // empty: every other rank
  volatile int32_t* abort_word_ = nullptr;
  ProxyShared sh_;
  // the host backend's ProxyShared storage
  std::vector<uint64_t> arrived_store_;
  std::vector<uint32_t> overflow_store_, granted_store_;
  std::vector<SendPlan> plan_store_;
  std::vector<ReturnPlan> ret_store_;
  uint64_t bell_seen_[2] = {};  // proxy: last op taken from each doorbell
  fabric::RmaRails::Mr recv_mr_, send_mr_;
  std::vector<PeerInfo> peers_;
  uint64_t registrations_ = 0;

  // proxy thread and what it shares with the caller
  std::thread proxy_;
  std::atomic<bool> stop_{false};
  std::mutex cmd_mu_;
  std::deque<Command> cmds_;
  uint64_t cmds_rung_ = 0;                // caller: commands handed over
  std::atomic<uint64_t> cmds_done_{0};    // proxy: commands executed (all their writes posted)
  uint64_t last_ticket_[kNumKinds] = {};  // caller: ticket of the last command per kind
  std::atomic<uint64_t> cur_seq_{0};
  // What each source's dispatch header said, copied out of the receive block once by the caller
  // and checked: the unpack uses only these copies (a peer may rewrite its region at any time).
  struct HeaderCopy {
    DispatchHeader h{};
    std::vector<uint32_t> counts;  // [local experts]
  };
  std::vector<HeaderCopy> hdr_;
  std::atomic<int> outstanding_[kNumKinds] = {};
  std::atomic<int> async_status_{0};
  std::atomic<bool> proxy_blocked_{false};  // proxy sleeps in the CQ: ring() must signal
  std::atomic<bool> events_{false};         // proxy saw an arrival/completion since last wake
  std::atomic<uint32_t> wake_seq_{0};       // futex word callers sleep on
  std::atomic<int> waiters_{0};
  mutable std::mutex err_mu_;
  std::string async_text_;
  // proxy-private
  uint64_t grant_seq_ = 0;
  uint32_t grant_bump_ = 0;
  // stats written by the proxy
  std::atomic<uint64_t> post_ns_{0}, combine_post_ns_{0};
  std::vector<std::atomic<uint64_t>> grant_seq_of_;  // per source: op of the last grant we sent it

  // the op in flight (caller thread)
  uint64_t seq_ = 0;  // current op
  uint64_t ops_ = 0;
  int T_ = 0;
  const float* weights_ = nullptr;
  std::vector<int32_t> idx_copy_;               // [T, K] of the op in flight
  std::vector<uint32_t> sent_tokens_;           // per destination
  std::vector<uint32_t> sent_pairs_;            // per destination
  std::vector<uint32_t> combine_base_;          // per destination: where its returns land here
  std::vector<uint32_t> expert_pairs_;          // dispatch pack: (token, k) pairs per expert id
  std::vector<ncclMoePeerStats_t> peer_stats_;  // per peer, last op (grants from grant_seq_of_)
  void* recv_x_ = nullptr;
  float* recv_scales_ = nullptr;
  int32_t* recv_counts_ = nullptr;
  // dispatch results needed by combine
  std::vector<uint32_t> row_of_pair_;  // rows in return order, concatenated by source
  // per-rank combine: each pair's weight, and the pairs of each record (token) in return order
  std::vector<float> weight_of_pair_;
  std::vector<uint8_t> pairs_of_record_;
  std::vector<int32_t> meta_copy_;          // dispatch unpack: every record's (token, idx[K]), copied once
  std::vector<uint32_t> src_pair_start_;    // prefix over sources into row_of_pair_
  std::vector<uint32_t> src_record_start_;  // per-rank combine: prefix over sources into pairs_of_record_
  uint32_t rows_out_ = 0;                   // combine rows staged for all sources
  uint64_t dispatch_bytes_ = 0, combine_bytes_ = 0;
  uint32_t last_dispatch_writes_ = 0, last_combine_writes_ = 0;

  std::string last_error_;
};

}  // namespace moefabric::moe
