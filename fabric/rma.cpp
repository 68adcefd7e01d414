#include "fabric/rma.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <rdma/fi_cm.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

#include "common/log.h"

namespace moefabric::fabric {
namespace {
constexpr int kRxBuffers = 64;
constexpr size_t kRxBufferBytes = 64;
}  // namespace

Status RmaEndpoint::open_nic(const Params& params, NicInfo nic, int index,
                             std::unique_ptr<RmaEndpoint>* out) {
  if (!nic.rma)
    return Status::system_error("provider " + nic.provider + " (" + nic.name +
                                ") has no RMA with 4-byte remote CQ data, which the MoE protocol needs");
  std::unique_ptr<RmaEndpoint> e(new RmaEndpoint());
  e->params_ = rma_params(params);
  MF_CHECK(e->init(index, std::move(nic)));
  *out = std::move(e);
  return Status::kOk;
}

Status RmaEndpoint::init(int index, NicInfo nic) {
  // A wait fd lets an idle proxy sleep in fi_cq_sread (epoll, not a spin).
  MF_CHECK(rail_.open(index, std::move(nic), EndpointOptions{true, false}));
  fi_info* fi = rail_.nic.info.get();
  fid_domain* domain = rail_.domain.get();
  fid_ep* ep = rail_.ep.get();
  auto fail = [&](const char* what, int rc) {
    return Status::system_error(std::string(what) + " on " + rail_.nic.name + ": " + fi_strerror(-rc));
  };
  max_write_ = fi->ep_attr->max_msg_size > 0 ? fi->ep_attr->max_msg_size : SIZE_MAX;
  mr_cache_ =
      std::make_unique<MrCache>(domain, ep, fi->domain_attr->mr_mode, fi->domain_attr->mr_key_size, true);
  cq_buf_.resize(static_cast<size_t>(std::clamp<int64_t>(params_.cq_read_count, 1, 1024)));
  rx_slab_.assign(kRxBuffers * kRxBufferBytes, 0);
  for (int i = 0; i < kRxBuffers; ++i) {
    WriteCtx& w = rx_ctx_.emplace_back();
    w.rx = true;
    w.rx_index = i;
    ssize_t r =
        fi_recv(ep, rx_slab_.data() + kRxBufferBytes * i, kRxBufferBytes, nullptr, FI_ADDR_UNSPEC, &w.fi);
    if (r != 0) return fail("fi_recv", static_cast<int>(r));
  }
  MF_INFO(log::kInit, "rma endpoint %s: provider %s, max write %zu B, blocking CQ %d, mr_mode 0x%llx%s",
          rail_.nic.name.c_str(), rail_.nic.provider.c_str(), max_write_, rail_.can_block ? 1 : 0,
          static_cast<unsigned long long>(fi->domain_attr->mr_mode),
          rail_.nic.split_imm ? ", immediates in separate zero-byte writes" : "");
  return Status::kOk;
}

RmaEndpoint::~RmaEndpoint() {
  rail_.close_endpoint();  // cancels everything in flight
  mr_cache_.reset();
}

Status RmaEndpoint::insert_peer(const uint8_t* addr, size_t len, fi_addr_t* out) {
  (void)len;
  int n = fi_av_insert(rail_.av.get(), addr, 1, out, 0, nullptr);
  if (n != 1) return Status::system_error("fi_av_insert failed on " + rail_.nic.name);
  return Status::kOk;
}

RmaEndpoint::WriteCtx* RmaEndpoint::ctx_alloc() {
  if (ctx_free_.empty()) return &ctx_pool_.emplace_back();
  WriteCtx* w = ctx_free_.back();
  ctx_free_.pop_back();
  return w;
}

void RmaEndpoint::ctx_free(WriteCtx* w) { ctx_free_.push_back(w); }

ssize_t RmaEndpoint::post_raw(WriteCtx* w) {
  if (w->parent != nullptr)  // payload half of a split write
    return fi_write(rail_.ep.get(), w->buf, w->len, w->desc, w->peer, w->raddr, w->key, &w->fi);
  if (!w->delivered)
    return fi_writedata(rail_.ep.get(), w->buf, w->len, w->desc, w->imm, w->peer, w->raddr, w->key, &w->fi);
  iovec iov{const_cast<void*>(w->buf), w->len};
  fi_rma_iov riov{w->raddr, w->len, w->key};
  fi_msg_rma msg{};
  msg.msg_iov = &iov;
  msg.desc = &w->desc;
  msg.iov_count = 1;
  msg.addr = w->peer;
  msg.rma_iov = &riov;
  msg.rma_iov_count = 1;
  msg.context = &w->fi;
  msg.data = w->imm;
  ssize_t rc = fi_writemsg(rail_.ep.get(), &msg, FI_REMOTE_CQ_DATA | FI_COMPLETION | FI_DELIVERY_COMPLETE);
  if (rc != 0 && rc != -FI_EAGAIN) {
    // Provider without delivery-complete writes: plain write (the caller lingers instead).
    w->delivered = false;
    return fi_writedata(rail_.ep.get(), w->buf, w->len, w->desc, w->imm, w->peer, w->raddr, w->key, &w->fi);
  }
  return rc;
}

Status RmaEndpoint::post(WriteCtx* w) {
  ssize_t rc = post_raw(w);
  if (rc == -FI_EAGAIN) {
    ++stats_.eagain;
    queued_.push(w, w->peer);
    return Status::kOk;
  }
  if (rc != 0)
    return Status::system_error(std::string(w->parent ? "fi_write: " : "fi_writedata: ") +
                                fi_strerror(static_cast<int>(-rc)));
  if (w->parent == nullptr) ++stats_.writes;
  return Status::kOk;
}

Status RmaEndpoint::submit(WriteCtx* w) {
  if (queued_.holds(w->peer)) {  // keep posting order per peer
    queued_.push(w, w->peer);
    return Status::kOk;
  }
  return post(w);
}

void RmaEndpoint::part_done(WriteCtx* w, Status::Code s, const char* text, RmaHandler* h) {
  WriteCtx* main = w->parent != nullptr ? w->parent : w;
  if (w != main) ctx_free(w);
  if (s != Status::kOk && main->status == Status::kOk) {
    main->status = s;
    snprintf(main->text, sizeof main->text, "%s", text ? text : "write failed");
  }
  if (--main->parts > 0) return;
  const Status::Code st = main->status;
  uint64_t cookie = main->cookie;
  bool silent = main->silent;
  char msg[sizeof main->text];
  if (st != Status::kOk) std::memcpy(msg, main->text, sizeof msg);
  ctx_free(main);
  if (silent) return;
  --inflight_;
  if (st == Status::kOk)
    h->on_write_done(cookie, Status());
  else
    h->on_write_done(cookie, Status(st, msg));
}

Status RmaEndpoint::write(fi_addr_t peer, const void* buf, size_t len, void* desc, uint64_t raddr,
                          uint64_t key, uint32_t imm, uint64_t cookie, bool delivered) {
  if (len > max_write_)
    return Status::invalid_argument("write of " + std::to_string(len) +
                                    " B exceeds the provider's limit of " + std::to_string(max_write_) +
                                    " B");
  WriteCtx* w = ctx_alloc();
  *w = WriteCtx{};
  w->peer = peer;
  w->buf = buf;
  w->len = len;
  w->desc = desc;
  w->raddr = raddr;
  w->key = key;
  w->imm = imm;
  w->cookie = cookie;
  w->delivered = delivered;
  if (rail_.nic.split_imm && len > 0) {  // payload first, then the immediate with no payload
    WriteCtx* p = ctx_alloc();
    *p = *w;
    p->parent = w;
    p->delivered = false;
    w->len = 0;
    w->parts = 2;
    Status s = submit(p);
    if (s != Status::kOk) {
      ctx_free(p);
      ctx_free(w);
      return s;
    }
    s = submit(w);
    if (s != Status::kOk) {
      // The payload is in flight and still points at w: w goes when it completes.
      w->silent = true;
      w->parts = 1;
      return s;
    }
    ++inflight_;
    return Status::kOk;
  }
  Status s = submit(w);
  if (s != Status::kOk) {
    ctx_free(w);
    return s;
  }
  ++inflight_;
  return Status::kOk;
}

void RmaEndpoint::handle_entries(RmaHandler* h, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const fi_cq_data_entry& e = cq_buf_[i];
    // Providers differ in the flags and contexts they report for incoming writes, so only our
    // own receives (FI_RECV) and our own writes have contexts we trust.
    auto* w = static_cast<WriteCtx*>(e.op_context);
    if (e.flags & FI_RECV) {
      if (e.flags & FI_REMOTE_CQ_DATA) {
        ++stats_.remote_writes;
        h->on_remote_write(static_cast<uint32_t>(e.data));
      }
      if (w != nullptr)
        (void)fi_recv(rail_.ep.get(), rx_slab_.data() + kRxBufferBytes * w->rx_index, kRxBufferBytes, nullptr,
                      FI_ADDR_UNSPEC, &w->fi);
      continue;
    }
    if (e.flags & (FI_REMOTE_WRITE | FI_REMOTE_CQ_DATA)) {
      ++stats_.remote_writes;
      h->on_remote_write(static_cast<uint32_t>(e.data));
      continue;
    }
    if (w == nullptr) continue;
    part_done(w, Status::kOk, nullptr, h);
  }
}

Status RmaEndpoint::wait(RmaHandler* h, int timeout_ms) {
  if (!rail_.can_block || !queued_.empty()) {
    usleep(50);
    return poll(h);
  }
  ssize_t n = fi_cq_sread(rail_.cq.get(), cq_buf_.data(), cq_buf_.size(), nullptr, timeout_ms);
  if (n > 0) handle_entries(h, static_cast<size_t>(n));
  return poll(h);  // errors (-FI_EAVAIL) and the rest
}

int RmaEndpoint::wait_fd() {
  if (!rail_.can_block || !queued_.empty()) return -1;
  if (wait_fd_ == -2) {
    int fd = -1;
    wait_fd_ = fi_control(&rail_.cq->fid, FI_GETWAIT, &fd) == 0 ? fd : -1;
  }
  return wait_fd_;
}

bool RmaEndpoint::try_wait() {
  fid* f = &rail_.cq->fid;
  return fi_trywait(rail_.fabric.get(), &f, 1) == FI_SUCCESS;
}

void RmaEndpoint::signal() {
  if (rail_.can_block) (void)fi_cq_signal(rail_.cq.get());
}

Status RmaEndpoint::poll(RmaHandler* h) {
  // Repost refused writes, oldest first; a peer that refuses again keeps the rest of its
  // writes queued behind, other peers go on.
  queued_.retry([&](WriteCtx* w) {
    ssize_t rc = post_raw(w);
    if (rc == -FI_EAGAIN) return rc;
    if (rc != 0)
      part_done(w, Status::kSystemError, fi_strerror(static_cast<int>(-rc)), h);
    else if (w->parent == nullptr)
      ++stats_.writes;
    return rc;
  });
  return cq_drain(
      rail_.cq.get(), cq_buf_, 16, [&](size_t n) { handle_entries(h, n); },
      [&](const fi_cq_err_entry& err) {
        char text[512];
        cq_error_text(rail_.cq.get(), err, text, sizeof text);
        auto* w = static_cast<WriteCtx*>(err.op_context);
        if (w == nullptr) {
          MF_WARN("%s: incoming operation failed: %s", rail_.nic.name.c_str(), text);
        } else if (w->rx) {
          if (err.err != FI_ECANCELED)
            (void)fi_recv(rail_.ep.get(), rx_slab_.data() + kRxBufferBytes * w->rx_index, kRxBufferBytes,
                          nullptr, FI_ADDR_UNSPEC, &w->fi);
        } else {
          part_done(w, Status::kRemoteError, text, h);
        }
      });
}

}  // namespace moefabric::fabric
