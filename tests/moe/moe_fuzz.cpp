// Differential fuzzer for ncclMoe (tests/common/moe_fuzz.h draws the cases).
//
//   test-moe-fuzz      the host backend against the reference (tests/common/moe_reference.cpp)
//   test-moe-fuzz-gpu  the same, and the CUDA backend against the host backend byte for byte
//                      (built with the CUDA backend; --modes nvlink,fabric,node1)
//
// Every rank is a forked process; all ranks draw the same case from its seed. Each output buffer
// is pre-filled with a guard pattern and compared whole: recvX rows and the alignment padding
// between segments (left untouched), everything past the last row, recvScales, recvExpertCounts
// and past it, y and past row T. A failure prints the case (seed and every field) and the
// command that replays it; all ranks stop at the same case.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "include/moefabric/nccl_moe.h"
#include "common/launch.h"
#include "tests/common/moe_fuzz.h"
#include "tests/common/moe_reference.h"

#if MFTEST_CUDA
#include <cuda_runtime.h>
#endif

using namespace moetest;
using moefabric::OobChannel;

namespace {

constexpr uint8_t kGuardX = 0xa5, kGuardS = 0xff, kGuardC = 0xf7, kGuardY = 0xee;
constexpr size_t kTail = 256;  // guard bytes behind every output

// Output images of one backend's run (host memory; the CUDA run's are downloaded).
struct Out {
  std::vector<uint8_t> recv_x, recv_scales, counts, y;
};

struct Sizes {
  size_t rows, xb, sb, cb, yb, eyb;
  Sizes(const Shape& s, size_t cap, int me)
      : rows(cap),
        xb(cap * s.x_bytes() + kTail),
        sb(cap * s.nscale() * 4 + kTail),
        cb(static_cast<size_t>(s.local(me)) * 4 + kTail),
        yb(static_cast<size_t>(s.max_tokens) * s.hidden * 2 + kTail),
        eyb(cap * s.hidden * 2 + kTail) {}
  Out guarded() const {
    Out o;
    o.recv_x.assign(xb, kGuardX);
    o.recv_scales.assign(sb, kGuardS);
    o.counts.assign(cb, kGuardC);
    o.y.assign(yb, kGuardY);
    return o;
  }
};

moefabric::Status comm_init(OobChannel& oob, const Shape& s, ncclMoeBackend_t backend, int timeout_ms,
                            ncclMoeComm_t* moe) {
  ncclMoeConfig_t c = s.config();
  c.backend = backend;
  c.timeoutMs = timeout_ms;
  *moe = nullptr;
  const ncclResult_t r = ncclMoeCommInitAllGather(moe, oob.nranks(), oob.rank(), oob_allgather, &oob, &c);
  if (r != ncclSuccess)
    return moefabric::Status(static_cast<moefabric::Status::Code>(r),
                             std::string(backend == ncclMoeBackendHost ? "host" : "CUDA") +
                                 " init: " + ncclMoeGetLastError(nullptr));
  return {};
}

// Host backend: dispatch, the expert rows of the reference, combine.
std::string run_host(const FuzzCase& c, ncclMoeComm_t moe, const RankInput& in,
                     const std::vector<uint16_t>& ey, Out* o) {
  const Shape& s = c.shape;
  const int32_t T = in.T;
  const float* sc = s.fp8 ? in.scales.data() : nullptr;
  float* rs = s.fp8 ? reinterpret_cast<float*>(o->recv_scales.data()) : nullptr;
  auto* rc = reinterpret_cast<int32_t*>(o->counts.data());
  ncclResult_t r;
  if (c.split) {
    r = ncclMoeDispatchSend(in.x.data(), sc, in.idx.data(), in.w.data(), &T, o->recv_x.data(), rs, rc, moe,
                            nullptr);
    if (r == ncclSuccess) r = ncclMoeDispatchRecv(moe, nullptr);
  } else {
    r = ncclMoeDispatch(in.x.data(), sc, in.idx.data(), in.w.data(), &T, o->recv_x.data(), rs, rc, moe,
                        nullptr);
  }
  if (r != ncclSuccess) return std::string("host dispatch: ") + ncclMoeGetLastError(moe);
  if (c.split) {
    r = ncclMoeCombineSend(ey.data(), moe, nullptr);
    if (r == ncclSuccess) r = ncclMoeCombineRecv(o->y.data(), moe, nullptr);
  } else {
    r = ncclMoeCombine(ey.data(), o->y.data(), moe, nullptr);
  }
  if (r != ncclSuccess) return std::string("host combine: ") + ncclMoeGetLastError(moe);
  return "";
}

[[maybe_unused]] std::string first_diff(const char* what, const std::vector<uint8_t>& got,
                                        const std::vector<uint8_t>& want, size_t row_bytes,
                                        const char* got_name, const char* want_name) {
  for (size_t i = 0; i < got.size() && i < want.size(); ++i)
    if (got[i] != want[i]) {
      char b[240];
      snprintf(b, sizeof b, "%s differs at byte %zu (row %zu, byte %zu of it): %s 0x%02x, %s 0x%02x", what, i,
               row_bytes ? i / row_bytes : 0, row_bytes ? i % row_bytes : i, got_name, got[i], want_name,
               want[i]);
      return b;
    }
  return "";
}

// The host run against the reference: rows, counts, combine, and every byte the contract says
// stays untouched (alignment padding, past the last row, past the counts, past y[T]).
std::string check_reference(const FuzzCase& c, const std::vector<RankInput>& all, int me,
                            const ExpectedLayout& ex, const Sizes& z, const Out& o) {
  const Shape& s = c.shape;
  std::string e =
      check_dispatch(s, all, me, ex, o.recv_x.data(), reinterpret_cast<const float*>(o.recv_scales.data()),
                     reinterpret_cast<const int32_t*>(o.counts.data()));
  if (!e.empty()) return "dispatch vs reference: " + e;
  if (ex.rows.size() > z.rows) return "the reference layout needs more rows than the capacity";
  for (size_t r = 0; r < z.rows; ++r) {
    const bool written = r < ex.rows.size() && ex.rows[r].src >= 0;
    if (written) continue;
    for (size_t b = 0; b < s.x_bytes(); ++b)
      if (o.recv_x[r * s.x_bytes() + b] != kGuardX)
        return "recvX row " + std::to_string(r) +
               (r < ex.rows.size() ? " (alignment padding)" : " (unused)") + " was written";
    for (size_t b = 0; b < s.nscale() * 4; ++b)
      if (o.recv_scales[r * s.nscale() * 4 + b] != kGuardS)
        return "recvScales row " + std::to_string(r) + " (not a token's row) was written";
  }
  for (size_t i = z.rows * s.x_bytes(); i < o.recv_x.size(); ++i)
    if (o.recv_x[i] != kGuardX) return "dispatch wrote past recvX's capacity";
  for (size_t i = z.rows * s.nscale() * 4; i < o.recv_scales.size(); ++i)
    if (o.recv_scales[i] != kGuardS) return "dispatch wrote past recvScales' capacity";
  for (size_t i = static_cast<size_t>(s.local(me)) * 4; i < o.counts.size(); ++i)
    if (o.counts[i] != kGuardC) return "dispatch wrote past recvExpertCounts";
  e = check_combine(s, all[me], me, reinterpret_cast<const uint16_t*>(o.y.data()));
  if (!e.empty()) return "combine vs reference: " + e;
  for (size_t i = static_cast<size_t>(all[me].T) * s.hidden * 2; i < o.y.size(); ++i)
    if (o.y[i] != kGuardY) return "combine wrote past y[T]";
  return "";
}

#if MFTEST_CUDA
struct Dev {
  void* p = nullptr;
  explicit Dev(size_t bytes) {
    if (cudaMalloc(&p, bytes ? bytes : 16) != cudaSuccess) p = nullptr;
  }
  ~Dev() {
    if (p) cudaFree(p);
  }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

std::string cuda_err(const char* what) {
  return std::string(what) + ": " + cudaGetErrorString(cudaGetLastError());
}

// The CUDA backend on the same inputs, outputs guarded alike, downloaded into *o.
std::string run_cuda(const FuzzCase& c, ncclMoeComm_t moe, const RankInput& in,
                     const std::vector<uint16_t>& ey, const Sizes& z, bool fence, Out* o) {
  const Shape& s = c.shape;
  const size_t T = static_cast<size_t>(in.T);
  Dev x(s.x_bytes() * T), sc(s.nscale() * 4 * T), idx(T * s.topk * 4), w(T * s.topk * 4), nt(4), rx(z.xb),
      rs(z.sb), rc(z.cb), dey(z.eyb), y(z.yb);
  if (!x.p || !sc.p || !idx.p || !w.p || !nt.p || !rx.p || !rs.p || !rc.p || !dey.p || !y.p)
    return cuda_err("cudaMalloc");
  *o = z.guarded();
  bool ok = cudaMemcpy(nt.p, &in.T, 4, cudaMemcpyHostToDevice) == cudaSuccess;
  if (T > 0) {
    ok = ok && cudaMemcpy(x.p, in.x.data(), in.x.size(), cudaMemcpyHostToDevice) == cudaSuccess;
    if (s.fp8)
      ok = ok &&
           cudaMemcpy(sc.p, in.scales.data(), in.scales.size() * 4, cudaMemcpyHostToDevice) == cudaSuccess;
    ok = ok && cudaMemcpy(idx.p, in.idx.data(), in.idx.size() * 4, cudaMemcpyHostToDevice) == cudaSuccess;
    ok = ok && cudaMemcpy(w.p, in.w.data(), in.w.size() * 4, cudaMemcpyHostToDevice) == cudaSuccess;
  }
  ok = ok && cudaMemcpy(rx.p, o->recv_x.data(), z.xb, cudaMemcpyHostToDevice) == cudaSuccess;
  ok = ok && cudaMemcpy(rs.p, o->recv_scales.data(), z.sb, cudaMemcpyHostToDevice) == cudaSuccess;
  ok = ok && cudaMemcpy(rc.p, o->counts.data(), z.cb, cudaMemcpyHostToDevice) == cudaSuccess;
  ok = ok && cudaMemcpy(y.p, o->y.data(), z.yb, cudaMemcpyHostToDevice) == cudaSuccess;
  if (!c.sync_between)
    ok = ok && cudaMemcpy(dey.p, ey.data(), ey.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess;
  // A cudaMemcpy from pageable memory may return before its DMA has landed, and a non-blocking
  // stream does not wait for the legacy stream: fence the uploads before any kernel reads them.
  if (fence) ok = ok && cudaDeviceSynchronize() == cudaSuccess;
  if (!ok) return cuda_err("upload");
  cudaStream_t st = nullptr;  // c.stream 2: the legacy NULL stream
  if (c.stream < 2 && cudaStreamCreateWithFlags(
                          &st, c.stream == 0 ? cudaStreamNonBlocking : cudaStreamDefault) != cudaSuccess)
    return cuda_err("stream");
  // The expert rows go up after the dispatch when the caller syncs in between (as one computing
  // them from recvX would), else before it.
  if (c.sync_between) {
    std::vector<uint16_t> zero(ey.size(), 0);
    if (cudaMemcpy(dey.p, zero.data(), zero.size() * 2, cudaMemcpyHostToDevice) != cudaSuccess)
      return cuda_err("upload");
  }
  const float* scp = s.fp8 ? sc.as<float>() : nullptr;
  float* rsp = s.fp8 ? rs.as<float>() : nullptr;
  ncclResult_t r;
  if (c.split) {
    r = ncclMoeDispatchSend(x.p, scp, idx.as<int32_t>(), w.as<float>(), nt.as<int32_t>(), rx.p, rsp,
                            rc.as<int32_t>(), moe, st);
    if (r == ncclSuccess) r = ncclMoeDispatchRecv(moe, st);
  } else {
    r = ncclMoeDispatch(x.p, scp, idx.as<int32_t>(), w.as<float>(), nt.as<int32_t>(), rx.p, rsp,
                        rc.as<int32_t>(), moe, st);
  }
  std::string err;
  if (r != ncclSuccess) err = std::string("CUDA dispatch: ") + ncclMoeGetLastError(moe);
  if (err.empty() && c.sync_between) {
    std::vector<uint8_t> peek(z.xb);
    if (cudaStreamSynchronize(st) != cudaSuccess ||
        cudaMemcpy(peek.data(), rx.p, z.xb, cudaMemcpyDeviceToHost) != cudaSuccess ||
        cudaMemcpy(dey.p, ey.data(), ey.size() * 2, cudaMemcpyHostToDevice) != cudaSuccess ||
        (fence && cudaDeviceSynchronize() != cudaSuccess))
      err = cuda_err("sync between dispatch and combine");
  }
  if (err.empty()) {
    r = c.split ? ncclMoeCombineSend(dey.p, moe, st) : ncclMoeCombine(dey.p, y.p, moe, st);
    if (r == ncclSuccess && c.split) r = ncclMoeCombineRecv(y.p, moe, st);
    if (r != ncclSuccess) err = std::string("CUDA combine: ") + ncclMoeGetLastError(moe);
  }
  if (cudaStreamSynchronize(st) != cudaSuccess && err.empty()) err = cuda_err("cudaStreamSynchronize");
  if (st != nullptr) cudaStreamDestroy(st);
  ncclResult_t ae = ncclSuccess;
  ncclMoeCommGetAsyncError(moe, &ae);
  if (ae != ncclSuccess && err.empty()) err = std::string("CUDA async error: ") + ncclMoeGetLastError(moe);
  if (!err.empty()) return err;
  ok = cudaMemcpy(o->recv_x.data(), rx.p, z.xb, cudaMemcpyDeviceToHost) == cudaSuccess &&
       cudaMemcpy(o->recv_scales.data(), rs.p, z.sb, cudaMemcpyDeviceToHost) == cudaSuccess &&
       cudaMemcpy(o->counts.data(), rc.p, z.cb, cudaMemcpyDeviceToHost) == cudaSuccess &&
       cudaMemcpy(o->y.data(), y.p, z.yb, cudaMemcpyDeviceToHost) == cudaSuccess;
  return ok ? "" : cuda_err("download");
}
#endif

struct Options {
  bool cuda = false;
  int timeout_ms = 20000;
  bool upload_fence = true;  // --no-upload-fence: show what a caller that skips it sees
};

// One case on this rank: "" or what failed. The comms live for all of the case's ops.
std::string run_case(OobChannel& oob, const FuzzCase& c, const Options& opt) {
  const int me = oob.rank();
  const Shape& s = c.shape;
  ncclMoeComm_t host = nullptr;
  if (moefabric::Status st = comm_init(oob, s, ncclMoeBackendHost, opt.timeout_ms, &host); !st.ok())
    return st.message();
  ncclMoeComm_t dev = nullptr;
#if MFTEST_CUDA
  if (opt.cuda) {
    if (moefabric::Status st = comm_init(oob, s, ncclMoeBackendCuda, opt.timeout_ms, &dev); !st.ok()) {
      ncclMoeCommAbort(host);
      return st.message();
    }
  }
#endif
  auto fail = [&](const std::string& e) {
    ncclMoeCommAbort(host);
    if (dev) ncclMoeCommAbort(dev);
    return e;
  };
  size_t cap = 0;
  ncclMoeGetRecvCapacity(host, &cap);
  const Sizes z(s, cap, me);
  // All ranks leave the case after the same op: a rank that failed alone must not leave the
  // others waiting in the next op's allgathers.
  auto agree = [&](const std::string& e) -> std::string {
    int32_t mine = e.empty() ? 0 : 1;
    std::vector<int32_t> all(oob.nranks());
    if (!oob.allgather(&mine, all.data(), sizeof mine).ok()) return e.empty() ? "allgather failed" : e;
    for (int r = 0; r < oob.nranks(); ++r)
      if (all[r] && e.empty()) return "(rank " + std::to_string(r) + " failed)";
    return e;
  };
  for (int op = 0; op < c.ops; ++op) {
    const std::string at = c.ops > 1 ? "op " + std::to_string(op) + ": " : "";
    const RankInput in = fuzz_input(c, me, op);
    std::vector<RankInput> all;
    if (!gather_inputs(&oob, s, in, &all)) return fail("gathering the inputs failed");
    const ExpectedLayout ex = expected_layout(s, all, me);
    std::vector<uint16_t> ey(z.eyb / 2, 0);
    fill_expert_y(s, all, me, ex, ey.data());
    Out ho = z.guarded();
    std::string err = run_host(c, host, in, ey, &ho);
    if (err.empty()) err = check_reference(c, all, me, ex, z, ho);
    if (err.empty()) {  // bytes and writes per peer, as the protocol counts them
      std::vector<ncclMoePeerStats_t> ps(oob.nranks());
      if (ncclMoeGetPeerStats(host, ps.data(), oob.nranks()) != ncclSuccess)
        err = std::string("peer stats: ") + ncclMoeGetLastError(host);
      else
        err = check_peer_stats(s, all, me, ps.data());
    }
    err = agree(err.empty() ? err : at + err);
    if (!err.empty()) return fail(err);
#if MFTEST_CUDA
    if (dev) {
      size_t cap_d = 0;
      ncclMoeGetRecvCapacity(dev, &cap_d);
      if (cap_d != cap)
        return fail("capacities differ: host " + std::to_string(cap) + ", CUDA " + std::to_string(cap_d));
      Out dout;
      err = run_cuda(c, dev, in, ey, z, opt.upload_fence, &dout);
      if (err.empty()) err = first_diff("recvExpertCounts", dout.counts, ho.counts, 4, "CUDA", "host");
      if (err.empty()) err = first_diff("recvX", dout.recv_x, ho.recv_x, s.x_bytes(), "CUDA", "host");
      if (err.empty() && s.fp8)
        err = first_diff("recvScales", dout.recv_scales, ho.recv_scales, s.nscale() * 4, "CUDA", "host");
      if (err.empty()) err = first_diff("y", dout.y, ho.y, static_cast<size_t>(s.hidden) * 2, "CUDA", "host");
      // Every peer through the protocol (forced fabric, nodes of one rank): the CUDA backend's
      // per-peer accounting equals the protocol's formula, as the host backend's does.
      const char* ff = getenv("MOEFABRIC_FORCE_FABRIC");
      const char* ns = getenv("MOEFABRIC_NODE_SIZE");
      if (err.empty() && ((ff && std::string(ff) == "1") || (ns && std::string(ns) == "1"))) {
        std::vector<ncclMoePeerStats_t> ps(oob.nranks());
        if (ncclMoeGetPeerStats(dev, ps.data(), oob.nranks()) != ncclSuccess)
          err = std::string("CUDA peer stats: ") + ncclMoeGetLastError(dev);
        else
          err = check_peer_stats(s, all, me, ps.data());
        if (!err.empty()) err = "CUDA " + err;
      }
      err = agree(err.empty() ? err : at + err);
      if (!err.empty()) return fail(err);
    }
#endif
  }
  if (ncclMoeCommDestroy(host) != ncclSuccess) {
    std::string why = std::string("host destroy: ") + ncclMoeGetLastError(host);
    if (dev) ncclMoeCommAbort(dev);
    return why;
  }
  if (dev && ncclMoeCommDestroy(dev) != ncclSuccess)
    return std::string("CUDA destroy: ") + ncclMoeGetLastError(dev);
  return "";
}

struct Verdict {
  int32_t failed;
  char why[500];
};

// Runs `cases` on every rank; all ranks agree after each case, so they stop together. Rank 0
// prints the failure of every rank that failed, with the case and the replay command.
int run_cases(OobChannel& oob, const std::vector<FuzzCase>& cases, const Options& opt,
              const std::string& replay) {
  const int R = oob.nranks(), me = oob.rank();
#if MFTEST_CUDA
  if (opt.cuda) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0 || cudaSetDevice(me % n) != cudaSuccess) return 3;
  }
#endif
  for (const FuzzCase& c : cases) {
    std::string err = run_case(oob, c, opt);
    Verdict mine{};
    mine.failed = err.empty() ? 0 : 1;
    snprintf(mine.why, sizeof mine.why, "%s", err.c_str());
    std::vector<Verdict> all(R);
    if (!oob.allgather(&mine, all.data(), sizeof mine).ok()) return 4;
    bool any = false;
    for (const Verdict& v : all) any |= v.failed != 0;
    if (any) {
      if (me == 0) {
        printf("FAIL %s\n", c.describe().c_str());
        for (int r = 0; r < R; ++r)
          if (all[r].failed) printf("  rank %d: %s\n", r, all[r].why);
        printf("  replay: %s --case 0x%016llx --ranks %d\n", replay.c_str(),
               static_cast<unsigned long long>(c.seed), R);
      }
      return 1;
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IONBF, 0);
  CLI::App app {
    "Differential fuzzer for ncclMoe: random configurations, token counts and routings "
#if MFTEST_CUDA
    "through the host backend (against the reference) and the CUDA backend (against the "
    "host backend, byte for byte)"
#else
    "through the host backend, checked against the independent reference"
#endif
  };
  int cases = 200;
  uint64_t seed = 0;
  std::string ranks_s = "1,2,3";
  std::string modes_s = "nvlink,fabric,node1";
  std::string case_s;
  int timeout_ms = 20000;
  int budget_s = 0;
  bool no_regressions = false;
  bool no_upload_fence = false;
  app.add_option("-n,--cases", cases, "random cases per rank count (and per mode)")->capture_default_str();
  app.add_option("-s,--seed", seed, "base seed of the random cases (printed; 0 = from the clock)")
      ->capture_default_str();
  app.add_option("-r,--ranks", ranks_s, "rank counts, comma-separated (ranks share the GPUs round robin)")
      ->capture_default_str();
  app.add_option("--case", case_s, "replay one case by its printed seed (hex or decimal)");
  app.add_option("--timeout-ms", timeout_ms, "comm timeoutMs (a hang is reported after it)")
      ->capture_default_str();
  app.add_option("--budget", budget_s, "stop drawing new cases after this many seconds (0 = no limit)")
      ->capture_default_str();
  app.add_flag("--no-regressions", no_regressions, "skip the fixed regression cases");
#if MFTEST_CUDA
  app.add_flag("--no-upload-fence", no_upload_fence,
               "skip the harness's cudaDeviceSynchronize after its pageable uploads (shows the race "
               "a caller who breaks the stream order of docs/moe-api.md sees: expect failures)");
  app.add_option("-m,--modes", modes_s,
                 "CUDA path modes: nvlink (CUDA IPC), fabric (MOEFABRIC_FORCE_FABRIC=1), nodeN "
                 "(MOEFABRIC_NODE_SIZE=N: nodes of N ranks, NVLink inside, the proxy between; rank counts "
                 "that are not a multiple of N are skipped)")
      ->capture_default_str();
#endif
  CLI11_PARSE(app, argc, argv);
  if (seed == 0 && case_s.empty())
    seed = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  std::vector<int> ranks;
  for (size_t p = 0; p <= ranks_s.size();) {
    size_t q = ranks_s.find(',', p);
    if (q == std::string::npos) q = ranks_s.size();
    const int r = atoi(ranks_s.substr(p, q - p).c_str());
    if (r < 1 || r > 256) {
      fprintf(stderr, "--ranks: %s is not a rank count in 1..256\n", ranks_s.substr(p, q - p).c_str());
      return 2;
    }
    ranks.push_back(r);
    p = q + 1;
  }
  Options opt;
  opt.timeout_ms = timeout_ms;
  opt.upload_fence = !no_upload_fence;
  std::vector<std::string> modes = {"host"};
#if MFTEST_CUDA
  opt.cuda = true;
  {
    auto probe = moefabric::launch_fork(
        1,
        [](OobChannel&) {
          int n = 0;
          return cudaGetDeviceCount(&n) == cudaSuccess && n > 0 ? 0 : 77;
        },
        60);
    if (!probe.ok) {
      printf("SKIP: no GPU visible (cudaGetDeviceCount found none): the CUDA fuzz runs on the GPU machine\n");
      return 77;
    }
  }
  modes.clear();
  for (size_t p = 0; p <= modes_s.size();) {
    size_t q = modes_s.find(',', p);
    if (q == std::string::npos) q = modes_s.size();
    const std::string m = modes_s.substr(p, q - p);
    const bool node = m.rfind("node", 0) == 0 && m.size() > 4 && atoi(m.c_str() + 4) >= 1;
    if (m != "nvlink" && m != "fabric" && !node) {
      fprintf(stderr, "--modes: unknown mode '%s' (nvlink, fabric, nodeN)\n", m.c_str());
      return 2;
    }
    modes.push_back(m);
    p = q + 1;
  }
#endif
  uint64_t one = 0;
  if (!case_s.empty()) one = strtoull(case_s.c_str(), nullptr, 0);
  printf("# moefabric MoE fuzz: %s, ranks %s, %s\n",
         opt.cuda ? "CUDA backend vs host backend vs reference" : "host backend vs reference",
         ranks_s.c_str(),
         case_s.empty() ? ("base seed " + std::to_string(seed) + ", " + std::to_string(cases) +
                           " random cases per rank count and mode")
                              .c_str()
                        : ("one case " + case_s).c_str());
  const auto start = std::chrono::steady_clock::now();
  int total = 0, failed = 0;
  FuzzLimits lim;
  lim.per_rank_combine = !opt.cuda;  // the CUDA backend combines per pair only
  for (const std::string& mode : modes) {
    unsetenv("MOEFABRIC_FORCE_FABRIC");
    unsetenv("MOEFABRIC_NODE_SIZE");
    if (mode == "fabric") setenv("MOEFABRIC_FORCE_FABRIC", "1", 1);
    const int node_size = mode.rfind("node", 0) == 0 ? atoi(mode.c_str() + 4) : 0;
    if (node_size > 0) setenv("MOEFABRIC_NODE_SIZE", mode.c_str() + 4, 1);
    for (int R : ranks) {
      // Nodes of node_size ranks: at least two of them, whole.
      if (node_size > 0 && (R < 2 * node_size || R % node_size != 0)) continue;
      std::vector<FuzzCase> list;
      if (!case_s.empty()) {
        // A regression case's seed names it; any other seed is a random draw.
        for (const FuzzCase& c : fuzz_regressions(R))
          if (c.seed == one) list.push_back(c);
        if (list.empty()) list.push_back(fuzz_case(one, R, lim));
      } else {
        if (!no_regressions) list = fuzz_regressions(R);
        for (int i = 0; i < cases; ++i) {
          if (budget_s > 0 && std::chrono::steady_clock::now() - start > std::chrono::seconds(budget_s))
            break;
          list.push_back(fuzz_case(fuzz_seed(seed, R, static_cast<uint64_t>(i)), R, lim));
        }
      }
      // Cases run in batches so that a failure costs only its batch and the budget is honoured.
      const size_t batch = 25;
      for (size_t b0 = 0; b0 < list.size(); b0 += batch) {
        if (budget_s > 0 && std::chrono::steady_clock::now() - start > std::chrono::seconds(budget_s)) {
          printf("  budget of %d s spent: mode %s, ranks %d stopped after %zu of %zu cases\n", budget_s,
                 mode.c_str(), R, b0, list.size());
          break;
        }
        std::vector<FuzzCase> part(list.begin() + b0, list.begin() + std::min(list.size(), b0 + batch));
        auto res = moefabric::launch_fork(
            R, [&](OobChannel& oob) { return run_cases(oob, part, opt, argv[0]); },
            60 + static_cast<int>(part.size()) * (timeout_ms / 1000 + 10));
        if (res.ok) total += static_cast<int>(part.size());
        if (!res.ok) {
          ++failed;
          printf("  mode %s, ranks %d, cases %zu..%zu: %s\n", mode.c_str(), R, b0, b0 + part.size() - 1,
                 res.report.c_str());
        }
      }
      printf("  mode %-7s ranks %d: %zu cases%s\n", mode.c_str(), R, list.size(),
             failed ? " (see failures above)" : "");
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  printf("# %s: %d cases passed in %.1f s, %d batch(es) stopped at a failure\n", failed ? "FAIL" : "PASS",
         total, secs, failed);
  return failed ? 1 : 0;
}
