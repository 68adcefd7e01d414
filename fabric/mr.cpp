#include "fabric/mr.h"

#include <algorithm>

#include <rdma/fi_errno.h>

#include "common/log.h"
#include "common/random.h"

namespace moefabric::fabric {

MrCache::MrCache(fid_domain* domain, fid_ep* ep, uint64_t mr_mode, size_t key_size, bool enabled)
    : doms_{{domain, ep, mr_mode, key_size}}, mr_mode_(mr_mode), enabled_(enabled) {}

void MrCache::add_domain(fid_domain* domain, fid_ep* ep, uint64_t mr_mode, size_t key_size) {
  if (doms_.size() < static_cast<size_t>(kMrMaxDomains)) doms_.push_back({domain, ep, mr_mode, key_size});
}

MrCache::~MrCache() {
  for (MrEntry* e : entries_) delete e;
}

uint64_t MrCache::fi_access(MrAccess access) {
  // Local use in every role (NCCL may send from a buffer it registered for receiving); remote
  // write only where peers write; remote read never (no protocol of ours reads remotely).
  const uint64_t local = FI_SEND | FI_RECV | FI_WRITE | FI_READ;
  return access == MrAccess::kRemoteWrite ? local | FI_REMOTE_WRITE : local;
}

Status MrCache::acquire(void* addr, size_t len, MemType type, MrAccess access, int cuda_device, int dmabuf_fd,
                        uint64_t dmabuf_offset, MrEntry** out) {
  const uintptr_t start = reinterpret_cast<uintptr_t>(addr);
  const uintptr_t end = start + len;
  if (enabled_ && dmabuf_fd < 0) {
    for (MrEntry* e : entries_) {
      if (e->type == type && e->access >= access && e->base <= start && e->base + e->len >= end) {
        ++e->refs;
        ++stats_.hits;
        *out = e;
        return Status::kOk;
      }
    }
  }

  auto e = std::make_unique<MrEntry>();
  e->base = start;
  e->len = len;
  e->type = type;
  e->access = access;
  e->fi_access = fi_access(access);
  e->refs = 1;
  e->virt_addr = (mr_mode_ & FI_MR_VIRT_ADDR) != 0;

  // NCCL registers empty buffers too: nothing of the process is exposed for them (no operation
  // on an empty message touches memory, so no descriptor or key is needed).
  for (size_t d = 0; len > 0 && d < doms_.size(); ++d) {
    MrPtr& slot = d == 0 ? e->mr : e->more_mr[d - 1];
    Status s = reg_one(doms_[d], type, e->fi_access, cuda_device, dmabuf_fd, dmabuf_offset, addr, len, &slot);
    if (!s.ok()) {
      if (doms_.size() > 1) return Status(s.code(), s.message() + " (rail " + std::to_string(d) + ")");
      return s;
    }
    e->desc_on[d] = fi_mr_desc(slot.get());
    e->key_on[d] = fi_mr_key(slot.get());
  }
  e->desc = e->desc_on[0];
  e->key = e->key_on[0];
  if (len > 0) ++stats_.registrations;
  *out = e.get();
  entries_.push_back(e.release());
  stats_.live = entries_.size();
  return Status::kOk;
}

Status MrCache::reg_one(const Dom& dom, MemType type, uint64_t access, int cuda_device, int dmabuf_fd,
                        uint64_t dmabuf_offset, void* addr, size_t len, MrPtr* out) {
  struct iovec iov = {addr, len};
  struct fi_mr_attr attr = {};
  attr.mr_iov = &iov;
  attr.iov_count = 1;
  attr.access = access;
  attr.iface = FI_HMEM_SYSTEM;
  uint64_t flags = 0;
  if (type == MemType::kCuda) {
    attr.iface = FI_HMEM_CUDA;
    attr.device.cuda = cuda_device;
    // cudaMalloc'd memory is not host-accessible; saying so lets shm move it by CUDA IPC
    // (device to device) instead of staging it through host bounce buffers.
    flags |= FI_HMEM_DEVICE_ONLY;
  }
#ifdef FI_MR_DMABUF
  struct fi_mr_dmabuf dmabuf = {};
  if (dmabuf_fd >= 0) {
    dmabuf.fd = dmabuf_fd;
    dmabuf.offset = dmabuf_offset;
    dmabuf.len = len;
    dmabuf.base_addr = addr;
    attr.dmabuf = &dmabuf;
    attr.iov_count = 1;
    flags |= FI_MR_DMABUF;
  }
#else
  (void)dmabuf_offset;
  if (dmabuf_fd >= 0)
    return Status::invalid_usage("this libfabric build has no DMA-BUF registration (FI_MR_DMABUF)");
#endif
  fid_mr* mr = nullptr;
  int rc = -FI_ENOKEY;
  // Where the provider does not choose keys we do, at random (a peer that learnt one key, or
  // none, cannot guess another); a clash with a key in use is retried.
  for (int attempt = 0; attempt < 4 && rc == -FI_ENOKEY; ++attempt) {
    attr.requested_key = 0;
    if (!(dom.mr_mode & FI_MR_PROV_KEY)) {
      MF_CHECK(random_bytes(&attr.requested_key, sizeof attr.requested_key));
      if (dom.key_size > 0 && dom.key_size < sizeof(uint64_t))
        attr.requested_key &= (uint64_t{1} << (8 * dom.key_size)) - 1;
    }
    rc = fi_mr_regattr(dom.domain, &attr, flags, &mr);
  }
  if (rc != 0)
    return Status::system_error(std::string("fi_mr_regattr(") + (type == MemType::kCuda ? "cuda" : "host") +
                                ", " + std::to_string(len) + " bytes) failed: " + fi_strerror(-rc));
  out->reset(mr);
  if (dom.mr_mode & FI_MR_ENDPOINT) {
    rc = fi_mr_bind(mr, &dom.ep->fid, 0);
    if (rc == 0) rc = fi_mr_enable(mr);
    if (rc != 0) return Status::system_error(std::string("fi_mr_bind/enable failed: ") + fi_strerror(-rc));
  }
  return Status::kOk;
}

void MrCache::release(MrEntry* e) {
  if (e == nullptr) return;
  if (--e->refs > 0 && enabled_) return;
  auto it = std::find(entries_.begin(), entries_.end(), e);
  if (it != entries_.end()) entries_.erase(it);
  delete e;
  stats_.live = entries_.size();
}

}  // namespace moefabric::fabric
