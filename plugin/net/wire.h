// Everything that crosses the network between two moefabric endpoints (net plugin protocol,
// version 3: listen nonces; v2 added multi-rail devices). docs/wire-protocol.md describes the
// protocol; this header is its single source of truth. All integers are little-endian (every supported host is). Every field read off the wire
// is validated (wire_parse_*) before use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "fabric/bounds.h"

namespace moefabric::fabric::wire {

inline constexpr uint16_t kMagic = 0x464d;  // "MF"
inline constexpr uint8_t kVersion = 3;
inline constexpr size_t kMaxAddrLen = fabric::kMaxAddrLen;  // endpoint names
inline constexpr int kMaxRecvs = 8;                         // grouped receive width
inline constexpr int kGroupRing = 64;    // receive groups in flight per connection (>= 2*32)
inline constexpr int kMaxSegments = 16;  // writes one message may be split into
inline constexpr uint32_t kMaxCommId = 0xffff;
inline constexpr size_t kHandleSize = 128;           // NCCL_NET_HANDLE_MAXSIZE
inline constexpr int kMaxRails = fabric::kMaxRails;  // NICs one device may stripe over
// A sender sends eagerly at most this many messages whose control entries it has not seen, so
// no eager message is ever this many messages or more past the first receive its receiver has
// not posted. The receiver refuses one that is (it stashes at most kEagerWindow x eager max
// bytes per comm for receives not posted yet).
inline constexpr uint32_t kEagerWindow = 64;

enum class MsgType : uint8_t {
  kConnect = 1,     // sender -> listener: open a connection
  kConnectAck = 2,  // listener -> sender: receive comm id
  kCtrl = 3,        // receiver -> sender: a posted (grouped) receive
  kFin = 4,         // sender -> receiver: size of a message written without the "full" bit
  kEager = 5,       // sender -> receiver: a small message carried in the message itself
  kPing = 6,        // liveness probe
  kPong = 7,        // liveness answer
  kError = 8,       // peer -> peer: the connection failed (e.g. send larger than receive)
};

struct MsgHeader {
  uint16_t magic;
  uint8_t version;
  uint8_t type;       // MsgType
  uint32_t dst_comm;  // comm id at the destination (listen id for kConnect)
  uint32_t src_comm;  // comm id at the source
  uint32_t payload;   // bytes after the header
  // The destination's credential: its comm's random token (learnt in the handshake), or for
  // kConnect the listen handle's nonce. A message without it is dropped: comm ids are small
  // integers, and not every provider names the sender of a message from outside its AV.
  uint64_t token;
};
static_assert(sizeof(MsgHeader) == 24);

// One rail's endpoint name, for fi_av_insert on the peer's endpoint of the same rail.
struct RailAddr {
  uint32_t len;  // 1..kMaxAddrLen
  uint8_t addr[kMaxAddrLen];
};
static_assert(sizeof(RailAddr) == 68);

// Rail r of a connection joins rail r of both sides; a connection uses min(sender's, listener's)
// rails. Rail 0 carries every message; the others carry RDMA writes only.
struct ConnectMsg {
  uint32_t flags;             // kConnectFlag*
  uint32_t nrails;            // 1..kMaxRails: sender's rails, addresses below
  uint64_t max_write;         // sender's largest write, informational
  uint64_t token;             // the send comm's token: the listener's messages to it carry it
  RailAddr rails[kMaxRails];  // sender endpoint names (rail 0 first)
};
inline constexpr uint32_t kConnectFlagTagged = 1;  // sender uses the tagged data path
// connect-ack: the listener's device registers no GPU memory, so every receive buffer it will
// post is host memory and the sender may send eagerly before seeing a control entry.
inline constexpr uint32_t kConnectAckFlagHostOnly = 1;

struct ConnectAckMsg {
  uint32_t status;  // 0 = accepted
  uint32_t flags;
  uint32_t nrails;  // rails the connection uses (<= both sides'); 1 when refused
  uint32_t reserved;
  uint64_t token;             // the receive comm's token (0 when refused)
  RailAddr rails[kMaxRails];  // listener endpoint names of rails 1..nrails-1 (rail 0 unused:
                              // the sender has it from the listen handle)
};

struct CtrlEntry {
  uint64_t addr;  // remote address (virtual or MR offset, per receiver's mr_mode; the
                  // same on every rail: one buffer registered once per rail's domain)
  uint64_t size;  // posted size in bytes
  int32_t tag;
  uint8_t mem_type;  // kMemHost / kMemCuda: eager data is only ever copied into host memory
  uint8_t reserved[3];
  uint64_t key[kMaxRails];  // MR key on each rail's domain (unused rails 0)
};
static_assert(sizeof(CtrlEntry) == 56);
inline constexpr uint8_t kMemHost = 0;
inline constexpr uint8_t kMemCuda = 1;

struct CtrlMsg {
  uint32_t group_seq;  // receive group number on this connection (0, 1, 2, ...)
  uint32_t first_msg;  // sequence number of the group's first message
  uint16_t n;          // 1..kMaxRecvs
  uint16_t flags;
  uint32_t reserved;
  CtrlEntry entries[kMaxRecvs];
};

struct FinMsg {
  uint32_t group_seq;
  uint16_t idx;
  uint16_t nseg;  // writes that carry the message (0 for an empty message)
  uint64_t size;
};

struct EagerMsg {
  uint32_t msg_seq;
  int32_t tag;
  uint64_t size;  // followed by `size` bytes of data
};

struct PingMsg {
  uint64_t nonce;
};

struct ErrorMsg {
  uint32_t group_seq;
  uint16_t code;  // Status value
  uint16_t reserved;
  char text[112];  // NUL-terminated
};

// The 128-byte NCCL listen handle. Whoever holds it may connect (the nonce is the credential),
// so it travels only over the job's own bootstrap. stage_* are the connecting process's scratch
// between its non-blocking connect() calls (NCCL hands the same buffer back): a comm table id
// and a token that must both match, never a pointer, so a corrupted or forged handle is refused.
struct ListenHandle {
  uint16_t magic;
  uint8_t version;
  uint8_t addr_len;
  uint32_t listen_id;
  uint8_t addr[kMaxAddrLen];
  uint64_t nonce;  // random per listener (getrandom); kConnect carries it as its token
  uint8_t nrails;  // listener's rails; rails 1.. send their addresses in kConnectAck
  uint8_t reserved0[3];
  uint32_t stage_comm;   // connect in progress: the send comm's id in the connector's table
  uint64_t stage_token;  // ... and its random token; 0 = no connect in progress
  uint8_t reserved[kHandleSize - 96];
};
static_assert(sizeof(ListenHandle) == kHandleSize);
static_assert(offsetof(ListenHandle, nonce) == 72 && offsetof(ListenHandle, stage_token) == 88);

// Message and receive-group numbers count modulo 2^32 on both sides of a connection; a long-lived
// connection wraps. Compare them only through these (signed distance of the unsigned counters).
inline bool seq_before(uint32_t a, uint32_t b) { return static_cast<int32_t>(a - b) < 0; }
// s lies in [first, first + n) modulo 2^32.
inline bool seq_in(uint32_t s, uint32_t first, uint32_t n) { return s - first < n; }

// Every message fits one receive buffer: header + the largest fixed payload or eager data.
inline constexpr size_t kMaxFixedPayload =
    sizeof(CtrlMsg) > sizeof(ConnectMsg)
        ? (sizeof(CtrlMsg) > sizeof(ConnectAckMsg) ? sizeof(CtrlMsg) : sizeof(ConnectAckMsg))
        : (sizeof(ConnectMsg) > sizeof(ConnectAckMsg) ? sizeof(ConnectMsg) : sizeof(ConnectAckMsg));
inline size_t msg_buffer_size(size_t eager_max) {
  size_t fixed = sizeof(MsgHeader) + kMaxFixedPayload;
  size_t eager = sizeof(MsgHeader) + sizeof(EagerMsg) + eager_max;
  return fixed > eager ? fixed : eager;
}

// ---- 32-bit immediate of a data write ---------------------------------------------------------
// [31:16] receive comm id | [15:10] group slot | [9:7] index in group | [6] full | [5:2] segs-1
// | [1:0] kind (0 = net plugin data; other kinds belong to other protocols on the endpoint).
struct Imm {
  uint32_t comm;
  uint32_t slot;
  uint32_t idx;
  bool full;      // message size equals the posted size: no kFin follows
  uint32_t nseg;  // writes carrying this message (1..16)
  uint32_t kind;
};
inline uint32_t imm_encode(const Imm& m) {
  return (m.comm << 16) | ((m.slot & 63u) << 10) | ((m.idx & 7u) << 7) | ((m.full ? 1u : 0u) << 6) |
         (((m.nseg - 1) & 15u) << 2) | (m.kind & 3u);
}
inline Imm imm_decode(uint32_t v) {
  return Imm{v >> 16, (v >> 10) & 63u, (v >> 7) & 7u, ((v >> 6) & 1u) != 0, ((v >> 2) & 15u) + 1, v & 3u};
}

// A received message as the receiver uses it: the header and the fixed part of the payload,
// copied once out of the receive buffer and checked on the copy. Nothing of the fixed part is
// read from the receive buffer again. An eager message's data is the one exception: it is not
// interpreted, only copied once more (to the posted buffer or the stash), by pointer and
// length (eager_data, eager.size) that lie inside the received bytes.
struct Msg {
  MsgHeader h;
  union {
    ConnectMsg connect;
    ConnectAckMsg ack;
    CtrlMsg ctrl;
    FinMsg fin;
    EagerMsg eager;
    PingMsg ping;
    ErrorMsg error;
  } body;
  const uint8_t* eager_data;
  MsgType type() const { return static_cast<MsgType>(h.type); }
};

// Copies the received message at buf (len bytes) into *m and checks the copy: magic, version,
// type, the payload length the type asks for, counts and indices in range (ctrl width, fin
// index and segments, rails and address lengths, memory types), eager size = the bytes that
// came, and an error text NUL-terminated. Returns nullptr on success, else a static string
// naming the problem (then *m is not to be used).
const char* parse(const void* buf, size_t len, Msg* m);

}  // namespace moefabric::fabric::wire
