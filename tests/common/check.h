// The one check of the multi-process tests. Inside a rank's body (a function returning int), a
// condition that does not hold prints "rank R: file:line: check failed: <condition>: <message>"
// and returns 1 from the body; the launcher reports the rank's exit code.
#pragma once

#include <cstdarg>
#include <cstdio>

#include "common/launch.h"
#include "common/status.h"

namespace mftest {

// Rank of this process: set by a test that is not run by launch_fork, else the launcher's.
inline int g_rank = -1;

inline int check_rank() { return g_rank >= 0 ? g_rank : moefabric::launch_rank(); }

__attribute__((format(printf, 4, 5))) inline void check_failed(const char* file, int line, const char* cond,
                                                               const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  fprintf(stderr, "rank %d: %s:%d: check failed: %s: %s\n", check_rank(), file, line, cond, buf);
}

}  // namespace mftest

#define RANK_CHECK(c, ...)                                         \
  do {                                                             \
    if (!(c)) {                                                    \
      ::mftest::check_failed(__FILE__, __LINE__, #c, __VA_ARGS__); \
      return 1;                                                    \
    }                                                              \
  } while (0)

// The same for a call returning a moefabric::Status: the message is the status's.
#define RANK_OK(call)                                                                              \
  do {                                                                                             \
    ::moefabric::Status mftest_status_ = (call);                                                   \
    if (!mftest_status_.ok()) {                                                                    \
      ::mftest::check_failed(__FILE__, __LINE__, #call, "%s", mftest_status_.to_string().c_str()); \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)
