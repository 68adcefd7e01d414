// Send side of the net protocol. A message goes out as soon as the receiver's control entry for
// it is known: one RDMA write (or up to 16 segments) straight into the posted buffer, with the
// immediate naming comm/group/index. Before that, messages up to eager_max travel eagerly in a
// message; larger ones wait (isend returns no request, NCCL retries). Tagged mode (providers
// without RMA) sends with fi_tsend on a tag derived from the message sequence number.
#include <algorithm>
#include <cstring>

#include "common/log.h"
#include "fabric/stripe.h"
#include "plugin/net/device.h"

namespace moefabric::fabric {
uint64_t tagged_tag(uint32_t comm_id, uint32_t msg_seq) {
  return (static_cast<uint64_t>(comm_id) << 32) | msg_seq;
}

// Eager data is copied by the receiver with a plain memcpy, so it only ever goes to a host
// receive buffer: with the entry known, by its memory type; before that, only to a receiver
// whose device takes no GPU buffers at all (kConnectAckFlagHostOnly). A GPU receive buffer is
// always written by the NIC (the plugin needs no CUDA copies of its own).
SendPath send_path(const SendPathIn& in) {
  const bool host = in.local == MemType::kHost;
  if (!in.known)
    return in.size <= in.eager_max && host && in.peer_host_only ? SendPath::kEager : SendPath::kWait;
  return in.size <= in.eager_known_max && host && in.remote == MemType::kHost ? SendPath::kEager
                                                                              : SendPath::kWrite;
}

SendReq* Device::sreq_alloc(SendComm* c) {
  if (c->free_reqs.empty()) {
    if (c->reqs.size() >= 1024) return nullptr;
    size_t grow = c->reqs.empty() ? 32 : c->reqs.size();
    for (size_t i = 0; i < grow; ++i) {
      c->reqs.emplace_back();
      c->free_reqs.push_back(&c->reqs.back());
    }
  }
  SendReq* r = c->free_reqs.back();
  c->free_reqs.pop_back();
  r->comm = c;
  r->in_use = true;
  r->pending = 0;
  r->size = 0;
  r->error = Status::kOk;
  r->nops = 0;
  ++c->active;
  return r;
}

void Device::sreq_release(SendComm* c, SendReq* r) {
  r->in_use = false;
  --c->active;
  c->free_reqs.push_back(r);
}

// Moves cur_group past fully consumed groups and assigns eager messages to the entries of each
// newly known group.
void Device::send_advance(SendComm* c) {
  for (;;) {
    SendGroup& g = c->groups[c->cur_group % wire::kGroupRing];
    if (!g.known || g.seq != c->cur_group) return;
    if (!g.eager_marked) {
      g.eager_marked = true;
      while (!c->eager.empty() && wire::seq_before(c->eager.front().msg_seq, g.first_msg + g.n)) {
        EagerRecord er = c->eager.front();
        c->eager.pop_front();
        int idx = -1;
        for (int i = 0; i < g.n; ++i)
          if (!(g.used & (1u << i)) && g.e[i].tag == er.tag) {
            idx = i;
            break;
          }
        if (idx < 0) {
          fail_comm(c, Status::kInvalidUsage, "message %u (tag %d) matches no receive buffer of group %u",
                    er.msg_seq, er.tag, g.seq);
          return;
        }
        g.used |= static_cast<uint8_t>(1u << idx);
      }
    }
    if (__builtin_popcount(g.used) < g.n) return;
    g.known = false;
    ++c->cur_group;
  }
}

void Device::on_ctrl(SendComm* c, const wire::CtrlMsg& m) {
  uint32_t ahead = m.group_seq - c->cur_group;
  if (ahead >= wire::kGroupRing) {
    fail_comm(c, Status::kRemoteError, "protocol error: control entry for group %u while at %u", m.group_seq,
              c->cur_group);
    return;
  }
  SendGroup& g = c->groups[m.group_seq % wire::kGroupRing];
  if (g.known) {
    fail_comm(c, Status::kRemoteError, "protocol error: duplicate control entry for group %u", m.group_seq);
    return;
  }
  g.known = true;
  g.eager_marked = false;
  g.seq = m.group_seq;
  g.first_msg = m.first_msg;
  g.n = m.n;
  g.used = 0;
  std::memcpy(g.e, m.entries, sizeof(wire::CtrlEntry) * m.n);
  c->waiting_ctrl = false;
  send_advance(c);
}

// Message `s` as an eager message. *out stays nullptr when no request or buffer is free (NCCL
// retries the isend).
Status Device::send_eager(SendComm* c, uint32_t s, int tag, void* data, size_t size, SendReq** out) {
  SendReq* r = sreq_alloc(c);
  if (r == nullptr) return Status::kOk;
  r->size = size;
  wire::EagerMsg m = {s, tag, size};
  Status st = send_to_peer(c, wire::MsgType::kEager, &m, sizeof m, data, size, r);
  if (st != Status::kOk) {
    sreq_release(c, r);
    return st == Status::kAgain ? Status::kOk : st;
  }
  ++c->next_msg;
  c->waiting_ctrl = false;
  *out = r;
  return Status::kOk;
}

// isend, step by step: check the call, then the tagged protocol, or the wait for (or eager send
// before) the receiver's control entry, or the matched entry's eager or write path.
Status Device::isend(SendComm* c, void* data, size_t size, int tag, MrEntry* mr, SendReq** out) {
  *out = nullptr;
  c->peer_rank = tag;
  MF_CHECK(progress());
  poll_liveness();
  if (c->error != Status::kOk) {
    MF_WARN("%s", c->error.message().c_str());
    return c->error;
  }
  if (size > 0 && mr == nullptr) return Status::kInvalidArgument;
  if (mr != nullptr && size > 0 &&
      (reinterpret_cast<uintptr_t>(data) < mr->base ||
       reinterpret_cast<uintptr_t>(data) + size > mr->base + mr->len)) {
    MF_WARN("isend: buffer %p+%zu lies outside its registration", data, size);
    return Status::kInvalidArgument;
  }
  if (c->tagged) return isend_tagged(c, data, size, mr, out);

  send_advance(c);
  SendGroup& g = c->groups[c->cur_group % wire::kGroupRing];
  SendPathIn path = {};
  path.size = size;
  path.local = mr != nullptr ? mr->type : MemType::kHost;
  path.eager_max = eager_max_;
  path.eager_known_max = eager_known_max_;
  path.peer_host_only = c->peer_host_only;
  path.known = g.known && g.seq == c->cur_group && c->eager.empty();
  if (!path.known) return isend_before_ctrl(c, path, data, size, tag, out);

  int idx = -1;
  MF_CHECK(match_entry(c, g, size, tag, &idx));
  path.remote = g.e[idx].mem_type == wire::kMemCuda ? MemType::kCuda : MemType::kHost;
  // Small host messages may go eagerly with the entry known (MOEFABRIC_EAGER_KNOWN): the
  // receiver matches them to the posted buffer as it does an eager message that crossed its
  // control entry; the entry is used here.
  if (send_path(path) == SendPath::kEager && tx_available(8)) {
    MF_CHECK(send_eager(c, c->next_msg, tag, data, size, out));
    if (*out != nullptr) {
      g.used |= static_cast<uint8_t>(1u << idx);
      send_advance(c);
    }
    return Status::kOk;
  }
  return isend_writes(c, g, idx, data, size, mr, out);
}

Status Device::isend_tagged(SendComm* c, void* data, size_t size, MrEntry* mr, SendReq** out) {
  SendReq* r = sreq_alloc(c);
  if (r == nullptr) return Status::kOk;
  r->size = size;
  OpCtx& op = r->ops[0];
  op.kind = OpKind::kTSend;
  op.rail = 0;  // the tagged protocol uses rail 0 only
  op.comm = c;
  op.sreq = r;
  op.rgroup = nullptr;
  op.buf = data;
  op.len = size;
  op.desc = mr ? mr->desc : nullptr;
  op.peer = c->peer;
  op.tag = tagged_tag(c->remote_id, c->next_msg);
  r->nops = 1;
  r->pending = 1;
  ++c->inflight;
  ++c->next_msg;
  MF_CHECK(post(&op));
  *out = r;
  return Status::kOk;
}

// No control entry yet: an eager send within the window, else no request (NCCL calls again;
// the peer's liveness is checked meanwhile).
Status Device::isend_before_ctrl(SendComm* c, const SendPathIn& path, void* data, size_t size, int tag,
                                 SendReq** out) {
  if (send_path(path) != SendPath::kEager || c->eager.size() >= wire::kEagerWindow || !tx_available(8)) {
    c->waiting_ctrl = true;
    return Status::kOk;
  }
  const uint32_t s = c->next_msg;
  MF_CHECK(send_eager(c, s, tag, data, size, out));
  if (*out != nullptr) c->eager.push_back({s, tag});
  return Status::kOk;
}

// The posted buffer this send goes to: the first unused entry of the group with its tag, and
// large enough (a larger send fails the comm on both sides).
Status Device::match_entry(SendComm* c, const SendGroup& g, size_t size, int tag, int* idx) {
  *idx = -1;
  for (int i = 0; i < g.n; ++i)
    if (!(g.used & (1u << i)) && g.e[i].tag == tag) {
      *idx = i;
      break;
    }
  if (*idx < 0) {
    fail_comm(c, Status::kInvalidUsage, "isend with tag %d matches no buffer of the posted receive", tag);
    return Status::kInvalidUsage;
  }
  const wire::CtrlEntry& en = g.e[*idx];
  if (size > en.size) {
    char text[160];
    snprintf(text, sizeof text, "send of %zu bytes is larger than the posted receive of %llu bytes", size,
             static_cast<unsigned long long>(en.size));
    send_error(c, g.seq, Status::kInvalidUsage, text);
    fail_comm(c, Status::kInvalidUsage, "%s", text);
    return Status::kInvalidUsage;
  }
  return Status::kOk;
}

// RDMA writes straight into entry idx: segments of at most max_write, striped over the rails
// (fabric/stripe.h), each with the immediate; a fin follows unless the message fills the buffer.
Status Device::isend_writes(SendComm* c, SendGroup& g, int idx, void* data, size_t size, MrEntry* mr,
                            SendReq** out) {
  const wire::CtrlEntry& en = g.e[idx];
  const int nr = c->nrails;
  StripePlan plan;
  if (!plan_stripes(size, nr, stripe_min_, max_write_, wire::kMaxSegments, &plan)) {
    MF_WARN("isend of %zu bytes exceeds %d segments of %zu bytes", size, wire::kMaxSegments, max_write_);
    return Status::kInvalidArgument;
  }
  const size_t seg = plan.seg;
  const size_t nseg = static_cast<size_t>(plan.nseg);
  const bool full = size == en.size && size > 0;
  if (!full && !tx_available(4)) return Status::kOk;
  SendReq* r = sreq_alloc(c);
  if (r == nullptr) return Status::kOk;
  const int whole_rail = nr > 1 && !plan.striped ? static_cast<int>(c->next_rail++ % nr) : 0;
  r->size = size;
  g.used |= static_cast<uint8_t>(1u << idx);
  ++c->next_msg;
  wire::Imm imm = {c->remote_id, g.seq % wire::kGroupRing,    static_cast<uint32_t>(idx),
                   full,         static_cast<uint32_t>(nseg), 0};
  const bool split = nic_.split_imm;  // payload, then a zero-byte write with the immediate
  const Clock::time_point now = nr > 1 ? Clock::now() : Clock::time_point{};
  r->nops = 0;
  for (size_t i = 0; i < nseg; ++i) {
    size_t off = i * seg;
    size_t len = off + seg > size ? size - off : seg;
    const int rail = plan.striped ? static_cast<int>(i % nr) : whole_rail;
    for (int part = split ? 0 : 1; part < 2; ++part) {
      OpCtx& op = r->ops[r->nops++];
      op.kind = OpKind::kWrite;
      op.comm = c;
      op.sreq = r;
      op.rgroup = nullptr;
      op.rail = static_cast<uint8_t>(rail);
      op.buf = static_cast<uint8_t*>(data) + off;
      op.len = part == 0 || !split ? len : 0;
      op.desc = mr->desc_on[rail];
      op.peer = c->rail_peer[rail];
      op.raddr = en.addr + off;
      op.key = en.key[rail];
      op.data = wire::imm_encode(imm);
      op.imm = part == 1;
      ++r->pending;
      ++c->inflight;
      if (c->rail_writes[rail]++ == 0 && nr > 1) c->rail_moved[rail] = now;
      MF_CHECK(post(&op));
    }
  }
  if (!full) {
    wire::FinMsg fin = {g.seq, static_cast<uint16_t>(idx), static_cast<uint16_t>(nseg), size};
    MF_CHECK(send_to_peer(c, wire::MsgType::kFin, &fin, sizeof fin, nullptr, 0, r));
  }
  send_advance(c);
  c->waiting_ctrl = false;
  *out = r;
  return Status::kOk;
}

void Device::send_error(Comm* c, uint32_t group_seq, Status::Code s, const char* text) {
  wire::ErrorMsg m = {};
  m.group_seq = group_seq;
  m.code = static_cast<uint16_t>(s);
  // Cut to the message's text field (NUL-terminated; the rest of the field stays zero).
  const size_t n = strnlen(text, sizeof m.text - 1);
  std::memcpy(m.text, text, n);
  (void)send_to_peer(c, wire::MsgType::kError, &m, sizeof m);
}

void Device::on_error_msg(Comm* c, const wire::ErrorMsg& m) {
  char text[sizeof m.text + 1];
  std::memcpy(text, m.text, sizeof m.text);
  text[sizeof m.text] = '\0';
  auto s = static_cast<Status::Code>(m.code);
  if (s != Status::kInvalidUsage && s != Status::kInvalidArgument) s = Status::kRemoteError;
  fail_comm(c, s, "peer reported: %s", text);
}

}  // namespace moefabric::fabric
