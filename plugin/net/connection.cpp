// Connection manager: listen/connect/accept over the data endpoint itself (no side sockets).
// connect() sends kConnect to the listener's endpoint and returns a comm once kConnectAck
// arrives; accept() answers pending kConnect messages. Neither ever blocks. Multi-rail: the
// listen handle carries rail 0's address only (128 bytes hold no more); kConnect carries every
// sender rail's address and kConnectAck the listener's rails 1.., so both sides fill every
// rail's AV during the handshake. A connection uses min(sender's, listener's) rails.
// The handle's random nonce is the credential: a kConnect without it is dropped unanswered
// (nothing of the sender's enters our AV, no reply goes to an address it chose). Each side then
// gives the other its comm's random token (kConnect, kConnectAck), which every later message
// carries (wire::MsgHeader::token).
#include <algorithm>
#include <cstring>

#include <rdma/fi_errno.h>

#include "common/log.h"
#include "common/random.h"
#include "plugin/net/device.h"

namespace moefabric::fabric {

Status Device::listen(void* handle, ListenComm** out) {
  auto lc = std::make_unique<ListenComm>();
  MF_CHECK(random_nonzero_u64(&lc->nonce));
  lc->id = next_listen_id_++;
  lc->dev = this;
  wire::ListenHandle h = {};
  h.magic = wire::kMagic;
  h.version = wire::kVersion;
  h.addr_len = static_cast<uint8_t>(rails_[0].addr_len);
  h.listen_id = lc->id;
  h.nonce = lc->nonce;
  h.nrails = static_cast<uint8_t>(rails_.size());
  std::memcpy(h.addr, rails_[0].addr, rails_[0].addr_len);
  std::memcpy(handle, &h, sizeof h);
  listens_[lc->id] = lc.get();
  *out = lc.release();
  return Status::kOk;
}

Status Device::connect(void* handle, SendComm** out) {
  *out = nullptr;
  wire::ListenHandle h;
  std::memcpy(&h, handle, sizeof h);
  if (h.magic != wire::kMagic || h.version != wire::kVersion || h.addr_len == 0 ||
      h.addr_len > wire::kMaxAddrLen || h.nrails < 1 || h.nrails > wire::kMaxRails) {
    MF_WARN("connect: handle is not a moefabric v%u listen handle", wire::kVersion);
    return Status::kInvalidArgument;
  }
  SendComm* c = nullptr;
  if (h.stage_token != 0) {
    // A connect of ours in progress: the id must name a send comm still connecting whose token
    // matches. Anything else is a corrupted or forged handle.
    Comm* x = comm_lookup(h.stage_comm);
    auto* sc = x != nullptr && x->type == Comm::Type::kSend ? static_cast<SendComm*>(x) : nullptr;
    if (sc == nullptr || sc->closed || sc->stage_token != h.stage_token) {
      MF_WARN("connect: the handle names no connect in progress on %s (comm %u): corrupted or forged handle",
              nic_.name.c_str(), h.stage_comm);
      return Status::kInvalidArgument;
    }
    c = sc;
  } else {
    auto fresh = std::make_unique<SendComm>();
    fresh->dev = this;
    fresh->tagged = tagged_;
    fresh->listen_id = h.listen_id;
    fresh->connect_start = fresh->last_heard = Clock::now();
    fresh->next_msg = fresh->cur_group = static_cast<uint32_t>(params_.test_seq_start);
    MF_CHECK(av_insert(h.addr, h.addr_len, &fresh->peer));
    fresh->rail_peer[0] = fresh->peer;
    fresh->peer_addr = rails_[0].addr_str(h.addr, h.addr_len);
    MF_CHECK(random_nonzero_u64(&fresh->stage_token));
    MF_CHECK(random_nonzero_u64(&fresh->token));
    fresh->remote_token = h.nonce;  // the listener's credential until its kConnectAck
    if (alloc_comm_id(fresh.get()) == 0) {
      MF_WARN("%s: all %u comm ids in use", nic_.name.c_str(), wire::kMaxCommId);
      return Status::kSystemError;
    }
    wire::ConnectMsg m = {};
    m.flags = tagged_ ? wire::kConnectFlagTagged : 0;
    m.nrails = static_cast<uint32_t>(rails_.size());
    m.max_write = max_write_;
    m.token = fresh->token;
    for (size_t r = 0; r < rails_.size(); ++r) {
      m.rails[r].len = static_cast<uint32_t>(rails_[r].addr_len);
      std::memcpy(m.rails[r].addr, rails_[r].addr, rails_[r].addr_len);
    }
    Status s = send_msg(fresh.get(), fresh->peer, wire::MsgType::kConnect, h.listen_id, fresh->id, h.nonce,
                        &m, sizeof m);
    if (s != Status::kOk) {
      comms_[fresh->id] = nullptr;
      return s == Status::kAgain ? Status::kOk : s;  // no bounce buffer: NCCL calls again
    }
    c = fresh.release();
    h.stage_comm = c->id;
    h.stage_token = c->stage_token;
    std::memcpy(handle, &h, sizeof h);
  }
  MF_CHECK(progress());
  if (c->error != Status::kOk) {
    Status s = c->error;
    MF_WARN("%s", c->error.message().c_str());
    c->stage_token = 0;
    close_comm(c);
    h.stage_token = 0;
    std::memcpy(handle, &h, sizeof h);
    return s;
  }
  if (!c->connected) {
    auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - c->connect_start);
    if (waited.count() > params_.connect_timeout_ms) {
      fail_comm(c, Status::kRemoteError,
                "no answer from listener %u after %lld ms (listener gone, or the handle is not the one "
                "it handed out: a connect with the wrong nonce is dropped unanswered)",
                c->listen_id, static_cast<long long>(waited.count()));
      Status s = c->error;
      c->stage_token = 0;
      close_comm(c);
      h.stage_token = 0;
      std::memcpy(handle, &h, sizeof h);
      return s;
    }
    return Status::kOk;
  }
  h.stage_token = 0;
  std::memcpy(handle, &h, sizeof h);
  c->stage_token = 0;
  c->last_heard = Clock::now();
  *out = c;
  return Status::kOk;
}

void Device::on_connect(const wire::MsgHeader& h, const wire::ConnectMsg& m) {
  auto it = listens_.find(h.dst_comm);
  if (it == listens_.end() || it->second->nonce != h.token) {
    // Not from a holder of one of our handles (or for a listener since closed): no AV entry, no
    // answer. The connector's own timeout tells it.
    ++stats_.connects_dropped;
    if ((stats_.connects_dropped & (stats_.connects_dropped - 1)) == 0)  // 1, 2, 4, 8, ...
      MF_WARN("%s: dropped a connect for listen id %u claiming to be from %s: %s (%llu dropped so far)",
              nic_.name.c_str(), h.dst_comm, rails_[0].addr_str(m.rails[0].addr, m.rails[0].len).c_str(),
              it == listens_.end() ? "no such listener" : "wrong nonce (not the listener's handle)",
              static_cast<unsigned long long>(stats_.connects_dropped));
    return;
  }
  fi_addr_t peer = FI_ADDR_UNSPEC;
  if (av_insert(m.rails[0].addr, m.rails[0].len, &peer) != Status::kOk) return;
  bool peer_tagged = (m.flags & wire::kConnectFlagTagged) != 0;
  if (peer_tagged != tagged_) {
    MF_WARN("%s: refusing connection for listen id %u from %s: the peer uses a different data protocol",
            nic_.name.c_str(), h.dst_comm, rails_[0].addr_str(m.rails[0].addr, m.rails[0].len).c_str());
    wire::ConnectAckMsg ack = {};
    ack.status = 1;
    (void)send_msg(nullptr, peer, wire::MsgType::kConnectAck, h.src_comm, 0, m.token, &ack, sizeof ack);
    return;
  }
  ListenComm::Pending p = {peer,
                           h.src_comm,
                           m.flags,
                           1,
                           {peer, FI_ADDR_UNSPEC, FI_ADDR_UNSPEC, FI_ADDR_UNSPEC},
                           rails_[0].addr_str(m.rails[0].addr, m.rails[0].len),
                           m.token};
  int n = std::min<int>(static_cast<int>(m.nrails), static_cast<int>(rails_.size()));
  for (int r = 1; r < n; ++r) {
    if (rails_[r].av_insert(m.rails[r].addr, m.rails[r].len, &p.rail_peer[r]) != Status::kOk) {
      MF_WARN("%s: connection for listen id %u uses %d rail(s): rail %d (%s) cannot reach the peer",
              nic_.name.c_str(), h.dst_comm, r, r, rails_[r].nic.domain.c_str());
      break;
    }
    p.nrails = r + 1;
  }
  it->second->pending.push_back(p);
}

void Device::on_connect_ack(SendComm* c, const wire::ConnectAckMsg& m) {
  int n = std::min<int>(static_cast<int>(m.nrails), static_cast<int>(rails_.size()));
  for (int r = 1; r < n; ++r) {
    if (rails_[r].av_insert(m.rails[r].addr, m.rails[r].len, &c->rail_peer[r]) != Status::kOk) {
      fail_comm(c, Status::kSystemError, "rail %d (%s): cannot add the listener's address to the AV", r,
                rails_[r].nic.domain.c_str());
      return;
    }
  }
  c->nrails = std::max(n, 1);
  if (c->nrails > 1)
    MF_INFO(log::kNet, "%s: send comm %u to listener %u uses %d rails", nic_.name.c_str(), c->id,
            c->listen_id, c->nrails);
}

Status Device::accept(ListenComm* lc, RecvComm** out) {
  *out = nullptr;
  MF_CHECK(progress());
  if (lc->pending.empty()) return Status::kOk;
  if (!tx_available()) return Status::kOk;
  ListenComm::Pending p = lc->pending.front();
  auto c = std::make_unique<RecvComm>();
  c->dev = this;
  c->tagged = tagged_;
  c->peer = p.peer;
  c->nrails = p.nrails;
  for (int r = 0; r < p.nrails; ++r) c->rail_peer[r] = p.rail_peer[r];
  c->remote_id = p.src_comm;
  c->remote_token = p.token;
  MF_CHECK(random_nonzero_u64(&c->token));
  c->peer_addr = p.addr;
  c->last_heard = Clock::now();
  c->next_msg = c->next_group = static_cast<uint32_t>(params_.test_seq_start);
  if (alloc_comm_id(c.get()) == 0) {
    MF_WARN("%s: all %u comm ids in use", nic_.name.c_str(), wire::kMaxCommId);
    return Status::kSystemError;
  }
  wire::ConnectAckMsg ack = {};
  ack.nrails = static_cast<uint32_t>(p.nrails);
  ack.token = c->token;
  // net_reg_mr takes CUDA memory only where the NIC registers it (NicAttrs::hmem).
  ack.flags = nic_.hmem ? 0 : wire::kConnectAckFlagHostOnly;
  for (int r = 1; r < p.nrails; ++r) {
    ack.rails[r].len = static_cast<uint32_t>(rails_[r].addr_len);
    std::memcpy(ack.rails[r].addr, rails_[r].addr, rails_[r].addr_len);
  }
  Status s = send_to_peer(c.get(), wire::MsgType::kConnectAck, &ack, sizeof ack);
  if (s != Status::kOk) {
    comms_[c->id] = nullptr;
    return s == Status::kAgain ? Status::kOk : s;
  }
  lc->pending.pop_front();
  if (c->nrails > 1)
    MF_INFO(log::kNet, "%s: recv comm %u from comm %u uses %d rails", nic_.name.c_str(), c->id, c->remote_id,
            c->nrails);
  *out = c.release();
  return Status::kOk;
}

void Device::close_listen(ListenComm* lc) {
  if (lc == nullptr) return;
  listens_.erase(lc->id);
  for (const auto& p : lc->pending) {
    wire::ConnectAckMsg ack = {};
    ack.status = 1;
    (void)send_msg(nullptr, p.peer, wire::MsgType::kConnectAck, p.src_comm, 0, p.token, &ack, sizeof ack);
  }
  delete lc;
}

}  // namespace moefabric::fabric
