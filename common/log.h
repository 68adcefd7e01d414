// One logger for the whole product. Inside NCCL the plugin logs through NCCL's logger callback
// (so NCCL_DEBUG / NCCL_DEBUG_SUBSYS filter it); elsewhere messages go to stderr, filtered by
// MOEFABRIC_DEBUG (NONE, WARN, INFO, TRACE; default WARN).
#pragma once

#include <cstdarg>

namespace moefabric::log {

enum Level : int { kNone = 0, kVersion = 1, kWarn = 2, kInfo = 3, kAbort = 4, kTrace = 5 };
// NCCL's subsystem flags (the ones we use).
enum Flags : unsigned long { kInit = 1, kNet = 16, kGraph = 32, kEnv = 128, kAlloc = 256, kProxy = 1024 };

using Sink = void (*)(int level, unsigned long flags, const char* file, int line, const char* fmt, ...);

// Route messages to NCCL's logger (nullptr: back to stderr). Thread-safe.
void set_sink(Sink sink);
// Level used for the stderr sink; parsed from MOEFABRIC_DEBUG on first use.
int stderr_level();
// Short prefix printed before messages on the stderr sink (e.g. "rank 3"). Not owned; must be a
// string literal or outlive all logging.
void set_prefix(const char* prefix);

void write(int level, unsigned long flags, const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 5, 6)));
void vwrite(int level, unsigned long flags, const char* file, int line, const char* fmt, va_list ap);

}  // namespace moefabric::log

#define MF_WARN(...) \
  ::moefabric::log::write(::moefabric::log::kWarn, ::moefabric::log::kNet, __FILE__, __LINE__, __VA_ARGS__)
#define MF_INFO(flags, ...) \
  ::moefabric::log::write(::moefabric::log::kInfo, (flags), __FILE__, __LINE__, __VA_ARGS__)
#define MF_TRACE(flags, ...) \
  ::moefabric::log::write(::moefabric::log::kTrace, (flags), __FILE__, __LINE__, __VA_ARGS__)
