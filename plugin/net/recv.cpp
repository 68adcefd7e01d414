// Receive side: grouped receives (up to 8 buffers, one request), control entries to the sender,
// eager messages matched by sequence number (stashed when they arrive before the receive), and
// completion from immediates + kFin. test() for both sides lives here too.
#include <algorithm>
#include <cstring>

#include "common/log.h"
#include "plugin/net/device.h"

namespace moefabric::fabric {

uint64_t tagged_tag(uint32_t comm_id, uint32_t msg_seq);

Status Device::irecv(RecvComm* c, int n, void** data, const size_t* sizes, const int* tags, MrEntry** mrs,
                     bool optional, RecvGroup** out) {
  *out = nullptr;
  if (n > 0) c->peer_rank = tags[0];
  MF_CHECK(progress());
  poll_liveness();
  if (c->error != Status::kOk) {
    MF_WARN("%s", c->error.message().c_str());
    return c->error;
  }
  if (n < 1 || n > (c->tagged ? 1 : wire::kMaxRecvs)) {
    MF_WARN("irecv: %d buffers requested, this comm takes 1..%d", n, c->tagged ? 1 : wire::kMaxRecvs);
    return Status::kInvalidArgument;
  }
  for (int i = 0; i < n; ++i) {
    if (sizes[i] > 0 && mrs[i] == nullptr) return Status::kInvalidArgument;
    if (mrs[i] != nullptr && sizes[i] > 0 &&
        (reinterpret_cast<uintptr_t>(data[i]) < mrs[i]->base ||
         reinterpret_cast<uintptr_t>(data[i]) + sizes[i] > mrs[i]->base + mrs[i]->len)) {
      MF_WARN("irecv: buffer %d (%p+%zu) lies outside its registration", i, data[i], sizes[i]);
      return Status::kInvalidArgument;
    }
    for (int j = 0; j < i; ++j)
      if (tags[j] == tags[i]) {
        MF_WARN("irecv: tag %d appears twice in one grouped receive", tags[i]);
        return Status::kInvalidArgument;
      }
  }
  RecvGroup& g = c->groups[c->next_group % wire::kGroupRing];
  if (g.in_use) return Status::kOk;  // ring full: NCCL retries
  if (!c->tagged && !tx_available(2)) return Status::kOk;
  // Peers write only into registrations with remote write (those made through a receive comm).
  // NCCL's handles are not tied to a comm (regIsGlobal), so a buffer registered through a send
  // comm gets a writable registration of exactly its bytes for this receive.
  MrEntry* wmr[wire::kMaxRecvs] = {};
  for (int i = 0; i < n && !c->tagged; ++i) {
    if (sizes[i] == 0 || mrs[i]->access == MrAccess::kRemoteWrite) continue;
    Status s =
        mr_cache_->acquire(data[i], sizes[i], mrs[i]->type, MrAccess::kRemoteWrite, -1, -1, 0, &wmr[i]);
    if (!s.ok()) {
      for (int j = 0; j < i; ++j) mr_cache_->release(wmr[j]);
      MF_WARN(
          "irecv on %s (peer rank %d): buffer %d was registered through a send comm and cannot be "
          "registered for the peer's writes: %s",
          nic_.name.c_str(), c->peer_rank, i, s.message().c_str());
      return s;
    }
  }

  g.comm = c;
  g.in_use = true;
  // Early completion lets NCCL watch LL flags in the buffer instead of calling test(); with a
  // manual-progress provider nobody would then drive the data in, so honour it only when the
  // provider progresses on its own.
  g.optional = optional && n == 1 && auto_progress_;
  g.user_done = false;
  g.seq = c->next_group;
  g.first_msg = c->next_msg;
  g.n = n;
  g.error = Status::kOk;
  for (int i = 0; i < n; ++i) {
    RecvEntry& en = g.e[i];
    en = RecvEntry{};
    en.buf = data[i];
    en.posted = sizes[i];
    en.tag = tags[i];
    en.mr = mrs[i];
    en.wmr = wmr[i];
  }
  ++c->next_group;
  c->next_msg += static_cast<uint32_t>(n);
  ++c->active;
  *out = &g;

  if (c->tagged) {
    OpCtx& op = g.e[0].trecv;
    op.kind = OpKind::kTRecv;
    op.rail = 0;
    op.comm = c;
    op.sreq = nullptr;
    op.rgroup = &g;
    op.idx = 0;
    op.buf = data[0];
    op.len = sizes[0];
    op.desc = mrs[0] ? mrs[0]->desc : nullptr;
    op.peer = c->peer;
    op.tag = tagged_tag(c->id, g.first_msg);
    ++c->inflight;
    ++trecv_inflight_;
    return post(&op);
  }

  wire::CtrlMsg m = {};
  m.group_seq = g.seq;
  m.first_msg = g.first_msg;
  m.n = static_cast<uint16_t>(n);
  for (int i = 0; i < n; ++i) {
    const MrEntry* w = wmr[i] != nullptr ? wmr[i] : mrs[i];
    m.entries[i].addr = w ? w->remote_addr(data[i]) : 0;
    for (int r = 0; r < c->nrails; ++r) m.entries[i].key[r] = w ? w->key_on[r] : 0;
    m.entries[i].size = sizes[i];
    m.entries[i].tag = tags[i];
    m.entries[i].mem_type =
        mrs[i] != nullptr && mrs[i]->type == MemType::kCuda ? wire::kMemCuda : wire::kMemHost;
  }
  MF_CHECK(send_to_peer(c, wire::MsgType::kCtrl, &m,
                        offsetof(wire::CtrlMsg, entries) + n * sizeof(wire::CtrlEntry)));
  // Eager messages that arrived before this receive was posted.
  for (size_t k = 0; k < c->unexpected.size();) {
    Unexpected& u = c->unexpected[k];
    if (wire::seq_in(u.msg_seq, g.first_msg, static_cast<uint32_t>(n))) {
      int idx = -1;
      for (int i = 0; i < n; ++i)
        if (g.e[i].tag == u.tag && !g.e[i].done && !g.e[i].size_known) idx = i;
      if (idx < 0) {
        fail_comm(c, Status::kInvalidUsage, "message %u with tag %d matches no posted buffer", u.msg_seq,
                  u.tag);
        return c->error;
      }
      deliver_eager(c, &g, idx, u.data.data(), u.data.size());
      c->unexpected.erase(c->unexpected.begin() + static_cast<long>(k));
    } else {
      ++k;
    }
  }
  return Status::kOk;
}

void Device::deliver_eager(RecvComm* c, RecvGroup* g, int idx, const uint8_t* data, size_t size) {
  RecvEntry& en = g->e[idx];
  if (en.mr != nullptr && en.mr->type == MemType::kCuda) {
    // Never memcpy into device memory: the ctrl entry said CUDA, so the sender had to write.
    g->error = Status::kRemoteError;
    fail_comm(c, Status::kRemoteError, "protocol error: eager message for GPU receive buffer %d of group %u",
              idx, g->seq);
    return;
  }
  if (size > en.posted) {
    char text[160];
    snprintf(text, sizeof text, "send of %zu bytes is larger than the posted receive of %zu bytes", size,
             en.posted);
    g->error = Status::kInvalidUsage;
    send_error(c, g->seq, Status::kInvalidUsage, text);
    fail_comm(c, Status::kInvalidUsage, "%s", text);
    return;
  }
  if (size) std::memcpy(en.buf, data, size);
  en.received = size;
  en.size_known = en.nseg_known = true;
  en.nseg = en.writes_got = 0;
  entry_check_done(c, g, idx);
}

void Device::on_eager(RecvComm* c, const wire::EagerMsg& m, const uint8_t* data) {
  if (c->error != Status::kOk) return;  // failed: nothing more is kept for it
  for (auto& g : c->groups) {
    if (!g.in_use || !wire::seq_in(m.msg_seq, g.first_msg, static_cast<uint32_t>(g.n))) continue;
    int idx = -1;
    for (int i = 0; i < g.n; ++i)
      if (g.e[i].tag == m.tag && !g.e[i].size_known) idx = i;
    if (idx < 0) {
      fail_comm(c, Status::kInvalidUsage, "message %u with tag %d matches no posted buffer", m.msg_seq,
                m.tag);
      return;
    }
    deliver_eager(c, &g, idx, data, m.size);
    return;
  }
  // For a receive not posted yet: stashed, within the sender's window (wire::kEagerWindow), once
  // per message number. Anything else is the peer breaking the protocol: the comm fails (and its
  // stash goes), so a peer can hold at most kEagerWindow messages here.
  if (wire::seq_before(m.msg_seq, c->next_msg)) {
    fail_comm(c, Status::kRemoteError, "protocol error: stale eager message %u (receives posted up to %u)",
              m.msg_seq, c->next_msg);
  } else if (m.msg_seq - c->next_msg >= wire::kEagerWindow) {
    fail_comm(c, Status::kRemoteError,
              "protocol error: eager message %u is %u messages past the receives posted (%u); a sender "
              "may run at most %u ahead",
              m.msg_seq, m.msg_seq - c->next_msg, c->next_msg, wire::kEagerWindow);
  } else if (std::any_of(c->unexpected.begin(), c->unexpected.end(),
                         [&](const Unexpected& u) { return u.msg_seq == m.msg_seq; })) {
    fail_comm(c, Status::kRemoteError, "protocol error: eager message %u sent twice", m.msg_seq);
  } else {
    c->unexpected.push_back({m.msg_seq, m.tag, std::vector<uint8_t>(data, data + m.size)});
    return;
  }
  c->unexpected.clear();
  c->unexpected.shrink_to_fit();
}

void Device::on_fin(RecvComm* c, const wire::FinMsg& m) {
  RecvGroup& g = c->groups[m.group_seq % wire::kGroupRing];
  if (!g.in_use || g.seq != m.group_seq || m.idx >= g.n) {
    fail_comm(c, Status::kRemoteError, "protocol error: fin for group %u index %u not posted", m.group_seq,
              m.idx);
    return;
  }
  RecvEntry& en = g.e[m.idx];
  if (en.size_known) {  // a second fin, or a fin for a message whose writes said it was full
    fail_comm(c, Status::kRemoteError, "protocol error: a second size for group %u index %u (fin replayed?)",
              m.group_seq, m.idx);
    return;
  }
  if (m.size > en.posted || (en.nseg_known && en.nseg != m.nseg)) {
    fail_comm(c, Status::kRemoteError, "protocol error: fin size %llu / %u segments for a %zu-byte buffer",
              static_cast<unsigned long long>(m.size), m.nseg, en.posted);
    return;
  }
  en.received = m.size;
  en.size_known = true;
  en.nseg = static_cast<uint8_t>(m.nseg);
  en.nseg_known = true;
  entry_check_done(c, &g, m.idx);
}

void Device::entry_check_done(RecvComm* c, RecvGroup* g, int idx) {
  RecvEntry& en = g->e[idx];
  if (en.done || !en.size_known || !en.nseg_known || en.writes_got < en.nseg) return;
  en.done = true;
  group_check_done(c, g);
}

void Device::group_check_done(RecvComm* c, RecvGroup* g) {
  for (int i = 0; i < g->n; ++i)
    if (!g->e[i].done) return;
  // A group NCCL already saw complete (optional completion) is recycled right here.
  if (g->user_done) group_release(c, g);
}

void Device::group_release(RecvComm* c, RecvGroup* g) {
  for (int i = 0; i < g->n; ++i)
    if (g->e[i].wmr != nullptr) {
      mr_cache_->release(g->e[i].wmr);
      g->e[i].wmr = nullptr;
    }
  g->in_use = false;
  --c->active;
}

Status Device::test(Request* req, bool* done, size_t* sizes) {
  *done = false;
  MF_CHECK(progress());
  poll_liveness();
  if (req->type == Request::Type::kSend) {
    auto* r = static_cast<SendReq*>(req);
    auto* c = static_cast<SendComm*>(r->comm);
    if (r->error != Status::kOk || c->error != Status::kOk) {
      Status s = r->error != Status::kOk ? r->error : c->error;
      MF_WARN("%s", c->error.message().empty() ? "send failed" : c->error.message().c_str());
      return s;
    }
    if (r->pending > 0) return Status::kOk;
    *done = true;
    if (sizes) sizes[0] = r->size;
    sreq_release(c, r);
    return Status::kOk;
  }
  auto* g = static_cast<RecvGroup*>(req);
  auto* c = static_cast<RecvComm*>(g->comm);
  if (g->error != Status::kOk || c->error != Status::kOk) {
    Status s = g->error != Status::kOk ? g->error : c->error;
    MF_WARN("%s", c->error.message().empty() ? "receive failed" : c->error.message().c_str());
    return s;
  }
  bool all = true;
  for (int i = 0; i < g->n; ++i) all &= g->e[i].done;
  if (!all && !g->optional) return Status::kOk;
  *done = true;
  if (sizes)
    for (int i = 0; i < g->n; ++i) sizes[i] = all ? g->e[i].received : g->e[i].posted;
  if (all) {
    group_release(c, g);
  } else {
    g->user_done = true;  // data still to come; the slot stays busy until it does
  }
  return Status::kOk;
}

}  // namespace moefabric::fabric
