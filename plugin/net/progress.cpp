// Completion-queue progress: completions and errors, incoming messages and immediates, the
// queue of operations the provider refused with -FI_EAGAIN, and peer liveness.
#include <algorithm>
#include <cstring>

#include <rdma/fi_errno.h>

#include "common/log.h"
#include "plugin/net/device.h"

namespace moefabric::fabric {

Status Device::progress() {
  // Post what the provider refused earlier, oldest first.
  Status failed;
  retry_.retry([&](OpCtx* op) {
    const ssize_t rc = post_raw(op);
    if (rc != -FI_EAGAIN) {
      Status s = posted(op, rc);
      if (failed.ok()) failed = std::move(s);
    }
    return rc;
  });
  MF_CHECK(failed);
  // Every rail's CQ: writes striped over the rails complete (and their immediates arrive) on
  // the rail they went over; the receive side counts them per message whatever the rail.
  for (Rail& rail : rails_) {
    Status s = cq_drain(
        rail.cq.get(), cq_buf_, 64,
        [&](size_t n) {
          for (size_t i = 0; i < n; ++i)
            handle_cq_entry(rail.index, cq_buf_[i], nic_.source ? cq_src_[i] : FI_ADDR_NOTAVAIL);
        },
        [&](const fi_cq_err_entry& err) { handle_cq_error(rail.index, err); },
        nic_.source ? &cq_src_ : nullptr);
    if (!s.ok()) {
      s.prepend(nic_.name + " (rail " + std::to_string(rail.index) + ", " + rail.nic.domain + "): ");
      MF_WARN("%s", s.message().c_str());
      return s;
    }
  }
  return Status::kOk;
}

void Device::handle_cq_entry(int rail, const fi_cq_data_entry& e, fi_addr_t src) {
  // Incoming RDMA write with immediate: no context of ours (providers differ in the flags they
  // set, and tcp reports len 0, so only the immediate is trusted).
  if ((e.flags & FI_REMOTE_WRITE) || (e.op_context == nullptr && (e.flags & FI_REMOTE_CQ_DATA))) {
    handle_imm(rail, static_cast<uint32_t>(e.data), src);
    return;
  }
  auto* op = static_cast<OpCtx*>(e.op_context);
  if (op == nullptr) return;
  switch (op->kind) {
    case OpKind::kRxMsg:
      handle_msg(op->idx, e.len, src);
      return;
    case OpKind::kTRecv: {
      RecvGroup* g = op->rgroup;
      RecvComm* c = static_cast<RecvComm*>(op->comm);
      --c->inflight;
      --trecv_inflight_;
      // With FI_DIRECTED_RECV the provider matched the peer only; without it, data from another
      // endpoint that guessed the tag has landed: the receive fails rather than returning it.
      if (!c->closed && !from_peer(c, 0, src, nic_.source, true, "tagged message")) {
        g->error = Status::kRemoteError;
        fail_comm(c, Status::kRemoteError,
                  "a tagged message for this comm came from an endpoint "
                  "that is not its peer");
      }
      RecvEntry& en = g->e[op->idx];
      en.received = e.len;
      en.size_known = en.nseg_known = true;
      en.nseg = en.writes_got = 0;
      c->last_heard = Clock::now();
      entry_check_done(c, g, op->idx);
      if (c->closed && c->inflight == 0) delete_comm(c);
      return;
    }
    case OpKind::kTxMsg:
    case OpKind::kWrite:
    case OpKind::kTSend:
      op_done(op, Status::kOk, nullptr);
      return;
  }
}

void Device::op_done(OpCtx* op, Status::Code s, const char* text) {
  Comm* c = op->comm;
  if (op->kind == OpKind::kTRecv) --trecv_inflight_;
  if (op->kind == OpKind::kTxMsg) tx_free_.push_back(op->idx);
  if (op->kind == OpKind::kWrite && c != nullptr) {
    --c->rail_writes[op->rail];
    if (c->nrails > 1) c->rail_moved[op->rail] = Clock::now();  // read by check_rails only
  }
  if (op->sreq != nullptr) {
    SendReq* r = op->sreq;
    if (s != Status::kOk && r->error == Status::kOk) r->error = s;
    --r->pending;
  }
  if (op->kind == OpKind::kTRecv && op->rgroup != nullptr && s != Status::kOk) op->rgroup->error = s;
  if (c != nullptr) {
    --c->inflight;
    const bool first = c->error == Status::kOk;
    if (s != Status::kOk) fail_comm(c, s, "%s", text ? text : "operation failed");
    // A failed write: tell the receiver why (it would otherwise only see the peer go silent),
    // naming the rail on a multi-rail device. Best effort, after the comm holds its own error.
    if (s != Status::kOk && first && op->kind == OpKind::kWrite && !c->closed)
      send_error(c, 0, s, text ? text : "write failed");
    if (c->closed && c->inflight == 0) delete_comm(c);
  }
}

void Device::handle_cq_error(int rail, const fi_cq_err_entry& e) {
  auto* op = static_cast<OpCtx*>(e.op_context);
  char detail[400], text[512];
  const char* what = cq_error_text(rails_[rail].cq.get(), e, detail, sizeof detail);
  if (rails_.size() > 1)
    snprintf(text, sizeof text, "completion error on rail %d (%s): %s", rail, rails_[rail].nic.domain.c_str(),
             what);
  else
    snprintf(text, sizeof text, "completion error: %s", what);
  if (op == nullptr) {
    // An incoming write or message failed; the provider does not say for which comm.
    MF_WARN("%s: %s", nic_.name.c_str(), text);
    return;
  }
  if (op->kind == OpKind::kRxMsg) {
    if (e.err != FI_ECANCELED) {
      MF_WARN("%s: receive buffer %s", nic_.name.c_str(), text);
      (void)post_rx(op->idx);
    }
    return;
  }
  if (op->kind == OpKind::kTRecv && e.err == FI_ECANCELED) {
    op_done(op, Status::kOk, nullptr);
    return;
  }
  Status::Code s = Status::kRemoteError;
  if (op->kind == OpKind::kTRecv && e.err == FI_ETRUNC) {
    s = Status::kInvalidUsage;
    snprintf(text, sizeof text, "message larger than the posted receive (%zu bytes): %s", op->len,
             fi_strerror(e.err));
  }
  op_done(op, s, text);
}

bool Device::from_peer(Comm* c, int rail, fi_addr_t src, bool checked, bool token_ok, const char* what) {
  const bool src_ok = !checked || src == c->rail_peer[rail];
  if (src_ok && token_ok) return true;
  // Another peer of ours, or an endpoint we never inserted. Dropped (the comm stays healthy: a
  // stranger cannot fail it) and reported at 1, 2, 4, 8, ... drops. Where the token is wrong the
  // source the provider reports may be stale (shm and tcp;ofi_rxm name no source for an
  // endpoint outside the AV, and the CQ slot keeps an older one), so it is only "reported".
  ++stats_.foreign_dropped;
  if ((stats_.foreign_dropped & (stats_.foreign_dropped - 1)) == 0) {
    std::string from = "an endpoint not in our address vector";
    if (!checked)
      from = "an endpoint the provider does not name";
    else if (src != FI_ADDR_NOTAVAIL)
      from = rails_[rail].lookup_str(src);
    MF_WARN("%s: dropped a %s for %s comm %u (peer rank %d at %s) from %s%s (%s; %llu dropped so far)",
            nic_.name.c_str(), what, c->type == Comm::Type::kSend ? "send" : "recv", c->id, c->peer_rank,
            c->peer_addr.empty() ? "an unknown address" : c->peer_addr.c_str(), src_ok ? "(reportedly) " : "",
            from.c_str(), src_ok ? "without the connection's token" : "not its peer",
            static_cast<unsigned long long>(stats_.foreign_dropped));
  }
  return false;
}

// A message that does not parse. One from a connection's peer (its token, its address) is that
// peer breaking the protocol: the comm fails, naming it. Anything else is dropped and reported
// at 1, 2, 4, 8, ... drops (a stranger can neither fail a comm nor flood the log).
void Device::on_malformed(const wire::MsgHeader& h, size_t len, fi_addr_t src, const char* why) {
  if (len >= sizeof h && h.magic == wire::kMagic) {
    Comm* c = comm_lookup(h.dst_comm);
    const bool src_ok = !nic_.source || src == (c != nullptr ? c->rail_peer[0] : FI_ADDR_UNSPEC);
    if (c != nullptr && !c->closed && c->error == Status::kOk && src_ok && h.token == c->token &&
        (c->remote_id == 0 || c->remote_id == h.src_comm)) {
      fail_comm(c, Status::kRemoteError, "protocol error: malformed message of type %u (%zu bytes): %s",
                h.type, len, why);
      return;
    }
  }
  ++stats_.malformed_dropped;
  if ((stats_.malformed_dropped & (stats_.malformed_dropped - 1)) == 0) {
    const std::string from = !nic_.source              ? std::string("an endpoint the provider does not name")
                             : src == FI_ADDR_NOTAVAIL ? std::string("an endpoint not in our address vector")
                                                       : rails_[0].lookup_str(src);
    MF_WARN("%s: dropped a malformed message (%zu bytes) from %s: %s (%llu dropped so far)",
            nic_.name.c_str(), len, from.c_str(), why,
            static_cast<unsigned long long>(stats_.malformed_dropped));
  }
}

void Device::handle_msg(int rx_index, size_t len, fi_addr_t src) {
  ++stats_.msgs_recv;
  // One copy of what the peer sent, checked; only the copy is used below (the eager data is
  // copied once more, to its destination, and never interpreted).
  wire::Msg m;
  const char* bad = wire::parse(rx_ops_[rx_index].buf, len, &m);
  if (bad != nullptr) {
    on_malformed(m.h, len, src, bad);
    (void)post_rx(rx_index);
    return;
  }
  const wire::MsgHeader& h = m.h;
  if (m.type() == wire::MsgType::kConnect) {
    on_connect(h, m.body.connect);
  } else {
    Comm* c = comm_lookup(h.dst_comm);
    if (c == nullptr || c->closed || (c->remote_id != 0 && c->remote_id != h.src_comm)) {
      MF_TRACE(log::kNet, "%s: message type %u for unknown or closed comm %u dropped", nic_.name.c_str(),
               h.type, h.dst_comm);
    } else if (!from_peer(c, 0, src, nic_.source, h.token == c->token, "message")) {
      // dropped and counted
    } else {
      c->last_heard = Clock::now();
      switch (m.type()) {
        case wire::MsgType::kConnectAck: {
          const wire::ConnectAckMsg& a = m.body.ack;
          if (c->type == Comm::Type::kSend) {
            auto* s = static_cast<SendComm*>(c);
            if (a.status != 0) {
              fail_comm(c, Status::kRemoteError, "listener refused the connection (status %u)", a.status);
            } else if (!s->connected) {
              s->remote_id = h.src_comm;
              s->remote_token = a.token;
              s->peer_host_only = (a.flags & wire::kConnectAckFlagHostOnly) != 0;
              on_connect_ack(s, a);
              s->connected = s->error == Status::kOk;
            }
          }
          break;
        }
        case wire::MsgType::kCtrl:
          if (c->type == Comm::Type::kSend) on_ctrl(static_cast<SendComm*>(c), m.body.ctrl);
          break;
        case wire::MsgType::kFin:
          if (c->type == Comm::Type::kRecv) on_fin(static_cast<RecvComm*>(c), m.body.fin);
          break;
        case wire::MsgType::kEager:
          if (c->type == Comm::Type::kRecv) on_eager(static_cast<RecvComm*>(c), m.body.eager, m.eager_data);
          break;
        case wire::MsgType::kPing:
          (void)send_to_peer(c, wire::MsgType::kPong, &m.body.ping, sizeof m.body.ping);
          break;
        case wire::MsgType::kPong:
        case wire::MsgType::kConnect:
          break;
        case wire::MsgType::kError:
          on_error_msg(c, m.body.error);
          break;
      }
    }
  }
  (void)post_rx(rx_index);
}

void Device::handle_imm(int rail, uint32_t imm, fi_addr_t src) {
  ++stats_.imms_recv;
  wire::Imm m = wire::imm_decode(imm);
  if (m.kind != 0) {  // reported at 1, 2, 4, ... drops
    const uint64_t n = ++stats_.malformed_dropped;
    if ((n & (n - 1)) == 0)
      MF_WARN("%s: write with immediate of unknown kind %u dropped (%llu malformed dropped so far)",
              nic_.name.c_str(), m.kind, static_cast<unsigned long long>(stats_.malformed_dropped));
    return;
  }
  Comm* c = comm_lookup(m.comm);
  if (c == nullptr || c->type != Comm::Type::kRecv || c->closed) {
    MF_TRACE(log::kNet, "%s: write for unknown or closed comm %u dropped", nic_.name.c_str(), m.comm);
    return;
  }
  if (!from_peer(c, rail, src, nic_.write_source, true, "write")) return;
  auto* rc = static_cast<RecvComm*>(c);
  rc->last_heard = Clock::now();
  RecvGroup& g = rc->groups[m.slot];
  if (!g.in_use || static_cast<int>(m.idx) >= g.n) {
    fail_comm(rc, Status::kRemoteError,
              "protocol error: write for group slot %u index %u which is not posted", m.slot, m.idx);
    return;
  }
  RecvEntry& en = g.e[m.idx];
  // Every write of a message counts once: a replayed or duplicated immediate (more writes than
  // the message's segments, or one for a message already complete) is the peer's fault.
  if (en.done || (en.nseg_known && en.writes_got >= en.nseg)) {
    fail_comm(rc, Status::kRemoteError,
              "protocol error: write %u for group slot %u index %u, a message of %u segments%s "
              "(replayed or duplicated immediate)",
              en.writes_got + 1u, m.slot, m.idx, en.nseg_known ? en.nseg : m.nseg,
              en.done ? " already complete" : "");
    return;
  }
  if (en.nseg_known && en.nseg != m.nseg) {
    fail_comm(rc, Status::kRemoteError, "protocol error: inconsistent segment count (%u, then %u)", en.nseg,
              m.nseg);
    return;
  }
  if (m.full && en.size_known && en.received != en.posted) {
    fail_comm(rc, Status::kRemoteError,
              "protocol error: a write says group slot %u index %u fills its %zu bytes, its fin said %zu",
              m.slot, m.idx, en.posted, en.received);
    return;
  }
  en.nseg = static_cast<uint8_t>(m.nseg);
  en.nseg_known = true;
  ++en.writes_got;
  if (m.full) {
    en.received = en.posted;
    en.size_known = true;
  }
  entry_check_done(rc, &g, static_cast<int>(m.idx));
}

void Device::poll_liveness() {
  Clock::time_point now = Clock::now();
  if (now - last_liveness_ > std::chrono::milliseconds(20)) {
    last_liveness_ = now;
    check_liveness(now);
  }
}

void Device::check_liveness(Clock::time_point now) {
  auto ms = [](Clock::duration d) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  };
  for (size_t id = 1; id < comms_.size(); ++id) {
    Comm* c = comms_[id];
    if (c == nullptr) continue;
    if (c->closed) {
      if (c->inflight == 0) delete_comm(c);
      continue;
    }
    if (c->error != Status::kOk) continue;
    if (c->type == Comm::Type::kSend && !static_cast<SendComm*>(c)->connected) {
      auto* s = static_cast<SendComm*>(c);
      if (ms(now - s->connect_start) > params_.connect_timeout_ms)
        fail_comm(c, Status::kRemoteError, "connect timed out after %lld ms (listener gone?)",
                  static_cast<long long>(params_.connect_timeout_ms));
      continue;
    }
    if (!c->busy()) {
      c->was_busy = false;
      continue;
    }
    if (!c->was_busy) {
      c->was_busy = true;
      c->busy_since = now;
    }
    if (c->nrails > 1) {
      check_rails(c, now);
      if (c->error != Status::kOk) continue;
    }
    long long silent = ms(now - std::max(c->last_heard, c->busy_since));
    if (silent > params_.peer_timeout_ms) {
      fail_comm(c, Status::kRemoteError,
                "peer silent for %lld ms with requests pending (MOEFABRIC_PEER_TIMEOUT_MS=%lld): "
                "process gone or network down",
                silent, static_cast<long long>(params_.peer_timeout_ms));
    } else if (silent > params_.keepalive_ms && ms(now - c->last_ping) > params_.keepalive_ms) {
      wire::PingMsg m = {static_cast<uint64_t>(now.time_since_epoch().count())};
      if (send_to_peer(c, wire::MsgType::kPing, &m, sizeof m) == Status::kOk) c->last_ping = now;
    }
  }
}

}  // namespace moefabric::fabric

namespace moefabric::fabric {

// A rail with writes outstanding that has not moved (no write completed on it) for the peer
// timeout fails the comm: its NIC, link or the peer's NIC on that rail is down. The peer still
// hears from us on rail 0 (pings), so without this a dead rail 1 would hang the transfer. The
// receiver is told through a kError message on rail 0.
void Device::check_rails(Comm* c, Clock::time_point now) {
  for (int r = 0; r < c->nrails; ++r) {
    if (c->rail_writes[r] == 0) continue;
    auto stalled = std::chrono::duration_cast<std::chrono::milliseconds>(now - c->rail_moved[r]).count();
    if (stalled <= params_.peer_timeout_ms) continue;
    char text[200];
    snprintf(text, sizeof text,
             "rail %d (%s): %d write(s) stalled for %lld ms: interface down or peer unreachable "
             "on that rail",
             r, rails_[r].nic.domain.c_str(), c->rail_writes[r], static_cast<long long>(stalled));
    send_error(c, 0, Status::kRemoteError, text);
    fail_comm(c, Status::kRemoteError, "%s (MOEFABRIC_PEER_TIMEOUT_MS=%lld)", text,
              static_cast<long long>(params_.peer_timeout_ms));
    return;
  }
}

}  // namespace moefabric::fabric
