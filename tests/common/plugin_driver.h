// Test helpers that drive the built libnccl-net-moefabric.so the way NCCL does: dlopen, the
// ncclNetPlugin_v11 table, non-blocking connect/accept loops with deadlines. Used inside forked
// ranks, so failures print "rank R: file:line: what" and return non-zero instead of throwing.
#pragma once

#include <dlfcn.h>
#include <unistd.h>

#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "common/launch.h"
#include "tests/common/check.h"
#include "plugin/nccl/net_abi.h"

namespace mftest {

namespace abi = moefabric::nccl::abi;
using Clock = std::chrono::steady_clock;

#define T_OK(call) RANK_CHECK((call) == ::mftest::abi::kSuccess, "%s failed", #call)

inline void quiet_logger(int level, unsigned long, const char* file, int line, const char* fmt, ...) {
  if (level > 2 && !getenv("MFTEST_VERBOSE")) return;
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "[nccl-log %d] %s:%d ", level, file, line);
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
}

// The plugin's warnings since the last clear, one per line (tests that check what an error
// names install this logger; it also prints what quiet_logger prints).
inline std::string g_warnings;
inline void capture_logger(int level, unsigned long, const char* file, int line, const char* fmt, ...) {
  if (level > 2 && !getenv("MFTEST_VERBOSE")) return;
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (level == 2) g_warnings += std::string(buf) + "\n";
  fprintf(stderr, "[nccl-log %d] %s:%d %s\n", level, file, line, buf);
}

struct Plugin {
  void* dl = nullptr;
  const abi::net_v11_t* v11 = nullptr;
  void* ctx = nullptr;
  int open(const char* path = MOEFABRIC_PLUGIN_PATH, abi::logger_t logger = quiet_logger) {
    dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    RANK_CHECK(dl != nullptr, "dlopen(%s): %s", path, dlerror());
    v11 = static_cast<const abi::net_v11_t*>(dlsym(dl, "ncclNetPlugin_v11"));
    RANK_CHECK(v11 != nullptr, "ncclNetPlugin_v11 not exported");
    T_OK(v11->init(&ctx, 0x1234, nullptr, logger, nullptr));
    return 0;
  }
  int close() {
    if (ctx) T_OK(v11->finalize(ctx));
    ctx = nullptr;
    if (dl) RANK_CHECK(dlclose(dl) == 0, "dlclose: %s", dlerror());
    dl = nullptr;
    return 0;
  }
};

// Sets up one connection rank `from` -> rank `to` on device 0 (others skip); handles exchanged
// with the launcher's allgather.
struct Link {
  void* listen = nullptr;
  void* send = nullptr;
  void* recv = nullptr;
};

inline int deadline_passed(Clock::time_point start, int seconds) {
  return Clock::now() - start > std::chrono::seconds(seconds);
}

// Full mesh: rank q listens once per peer p (listen[p]); p connects with the handle q made for
// it, so accept(listen[p]) yields exactly p's connection. send[p] / recv[p] talk to rank p.
inline int connect_mesh(Plugin& pl, moefabric::OobChannel& oob, std::vector<void*>* send,
                        std::vector<void*>* recv, std::vector<void*>* listens, int dev = 0) {
  int n = oob.nranks(), me = oob.rank();
  constexpr size_t H = abi::kHandleMaxSize;
  std::vector<char> mine(H * n, 0), all(H * n * n);
  listens->assign(n, nullptr);
  for (int p = 0; p < n; ++p)
    if (p != me) T_OK(pl.v11->listen(pl.ctx, dev, mine.data() + p * H, &(*listens)[p]));
  RANK_OK(oob.allgather(mine.data(), all.data(), mine.size()));
  send->assign(n, nullptr);
  recv->assign(n, nullptr);
  int pending = 2 * (n - 1);
  auto start = Clock::now();
  while (pending > 0) {
    for (int p = 0; p < n; ++p) {
      if (p == me) continue;
      if (!(*send)[p]) {
        // rank p's handle for me: row p, column me
        T_OK(pl.v11->connect(pl.ctx, dev, all.data() + (p * n + me) * H, &(*send)[p], nullptr));
        if ((*send)[p]) --pending;
      }
      if (!(*recv)[p]) {
        T_OK(pl.v11->accept((*listens)[p], &(*recv)[p], nullptr));
        if ((*recv)[p]) --pending;
      }
    }
    RANK_CHECK(!deadline_passed(start, 60), "connect/accept did not finish in 60 s");
  }
  return 0;
}

inline int close_mesh(Plugin& pl, std::vector<void*>& send, std::vector<void*>& recv,
                      std::vector<void*>& listens) {
  for (void* c : send)
    if (c) T_OK(pl.v11->closeSend(c));
  for (void* c : recv)
    if (c) T_OK(pl.v11->closeRecv(c));
  for (void* c : listens)
    if (c) T_OK(pl.v11->closeListen(c));
  return 0;
}

// Waits for a request with a deadline; returns the test() result code in *rc.
inline int wait_req(const abi::net_v11_t* net, void* req, int* sizes, int seconds, int* rc_out = nullptr) {
  int done = 0;
  auto start = Clock::now();
  while (!done) {
    int rc = net->test(req, &done, sizes);
    if (rc_out) *rc_out = rc;
    if (rc != abi::kSuccess) {
      if (rc_out) return 0;
      RANK_CHECK(false, "test() returned %d", rc);
    }
    RANK_CHECK(!deadline_passed(start, seconds), "request not complete after %d s", seconds);
  }
  return 0;
}

inline uint8_t pattern(int rank, size_t i, size_t salt) {
  return static_cast<uint8_t>((i * 131 + rank * 17 + salt * 7 + (i >> 12)) & 0xff);
}

}  // namespace mftest
