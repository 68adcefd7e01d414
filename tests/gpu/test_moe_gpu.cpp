// The CUDA backend against the host backend, bit for bit (suite 'gpu'). Every rank is a process
// with its own GPU; each runs the same inputs through a host-backend comm (libfabric, host
// memory) and a CUDA-backend comm (NVLink, device memory) and compares recvX, recvScales,
// recvExpertCounts and y byte for byte, guard bytes included (outputs are pre-filled with the
// same pattern on both sides). A CUDA-graph case captures dispatch -> stand-in expert -> combine
// once and replays it 1000 times with fresh routing written into the captured inputs.
// The same comparisons run in three path modes (--modes, default all): nvlink (CUDA IPC between
// the GPUs), fabric (MOEFABRIC_FORCE_FABRIC=1: every peer, self included, through the proxy and
// libfabric; EP1 on one GPU and EP2 on two) and node1 (MOEFABRIC_NODE_SIZE=1 with two GPUs: each
// rank its own node, so peers go through the fabric while each rank keeps its own block).
// The fabric runs over the provider of the environment (the suite sets shm).
// --ranks N (1 or 2) sets the EP size; by default EP2 with two GPUs, EP1 with one. With more ranks
// than GPUs the ranks share GPU 0 (two processes, CUDA IPC within one device, kernels time-sliced
// by the driver): the multi-rank protocol and every path run, at no meaningful speed.
// Exit 77 (skipped) with the reason printed when there is no GPU.
#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <cstring>
#include <string>
#include <vector>

#include "include/moefabric/nccl_moe.h"
#include "common/launch.h"
#include "tests/common/check.h"
#include "tests/common/moe_reference.h"
#include "tests/gpu/fake_expert.h"

using namespace moetest;
using moefabric::OobChannel;

namespace {

#define CUDA_OK(call) RANK_CHECK((call) == cudaSuccess, "%s", cudaGetErrorString(cudaGetLastError()))

int rank_ = -1;

// Device buffer with RAII.
struct Dev {
  void* p = nullptr;
  size_t n = 0;
  explicit Dev(size_t bytes) : n(bytes) {
    if (cudaMalloc(&p, bytes ? bytes : 16) != cudaSuccess) p = nullptr;
  }
  ~Dev() {
    if (p) cudaFree(p);
  }
  Dev(const Dev&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

// Output images, host side (filled with guard patterns identical on both backends).
struct Out {
  std::vector<uint8_t> recv_x, recv_scales, counts, y;
};
constexpr uint8_t kGuardX = 0xa5, kGuardS = 0xff, kGuardC = 0xf7, kGuardY = 0xee;

struct Bufs {
  size_t rows, xb, sb, cb, yb, eyb;
  Dev x, sc, idx, w, nt, rx, rs, rc, ey, y;
  Bufs(const Shape& s, size_t cap)
      : rows(cap),
        xb(cap * s.x_bytes() + 64),
        sb(cap * s.nscale() * 4 + 64),
        cb(static_cast<size_t>(s.local(rank_)) * 4 + 16),
        yb(static_cast<size_t>(s.max_tokens) * s.hidden * 2 + 64),
        eyb(cap * s.hidden * 2 + 64),
        x(s.x_bytes() * s.max_tokens),
        sc(s.nscale() * 4 * s.max_tokens + 16),
        idx(static_cast<size_t>(s.max_tokens) * s.topk * 4),
        w(static_cast<size_t>(s.max_tokens) * s.topk * 4),
        nt(4),
        rx(xb),
        rs(sb),
        rc(cb),
        ey(eyb),
        y(yb) {}
  bool ok() const { return x.p && sc.p && idx.p && w.p && nt.p && rx.p && rs.p && rc.p && ey.p && y.p; }
  void guard(cudaStream_t st) const {
    cudaMemsetAsync(rx.p, kGuardX, xb, st);
    cudaMemsetAsync(rs.p, kGuardS, sb, st);
    cudaMemsetAsync(rc.p, kGuardC, cb, st);
    cudaMemsetAsync(y.p, kGuardY, yb, st);
  }
  void upload(const Shape& s, const RankInput& in) const {
    cudaMemcpy(nt.p, &in.T, 4, cudaMemcpyHostToDevice);
    if (in.T == 0) {
      cudaDeviceSynchronize();
      return;
    }
    cudaMemcpy(x.p, in.x.data(), in.x.size(), cudaMemcpyHostToDevice);
    if (s.fp8) cudaMemcpy(sc.p, in.scales.data(), in.scales.size() * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(idx.p, in.idx.data(), in.idx.size() * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(w.p, in.w.data(), in.w.size() * 4, cudaMemcpyHostToDevice);
    // Pageable uploads may still be in flight when cudaMemcpy returns, and the test's stream is
    // non-blocking: fence them before a kernel reads them.
    cudaDeviceSynchronize();
  }
  Out download() const {
    Out o;
    o.recv_x.resize(xb);
    o.recv_scales.resize(sb);
    o.counts.resize(cb);
    o.y.resize(yb);
    cudaMemcpy(o.recv_x.data(), rx.p, xb, cudaMemcpyDeviceToHost);
    cudaMemcpy(o.recv_scales.data(), rs.p, sb, cudaMemcpyDeviceToHost);
    cudaMemcpy(o.counts.data(), rc.p, cb, cudaMemcpyDeviceToHost);
    cudaMemcpy(o.y.data(), y.p, yb, cudaMemcpyDeviceToHost);
    return o;
  }
};

ncclMoeComm_t comm_init(OobChannel& oob, const Shape& s, ncclMoeBackend_t backend) {
  ncclMoeConfig_t c = s.config();
  c.backend = backend;
  // MOEFABRIC_TIMEOUT_MS stretches it (compute-sanitizer, ranks time-sliced on one GPU).
  const char* t = getenv("MOEFABRIC_TIMEOUT_MS");
  c.timeoutMs = t && atoi(t) > 0 ? atoi(t) : 20000;
  ncclMoeComm_t moe = nullptr;
  ncclResult_t r = ncclMoeCommInitAllGather(&moe, oob.nranks(), oob.rank(), oob_allgather, &oob, &c);
  if (r != ncclSuccess)
    fprintf(stderr, "rank %d: %s init failed (%d): %s\n", oob.rank(),
            backend == ncclMoeBackendCuda ? "CUDA" : "host", r, ncclMoeGetLastError(nullptr));
  return moe;
}

// The host backend on `in`; expert_y: a function of the layout (fill_expert_y) or, when
// `fake` is set, the stand-in expert applied to recvX.
std::string host_round(const Shape& s, ncclMoeComm_t moe, const RankInput& in, const Bufs& b,
                       const std::vector<uint16_t>* ey_in, bool fake, Out* o) {
  o->recv_x.assign(b.xb, kGuardX);
  o->recv_scales.assign(b.sb, kGuardS);
  o->counts.assign(b.cb, kGuardC);
  o->y.assign(b.yb, kGuardY);
  const int32_t T = in.T;
  ncclResult_t r =
      ncclMoeDispatch(in.x.data(), s.fp8 ? in.scales.data() : nullptr, in.idx.data(), in.w.data(), &T,
                      o->recv_x.data(), s.fp8 ? reinterpret_cast<float*>(o->recv_scales.data()) : nullptr,
                      reinterpret_cast<int32_t*>(o->counts.data()), moe, nullptr);
  if (r != ncclSuccess) return std::string("host dispatch: ") + ncclMoeGetLastError(moe);
  std::vector<uint16_t> ey(b.eyb / 2, 0);
  if (fake)
    fake_expert_host(o->recv_x.data(), ey.data(), b.rows, s.hidden, s.fp8 ? 1 : 2);
  else
    ey = *ey_in;
  r = ncclMoeCombine(ey.data(), o->y.data(), moe, nullptr);
  if (r != ncclSuccess) return std::string("host combine: ") + ncclMoeGetLastError(moe);
  return "";
}

std::string compare(const char* what, const std::vector<uint8_t>& a, const std::vector<uint8_t>& b,
                    size_t row_bytes) {
  if (a.size() != b.size()) return std::string(what) + ": sizes differ";
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) {
      char buf[200];
      snprintf(buf, sizeof buf, "%s differs at byte %zu (row %zu): CUDA 0x%02x, host 0x%02x", what, i,
               row_bytes ? i / row_bytes : 0, a[i], b[i]);
      return buf;
    }
  return "";
}

std::string compare_all(const Shape& s, const Out& dev, const Out& host) {
  std::string e = compare("recvExpertCounts", dev.counts, host.counts, 4);
  if (e.empty()) e = compare("recvX", dev.recv_x, host.recv_x, s.x_bytes());
  if (e.empty() && s.fp8) e = compare("recvScales", dev.recv_scales, host.recv_scales, s.nscale() * 4);
  if (e.empty()) e = compare("y", dev.y, host.y, static_cast<size_t>(s.hidden) * 2);
  return e;
}

// Eager calls: every routing case on one shape, CUDA vs host vs the reference.
int run_shape(OobChannel& oob, Shape s, const char* name) {
  s.nranks = oob.nranks();
  const int me = oob.rank();
  ncclMoeComm_t host = comm_init(oob, s, ncclMoeBackendHost);
  ncclMoeComm_t dev = comm_init(oob, s, ncclMoeBackendCuda);
  RANK_CHECK(host && dev, "%s: init", name);
  size_t cap_h = 0, cap_d = 0;
  ncclMoeGetRecvCapacity(host, &cap_h);
  ncclMoeGetRecvCapacity(dev, &cap_d);
  RANK_CHECK(cap_h == cap_d, "%s: capacities differ (host %zu, CUDA %zu)", name, cap_h, cap_d);
  Bufs b(s, cap_d);
  RANK_CHECK(b.ok(), "%s: cudaMalloc", name);
  cudaStream_t st;
  CUDA_OK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  struct Case {
    Routing r;
    int T;
    const char* what;
  };
  std::vector<Case> cases;
  for (int seed = 0; seed < 6; ++seed) cases.push_back({Routing::kRandom, -1 - seed, "random"});
  cases.push_back({Routing::kOneExpert, s.max_tokens, "all tokens to one expert, T = max"});
  cases.push_back({Routing::kRandom, me == 0 ? 0 : s.max_tokens, "rank 0 with T = 0"});
  cases.push_back({Routing::kEmpty, s.max_tokens, "all slots -1"});
  cases.push_back({Routing::kDuplicates, s.max_tokens, "duplicate experts in a token"});
  cases.push_back({Routing::kSkewed, s.max_tokens, "skewed to rank 0"});
  cases.push_back({Routing::kRandom, 0, "T = 0 everywhere"});
  cases.push_back({Routing::kRandom, s.max_tokens, "T = max"});
  int n = 0;
  for (const Case& c : cases) {
    const int seed = 100 + n++;
    const int T = c.T >= 0 ? c.T : static_cast<int>((seed * 7 + me * 5) % (s.max_tokens + 1));
    RankInput in = make_input(s, me, T, seed, c.r);
    std::vector<RankInput> all;
    RANK_CHECK(gather_inputs(&oob, s, in, &all), "gather");
    ExpectedLayout ex = expected_layout(s, all, me);
    std::vector<uint16_t> ey(b.eyb / 2, 0);
    fill_expert_y(s, all, me, ex, ey.data());
    Out ho;
    std::string e = host_round(s, host, in, b, &ey, false, &ho);
    RANK_CHECK(e.empty(), "%s, %s: %s", name, c.what, e.c_str());
    // CUDA
    b.upload(s, in);
    b.guard(st);
    CUDA_OK(cudaMemcpy(b.ey.p, ey.data(), ey.size() * 2, cudaMemcpyHostToDevice));
    CUDA_OK(cudaDeviceSynchronize());  // the pageable upload has landed before the kernels run
    ncclResult_t r = ncclMoeDispatch(b.x.p, s.fp8 ? b.sc.as<float>() : nullptr, b.idx.as<int32_t>(),
                                     b.w.as<float>(), b.nt.as<int32_t>(), b.rx.p,
                                     s.fp8 ? b.rs.as<float>() : nullptr, b.rc.as<int32_t>(), dev, st);
    RANK_CHECK(r == ncclSuccess, "%s, %s: CUDA dispatch: %s", name, c.what, ncclMoeGetLastError(dev));
    r = ncclMoeCombine(b.ey.p, b.y.p, dev, st);
    RANK_CHECK(r == ncclSuccess, "%s, %s: CUDA combine: %s", name, c.what, ncclMoeGetLastError(dev));
    CUDA_OK(cudaStreamSynchronize(st));
    ncclResult_t ae = ncclSuccess;
    ncclMoeCommGetAsyncError(dev, &ae);
    RANK_CHECK(ae == ncclSuccess, "%s, %s: async error: %s", name, c.what, ncclMoeGetLastError(dev));
    Out dout = b.download();
    e = compare_all(s, dout, ho);
    RANK_CHECK(e.empty(), "%s, %s (T %d): %s", name, c.what, T, e.c_str());
    e = check_dispatch(s, all, me, ex, dout.recv_x.data(),
                       reinterpret_cast<const float*>(dout.recv_scales.data()),
                       reinterpret_cast<const int32_t*>(dout.counts.data()));
    RANK_CHECK(e.empty(), "%s, %s: CUDA vs reference: %s", name, c.what, e.c_str());
  }
  RANK_CHECK(ncclMoeCommDestroy(dev) == ncclSuccess, "%s: CUDA destroy", name);
  RANK_CHECK(ncclMoeCommDestroy(host) == ncclSuccess, "%s: host destroy", name);
  cudaStreamDestroy(st);
  if (me == 0) printf("  ok  %-44s %zu cases\n", name, cases.size());
  return 0;
}

// Dispatch -> stand-in expert -> combine captured once, replayed `iters` times with fresh
// inputs copied into the captured buffers; every `every`-th replay (and the last) is compared
// with the host backend on the same inputs.
int run_graph(OobChannel& oob, Shape s, int iters, int every, const char* name) {
  s.nranks = oob.nranks();
  const int me = oob.rank();
  ncclMoeComm_t host = comm_init(oob, s, ncclMoeBackendHost);
  ncclMoeComm_t dev = comm_init(oob, s, ncclMoeBackendCuda);
  RANK_CHECK(host && dev, "%s: init", name);
  size_t cap = 0;
  ncclMoeGetRecvCapacity(dev, &cap);
  Bufs b(s, cap);
  RANK_CHECK(b.ok(), "%s: cudaMalloc", name);
  cudaStream_t st;
  CUDA_OK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  b.upload(s, make_input(s, me, 0, 1, Routing::kRandom));
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CUDA_OK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  b.guard(st);
  ncclResult_t r = ncclMoeDispatch(b.x.p, s.fp8 ? b.sc.as<float>() : nullptr, b.idx.as<int32_t>(),
                                   b.w.as<float>(), b.nt.as<int32_t>(), b.rx.p,
                                   s.fp8 ? b.rs.as<float>() : nullptr, b.rc.as<int32_t>(), dev, st);
  cudaError_t fe = fake_expert_launch(b.rx.p, b.ey.as<uint16_t>(), cap, s.hidden, s.fp8 ? 1 : 2, st);
  ncclResult_t r2 = ncclMoeCombine(b.ey.p, b.y.p, dev, st);
  CUDA_OK(cudaStreamEndCapture(st, &g));
  RANK_CHECK(r == ncclSuccess && r2 == ncclSuccess && fe == cudaSuccess, "%s: capture: %s", name,
             ncclMoeGetLastError(dev));
  CUDA_OK(cudaGraphInstantiate(&ge, g, 0));
  int checked = 0;
  for (int i = 0; i < iters; ++i) {
    const int T = static_cast<int>((i * 13 + me * 7) % (s.max_tokens + 1));
    const Routing routing = i % 50 == 7 ? Routing::kOneExpert : Routing::kRandom;
    RankInput in = make_input(s, me, T, 5000 + i, routing);
    CUDA_OK(cudaStreamSynchronize(st));
    b.upload(s, in);
    CUDA_OK(cudaGraphLaunch(ge, st));
    if (i % every != 0 && i != iters - 1) continue;
    CUDA_OK(cudaStreamSynchronize(st));
    ncclResult_t ae = ncclSuccess;
    ncclMoeCommGetAsyncError(dev, &ae);
    RANK_CHECK(ae == ncclSuccess, "%s, replay %d: async error: %s", name, i, ncclMoeGetLastError(dev));
    Out ho;
    std::string e = host_round(s, host, in, b, nullptr, true, &ho);
    RANK_CHECK(e.empty(), "%s, replay %d: %s", name, i, e.c_str());
    e = compare_all(s, b.download(), ho);
    RANK_CHECK(e.empty(), "%s, replay %d (T %d): %s", name, i, T, e.c_str());
    ++checked;
  }
  CUDA_OK(cudaStreamSynchronize(st));
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  RANK_CHECK(ncclMoeCommDestroy(dev) == ncclSuccess, "%s: CUDA destroy", name);
  RANK_CHECK(ncclMoeCommDestroy(host) == ncclSuccess, "%s: host destroy", name);
  cudaStreamDestroy(st);
  if (me == 0) printf("  ok  %-44s %d replays, %d compared\n", name, iters, checked);
  return 0;
}

// Usage errors that need a GPU comm: wrong phase, misaligned pointers, host-backend-only rules.
int run_errors(OobChannel& oob) {
  Shape s;
  s.nranks = oob.nranks();
  ncclMoeComm_t dev = comm_init(oob, s, ncclMoeBackendCuda);
  RANK_CHECK(dev != nullptr, "init");
  RANK_CHECK(ncclMoeCombine(nullptr, nullptr, dev, nullptr) == ncclInvalidArgument, "combine y NULL");
  RANK_CHECK(ncclMoeDispatchRecv(dev, nullptr) == ncclInvalidUsage, "recv before send");
  Dev buf(1 << 16);
  RANK_CHECK(
      ncclMoeDispatch(buf.as<uint8_t>() + 1, nullptr, buf.as<int32_t>(), buf.as<float>(), buf.as<int32_t>(),
                      buf.p, nullptr, buf.as<int32_t>(), dev, nullptr) == ncclInvalidArgument,
      "misaligned x accepted");
  // An expert id out of range, seen only by the kernel: rank 0's slot is treated as empty, the
  // op completes on every rank, and rank 0's comm reports it through the async error.
  RankInput in = make_input(s, oob.rank(), s.max_tokens, 9, Routing::kRandom);
  if (oob.rank() == 0) in.idx[1] = s.experts + 5;
  Bufs b(s, 1024);
  RANK_CHECK(b.ok(), "cudaMalloc");
  b.upload(s, in);
  RANK_CHECK(ncclMoeDispatch(b.x.p, nullptr, b.idx.as<int32_t>(), b.w.as<float>(), b.nt.as<int32_t>(), b.rx.p,
                             nullptr, b.rc.as<int32_t>(), dev, nullptr) == ncclSuccess,
             "dispatch with a bad expert id was refused on the host: %s", ncclMoeGetLastError(dev));
  RANK_CHECK(ncclMoeCombine(b.ey.p, b.y.p, dev, nullptr) == ncclSuccess, "combine: %s",
             ncclMoeGetLastError(dev));
  CUDA_OK(cudaDeviceSynchronize());
  ncclResult_t ae = ncclSuccess;
  RANK_CHECK(ncclMoeCommGetAsyncError(dev, &ae) == ncclSuccess, "GetAsyncError");
  if (oob.rank() == 0) {
    RANK_CHECK(ae != ncclSuccess, "bad expert id not reported");
    const std::string text = ncclMoeGetLastError(dev);
    RANK_CHECK(text.find("not an expert") != std::string::npos, "error text: %s", text.c_str());
    RANK_CHECK(ncclMoeDispatchRecv(dev, nullptr) != ncclSuccess, "a comm with an async error accepts calls");
  } else {
    RANK_CHECK(ae == ncclSuccess, "rank %d got an error from rank 0's bad input: %s", oob.rank(),
               ncclMoeGetLastError(dev));
  }
  RANK_CHECK(ncclMoeCommDestroy(dev) == ncclSuccess || oob.rank() == 0, "destroy: %s",
             ncclMoeGetLastError(nullptr));
  if (oob.rank() == 0) printf("  ok  %-44s\n", "usage errors, bad expert id reported asynchronously");
  return 0;
}

// GPUs visible to a child (the parent never touches CUDA, so the forked ranks can).
int count_gpus() {
  auto res = moefabric::launch_fork(
      1,
      [](OobChannel&) {
        int n = 0;
        if (cudaGetDeviceCount(&n) != cudaSuccess) n = 0;
        return 100 + std::min(n, 50);
      },
      60);
  // launch_fork reports non-zero exits ("rank 0: exit code N"); the code carries the count.
  const size_t at = res.report.find("exit code ");
  int code = 0;
  if (at == std::string::npos || sscanf(res.report.c_str() + at, "exit code %d", &code) != 1) return 0;
  return code >= 100 ? code - 100 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IONBF, 0);
  const int ngpu = count_gpus();
  if (ngpu < 1) {
    printf("SKIP: no GPU visible (cudaGetDeviceCount found none): the gpu suite runs on the GPU machine\n");
    return 77;
  }
  bool quick = false;
  int ranks = 0;
  std::string modes = "nvlink,fabric,node1";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick")
      quick = true;
    else if (a == "--modes" && i + 1 < argc)
      modes = argv[++i];
    else if (a == "--ranks" && i + 1 < argc)
      ranks = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: %s [--quick] [--modes nvlink,fabric,node1] [--ranks 1|2]\n", argv[0]);
      return 2;
    }
  }
  auto want = [&](const char* m) {
    return ("," + modes + ",").find(std::string(",") + m + ",") != std::string::npos;
  };
  if (ranks != 0 && ranks != 1 && ranks != 2) {
    fprintf(stderr, "--ranks must be 1 or 2 (got %d)\n", ranks);
    return 2;
  }
  const int nr = ranks ? ranks : ngpu >= 2 ? 2 : 1;
  printf("# moefabric gpu test: %d GPU(s), EP%d%s\n", ngpu, nr,
         nr > ngpu ? " (ranks share GPU 0, kernels time-sliced: correctness only)"
         : nr == 1 ? " (one GPU: each rank talks only to itself; --ranks 2 shares it)"
                   : "");
  auto run = [&](const std::function<int(OobChannel&)>& fn, int n) {
    auto res = moefabric::launch_fork(
        n,
        [&](OobChannel& oob) {
          rank_ = oob.rank();
          int dev = 0;
          cudaGetDeviceCount(&dev);
          if (cudaSetDevice(oob.rank() % dev) != cudaSuccess) return 2;
          return fn(oob);
        },
        900);
    if (!res.ok) printf("FAILED:\n%s\n", res.report.c_str());
    return res.ok;
  };
  bool ok = true;
  auto shape = [](int E, int K, int H, int T, bool fp8, int sb, int align) {
    Shape s;
    s.experts = E, s.topk = K, s.hidden = H, s.max_tokens = T, s.fp8 = fp8, s.scale_block = sb,
    s.alignment = align;
    return s;
  };
  struct Named {
    Shape s;
    const char* name;
  };
  std::vector<Named> shapes = {
      {shape(8, 2, 64, 16, false, 32, 1), "bf16 E8 K2 H64 T<=16"},
      {shape(16, 4, 256, 32, true, 64, 4), "fp8 E16 K4 H256 sb64 align4 T<=32"},
      {shape(6, 3, 96, 24, true, 32, 1), "fp8 E6 K3 H96 sb32 (uneven experts)"},
      {shape(256, 8, 7168, 128, true, 128, 1), "fp8 E256 K8 H7168 T<=128 (decode)"},
      {shape(256, 8, 7168, 128, false, 128, 1), "bf16 E256 K8 H7168 T<=128 (decode)"},
  };
  if (quick) shapes.resize(2);
  // One pass of every check in the current path mode; `graph_iters` scales the replays.
  auto pass = [&](const char* mode, int graph_iters) {
    printf("# mode %s\n", mode);
    for (const Named& n : shapes)
      ok = run([&](OobChannel& o) { return run_shape(o, n.s, n.name); }, nr) && ok;
    if (nr == 2) {
      ok = run([&](OobChannel& o) { return run_shape(o, shapes[0].s, "EP1 bf16 E8 K2 H64 (self only)"); },
               1) &&
           ok;
      if (!quick)
        ok = run([&](OobChannel& o) { return run_shape(o, shapes[1].s, "EP1 fp8 E16 K4 H256 (self only)"); },
                 1) &&
             ok;
    }
    ok = run([&](OobChannel& o) { return run_errors(o); }, nr) && ok;
    ok = run(
             [&](OobChannel& o) {
               return run_graph(o, shape(32, 4, 512, 64, true, 128, 2), graph_iters, quick ? 10 : 50,
                                "CUDA graph fp8 E32 K4 H512 T<=64 align2");
             },
             nr) &&
         ok;
    if (quick) return;  // (what runs under compute-sanitizer: keep it short)
    ok = run(
             [&](OobChannel& o) {
               return run_graph(o, shape(16, 8, 128, 32, false, 32, 1), std::max(20, graph_iters / 5), 20,
                                "CUDA graph bf16 E16 K8 H128 T<=32");
             },
             nr) &&
         ok;
    if (nr == 2) {
      ok = run(
               [&](OobChannel& o) {
                 return run_graph(o, shape(8, 2, 64, 16, false, 32, 1), std::max(20, graph_iters / 5), 10,
                                  "EP1 CUDA graph bf16 E8 K2 H64 (self only)");
               },
               1) &&
           ok;
    }
  };
  // The parent sets the switches; the forked ranks inherit them.
  auto with_env = [&](const char* var, const char* value, const char* mode, int graph_iters) {
    setenv(var, value, 1);
    pass(mode, graph_iters);
    unsetenv(var);
  };
  unsetenv("MOEFABRIC_FORCE_FABRIC");
  unsetenv("MOEFABRIC_NODE_SIZE");
  if (want("nvlink")) pass("nvlink (CUDA IPC)", quick ? 50 : 1000);
  if (want("fabric"))
    with_env("MOEFABRIC_FORCE_FABRIC", "1", "fabric (MOEFABRIC_FORCE_FABRIC=1, every peer through the proxy)",
             quick ? 20 : 300);
  if (want("node1")) {
    if (nr == 2)
      with_env("MOEFABRIC_NODE_SIZE", "1",
               "node1 (MOEFABRIC_NODE_SIZE=1: NVLink to self, fabric to the peer)", quick ? 20 : 300);
    else
      printf("# mode node1 skipped: it needs 2 ranks (2 GPUs, or --ranks 2)\n");
  }
  printf("%s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
