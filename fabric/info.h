// Provider and NIC discovery: one fi_info per usable NIC (libfabric domain), in the order NCCL
// will number them.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/params.h"
#include "common/status.h"
#include "fabric/resource.h"

namespace moefabric::fabric {

// What a NIC is, apart from its fi_info (plain, copyable).
struct NicAttrs {
  std::string provider;  // e.g. "tcp;ofi_rxm", "shm", "efa"
  std::string domain;    // e.g. "lo", "rdmap16s27"
  std::string name;      // unique device name shown to NCCL
  std::string pci_path;  // /sys/devices/... of the PCI function, empty when none
  uint64_t guid = 0;
  int speed_mbps = 0;
  bool hmem = false;  // provider registers device memory (FI_HMEM)
  // Device memory is moved by host-issued CUDA copies (shm, tcp), whose completions can precede
  // the bytes landing: receives into GPU memory need a fence (iflush, forceFlush).
  bool hmem_async = false;
  bool rma = false;  // FI_RMA with remote CQ data usable
  // Post each write with immediate as a plain write followed by a zero-byte write carrying the
  // immediate (ordered by FI_ORDER_WAW). See imm_write_needs_split() in info.cpp.
  bool split_imm = false;
  bool tagged = false;
  // Receive completions name the sending endpoint's AV entry (FI_SOURCE): messages on a
  // connection are accepted only from its peer. The tagged path also matches by sender
  // (FI_DIRECTED_RECV) when `directed`.
  bool source = false;
  bool directed = false;
  // Completions of incoming writes carry the writer's AV entry too (shm; tcp;ofi_rxm reports no
  // source for remote writes, libfabric 1.17-2.x, so their immediates cannot be checked there).
  bool write_source = false;
};

struct NicInfo : NicAttrs {
  InfoPtr info;  // owned copy, used to open fabric/domain/endpoint
  // Every attribute, with its own fi_info (fi_dupinfo; null if that failed).
  NicInfo clone() const {
    NicInfo c;
    static_cast<NicAttrs&>(c) = *this;
    c.info.reset(info ? fi_dupinfo(info.get()) : nullptr);
    return c;
  }
};

// Finds the NICs of the provider chosen by MOEFABRIC_PROVIDER / FI_PROVIDER / the default order
// (efa, verbs, tcp; shm only when asked). Fails with a message naming what was tried.
Status nic_discover(const Params& params, std::vector<NicInfo>* out);

// Whether writes with immediate must be split on this provider (see info.cpp).
bool imm_write_needs_split(const fi_info* fi, const std::string& mode);

// On shm: gives the endpoint a region name no other process can hold (see info.cpp). Call on
// the fi_info passed to fi_endpoint.
void set_unique_shm_name(fi_info* fi);
// The pieces of it: this process's PID namespace id (0 unknown); the region name
// "moefabric-<pidns hex>-<pid>-<random>-<n>"; whether a region named so is a dead process's of
// namespace `pidns` (never one of another namespace, of an unknown one, or not ours); and the
// sweep of `dir` (/dev/shm) that unlinks those.
uint64_t pid_namespace_id();
std::string shm_region_name(uint64_t pidns, int pid, uint32_t random, unsigned n);
bool shm_region_stale(const char* name, uint64_t pidns, const std::function<bool(long)>& pid_alive);
void remove_stale_shm_regions(const char* dir);

// The fi_info hints moefabric uses for `provider` (exposed for the perf tool's raw baseline).
InfoPtr nic_hints(const std::string& provider, bool want_hmem, bool want_tagged);

}  // namespace moefabric::fabric
