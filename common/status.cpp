#include "common/status.h"

#include <cstdarg>
#include <cstdio>

namespace moefabric {

Status::Status(Code code, std::string message) : code_(code) {
  if (code != kOk) msg_ = new std::string(std::move(message));
}

Status Status::format(Code code, const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n < static_cast<int>(sizeof buf)) return {code, std::string(buf, n < 0 ? 0 : n)};
  std::string text(static_cast<size_t>(n), '\0');
  va_start(ap, fmt);
  std::vsnprintf(text.data(), text.size() + 1, fmt, ap);
  va_end(ap);
  return {code, std::move(text)};
}

const std::string& Status::empty_string() noexcept {
  // Never destroyed: the libraries may be dlclose'd while a Status is still being read.
  static const std::string* const empty = new std::string();
  return *empty;
}

std::string Status::to_string() const { return msg_ && !msg_->empty() ? *msg_ : status_name(code_); }

Status& Status::prepend(std::string_view context) & {
  if (ok()) return *this;
  if (msg_ == nullptr) msg_ = new std::string(status_name(code_));
  msg_->insert(0, context);
  return *this;
}

const char* status_name(Status::Code c) {
  switch (c) {
    case Status::kOk:
      return "success";
    case Status::kCudaError:
      return "unhandled CUDA error";
    case Status::kSystemError:
      return "system error";
    case Status::kInternalError:
      return "internal error";
    case Status::kInvalidArgument:
      return "invalid argument";
    case Status::kInvalidUsage:
      return "invalid usage";
    case Status::kRemoteError:
      return "remote error";
    case Status::kAgain:
      return "try again";
  }
  return "unknown status";
}

namespace detail {
void trace_failure(const char* file, int line, const char* call, const Status& s) {
  if (s.message().empty())
    log::write(log::kTrace, log::kNet, file, line, "%s -> %s", call, status_name(s));
  else
    log::write(log::kTrace, log::kNet, file, line, "%s -> %s: %s", call, status_name(s), s.message().c_str());
}
}  // namespace detail

}  // namespace moefabric
