// Owning handles for libfabric objects: unique_ptr with deleters that fi_close and log failures.
#pragma once

#include <memory>

#include <rdma/fabric.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_eq.h>

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

}  // namespace moefabric::fabric
