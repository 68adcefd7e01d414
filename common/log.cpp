#include "common/log.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <unistd.h>

namespace moefabric::log {
namespace {
// Trivially constructible/destructible globals only (the library may be dlclose'd).
std::atomic<Sink> g_sink{nullptr};
std::atomic<int> g_level{-1};
std::atomic<const char*> g_prefix{nullptr};

int parse_level() {
  const char* v = std::getenv("MOEFABRIC_DEBUG");
  if (v == nullptr || *v == '\0') return kWarn;
  if (!strcasecmp(v, "NONE") || !strcmp(v, "0")) return kNone;
  if (!strcasecmp(v, "WARN") || !strcmp(v, "1")) return kWarn;
  if (!strcasecmp(v, "INFO") || !strcmp(v, "2")) return kInfo;
  if (!strcasecmp(v, "TRACE") || !strcmp(v, "3")) return kTrace;
  return kWarn;
}
}  // namespace

void set_sink(Sink sink) { g_sink.store(sink); }
void set_prefix(const char* prefix) { g_prefix.store(prefix); }

int stderr_level() {
  int l = g_level.load(std::memory_order_relaxed);
  if (l < 0) {
    l = parse_level();
    g_level.store(l, std::memory_order_relaxed);
  }
  return l;
}

void vwrite(int level, unsigned long flags, const char* file, int line, const char* fmt, va_list ap) {
  Sink sink = g_sink.load(std::memory_order_acquire);
  char msg[1024];
  vsnprintf(msg, sizeof msg, fmt, ap);
  if (sink != nullptr) {
    // NCCL's logger takes printf-style arguments; pass the formatted text through "%s" so
    // messages containing '%' stay intact.
    sink(level, flags, file, line, "NET/moefabric %s", msg);
    return;
  }
  if (level == kAbort) level = kWarn;
  if (level > stderr_level() || level == kNone) return;
  const char* tag = level == kWarn ? "WARN" : level == kInfo ? "INFO" : "TRACE";
  const char* prefix = g_prefix.load(std::memory_order_relaxed);
  const char* base = std::strrchr(file, '/');
  base = base ? base + 1 : file;
  if (level == kTrace)
    fprintf(stderr, "moefabric %s%s%d %s %s:%d %s\n", prefix ? prefix : "", prefix ? " pid " : "pid ",
            static_cast<int>(getpid()), tag, base, line, msg);
  else
    fprintf(stderr, "moefabric %s%s%d %s %s\n", prefix ? prefix : "", prefix ? " pid " : "pid ",
            static_cast<int>(getpid()), tag, msg);
}

void write(int level, unsigned long flags, const char* file, int line, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vwrite(level, flags, file, line, fmt, ap);
  va_end(ap);
}

}  // namespace moefabric::log
