// A bare RDMA-write endpoint for one-sided protocols (the MoE proxy): one NIC's fabric, domain,
// AV, CQ and endpoint, registrations through the MR cache, fi_writedata with a 32-bit immediate,
// and completion polling. Single-threaded by design: one owner thread (the proxy) makes every
// call after setup.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/params.h"
#include "common/status.h"
#include "fabric/info.h"
#include "fabric/mr.h"
#include "fabric/rail.h"
#include "fabric/retry_queue.h"
#include "fabric/resource.h"

namespace moefabric::fabric {

class RmaHandler {
 public:
  virtual ~RmaHandler() = default;
  // An incoming write carrying `imm` has landed completely.
  virtual void on_remote_write(uint32_t imm) = 0;
  // A local write finished; a failure carries the provider's error text.
  virtual void on_write_done(uint64_t cookie, const Status& s) = 0;
};

struct RmaStats {
  uint64_t writes = 0, eagain = 0, remote_writes = 0;
};

// `params` as the one-sided protocols read them: RMA or nothing (MOEFABRIC_PROTOCOL=tagged, which
// is about the NCCL plugin's data path, becomes auto).
inline Params rma_params(const Params& params) {
  Params p = params;
  if (p.protocol == "tagged") p.protocol = "auto";
  return p;
}

class RmaEndpoint {
 public:
  // Opens `nic` (one of nic_discover's results for the provider MOEFABRIC_PROVIDER / FI_PROVIDER /
  // the default order selects). Requires RMA with 4-byte remote CQ data.
  static Status open_nic(const Params& params, NicInfo nic, int index, std::unique_ptr<RmaEndpoint>* out);
  ~RmaEndpoint();
  RmaEndpoint(const RmaEndpoint&) = delete;
  RmaEndpoint& operator=(const RmaEndpoint&) = delete;

  const NicInfo& nic() const { return rail_.nic; }
  const uint8_t* addr() const { return rail_.addr; }
  size_t addr_len() const { return rail_.addr_len; }
  size_t max_write() const { return max_write_; }
  MrCache& mr_cache() { return *mr_cache_; }
  const RmaStats& stats() const { return stats_; }

  Status insert_peer(const uint8_t* addr, size_t len, fi_addr_t* out);
  // Posts one fi_writedata. -FI_EAGAIN is queued and retried by poll(); other failures return
  // kSystemError and what failed.
  // `delivered`: complete only once the target has processed the write (FI_DELIVERY_COMPLETE),
  // for the last write before an endpoint closes.
  Status write(fi_addr_t peer, const void* buf, size_t len, void* desc, uint64_t raddr, uint64_t key,
               uint32_t imm, uint64_t cookie, bool delivered = false);
  // Reposts queued writes, drains the CQ into `h`. Returns kSystemError only when the CQ itself
  // fails; per-operation errors go to on_write_done.
  Status poll(RmaHandler* h);
  size_t writes_in_flight() const { return inflight_; }
  // Blocks up to `timeout_ms` for a completion (fi_cq_sread) when the CQ has a wait object, else
  // naps 50 us; then polls. signal() wakes a blocked wait from another thread (fi_cq_signal).
  Status wait(RmaHandler* h, int timeout_ms);
  void signal();
  // Waiting on several endpoints at once (RmaRails): the CQ's wait fd, -1 when there is none
  // (or writes wait to be reposted, so the caller must poll), and fi_trywait: true when it is
  // safe to block on that fd, false when completions are already due and poll() comes first.
  int wait_fd();
  bool try_wait();

  static constexpr size_t kMaxAddrLen = fabric::kMaxAddrLen;

 private:
  struct WriteCtx {
    fi_context2 fi;  // must stay first
    bool rx = false;
    int rx_index = 0;
    fi_addr_t peer = FI_ADDR_UNSPEC;
    const void* buf = nullptr;
    size_t len = 0;
    void* desc = nullptr;
    uint64_t raddr = 0, key = 0, cookie = 0;
    uint32_t imm = 0;
    bool delivered = false;
    // Split writes (NicInfo::split_imm): the payload half points at the write it belongs to;
    // that one carries the immediate and completes when all its parts have.
    WriteCtx* parent = nullptr;
    int parts = 1;
    bool silent = false;                // failed to post; the caller got the error, no completion callback
    Status::Code status = Status::kOk;  // the first part's failure, and its text
    char text[200] = "";
  };
  RmaEndpoint() = default;
  Status init(int index, NicInfo nic);
  Status post(WriteCtx* w);
  ssize_t post_raw(WriteCtx* w);
  Status submit(WriteCtx* w);  // posts, or queues behind refused writes
  // One part of a write finished (either half of a split one, or a whole one).
  void part_done(WriteCtx* w, Status::Code s, const char* text, RmaHandler* h);
  void handle_entries(RmaHandler* h, size_t n);
  WriteCtx* ctx_alloc();
  void ctx_free(WriteCtx* w);

  Params params_;
  Rail rail_;  // the endpoint (fabric/rail.h opens every endpoint)
  std::unique_ptr<MrCache> mr_cache_;
  size_t max_write_ = 0;
  // Receives some providers (tcp;ofi_rxm) consume for each incoming immediate.
  std::vector<uint8_t> rx_slab_;
  std::deque<WriteCtx> rx_ctx_;
  std::deque<WriteCtx> ctx_pool_;  // stable addresses
  std::vector<WriteCtx*> ctx_free_;
  RetryQueue<WriteCtx> queued_;  // refused with -FI_EAGAIN
  std::vector<fi_cq_data_entry> cq_buf_;
  size_t inflight_ = 0;
  int wait_fd_ = -2;  // -2: not asked yet
  RmaStats stats_;
};

}  // namespace moefabric::fabric
