#include "common/random.h"

#include <sys/random.h>

#include <cerrno>
#include <cstring>

#include "common/log.h"

namespace moefabric {

Status random_bytes(void* buf, size_t len) {
  auto* p = static_cast<uint8_t*>(buf);
  while (len > 0) {
    ssize_t n = getrandom(p, len, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      MF_WARN("getrandom(%zu bytes) failed: %s", len, strerror(errno));
      return Status::kSystemError;
    }
    p += n;
    len -= static_cast<size_t>(n);
  }
  return Status::kOk;
}

Status random_nonzero_u64(uint64_t* out) {
  do {
    MF_CHECK(random_bytes(out, sizeof *out));
  } while (*out == 0);
  return Status::kOk;
}

}  // namespace moefabric
