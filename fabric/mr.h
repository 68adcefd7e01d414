// Memory registration and the per-domain registration cache: refcounted, keyed by address range,
// memory type and access. Registrations cover exactly the caller's bytes (never widened to
// pages: no provider we use requires it, and a widened MR would let a peer write whatever shares
// the pages), and only what peers must write gets remote write access (receive buffers); nothing
// gets remote read. Honours the mr_mode the provider returned: application keys when there is no
// FI_MR_PROV_KEY (random 64-bit values from getrandom, so a key cannot be guessed from another),
// MR offsets when there is no FI_MR_VIRT_ADDR, descriptors for FI_MR_LOCAL, endpoint binding for
// FI_MR_ENDPOINT.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "fabric/bounds.h"
#include "fabric/resource.h"

namespace moefabric::fabric {

enum class MemType : uint8_t { kHost = 0, kCuda = 1 };

// What peers may do to a registration: nothing (send buffers, message buffers: local access
// only), or RDMA-write into it (receive buffers). A cached registration with remote write also
// serves a request for local access (the bytes are exposed already).
enum class MrAccess : uint8_t { kLocal = 0, kRemoteWrite = 1 };

inline constexpr int kMrMaxDomains = kMaxRails;

// One buffer registered on every domain of its cache (every rail of a multi-rail device).
// mr/desc/key are domain 0's (the only one for single-domain users); domain d's are
// mr_on[d]/desc_on[d]/key_on[d] (index 0 mirrors mr/desc/key).
struct MrEntry {
  MrPtr mr;
  void* desc = nullptr;
  uint64_t key = 0;
  MrPtr more_mr[kMrMaxDomains - 1];  // domains 1..
  void* desc_on[kMrMaxDomains] = {};
  uint64_t key_on[kMrMaxDomains] = {};
  uintptr_t base = 0;  // first registered byte
  size_t len = 0;      // 0: an empty buffer, registered nowhere (mr null, keys 0)
  MemType type = MemType::kHost;
  MrAccess access = MrAccess::kLocal;
  uint64_t fi_access = 0;  // the FI_* access flags it was registered with
  int refs = 0;
  // Address a peer uses to reach `p` inside this MR.
  uint64_t remote_addr(const void* p) const {
    return virt_addr ? reinterpret_cast<uintptr_t>(p) : reinterpret_cast<uintptr_t>(p) - base;
  }
  bool virt_addr = true;
};

struct MrCacheStats {
  uint64_t registrations = 0;  // fi_mr_reg calls
  uint64_t hits = 0;
  size_t live = 0;  // entries currently registered
};

class MrCache {
 public:
  // mr_mode and key_size (bytes of an application key: domain_attr->mr_key_size) are the
  // domain's as the provider returned them.
  MrCache(fid_domain* domain, fid_ep* ep, uint64_t mr_mode, size_t key_size, bool enabled);
  ~MrCache();
  // Registers every later buffer on this domain too (a further rail; call before the first
  // acquire; at most kMrMaxDomains in all).
  void add_domain(fid_domain* domain, fid_ep* ep, uint64_t mr_mode, size_t key_size);
  int domains() const { return static_cast<int>(doms_.size()); }
  // Registers exactly [addr, addr+len) with `access` (or finds a cached registration covering it
  // with at least that access). cuda_device >= 0 with type kCuda registers device memory through
  // FI_HMEM_CUDA; dmabuf_fd >= 0 uses DMA-BUF.
  Status acquire(void* addr, size_t len, MemType type, MrAccess access, int cuda_device, int dmabuf_fd,
                 uint64_t dmabuf_offset, MrEntry** out);
  // The libfabric access flags a registration with `access` gets.
  static uint64_t fi_access(MrAccess access);
  void release(MrEntry* e);
  const MrCacheStats& stats() const { return stats_; }
  bool needs_desc() const { return (mr_mode_ & FI_MR_LOCAL) != 0; }

 private:
  struct Dom {
    fid_domain* domain;
    fid_ep* ep;
    uint64_t mr_mode;
    size_t key_size;
  };
  Status reg_one(const Dom& d, MemType type, uint64_t access, int cuda_device, int dmabuf_fd,
                 uint64_t dmabuf_offset, void* addr, size_t len, MrPtr* mr);

  std::vector<Dom> doms_;
  uint64_t mr_mode_;
  bool enabled_;
  std::vector<MrEntry*> entries_;
  MrCacheStats stats_;
};

}  // namespace moefabric::fabric
