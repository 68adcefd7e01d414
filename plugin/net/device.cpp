#include "plugin/net/device.h"

#include <algorithm>
#include <cstdarg>
#include <cstring>
#include <unistd.h>

#include <rdma/fi_cm.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#include <rdma/fi_tagged.h>

#include "common/log.h"

namespace moefabric::fabric {

Status Device::open(const Params& params, std::vector<NicInfo> rails, std::unique_ptr<Device>* out) {
  if (rails.empty() || rails.size() > static_cast<size_t>(wire::kMaxRails))
    return Status::invalid_argument("a device takes 1.." + std::to_string(wire::kMaxRails) + " rails");
  std::unique_ptr<Device> d(new Device());
  d->params_ = params;
  // The device as NCCL sees it: rail 0's NIC (every field, the fi_info duplicated) under the
  // joined name, with the capabilities all rails share and the summed speed (rail 0's alone when
  // the tagged protocol, which uses rail 0 only, will carry the data).
  const NicInfo& n0 = rails[0];
  d->nic_ = n0.clone();
  if (!d->nic_.info) return Status::system_error("fi_dupinfo failed for " + n0.name);
  int speed = n0.speed_mbps;
  for (size_t r = 1; r < rails.size(); ++r) {
    const NicInfo& n = rails[r];
    if (n.provider != n0.provider)
      return Status::invalid_usage("rails " + n0.domain + " and " + n.domain + " use different providers (" +
                                   n0.provider + ", " + n.provider + ")");
    d->nic_.name += "+" + n.name;
    speed += n.speed_mbps;
    d->nic_.guid = d->nic_.guid * 1000003u ^ n.guid;
    d->nic_.hmem = d->nic_.hmem && n.hmem;
    d->nic_.hmem_async = d->nic_.hmem_async || n.hmem_async;
    d->nic_.rma = d->nic_.rma && n.rma;
    d->nic_.split_imm = d->nic_.split_imm || n.split_imm;
    d->nic_.tagged = d->nic_.tagged && n.tagged;
    d->nic_.source = d->nic_.source && n.source;
    d->nic_.directed = d->nic_.directed && n.directed;
    d->nic_.write_source = d->nic_.write_source && n.write_source;
  }
  const bool tagged = !d->nic_.rma || params.protocol == "tagged";
  d->nic_.speed_mbps = tagged ? n0.speed_mbps : speed;
  d->rails_.resize(rails.size());
  for (size_t r = 0; r < rails.size(); ++r)
    MF_CHECK(d->rails_[r].open(static_cast<int>(r), std::move(rails[r]), EndpointOptions{false, true}));
  MF_CHECK(d->init());
  *out = std::move(d);
  return Status::kOk;
}

Status Device::init() {
  fi_info* fi = nic_.info.get();
  tagged_ = !nic_.rma || params_.protocol == "tagged";
  auto_progress_ = fi->domain_attr->data_progress == FI_PROGRESS_AUTO;
  if (tagged_ && !nic_.tagged)
    return Status::system_error("provider " + nic_.provider +
                                " offers neither RMA with remote CQ data nor tagged messages");
  eager_max_ = tagged_ ? 0 : static_cast<size_t>(std::max<int64_t>(0, params_.eager_max));
  max_write_ = static_cast<size_t>(std::max<int64_t>(4096, params_.max_write));
  if (fi->ep_attr->max_msg_size > 0 && fi->ep_attr->max_msg_size < max_write_)
    max_write_ = fi->ep_attr->max_msg_size;
  msg_size_ = wire::msg_buffer_size(eager_max_);
  if (fi->ep_attr->max_msg_size > 0 && msg_size_ > fi->ep_attr->max_msg_size) {
    eager_max_ = 0;
    msg_size_ = wire::msg_buffer_size(0);
  }
  stripe_min_ = static_cast<size_t>(std::max<int64_t>(0, params_.stripe_min));
  // A small write with immediate costs two operations where the immediate travels in its own
  // zero-byte write (split_imm: tcp;ofi_rxm); one eager message is cheaper there.
  eager_known_max_ = params_.eager_known >= 0 ? std::min(eager_max_, static_cast<size_t>(params_.eager_known))
                                              : (nic_.split_imm ? eager_max_ : 0);

  Rail& r0 = rails_[0];
  mr_cache_ = std::make_unique<MrCache>(r0.domain.get(), r0.ep.get(), fi->domain_attr->mr_mode,
                                        fi->domain_attr->mr_key_size, params_.mr_cache);
  for (size_t r = 1; r < rails_.size(); ++r)
    mr_cache_->add_domain(rails_[r].domain.get(), rails_[r].ep.get(),
                          rails_[r].nic.info->domain_attr->mr_mode,
                          rails_[r].nic.info->domain_attr->mr_key_size);
  cq_buf_.resize(static_cast<size_t>(std::clamp<int64_t>(params_.cq_read_count, 1, 1024)));
  cq_src_.assign(cq_buf_.size(), FI_ADDR_NOTAVAIL);
  comms_.assign(wire::kMaxCommId + 1, nullptr);
  MF_CHECK(alloc_pools());
  MF_INFO(log::kInit | log::kNet,
          "device %s: provider %s, protocol %s, eager %zu B, max write %zu B, mr_mode 0x%llx, "
          "hmem %d%s",
          nic_.name.c_str(), nic_.provider.c_str(), tagged_ ? "tagged" : "rdma", eager_max_, max_write_,
          static_cast<unsigned long long>(fi->domain_attr->mr_mode), nic_.hmem ? 1 : 0,
          nic_.split_imm && !tagged_ ? ", immediates in separate zero-byte writes" : "");
  if (rails_.size() > 1)
    MF_INFO(log::kInit | log::kNet, "device %s: %zu rails, %d Mb/s in all, messages >= %zu B striped%s",
            nic_.name.c_str(), rails_.size(), nic_.speed_mbps, stripe_min_,
            tagged_ ? " (tagged protocol: rail 0 only)" : "");
  return Status::kOk;
}

Status Device::alloc_pools() {
  int nrx = static_cast<int>(std::clamp<int64_t>(params_.rx_buffers, 16, 65536));
  int ntx = static_cast<int>(std::clamp<int64_t>(params_.tx_buffers, 16, 65536));
  rx_slab_.assign(msg_size_ * nrx, 0);
  tx_slab_.assign(msg_size_ * ntx, 0);
  // Message buffers are filled by fi_recv and read by fi_send: no peer accesses them remotely.
  MF_CHECK(mr_cache_->acquire(rx_slab_.data(), rx_slab_.size(), MemType::kHost, MrAccess::kLocal, -1, -1, 0,
                              &rx_mr_));
  MF_CHECK(mr_cache_->acquire(tx_slab_.data(), tx_slab_.size(), MemType::kHost, MrAccess::kLocal, -1, -1, 0,
                              &tx_mr_));
  rx_ops_.resize(nrx);
  tx_ops_.resize(ntx);
  for (int i = 0; i < ntx; ++i) {
    tx_ops_[i].kind = OpKind::kTxMsg;
    tx_ops_[i].idx = i;
    tx_free_.push_back(ntx - 1 - i);
  }
  for (int i = 0; i < nrx; ++i) {
    OpCtx& op = rx_ops_[i];
    op.kind = OpKind::kRxMsg;
    op.idx = i;
    op.buf = rx_slab_.data() + msg_size_ * i;
    op.len = msg_size_;
    op.desc = rx_mr_->desc;
    if (Status s = post(&op); !s.ok()) return s.prepend("posting receive buffers failed: ");
  }
  return Status::kOk;
}

// Before the endpoint closes: cancel tagged receives that have not matched anything, then
// progress until the ones already receiving end (or `timeout_ms` passes). Closing an rxm
// endpoint while a rendezvous transfer into it is under way crashes inside libfabric 1.17 (the
// same fault as in info.cpp's imm_write_needs_split). Sends are not waited for: their peer may
// be gone, and closing under an outgoing transfer is safe.
void Device::quiesce(int timeout_ms) {
  if (rails_.empty() || rails_[0].ep == nullptr || trecv_inflight_ == 0) return;
  for (Comm* c : comms_) {
    if (c == nullptr || c->type != Comm::Type::kRecv || !c->tagged) continue;
    for (RecvGroup& g : static_cast<RecvComm*>(c)->groups)
      if (g.in_use && !g.e[0].done) (void)fi_cancel(&rails_[0].ep->fid, &g.e[0].trecv.fi);
  }
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  while (trecv_inflight_ > 0 && Clock::now() < deadline) {
    if (progress() != Status::kOk) break;
    usleep(100);
  }
  if (trecv_inflight_ > 0)
    MF_INFO(log::kNet, "%s: closing with %d receives still in flight after %d ms", nic_.name.c_str(),
            trecv_inflight_, timeout_ms);
}

Device::~Device() {
  quiesce(kCloseLingerMs);
  // Closing the endpoints cancels everything still in flight; then nothing references comms.
  for (Rail& r : rails_) r.close_endpoint();
  for (Comm* c : comms_) delete c;
  for (auto& [id, lc] : listens_) delete lc;
  if (mr_cache_) {
    mr_cache_->release(rx_mr_);
    mr_cache_->release(tx_mr_);
  }
  mr_cache_.reset();
  rails_.clear();
}

ssize_t Device::post_raw(OpCtx* op) {
  fid_ep* ep = rails_[op->rail].ep.get();
  switch (op->kind) {
    case OpKind::kRxMsg:
      return fi_recv(ep, op->buf, op->len, op->desc, FI_ADDR_UNSPEC, &op->fi);
    case OpKind::kTxMsg:
      return fi_send(ep, op->buf, op->len, op->desc, op->peer, &op->fi);
    case OpKind::kWrite:
      return op->imm ? fi_writedata(ep, op->buf, op->len, op->desc, op->data, op->peer, op->raddr, op->key,
                                    &op->fi)
                     : fi_write(ep, op->buf, op->len, op->desc, op->peer, op->raddr, op->key, &op->fi);
    case OpKind::kTSend:
      return fi_tsend(ep, op->buf, op->len, op->desc, op->peer, op->tag, &op->fi);
    case OpKind::kTRecv:
      return fi_trecv(ep, op->buf, op->len, op->desc, op->peer, op->tag, 0, &op->fi);
  }
  return -FI_EINVAL;
}

Status Device::post(OpCtx* op) {
  const uint64_t pkey = peer_key(op);
  // Posting order per peer is kept behind operations the provider refused.
  const ssize_t rc = retry_.holds(pkey) ? -FI_EAGAIN : post_raw(op);
  if (rc == -FI_EAGAIN) {
    if (!retry_.holds(pkey)) ++stats_.eagain;
    retry_.push(op, pkey);
    return Status::kOk;
  }
  return posted(op, rc);
}

Status Device::posted(OpCtx* op, ssize_t rc) {
  if (rc != 0) {
    const char* what = op->kind == OpKind::kWrite   ? (op->imm ? "fi_writedata" : "fi_write")
                       : op->kind == OpKind::kTSend ? "fi_tsend"
                       : op->kind == OpKind::kTRecv ? "fi_trecv"
                       : op->kind == OpKind::kTxMsg ? "fi_send"
                                                    : "fi_recv";
    char text[256];
    if (rails_.size() > 1)
      snprintf(text, sizeof text, "%s on rail %d (%s) failed: %s", what, op->rail,
               rails_[op->rail].nic.domain.c_str(), fi_strerror(static_cast<int>(-rc)));
    else
      snprintf(text, sizeof text, "%s failed: %s", what, fi_strerror(static_cast<int>(-rc)));
    if (op->kind == OpKind::kRxMsg) {
      MF_WARN("%s", text);
      return Status::kSystemError;
    }
    op_done(op, Status::kRemoteError, text);
    return Status::kOk;
  }
  if (op->kind == OpKind::kWrite && op->imm) ++stats_.writes;
  return Status::kOk;
}

Status Device::post_rx(int i) { return post(&rx_ops_[i]); }

Status Device::send_msg(Comm* comm, fi_addr_t peer, wire::MsgType type, uint32_t dst, uint32_t src,
                        uint64_t token, const void* payload, size_t len, const void* extra, size_t extra_len,
                        SendReq* sreq) {
  if (tx_free_.empty()) return Status::kAgain;
  size_t total = sizeof(wire::MsgHeader) + len + extra_len;
  if (total > msg_size_) return Status::kInternalError;
  int i = tx_free_.back();
  tx_free_.pop_back();
  OpCtx& op = tx_ops_[i];
  uint8_t* buf = tx_slab_.data() + msg_size_ * i;
  wire::MsgHeader h = {wire::kMagic,
                       wire::kVersion,
                       static_cast<uint8_t>(type),
                       dst,
                       src,
                       static_cast<uint32_t>(len + extra_len),
                       token};
  std::memcpy(buf, &h, sizeof h);
  if (len) std::memcpy(buf + sizeof h, payload, len);
  if (extra_len) std::memcpy(buf + sizeof h + len, extra, extra_len);
  op.buf = buf;
  op.len = total;
  op.desc = tx_mr_->desc;
  op.peer = peer;
  op.comm = comm;
  op.sreq = sreq;
  op.rgroup = nullptr;
  op.rail = 0;
  if (comm) ++comm->inflight;
  if (sreq) ++sreq->pending;
  ++stats_.msgs_sent;
  return post(&op);
}

uint32_t Device::alloc_comm_id(Comm* c) {
  for (uint32_t tries = 0; tries < wire::kMaxCommId; ++tries) {
    uint32_t id = next_comm_id_;
    next_comm_id_ = next_comm_id_ == wire::kMaxCommId ? 1 : next_comm_id_ + 1;
    if (comms_[id] == nullptr) {
      comms_[id] = c;
      c->id = id;
      return id;
    }
  }
  return 0;
}

size_t Device::live_comms() const {
  size_t n = 0;
  for (Comm* c : comms_) n += c != nullptr;
  return n;
}

void Device::delete_comm(Comm* c) {
  if (c->type == Comm::Type::kRecv)
    for (RecvGroup& g : static_cast<RecvComm*>(c)->groups)
      for (int i = 0; g.in_use && i < g.n; ++i)
        if (g.e[i].wmr != nullptr) mr_cache_->release(g.e[i].wmr);
  if (c->id != 0 && c->id < comms_.size() && comms_[c->id] == c) comms_[c->id] = nullptr;
  delete c;
}

void Device::close_comm(Comm* c) {
  if (c == nullptr) return;
  c->closed = true;
  if (c->type == Comm::Type::kRecv && c->tagged) {
    // Posted tagged receives never complete without a sender: cancel them (they complete with
    // FI_ECANCELED and release the comm).
    for (auto& g : static_cast<RecvComm*>(c)->groups)
      if (g.in_use)
        for (int i = 0; i < g.n; ++i)
          if (!g.e[i].done) (void)fi_cancel(&rails_[0].ep->fid, &g.e[i].trecv.fi);
  }
  if (c->inflight == 0) delete_comm(c);
  // else: reaped by check_liveness() once the provider returned every operation
}

void Device::fail_comm(Comm* c, Status::Code s, const char* fmt, ...) {
  if (!c->error.ok()) return;  // keep the first error
  char text[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  c->error = Status::format(s, "%s comm %u (peer rank %d at %s) on %s: %s",
                            c->type == Comm::Type::kSend ? "send" : "recv", c->id, c->peer_rank,
                            c->peer_addr.empty() ? "an unknown address" : c->peer_addr.c_str(),
                            nic_.name.c_str(), text);
  if (!c->closed) MF_WARN("%s", c->error.message().c_str());
}

}  // namespace moefabric::fabric
