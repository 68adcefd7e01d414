// Memory registration and the per-domain registration cache: page-aligned, refcounted, keyed by
// address range and memory type. Honours the mr_mode the provider returned: application keys
// when there is no FI_MR_PROV_KEY, MR offsets when there is no FI_MR_VIRT_ADDR, descriptors for
// FI_MR_LOCAL, endpoint binding for FI_MR_ENDPOINT.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "plugin/common/status.h"
#include "plugin/fabric/resource.h"

namespace moefabric::fabric {

enum class MemType : uint8_t { kHost = 0, kCuda = 1 };

inline constexpr int kMrMaxDomains = 4;  // = wire::kMaxRails

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
  uintptr_t base = 0;      // first registered byte
  size_t len = 0;
  MemType type = MemType::kHost;
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
  size_t live = 0;             // entries currently registered
};

class MrCache {
 public:
  MrCache(fid_domain* domain, fid_ep* ep, uint64_t mr_mode, bool enabled, size_t page_size);
  ~MrCache();
  // Registers every later buffer on this domain too (a further rail; call before the first
  // acquire; at most kMrMaxDomains in all). mr_mode is that domain's.
  void add_domain(fid_domain* domain, fid_ep* ep, uint64_t mr_mode);
  int domains() const { return static_cast<int>(doms_.size()); }
  // Registers [addr, addr+len) (or finds a cached registration covering it). cuda_device >= 0
  // with type kCuda registers device memory through FI_HMEM_CUDA; dmabuf_fd >= 0 uses DMA-BUF.
  Status acquire(void* addr, size_t len, MemType type, int cuda_device, int dmabuf_fd,
                 uint64_t dmabuf_offset, MrEntry** out, std::string* error);
  void release(MrEntry* e);
  const MrCacheStats& stats() const { return stats_; }
  bool needs_desc() const { return (mr_mode_ & FI_MR_LOCAL) != 0; }

 private:
  struct Dom {
    fid_domain* domain;
    fid_ep* ep;
    uint64_t mr_mode;
  };
  Status reg_one(const Dom& d, MemType type, int cuda_device, int dmabuf_fd, uint64_t dmabuf_offset,
                 void* addr, size_t len, uintptr_t start, uintptr_t end, MrPtr* mr,
                 std::string* error);

  std::vector<Dom> doms_;
  uint64_t mr_mode_;
  bool enabled_;
  size_t page_;
  uint64_t next_key_ = 1;
  std::vector<MrEntry*> entries_;
  MrCacheStats stats_;
};

}  // namespace moefabric::fabric
