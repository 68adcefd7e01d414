// One device of moefabric's net protocol: 1..4 rails (each a NIC with its own fabric, domain,
// AV, CQ and endpoint; see rail.h), message buffer pools on rail 0, the MR cache (every buffer
// registered on every rail) and the comm tables. Every libfabric call on a device happens with
// its mutex held (the domains are opened FI_THREAD_DOMAIN).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/params.h"
#include "common/status.h"
#include "fabric/cuda.h"
#include "fabric/info.h"
#include "fabric/mr.h"
#include "fabric/rail.h"
#include "fabric/resource.h"
#include "fabric/retry_queue.h"
#include "plugin/net/wire.h"

namespace moefabric::fabric {

class Device;
struct Comm;
struct SendReq;
struct RecvGroup;

using Clock = std::chrono::steady_clock;

enum class OpKind : uint8_t { kRxMsg, kTxMsg, kWrite, kTSend, kTRecv };

// Context of one posted libfabric operation. Holds everything needed to (re)post it, so an
// operation refused with -FI_EAGAIN is queued and posted again by progress().
struct OpCtx {
  fi_context2 fi;  // provider scratch; must stay first
  OpKind kind = OpKind::kRxMsg;
  Comm* comm = nullptr;         // owner for in-flight accounting (nullptr: device-owned)
  SendReq* sreq = nullptr;      // completion target (send side)
  RecvGroup* rgroup = nullptr;  // completion target (receive side)
  int idx = 0;                  // buffer index (pools) or entry index (groups)
  void* buf = nullptr;
  size_t len = 0;
  void* desc = nullptr;
  fi_addr_t peer = FI_ADDR_UNSPEC;
  uint64_t raddr = 0, key = 0, data = 0, tag = 0;
  bool imm = true;   // kWrite: `data` goes as remote CQ data (false: payload half of a split)
  uint8_t rail = 0;  // endpoint it is posted on (`peer` is an address in that rail's AV)
};

struct Comm {
  enum class Type : uint8_t { kSend, kRecv };
  Type type;
  uint32_t id = 0;            // local id (immediates and message headers)
  uint32_t remote_id = 0;     // the peer comm's id
  uint64_t token = 0;         // random; every message to this comm must carry it
  uint64_t remote_token = 0;  // the peer comm's (the listen nonce until kConnectAck)
  Device* dev = nullptr;
  fi_addr_t peer = FI_ADDR_UNSPEC;  // rail 0's address of the peer (= rail_peer[0])
  int nrails = 1;                   // rails this connection uses (min of both sides)
  fi_addr_t rail_peer[wire::kMaxRails] = {FI_ADDR_UNSPEC, FI_ADDR_UNSPEC, FI_ADDR_UNSPEC, FI_ADDR_UNSPEC};
  // Per rail: writes posted and not completed, and when that rail last moved (a write posted
  // on an idle rail or completed). A rail with writes that does not move within the peer
  // timeout fails the comm naming that rail (the others may still carry pings).
  int rail_writes[wire::kMaxRails] = {};
  Clock::time_point rail_moved[wire::kMaxRails]{};
  int peer_rank = -1;  // NCCL tag of the last request (= peer rank), for messages
  int inflight = 0;    // posted operations not completed yet
  bool closed = false;
  bool tagged = false;    // tagged data path (maxRecvs 1)
  Status error;           // the first failure and its text (fail_comm), reported once the comm is used
  std::string peer_addr;  // the peer's rail-0 endpoint, printable (fi_av_straddr), for messages
  Clock::time_point last_heard{};
  Clock::time_point last_ping{};
  // When check_liveness first saw the comm busy after it was idle: silence counts from here or
  // from last_heard, whichever is later (an idle peer owes us nothing).
  Clock::time_point busy_since{};
  bool was_busy = false;
  explicit Comm(Type t) : type(t) {}
  virtual ~Comm() = default;
  virtual bool busy() const = 0;  // requests pending (liveness checks apply)
};

struct Request {
  enum class Type : uint8_t { kSend, kRecv, kFlush };
  Type type;
  explicit Request(Type t) : type(t) {}
};

struct SendReq : Request {
  SendReq() : Request(Type::kSend) {}
  Comm* comm = nullptr;
  bool in_use = false;
  int pending = 0;  // operations still to complete
  size_t size = 0;
  Status error = Status::kOk;
  OpCtx ops[2 * wire::kMaxSegments];  // two per segment when the NIC splits immediates
  int nops = 0;
};

struct RecvEntry {
  void* buf = nullptr;
  size_t posted = 0;
  size_t received = 0;
  int tag = 0;
  MrEntry* mr = nullptr;
  // The writable registration of [buf, buf+posted) this receive took because `mr` (registered
  // through a send comm) gives peers no write access; released with the group.
  MrEntry* wmr = nullptr;
  uint8_t writes_got = 0;
  uint8_t nseg = 0;
  bool nseg_known = false;
  bool size_known = false;
  bool done = false;
  OpCtx trecv;  // tagged path
};

struct RecvGroup : Request {
  RecvGroup() : Request(Type::kRecv) {}
  Comm* comm = nullptr;
  bool in_use = false;
  bool optional = false;   // NCCL_NET_OPTIONAL_RECV_COMPLETION: may complete early
  bool user_done = false;  // already reported done to NCCL
  uint32_t seq = 0;
  uint32_t first_msg = 0;
  int n = 0;
  Status error = Status::kOk;
  RecvEntry e[wire::kMaxRecvs];
};

struct SendGroup {
  bool known = false;
  bool eager_marked = false;
  uint32_t seq = 0;
  uint32_t first_msg = 0;
  int n = 0;
  uint8_t used = 0;  // bitmask of consumed entries
  wire::CtrlEntry e[wire::kMaxRecvs];
};

// How isend moves one message (the rdma protocol). Resources (bounce buffers, the eager window)
// are checked apart; this is only what the buffers' memory types and sizes allow.
enum class SendPath : uint8_t {
  kWait,   // for the receiver's control entry (isend hands out no request; NCCL calls again)
  kEager,  // in a message, copied by the receiver into its buffer
  kWrite,  // RDMA write straight into the posted buffer
};
struct SendPathIn {
  size_t size = 0;
  MemType local = MemType::kHost;   // the send buffer's memory
  bool known = false;               // the receive buffer's control entry has arrived
  MemType remote = MemType::kHost;  // ... and its memory type (when known)
  bool peer_host_only = false;      // the receiver's device takes no GPU receive buffers
  size_t eager_max = 0;             // MOEFABRIC_EAGER_MAX as the device applies it
  size_t eager_known_max = 0;       // MOEFABRIC_EAGER_KNOWN as the device applies it
};
SendPath send_path(const SendPathIn& in);

struct EagerRecord {
  uint32_t msg_seq;
  int tag;
};

struct SendComm : Comm {
  SendComm() : Comm(Type::kSend) {}
  bool connected = false;
  uint64_t stage_token = 0;     // random while connecting; the handle's scratch must match it
  bool peer_host_only = false;  // kConnectAckFlagHostOnly: eager before the control entry
  Clock::time_point connect_start{};
  uint32_t listen_id = 0;
  uint32_t next_msg = 0;
  uint32_t cur_group = 0;
  uint32_t next_rail = 0;  // round robin for messages below MOEFABRIC_STRIPE_MIN
  SendGroup groups[wire::kGroupRing];
  std::deque<EagerRecord> eager;  // eager messages not yet matched to a ctrl entry
  std::deque<SendReq> reqs;       // stable addresses; grows on demand
  std::vector<SendReq*> free_reqs;
  int active = 0;
  // isend refused a message for want of the receiver's control entry (its receive is not
  // posted, or 64 eager messages already wait for theirs): the peer owes us one, so liveness
  // checks apply as for pending requests. Cleared by the next accepted isend or control entry.
  bool waiting_ctrl = false;
  bool busy() const override { return active > 0 || !connected || waiting_ctrl; }
};

struct Unexpected {
  uint32_t msg_seq;
  int tag;
  std::vector<uint8_t> data;
};

// iflush of GPU buffers that the provider fills with host-issued copies (NicInfo::hmem_async):
// done once a fence recorded after those copies has passed.
struct FlushReq : Request {
  FlushReq() : Request(Type::kFlush) {}
  bool in_use = false;
  struct RecvComm* comm = nullptr;
  Clock::time_point start;  // a fence that never passes fails after MOEFABRIC_PEER_TIMEOUT_MS
  cuda::Fence fence;
};

struct RecvComm : Comm {
  RecvComm() : Comm(Type::kRecv) {}
  uint32_t next_group = 0;
  uint32_t next_msg = 0;
  RecvGroup groups[wire::kGroupRing];
  std::vector<Unexpected> unexpected;
  std::vector<std::unique_ptr<FlushReq>> flushes;  // reused; NCCL keeps a few in flight
  int active = 0;
  bool busy() const override { return active > 0; }
};

struct ListenComm {
  uint32_t id = 0;
  uint64_t nonce = 0;  // random; kConnect must carry it (wire::ListenHandle::nonce)
  Device* dev = nullptr;
  struct Pending {
    fi_addr_t peer;
    uint32_t src_comm;
    uint32_t flags;
    int nrails;
    fi_addr_t rail_peer[wire::kMaxRails];
    std::string addr;  // printable rail-0 address
    uint64_t token;    // the send comm's
  };
  std::deque<Pending> pending;
};

struct DeviceStats {
  uint64_t writes = 0, msgs_sent = 0, msgs_recv = 0, eagain = 0;
  uint64_t imms_recv = 0;          // incoming writes with an immediate, any kind
  uint64_t malformed_dropped = 0;  // messages that did not parse (from no connection's peer) and
                                   // writes with an immediate of a kind not ours
  uint64_t connects_dropped = 0;   // kConnect without a listener's nonce
  uint64_t foreign_dropped = 0;    // messages/writes naming a comm whose peer did not send them
};

class Device {
 public:
  // Opens a device over `rails` (1..wire::kMaxRails NICs of one provider; rail 0 first).
  static Status open(const Params& params, std::vector<NicInfo> rails, std::unique_ptr<Device>* out);
  ~Device();
  static constexpr int kCloseLingerMs = 2000;  // bound on quiesce() at teardown
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  std::mutex mu;  // guards everything below and every libfabric call on this device

  // The device as NCCL sees it: rail 0's NIC, named "<rail0>+<rail1>..." with the summed speed.
  const NicInfo& nic() const { return nic_; }
  int nrails() const { return static_cast<int>(rails_.size()); }
  const Rail& rail(int r) const { return rails_[r]; }
  bool tagged() const { return tagged_; }
  // The provider moves data without our calls (FI_PROGRESS_AUTO).
  bool auto_progress() const { return auto_progress_; }
  size_t eager_max() const { return eager_max_; }
  size_t max_write() const { return max_write_; }
  MrCache& mr_cache() { return *mr_cache_; }
  const DeviceStats& stats() const { return stats_; }
  const Params& params() const { return params_; }

  // ---- progress (progress.cpp) -----------------------------------------------------------
  Status progress();
  // Pings silent peers of busy comms, fails comms past the peer timeout, reaps closed comms.
  void check_liveness(Clock::time_point now);
  // check_liveness at most every 20 ms. The background thread rarely gets the lock while the
  // application spins in isend/irecv/test, so those run it too.
  void poll_liveness();

  // ---- messages --------------------------------------------------------------------------
  // Sends a control/eager message carrying the destination's `token` (MsgHeader::token). kAgain
  // when no bounce buffer is free (caller retries). `comm` (may be nullptr) is charged for it.
  Status send_msg(Comm* comm, fi_addr_t peer, wire::MsgType type, uint32_t dst, uint32_t src, uint64_t token,
                  const void* payload, size_t len, const void* extra = nullptr, size_t extra_len = 0,
                  SendReq* sreq = nullptr);
  // send_msg to c's peer comm (its address, id and token).
  Status send_to_peer(Comm* c, wire::MsgType type, const void* payload, size_t len,
                      const void* extra = nullptr, size_t extra_len = 0, SendReq* sreq = nullptr) {
    return send_msg(c, c->peer, type, c->remote_id, c->id, c->remote_token, payload, len, extra, extra_len,
                    sreq);
  }
  bool tx_available(int n = 1) const { return static_cast<int>(tx_free_.size()) >= n; }
  Status post(OpCtx* op);       // posts (or queues on -FI_EAGAIN) the operation described by op
  ssize_t post_raw(OpCtx* op);  // the provider call alone
  // After the provider call: a failure fails the op (or, for a receive buffer, the device).
  Status posted(OpCtx* op, ssize_t rc);
  static uint64_t peer_key(const OpCtx* op) { return op->peer ^ (static_cast<uint64_t>(op->rail) << 56); }

  // ---- comms (connection.cpp) ------------------------------------------------------------
  Status listen(void* handle, ListenComm** out);
  Status connect(void* handle, SendComm** out);
  Status accept(ListenComm* lc, RecvComm** out);
  void close_listen(ListenComm* lc);
  void close_comm(Comm* c);
  Status av_insert(const uint8_t* addr, size_t len, fi_addr_t* out) {
    return rails_[0].av_insert(addr, len, out);
  }
  Comm* comm_lookup(uint32_t id) const { return id < comms_.size() ? comms_[id] : nullptr; }
  void fail_comm(Comm* c, Status::Code s, const char* fmt, ...) __attribute__((format(printf, 4, 5)));
  size_t live_comms() const;

  // ---- data path (send.cpp / recv.cpp) ---------------------------------------------------
  Status isend(SendComm* c, void* data, size_t size, int tag, MrEntry* mr, SendReq** out);
  Status irecv(RecvComm* c, int n, void** data, const size_t* sizes, const int* tags, MrEntry** mrs,
               bool optional, RecvGroup** out);
  Status test(Request* r, bool* done, size_t* sizes);

 private:
  Device() = default;
  Status init();
  void quiesce(int timeout_ms);
  Status alloc_pools();
  Status post_rx(int i);
  // `src`: the sender's AV entry on `rail` when the provider reports it (NicAttrs::source).
  void handle_cq_entry(int rail, const fi_cq_data_entry& e, fi_addr_t src);
  void handle_cq_error(int rail, const fi_cq_err_entry& e);
  void check_rails(Comm* c, Clock::time_point now);
  void handle_msg(int rx_index, size_t len, fi_addr_t src);
  void on_malformed(const wire::MsgHeader& h, size_t len, fi_addr_t src, const char* why);
  void handle_imm(int rail, uint32_t imm, fi_addr_t src);
  // Whether what arrived for comm c on `rail` from `src` (checked: the provider reports sources)
  // came from its peer: `token_ok` (messages: the header's token is c's) and the source is c's
  // peer's AV entry. Else counts the drop and reports it (at 1, 2, 4, ... drops).
  bool from_peer(Comm* c, int rail, fi_addr_t src, bool checked, bool token_ok, const char* what);
  void op_done(OpCtx* op, Status::Code s, const char* text);
  uint32_t alloc_comm_id(Comm* c);
  void delete_comm(Comm* c);

  // protocol handlers
  void on_connect(const wire::MsgHeader& h, const wire::ConnectMsg& m);
  void on_connect_ack(SendComm* c, const wire::ConnectAckMsg& m);
  void on_ctrl(SendComm* c, const wire::CtrlMsg& m);
  void on_fin(RecvComm* c, const wire::FinMsg& m);
  void on_eager(RecvComm* c, const wire::EagerMsg& m, const uint8_t* data);
  void on_error_msg(Comm* c, const wire::ErrorMsg& m);
  void send_advance(SendComm* c);
  Status send_eager(SendComm* c, uint32_t s, int tag, void* data, size_t size, SendReq** out);
  // isend's steps (send.cpp)
  Status isend_tagged(SendComm* c, void* data, size_t size, MrEntry* mr, SendReq** out);
  Status isend_before_ctrl(SendComm* c, const SendPathIn& path, void* data, size_t size, int tag,
                           SendReq** out);
  Status match_entry(SendComm* c, const SendGroup& g, size_t size, int tag, int* idx);
  Status isend_writes(SendComm* c, SendGroup& g, int idx, void* data, size_t size, MrEntry* mr,
                      SendReq** out);
  void deliver_eager(RecvComm* c, RecvGroup* g, int idx, const uint8_t* data, size_t size);
  void group_check_done(RecvComm* c, RecvGroup* g);
  void entry_check_done(RecvComm* c, RecvGroup* g, int idx);
  void send_error(Comm* c, uint32_t group_seq, Status::Code s, const char* text);
  SendReq* sreq_alloc(SendComm* c);
  void sreq_release(SendComm* c, SendReq* r);
  void group_release(RecvComm* c, RecvGroup* g);

  Params params_;
  NicInfo nic_;
  bool tagged_ = false;
  bool auto_progress_ = false;
  size_t eager_max_ = 0;
  size_t eager_known_max_ = 0;  // eager even with the control entry known (MOEFABRIC_EAGER_KNOWN)
  size_t max_write_ = 0;
  size_t msg_size_ = 0;
  size_t stripe_min_ = 0;

  std::vector<Rail> rails_;  // rail 0 carries the messages
  std::unique_ptr<MrCache> mr_cache_;

  // message buffers: one registered slab each for receive and transmit
  std::vector<uint8_t> rx_slab_, tx_slab_;
  MrEntry* rx_mr_ = nullptr;
  MrEntry* tx_mr_ = nullptr;
  std::vector<OpCtx> rx_ops_, tx_ops_;
  std::vector<int> tx_free_;

  int trecv_inflight_ = 0;   // tagged receives posted and not completed
  RetryQueue<OpCtx> retry_;  // refused operations, per (rail, peer) order (peer_key)

  std::vector<Comm*> comms_;  // id -> comm (owning; see delete_comm)
  uint32_t next_comm_id_ = 1;
  std::map<uint32_t, ListenComm*> listens_;
  uint32_t next_listen_id_ = 1;
  std::vector<fi_cq_data_entry> cq_buf_;
  std::vector<fi_addr_t> cq_src_;  // cq_buf_'s source addresses (fi_cq_readfrom)
  DeviceStats stats_;
  Clock::time_point last_liveness_{};
  friend struct DeviceTestAccess;
};

}  // namespace moefabric::fabric
