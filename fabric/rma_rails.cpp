#include "fabric/rma_rails.h"

#include <poll.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "common/log.h"
#include "fabric/stripe.h"

namespace moefabric::fabric {

namespace {}

Status RmaRails::open(const Params& params, std::vector<NicInfo> rails, int stripe_shift,
                      std::unique_ptr<RmaRails>* out) {
  if (rails.empty() || rails.size() > static_cast<size_t>(kMaxRails))
    return Status::invalid_argument("a rail group needs 1 to " + std::to_string(kMaxRails) + " NICs, not " +
                                    std::to_string(rails.size()));
  if (stripe_shift < 0 || stripe_shift > 30)
    return Status::invalid_argument("stripe field at bit " + std::to_string(stripe_shift) +
                                    " does not fit an immediate");
  std::unique_ptr<RmaRails> r(new RmaRails());
  r->stripe_shift_ = stripe_shift;
  r->stripe_min_ = static_cast<size_t>(std::max<int64_t>(kStripeAlign, params.stripe_min));
  for (size_t i = 0; i < rails.size(); ++i) {
    std::unique_ptr<RmaEndpoint> ep;
    const std::string name = rails[i].name;
    Status s = RmaEndpoint::open_nic(params, std::move(rails[i]), static_cast<int>(i), &ep);
    if (!s.ok()) {
      if (rails.size() > 1) s.prepend("rail " + std::to_string(i) + " (" + name + "): ");
      return s;
    }
    r->eps_.push_back(std::move(ep));
  }
  *out = std::move(r);
  return Status::kOk;
}

RmaRails::~RmaRails() {
  eps_.clear();  // each endpoint cancels what it has in flight
}

std::string RmaRails::name() const {
  std::string n;
  for (const auto& e : eps_) n += (n.empty() ? "" : "+") + e->nic().name;
  return n;
}

size_t RmaRails::max_write() const {
  size_t m = SIZE_MAX;
  for (const auto& e : eps_) m = std::min(m, e->max_write());
  return m;
}

void RmaRails::local_addr(Addr* out) const {
  *out = Addr{};
  out->nrails = static_cast<uint32_t>(eps_.size());
  for (size_t i = 0; i < eps_.size(); ++i) {
    out->len[i] = static_cast<uint32_t>(eps_[i]->addr_len());
    std::memcpy(out->addr[i], eps_[i]->addr(), eps_[i]->addr_len());
  }
}

bool RmaRails::hmem() const {
  for (const auto& e : eps_)
    if (!e->nic().hmem) return false;
  return true;
}

bool RmaRails::hmem_async() const {
  for (const auto& e : eps_)
    if (e->nic().hmem_async) return true;
  return false;
}

Status RmaRails::reg(void* buf, size_t len, MrAccess access, Mr* out, int cuda_device) {
  *out = Mr{};
  const MemType type = cuda_device >= 0 ? MemType::kCuda : MemType::kHost;
  for (size_t i = 0; i < eps_.size(); ++i) {
    Status s = eps_[i]->mr_cache().acquire(buf, len, type, access, cuda_device, -1, 0, &out->rail[i]);
    if (!s.ok()) {
      if (eps_.size() > 1) s.prepend("rail " + std::to_string(i) + " (" + eps_[i]->nic().name + "): ");
      dereg(out);
      return s;
    }
  }
  return Status::kOk;
}

void RmaRails::dereg(Mr* mr) {
  for (size_t i = 0; i < eps_.size(); ++i)
    if (mr->rail[i] != nullptr) {
      eps_[i]->mr_cache().release(mr->rail[i]);
      mr->rail[i] = nullptr;
    }
}

RmaRails::Keys RmaRails::keys(const Mr& mr) const {
  Keys k;
  for (size_t i = 0; i < eps_.size(); ++i) k.key[i] = mr.rail[i] ? mr.rail[i]->key : 0;
  return k;
}

Status RmaRails::add_peer(const Addr& addr, const Keys& keys, Peer* out) {
  if (addr.nrails < 1 || addr.nrails > static_cast<uint32_t>(kMaxRails))
    return Status::invalid_argument("peer announced " + std::to_string(addr.nrails) + " rails (1.." +
                                    std::to_string(kMaxRails) + " expected)");
  *out = Peer{};
  out->nrails = std::min<int>(nrails(), static_cast<int>(addr.nrails));
  for (int i = 0; i < out->nrails; ++i) {
    if (addr.len[i] == 0 || addr.len[i] > RmaEndpoint::kMaxAddrLen)
      return Status::invalid_argument("peer's rail " + std::to_string(i) + " address has " +
                                      std::to_string(addr.len[i]) + " bytes");
    MF_CHECK(eps_[i]->insert_peer(addr.addr[i], addr.len[i], &out->addr[i]));
    out->key[i] = keys.key[i];
  }
  return Status::kOk;
}

RmaRails::Pending* RmaRails::pending_alloc() {
  if (free_.empty()) return &pool_.emplace_back();
  Pending* p = free_.back();
  free_.pop_back();
  return p;
}

Status RmaRails::write(const Peer& peer, const void* buf, size_t len, const Mr& mr, uint64_t raddr,
                       uint32_t imm, uint64_t cookie, bool delivered) {
  const uint32_t field = 3u << stripe_shift_;
  if (imm & field) return Status::internal_error("immediate uses the stripe bits");
  const int n = peer.nrails;
  // Stripes (fabric/stripe.h): one per rail at most, as the immediate's stripe field counts them.
  StripePlan plan;
  (void)plan_stripes(len, n, stripe_min_, 0, n, &plan);  // cannot fail: no max_write
  const int k = plan.striped ? plan.nseg : 1;
  const size_t chunk = plan.striped ? plan.seg : len;
  Pending* p = pending_alloc();
  p->cookie = cookie;
  p->parts = k;
  p->silent = false;
  p->status = Status::kOk;
  const uint64_t token = reinterpret_cast<uintptr_t>(p);
  if (k == 1) {
    const int i = n > 1 ? static_cast<int>(rr_++ % static_cast<unsigned>(n)) : 0;
    Status s = eps_[i]->write(peer.addr[i], buf, len, mr.desc(i), raddr, peer.key[i], imm, token, delivered);
    if (s != Status::kOk) {
      free_.push_back(p);
      return s;
    }
    rail_bytes_[i] += len;
    ++inflight_;
    return Status::kOk;
  }
  const uint32_t tagged = imm | (static_cast<uint32_t>(k - 1) << stripe_shift_);
  for (int i = 0; i < k; ++i) {
    const size_t off = chunk * static_cast<size_t>(i);
    const size_t l = std::min(chunk, len - off);
    Status s = eps_[i]->write(peer.addr[i], static_cast<const uint8_t*>(buf) + off, l, mr.desc(i),
                              raddr + off, peer.key[i], tagged, token, delivered);
    if (s != Status::kOk) {
      // Stripes already posted complete later and find this write failed; the caller has the
      // error now, so no completion reaches it.
      if (eps_.size() > 1) s.prepend("rail " + std::to_string(i) + ": ");
      p->parts -= k - i;
      p->silent = true;
      if (p->parts == 0) free_.push_back(p);
      return s;
    }
    rail_bytes_[i] += l;
  }
  ++inflight_;
  return Status::kOk;
}

void RmaRails::on_write_done(uint64_t token, const Status& s) {
  auto* p = reinterpret_cast<Pending*>(static_cast<uintptr_t>(token));
  if (!s.ok() && p->status.ok()) p->status = s;
  if (--p->parts > 0) return;
  if (!p->silent) {
    --inflight_;
    upper_->on_write_done(p->cookie, p->status);
  }
  free_.push_back(p);  // after the callback, which may post (and so allocate) new writes
}

void RmaRails::on_remote_write(uint32_t imm) {
  const uint32_t field = 3u << stripe_shift_;
  const int k = static_cast<int>((imm & field) >> stripe_shift_) + 1;
  if (k == 1) {
    upper_->on_remote_write(imm);
    return;
  }
  auto it = stripes_seen_.find(imm);
  if (it == stripes_seen_.end()) {
    if (stripes_seen_.size() >= kMaxStripedPending) {
      upper_->on_remote_write(imm);  // refused above: the stripe field is still set
      return;
    }
    it = stripes_seen_.emplace(imm, 0).first;
  }
  if (++it->second < k) return;
  stripes_seen_.erase(it);
  upper_->on_remote_write(imm & ~field);
}

Status RmaRails::poll(RmaHandler* h) {
  upper_ = h;
  for (auto& e : eps_) MF_CHECK(e->poll(this));
  return Status::kOk;
}

Status RmaRails::wait(RmaHandler* h, int timeout_ms) {
  upper_ = h;
  if (eps_.size() == 1) return eps_[0]->wait(this, timeout_ms);
  // Several CQs: block in poll(2) on their wait fds once fi_trywait says nothing is due on any
  // (the libfabric way to wait on many); a rail without an fd means a short nap instead.
  pollfd fds[kMaxRails];
  bool nap = false;
  for (size_t i = 0; i < eps_.size(); ++i) {
    fds[i] = pollfd{eps_[i]->wait_fd(), POLLIN, 0};
    if (fds[i].fd < 0) nap = true;
  }
  if (nap) {
    std::this_thread::sleep_for(std::chrono::microseconds(std::min<int64_t>(20, int64_t{timeout_ms} * 1000)));
  } else {
    bool due = false;
    for (auto& e : eps_) due |= !e->try_wait();
    if (!due) (void)::poll(fds, eps_.size(), timeout_ms);
  }
  return poll(h);
}

void RmaRails::signal() {
  for (auto& e : eps_) e->signal();
}

uint64_t RmaRails::registrations() {
  uint64_t n = 0;
  for (auto& e : eps_) n += e->mr_cache().stats().registrations;
  return n;
}

RmaStats RmaRails::stats() const {
  RmaStats s;
  for (const auto& e : eps_) {
    s.writes += e->stats().writes;
    s.eagain += e->stats().eagain;
    s.remote_writes += e->stats().remote_writes;
  }
  return s;
}

}  // namespace moefabric::fabric
