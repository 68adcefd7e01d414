// Owning handles for libfabric objects: unique_ptr with deleters that fi_close and log failures.
#pragma once

#include <memory>
#include <vector>

#include <rdma/fabric.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_eq.h>
#include <rdma/fi_errno.h>

#include "common/status.h"

namespace moefabric::fabric {

void fid_close_logged(struct fid* fid, const char* what);

template <class T>
struct FidDeleter {
  void operator()(T* p) const {
    if (p != nullptr) fid_close_logged(&p->fid, "fid");
  }
};
struct InfoDeleter {
  void operator()(fi_info* p) const {
    if (p != nullptr) fi_freeinfo(p);
  }
};

using FabricPtr = std::unique_ptr<fid_fabric, FidDeleter<fid_fabric>>;
using DomainPtr = std::unique_ptr<fid_domain, FidDeleter<fid_domain>>;
using AvPtr = std::unique_ptr<fid_av, FidDeleter<fid_av>>;
using CqPtr = std::unique_ptr<fid_cq, FidDeleter<fid_cq>>;
using EpPtr = std::unique_ptr<fid_ep, FidDeleter<fid_ep>>;
using MrPtr = std::unique_ptr<fid_mr, FidDeleter<fid_mr>>;
using InfoPtr = std::unique_ptr<fi_info, InfoDeleter>;

// "fi_xxx failed: <fi_strerror> (-N)" helper for messages.
const char* fi_error_text(int rc);

// "<fi_strerror(err)> (provider: <fi_cq_strerror>)" for an error completion, into buf.
const char* cq_error_text(fid_cq* cq, const fi_cq_err_entry& e, char* buf, size_t len);

// "<call>: <fi_strerror(-rc)>" as a system error (cq_drain's failure).
Status cq_failure(const char* call, ssize_t rc);

// Drains `cq` for up to `rounds` batches of buf.size(): successful entries go to on_entries(n)
// (in buf; with `src`, of buf's size, each entry's source address in it: fi_cq_readfrom), error
// entries to on_error(err). OK when the CQ is empty or the rounds are spent, else a system error
// naming the failed call ("fi_cq_read: <fi_strerror>").
template <class OnEntries, class OnError>
Status cq_drain(fid_cq* cq, std::vector<fi_cq_data_entry>& buf, int rounds, OnEntries&& on_entries,
                OnError&& on_error, std::vector<fi_addr_t>* src = nullptr) {
  for (int r = 0; r < rounds; ++r) {
    ssize_t n = src != nullptr ? fi_cq_readfrom(cq, buf.data(), buf.size(), src->data())
                               : fi_cq_read(cq, buf.data(), buf.size());
    if (n == -FI_EAGAIN) return {};
    if (n == -FI_EAVAIL) {
      fi_cq_err_entry err = {};
      ssize_t rc = fi_cq_readerr(cq, &err, 0);
      if (rc == -FI_EAGAIN) continue;
      if (rc < 0) return cq_failure("fi_cq_readerr", rc);
      on_error(err);
      continue;
    }
    if (n < 0) return cq_failure(src != nullptr ? "fi_cq_readfrom" : "fi_cq_read", n);
    on_entries(static_cast<size_t>(n));
    if (n < static_cast<ssize_t>(buf.size())) return {};
  }
  return {};
}

}  // namespace moefabric::fabric
