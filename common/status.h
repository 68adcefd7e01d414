// Internal status codes and the one error-propagation idiom used throughout moefabric.
#pragma once

#include <cstdint>

#include "common/log.h"

namespace moefabric {

// Values >= 0 map 1:1 onto ncclResult_t; kAgain is internal ("try again later") and never
// crosses an API boundary.
enum class [[nodiscard]] Status : int{
    kOk = 0,           kCudaError = 1,   kSystemError = 2, kInternalError = 3, kInvalidArgument = 4,
    kInvalidUsage = 5, kRemoteError = 6, kAgain = -1,
};

constexpr int status_to_nccl(Status s) { return s == Status::kAgain ? 0 : static_cast<int>(s); }
const char* status_name(Status s);

}  // namespace moefabric

// Evaluate `call`; on failure log file:line at trace level and return the status to the caller
// (the NCCLCHECK pattern: one line per frame makes the failing path visible with
// MOEFABRIC_DEBUG=TRACE / NCCL_DEBUG=TRACE).
#define MF_CHECK(call)                                                                                \
  do {                                                                                                \
    ::moefabric::Status mf_check_status_ = (call);                                                    \
    if (mf_check_status_ != ::moefabric::Status::kOk) {                                               \
      if (mf_check_status_ != ::moefabric::Status::kAgain)                                            \
        ::moefabric::log::write(::moefabric::log::kTrace, ::moefabric::log::kNet, __FILE__, __LINE__, \
                                "%s -> %s", #call, ::moefabric::status_name(mf_check_status_));       \
      return mf_check_status_;                                                                        \
    }                                                                                                 \
  } while (0)
