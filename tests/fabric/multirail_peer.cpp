// test-multirail-peer: one side of a two-process transfer through the net transport, each side
// started on its own (e.g. in its own network namespace by tests/fabric/check_multirail.sh).
// The receiver listens and publishes its 128-byte handle as a file in --dir; the sender picks
// it up and connects. Phase 1 sends two messages and verifies every byte; phase 2 streams
// --iters messages with --window in flight, spot-checks them (full checks would steal the CPU
// that drives the provider's progress) and reports the receiver-side bandwidth. Any failure
// exits 2 at once (no teardown: a dead rail must not turn into a hang at close).
#include <CLI/CLI.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "plugin/net/net.h"
#include "plugin/nccl/net_topo.h"

namespace {

using namespace moefabric;
using namespace moefabric::fabric;
using Clock = std::chrono::steady_clock;

struct Opts {
  std::string role, dir;
  size_t size = 64u << 20;
  int iters = 20, window = 4, timeout = 120;
};

Clock::time_point g_deadline;
const char* g_role = "?";

[[noreturn]] void die(const char* phase, const std::string& what) {
  fprintf(stderr, "test-multirail-peer %s: %s: %s\n", g_role, phase, what.c_str());
  fflush(stderr);
  // Let the progress thread push out what the failure queued (the error message telling the
  // peer which rail failed) before the process goes, as a real application would while it
  // tears down. No teardown calls: a dead rail must not turn into a hang at close.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  _exit(2);
}

void check_deadline(const char* phase) {
  if (Clock::now() > g_deadline) die(phase, "timed out");
}

uint8_t pattern(int seed, size_t i) {
  return static_cast<uint8_t>((i * 131u + (i >> 12) * 7u + static_cast<size_t>(seed) * 29u) & 0xff);
}

void fill(std::vector<uint8_t>& b, int seed) {
  for (size_t i = 0; i < b.size(); ++i) b[i] = pattern(seed, i);
}

// Full check, or spot checks: 256 bytes around every 128 KiB boundary and at both ends.
long wrong_bytes(const uint8_t* p, size_t n, int seed, bool full) {
  long wrong = 0;
  auto range = [&](size_t a, size_t b) {
    for (size_t i = a; i < b && i < n; ++i) wrong += p[i] != pattern(seed, i);
  };
  if (full) {
    range(0, n);
    return wrong;
  }
  for (size_t off = 0; off < n; off += 128u << 10) range(off > 128 ? off - 128 : 0, off + 128);
  range(n > 256 ? n - 256 : 0, n);
  return wrong;
}

void wait_req(void* req, const char* phase, size_t* got = nullptr) {
  int done = 0;
  size_t sizes[8] = {};
  while (!done) {
    if (net_test(req, &done, sizes) != Status::kOk) die(phase, "request failed (see the warning above)");
    check_deadline(phase);
  }
  if (got) *got = sizes[0];
}

std::string path(const Opts& o, const char* name) { return o.dir + "/" + name; }

int run_recv(const Opts& o, Net* net) {
  uint8_t handle[128] = {};
  void* lc = nullptr;
  if (net_listen(net, 0, handle, &lc) != Status::kOk) die("listen", "failed");
  {
    std::string tmp = path(o, "handle.tmp");
    std::ofstream f(tmp, std::ios::binary);
    f.write(reinterpret_cast<const char*>(handle), sizeof handle);
    f.close();
    if (!f || rename(tmp.c_str(), path(o, "handle").c_str()) != 0)
      die("publish handle", "cannot write " + tmp);
  }
  void* rc = nullptr;
  while (rc == nullptr) {
    if (net_accept(lc, &rc) != Status::kOk) die("accept", "failed");
    check_deadline("accept");
    if (rc == nullptr) std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  const int w = o.window;
  std::vector<std::vector<uint8_t>> bufs(w, std::vector<uint8_t>(o.size));
  std::vector<void*> mh(w);
  for (int i = 0; i < w; ++i)
    if (net_reg_mr(rc, bufs[i].data(), o.size, 1, &mh[i]) != Status::kOk) die("reg_mr", "failed");
  int tag = 0;
  auto post = [&](int slot) {
    void* req = nullptr;
    void* data = bufs[slot].data();
    size_t n = o.size;
    while (req == nullptr) {
      if (net_irecv(rc, 1, &data, &n, &tag, &mh[slot], &req) != Status::kOk) die("irecv", "failed");
      check_deadline("irecv");
    }
    return req;
  };
  // Phase 1: two messages, every byte checked.
  for (int m = 0; m < 2; ++m) {
    size_t got = 0;
    wait_req(post(0), "verify", &got);
    if (got != o.size) die("verify", "size " + std::to_string(got));
    long bad = wrong_bytes(bufs[0].data(), o.size, m, true);
    if (bad) die("verify", std::to_string(bad) + " wrong bytes in message " + std::to_string(m));
  }
  // Phase 2: stream.
  std::vector<void*> reqs(w, nullptr);
  int posted = 0, done = 0;
  long wrong = 0;
  Clock::time_point t0{}, t1{};
  for (; posted < std::min(w, o.iters); ++posted) reqs[posted % w] = post(posted % w);
  while (done < o.iters) {
    int slot = done % w;
    size_t got = 0;
    wait_req(reqs[slot], "stream", &got);
    if (done == 0) t0 = Clock::now();
    t1 = Clock::now();
    if (got != o.size) die("stream", "size " + std::to_string(got));
    wrong += wrong_bytes(bufs[slot].data(), o.size, 2 + done % 2, false);
    ++done;
    if (posted < o.iters) reqs[posted % w] = post(posted % w), ++posted;
  }
  if (wrong) die("stream", std::to_string(wrong) + " wrong bytes");
  double secs = std::chrono::duration<double>(t1 - t0).count();
  double gbs = o.iters > 1 && secs > 0 ? static_cast<double>(o.size) * (o.iters - 1) / secs / 1e9 : 0;
  printf("multirail: receiver: %d x %zu bytes received and checked, %.3f GB/s\n", o.iters, o.size, gbs);
  fflush(stdout);
  std::ofstream(path(o, "done")) << "ok\n";
  for (int i = 0; i < w; ++i) (void)net_dereg_mr(rc, mh[i]);
  (void)net_close_recv(rc);
  (void)net_close_listen(lc);
  return 0;
}

int run_send(const Opts& o, Net* net) {
  uint8_t handle[128] = {};
  for (;;) {
    std::ifstream f(path(o, "handle"), std::ios::binary);
    if (f.read(reinterpret_cast<char*>(handle), sizeof handle)) break;
    check_deadline("wait for the receiver's handle");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  void* sc = nullptr;
  while (sc == nullptr) {
    if (net_connect(net, 0, handle, &sc) != Status::kOk) die("connect", "failed");
    check_deadline("connect");
    if (sc == nullptr) std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  std::vector<std::vector<uint8_t>> bufs(4, std::vector<uint8_t>(o.size));
  std::vector<void*> mh(4);
  for (int i = 0; i < 4; ++i) {
    fill(bufs[i], i);
    if (net_reg_mr(sc, bufs[i].data(), o.size, 1, &mh[i]) != Status::kOk) die("reg_mr", "failed");
  }
  auto send = [&](int b) {
    void* req = nullptr;
    while (req == nullptr) {
      if (net_isend(sc, bufs[b].data(), o.size, 0, mh[b], &req) != Status::kOk) die("isend", "failed");
      check_deadline("isend");
    }
    return req;
  };
  for (int m = 0; m < 2; ++m) wait_req(send(m), "verify");
  std::vector<void*> reqs;
  auto t0 = Clock::now();
  for (int m = 0; m < o.iters; ++m) {
    reqs.push_back(send(2 + m % 2));
    if (static_cast<int>(reqs.size()) >= o.window) {
      wait_req(reqs.front(), "stream");
      reqs.erase(reqs.begin());
    }
  }
  for (void* r : reqs) wait_req(r, "stream");
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  printf("multirail: sender: %d x %zu bytes sent in %.3f s (%.3f GB/s at the sender)\n", o.iters, o.size,
         secs, static_cast<double>(o.size) * o.iters / secs / 1e9);
  fflush(stdout);
  // Stay connected until the receiver has everything (closing under in-flight data is unsafe).
  while (access(path(o, "done").c_str(), F_OK) != 0) {
    check_deadline("wait for the receiver");
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (int i = 0; i < 4; ++i) (void)net_dereg_mr(sc, mh[i]);
  (void)net_close_send(sc);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"One side of a multi-rail transfer (see tests/fabric/check_multirail.sh)"};
  Opts o;
  app.add_option("--role", o.role, "send or recv")->required()->check(CLI::IsMember({"send", "recv"}));
  app.add_option("--dir", o.dir, "rendezvous directory both sides can read and write")->required();
  app.add_option("--size", o.size, "message size, bytes")->check(CLI::Range(size_t{1}, size_t{1} << 31));
  app.add_option("--iters", o.iters, "streamed messages")->check(CLI::Range(1, 1 << 30));
  app.add_option("--window", o.window, "messages in flight")->check(CLI::Range(1, 16));
  app.add_option("--timeout", o.timeout, "seconds before giving up")->check(CLI::PositiveNumber);
  bool topo = false;
  app.add_flag("--print-topo", topo, "print the NCCL topology XML a multi-rail device gets, and exit");
  CLI11_PARSE(app, argc, argv);
  g_role = o.role == "send" ? "sender" : "receiver";
  g_deadline = Clock::now() + std::chrono::seconds(o.timeout);
  Net* net = nullptr;
  if (Status s = Net::acquire(&net); !s.ok()) die("init", s.message());
  NetProperties p;
  if (net->device_count() < 1 || net->properties(0, &p) != Status::kOk) die("init", "no device");
  printf("multirail: %s on device 0 = %s (%d rail(s), %d Mb/s, provider %s)\n", g_role, p.name.c_str(),
         net->device(0)->nrails(), p.speed_mbps, p.provider.c_str());
  fflush(stdout);
  if (topo) {
    printf("%s", fabric::nccl_topo_of(*net).c_str());
    return 0;
  }
  int rc = o.role == "send" ? run_send(o, net) : run_recv(o, net);
  Net::release(net);
  return rc;
}
