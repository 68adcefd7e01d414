#include "fabric/resource.h"

#include <cstdio>

#include <rdma/fi_errno.h>

#include "common/log.h"

namespace moefabric::fabric {

void fid_close_logged(struct fid* fid, const char* what) {
  int rc = fi_close(fid);
  if (rc != 0) MF_WARN("fi_close(%s) failed: %s", what, fi_strerror(-rc));
}

const char* fi_error_text(int rc) { return fi_strerror(rc < 0 ? -rc : rc); }

Status cq_failure(const char* call, ssize_t rc) {
  return Status::system_error(std::string(call) + ": " + fi_strerror(static_cast<int>(-rc)));
}

const char* cq_error_text(fid_cq* cq, const fi_cq_err_entry& e, char* buf, size_t len) {
  char prov[256] = "";
  if (e.prov_errno != 0) {
    const char* t = fi_cq_strerror(cq, e.prov_errno, e.err_data, prov, sizeof prov);
    if (t != prov && t != nullptr) snprintf(prov, sizeof prov, "%s", t);
  }
  snprintf(buf, len, "%s%s%s%s", fi_strerror(e.err), prov[0] ? " (provider: " : "", prov, prov[0] ? ")" : "");
  return buf;
}

}  // namespace moefabric::fabric
