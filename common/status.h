// Status: the one error type of moefabric, a code and the message that explains it, and the one
// error-propagation idiom used throughout (MF_CHECK).
//
// A function that can fail returns a Status; a value it produces goes through an out-parameter
// (or a small struct). An OK Status is just its code: constructing, copying, returning and
// testing one allocates nothing, so the plugin's hot paths (isend/irecv/test) pay what an enum
// costs. Only a failure that carries a message puts it on the heap.
//
//   if (rc != 0) return Status::system_error("fi_domain: " + std::string(fi_strerror(-rc)));
//   MF_CHECK(rail.open(...));                        // pass a failure up, unchanged
//   if (Status s = f(); !s.ok()) return s.prepend("rail 0: ");   // or add context first
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "common/log.h"

namespace moefabric {

class [[nodiscard]] Status {
 public:
  // Values >= 0 map 1:1 onto ncclResult_t; kAgain is internal ("try again later", never with a
  // message) and never crosses an API boundary.
  enum Code : int {
    kOk = 0,
    kCudaError = 1,
    kSystemError = 2,
    kInternalError = 3,
    kInvalidArgument = 4,
    kInvalidUsage = 5,
    kRemoteError = 6,
    kAgain = -1,
  };

  constexpr Status() noexcept = default;
  // A bare code (`return Status::kAgain;`): no message, no allocation.
  constexpr Status(Code code) noexcept : code_(code) {}  // NOLINT(google-explicit-constructor)
  // A failure and what explains it (ignored for kOk, which never carries a message).
  Status(Code code, std::string message);

  Status(const Status& o) : code_(o.code_), msg_(o.msg_ ? new std::string(*o.msg_) : nullptr) {}
  Status(Status&& o) noexcept : code_(o.code_), msg_(std::exchange(o.msg_, nullptr)) {}
  Status& operator=(const Status& o) {
    if (this != &o) *this = Status(o);
    return *this;
  }
  Status& operator=(Status&& o) noexcept {
    std::swap(code_, o.code_);
    std::swap(msg_, o.msg_);
    return *this;
  }
  ~Status() {
    if (msg_ != nullptr) [[unlikely]]
      delete msg_;
  }

  // Factories, one per failure code.
  static Status cuda_error(std::string message) { return {kCudaError, std::move(message)}; }
  static Status system_error(std::string message) { return {kSystemError, std::move(message)}; }
  static Status internal_error(std::string message) { return {kInternalError, std::move(message)}; }
  static Status invalid_argument(std::string message) { return {kInvalidArgument, std::move(message)}; }
  static Status invalid_usage(std::string message) { return {kInvalidUsage, std::move(message)}; }
  static Status remote_error(std::string message) { return {kRemoteError, std::move(message)}; }
  // printf-style message.
  static Status format(Code code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

  bool ok() const noexcept { return code_ == kOk; }
  Code code() const noexcept { return code_; }
  // What went wrong, as a user should read it; empty when OK or when the code came bare.
  const std::string& message() const noexcept { return msg_ ? *msg_ : empty_string(); }
  // The message, or the code's name when there is none (for logs).
  std::string to_string() const;

  // Context for a failure passed up: "init: " + message (a bare code gets its name as the
  // message first). No effect on an OK status. `return f().prepend("init: ");` chains.
  Status& prepend(std::string_view context) &;
  Status&& prepend(std::string_view context) && { return std::move(prepend(context)); }

  // Compares the code only (`s == Status::kAgain`).
  friend bool operator==(const Status& s, Code code) noexcept { return s.code_ == code; }

 private:
  static const std::string& empty_string() noexcept;

  Code code_ = kOk;
  std::string* msg_ = nullptr;  // owned; null when OK or bare
};

static_assert(sizeof(Status) <= 16);

// The code as ncclResult_t (kAgain, never a failure, as success).
constexpr int status_to_nccl(Status::Code c) { return c == Status::kAgain ? 0 : static_cast<int>(c); }
inline int status_to_nccl(const Status& s) { return status_to_nccl(s.code()); }
// "invalid argument", "system error", ... (NCCL's words for its codes).
const char* status_name(Status::Code c);
inline const char* status_name(const Status& s) { return status_name(s.code()); }

namespace detail {
// MF_CHECK's trace line for a failure it passes up (out of line: the macro stays small).
void trace_failure(const char* file, int line, const char* call, const Status& s);
}  // namespace detail

}  // namespace moefabric

// Evaluate `call` (an expression yielding a Status); on failure log file:line at trace level and
// return the status, message and all, to the caller (the NCCLCHECK pattern: one line per frame
// makes the failing path visible with MOEFABRIC_DEBUG=TRACE / NCCL_DEBUG=TRACE).
#define MF_CHECK(call)                                                                   \
  do {                                                                                   \
    ::moefabric::Status mf_check_status_ = (call);                                       \
    if (!mf_check_status_.ok()) [[unlikely]] {                                           \
      if (mf_check_status_.code() != ::moefabric::Status::kAgain)                        \
        ::moefabric::detail::trace_failure(__FILE__, __LINE__, #call, mf_check_status_); \
      return mf_check_status_;                                                           \
    }                                                                                    \
  } while (0)
