// The MoE proxies' RDMA-write transport over one or more rails (the NICs of one GPU): one
// RmaEndpoint per rail, writes of at least MOEFABRIC_STRIPE_MIN bytes split into 128-byte aligned
// stripes (stripe i on rail i), smaller ones whole on one rail, round robin.
//
// Arrival: every stripe carries the write's immediate, with the stripe count minus one in the two
// bits at `stripe_shift` (the caller's immediate must leave them zero). The receiving side counts
// stripes per immediate and reports the write once, with those bits cleared, when all have landed,
// so the caller sees one on_remote_write per logical write whatever the rail count. Immediates
// must therefore be unique among a peer's writes in flight (the MoE protocol's kind|seq|src is).
// Local completion: one on_write_done per write, after its last stripe (first error wins).
//
// Peers may have different rail counts: a write to a peer uses min(ours, theirs) rails, rail i to
// rail i. Single-threaded like RmaEndpoint: the proxy thread makes every call after setup.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "fabric/rma.h"
#include "fabric/bounds.h"

namespace moefabric::fabric {

class RmaRails : private RmaHandler {
 public:
  static constexpr int kMaxRails = fabric::kMaxRails;

  // This rank's endpoint names, one per rail; a plain struct for allgathers.
  struct Addr {
    uint32_t nrails = 0;
    uint32_t len[kMaxRails] = {};
    uint8_t addr[kMaxRails][RmaEndpoint::kMaxAddrLen] = {};
  };
  // A registration on every rail; keys() is what a peer needs to write into it.
  struct Mr {
    MrEntry* rail[kMaxRails] = {};
    void* desc(int i) const { return rail[i] ? rail[i]->desc : nullptr; }
  };
  struct Keys {
    uint64_t key[kMaxRails] = {};
  };
  struct Peer {
    int nrails = 0;  // min(ours, theirs)
    fi_addr_t addr[kMaxRails] = {};
    uint64_t key[kMaxRails] = {};  // the peer's receive registration, per rail
  };

  // Opens an endpoint on every NIC of `rails` (1..kMaxRails, one provider). `stripe_shift`: where
  // the 2-bit stripe field sits in the immediate.
  static Status open(const Params& params, std::vector<NicInfo> rails, int stripe_shift,
                     std::unique_ptr<RmaRails>* out);
  ~RmaRails() override;
  RmaRails(const RmaRails&) = delete;
  RmaRails& operator=(const RmaRails&) = delete;

  int nrails() const { return static_cast<int>(eps_.size()); }
  const NicInfo& nic(int i = 0) const { return eps_[i]->nic(); }
  std::string name() const;  // "eth1+eth2"
  size_t max_write() const;
  size_t stripe_min() const { return stripe_min_; }

  void local_addr(Addr* out) const;
  // Registers memory on every rail (through each rail's MR cache): host memory, or with
  // `cuda_device` >= 0 that GPU's memory (FI_HMEM_CUDA; every rail must have hmem()). Only
  // memory peers write into gets MrAccess::kRemoteWrite.
  Status reg(void* buf, size_t len, MrAccess access, Mr* out, int cuda_device = -1);
  // Every rail registers GPU memory (FI_HMEM granted).
  bool hmem() const;
  // Some rail fills GPU memory with host-issued copies that may still run after their
  // completion (NicInfo::hmem_async): GPU-memory receives need a fence before they are read.
  bool hmem_async() const;
  void dereg(Mr* mr);
  Keys keys(const Mr& mr) const;
  uint64_t remote_addr(const Mr& mr, const void* p) const { return mr.rail[0]->remote_addr(p); }
  Status add_peer(const Addr& addr, const Keys& keys, Peer* out);

  // One logical write of `len` bytes from `buf` (inside `mr`) to the peer's `raddr` (inside the
  // registration `peer.key` names), with immediate `imm`. `delivered` as in RmaEndpoint::write.
  Status write(const Peer& peer, const void* buf, size_t len, const Mr& mr, uint64_t raddr, uint32_t imm,
               uint64_t cookie, bool delivered = false);
  Status poll(RmaHandler* h);
  // As RmaEndpoint::wait on one rail; with several rails a short nap, then a poll of all.
  Status wait(RmaHandler* h, int timeout_ms);
  void signal();
  size_t writes_in_flight() const { return inflight_; }
  RmaStats stats() const;                                      // summed over the rails
  uint64_t registrations();                                    // MR registrations made, summed over the rails
  uint64_t rail_bytes(int i) const { return rail_bytes_[i]; }  // bytes posted on rail i

 private:
  struct Pending {  // one logical write
    uint64_t cookie = 0;
    int parts = 0;
    bool silent = false;  // failed to post: the caller has the error, no completion goes up
    Status status;        // the first failure, its text with it
  };
  RmaRails() = default;
  void on_remote_write(uint32_t imm) override;
  void on_write_done(uint64_t cookie, const Status& s) override;
  Pending* pending_alloc();

  std::vector<std::unique_ptr<RmaEndpoint>> eps_;
  int stripe_shift_ = 27;
  size_t stripe_min_ = 0;
  unsigned rr_ = 0;
  RmaHandler* upper_ = nullptr;  // during poll/wait
  // Striped immediates with some but not all stripes landed. Bounded: past kMaxStripedPending an
  // immediate goes up as it came, stripe field set, and the protocol refuses it (a peer sending
  // lone stripes of distinct immediates cannot grow this without limit).
  static constexpr size_t kMaxStripedPending = 65536;
  std::unordered_map<uint32_t, int> stripes_seen_;  // striped immediate -> stripes landed

 public:
  size_t striped_pending() const { return stripes_seen_.size(); }

 private:
  std::deque<Pending> pool_;
  std::vector<Pending*> free_;
  size_t inflight_ = 0;
  uint64_t rail_bytes_[kMaxRails] = {};
};

}  // namespace moefabric::fabric
