// moefabric-moe-gpu-perf: the CUDA backend's dispatch/combine latency over NVLink, nccl-tests
// style, one row per tokens-per-rank T. Each rank is a forked process with its own GPU; the comm
// bootstraps through an NCCL communicator (ncclMoeCommInit). Every iteration replays one CUDA
// graph: fresh routing generated on the device, an NCCL all_reduce of one value as a barrier,
// then dispatch and combine between CUDA events. Baselines in the same run: NCCL all_to_all
// (grouped send/recv, same graph structure) of the same bytes, and cudaMemcpyPeerAsync of the
// dispatch bytes (rank 0, when it sees two GPUs). p50/p99 pool every rank's iterations.
// --fabric (MOEFABRIC_FORCE_FABRIC=1) sends every peer through the fabric proxy instead, and
// --node-size N sets MOEFABRIC_NODE_SIZE; the rows then also carry the proxy's posting cost
// (doorbell seen -> writes posted, on the proxy's clock, from ncclMoeGetStats after each replay).
// --breakdown adds, per row, rank 0's p50 of each half-call (dispatch send / recv, combine send /
// recv, timed with the split API in one graph) and of an empty kernel on the same grid.
// perf/PERFORMANCE.md defines the columns.
#include <CLI/CLI.hpp>
#include <cuda_runtime.h>
#include <nccl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "include/moefabric/nccl_moe.h"
#include "perf/moe_gpu_routes.h"
#include "perf/perf_tool.h"
#include "common/launch.h"
#include "common/rendezvous.h"

namespace perf = moefabric::perf;

namespace {

using moefabric::OobChannel;
using moefabric::Status;

struct Opts {
  int ranks = 2, hidden = 7168, topk = 8, experts = 256, iters = 1000, warmup = 50, timeout = 1500;
  std::vector<int> tokens{1, 8, 32, 128, 512, 1024, 4096};
  std::string dtype = "fp8", json;
  bool no_nccl = false, fabric = false, breakdown = false;
  int node_size = 0;
};

struct Row {
  int T;
  double bytes, d50, d99, c50, c99, slow_d50, n_d50, n_c50, peer_us, peer_gbs, post50, cpost50;
  int slow_rank;
  long errors;
};

[[noreturn]] void die(int rank, const std::string& what) {
  fprintf(stderr, "moefabric-moe-gpu-perf: rank %d: %s\n", rank, what.c_str());
  fflush(stderr);
  _exit(2);
}

#define CK(call)                                                                        \
  do {                                                                                  \
    cudaError_t e_ = (call);                                                            \
    if (e_ != cudaSuccess) die(me, std::string(#call) + ": " + cudaGetErrorString(e_)); \
  } while (0)
#define NK(call)                                                                        \
  do {                                                                                  \
    ncclResult_t r_ = (call);                                                           \
    if (r_ != ncclSuccess) die(me, std::string(#call) + ": " + ncclGetErrorString(r_)); \
  } while (0)

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * (v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

void* dev_alloc(int me, size_t bytes) {
  void* p = nullptr;
  CK(cudaMalloc(&p, std::max<size_t>(bytes, 256)));
  CK(cudaMemset(p, 0x3c, std::max<size_t>(bytes, 256)));
  return p;
}

// Grouped send/recv: all_to_all with `bytes` to every rank.
void all_to_all(int me, const void* send, void* recv, size_t bytes, int R, ncclComm_t comm, cudaStream_t st) {
  NK(ncclGroupStart());
  for (int p = 0; p < R; ++p) {
    NK(ncclSend(static_cast<const uint8_t*>(send) + bytes * p, bytes, ncclUint8, p, comm, st));
    NK(ncclRecv(static_cast<uint8_t*>(recv) + bytes * p, bytes, ncclUint8, p, comm, st));
  }
  NK(ncclGroupEnd());
}

// cudaMemcpyPeerAsync of `bytes` from this GPU to the next one; median of 50, in us.
double peer_copy_us(int me, int dev, size_t bytes) {
  int n = 0, can = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n < 2) return -1;
  const int other = (dev + 1) % n;
  if (cudaDeviceCanAccessPeer(&can, dev, other) != cudaSuccess || !can) return -1;
  cudaError_t e = cudaDeviceEnablePeerAccess(other, 0);
  if (e != cudaSuccess && e != cudaErrorPeerAccessAlreadyEnabled) return -1;
  (void)cudaGetLastError();
  void* src = dev_alloc(me, bytes);
  void* dst = nullptr;
  CK(cudaSetDevice(other));
  CK(cudaMalloc(&dst, std::max<size_t>(bytes, 256)));
  CK(cudaSetDevice(dev));
  cudaStream_t st;
  cudaEvent_t a, b;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  std::vector<double> v;
  for (int i = 0; i < 60; ++i) {
    CK(cudaEventRecord(a, st));
    CK(cudaMemcpyPeerAsync(dst, other, src, dev, bytes, st));
    CK(cudaEventRecord(b, st));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    if (i >= 10) v.push_back(ms * 1e3);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaStreamDestroy(st);
  cudaFree(src);
  CK(cudaSetDevice(other));
  cudaFree(dst);
  CK(cudaSetDevice(dev));
  return pct(v, 0.5);
}

std::vector<Row> run_rank(OobChannel& oob, const Opts& o, std::string* gpu_name) {
  const int R = oob.nranks(), me = oob.rank();
  int ndev = 0;
  CK(cudaGetDeviceCount(&ndev));
  const int local_rank = moefabric::local_rank_from_env();  // torchrun's LOCAL_RANK, mpirun's
  const int dev = (local_rank >= 0 ? local_rank : me) % ndev;
  CK(cudaSetDevice(dev));
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, dev));
  *gpu_name = prop.name;
  // NCCL communicator, then the MoE comm bootstrapped over it; with --no-nccl no NCCL at all: the
  // MoE comm bootstraps over the launcher's channel and a host barrier aligns the ranks before
  // each replay (so that ranks may share a GPU, which NCCL refuses).
  ncclComm_t nccl = nullptr;
  if (!o.no_nccl) {
    ncclUniqueId id{};
    if (me == 0) NK(ncclGetUniqueId(&id));
    std::vector<ncclUniqueId> ids(R);
    if (!oob.allgather(&id, ids.data(), sizeof id).ok()) die(me, "allgather of the NCCL id failed");
    NK(ncclCommInitRank(&nccl, R, ids[0], me));
  }
  const bool fp8 = o.dtype == "fp8";
  const int maxT = *std::max_element(o.tokens.begin(), o.tokens.end());
  ncclMoeConfig_t cfg = NCCL_MOE_CONFIG_INITIALIZER;
  cfg.numExperts = o.experts;
  cfg.numTopk = o.topk;
  cfg.hidden = o.hidden;
  cfg.maxTokensPerRank = maxT;
  cfg.dispatchType = fp8 ? ncclFloat8e4m3 : ncclBfloat16;
  cfg.backend = ncclMoeBackendCuda;
  ncclMoeComm_t moe = nullptr;
  auto oob_gather = [](const void* send, void* recv, size_t bytes, void* ctx) {
    return static_cast<OobChannel*>(ctx)->allgather(send, recv, bytes).ok() ? ncclSuccess : ncclSystemError;
  };
  if ((nccl != nullptr ? ncclMoeCommInit(&moe, nccl, &cfg)
                       : ncclMoeCommInitAllGather(&moe, R, me, oob_gather, &oob, &cfg)) != ncclSuccess)
    die(me, std::string("ncclMoeCommInit: ") + ncclMoeGetLastError(nullptr));
  size_t cap = 0;
  ncclMoeGetRecvCapacity(moe, &cap);
  const size_t xb = static_cast<size_t>(o.hidden) * (fp8 ? 1 : 2);
  const size_t nscale = fp8 ? static_cast<size_t>(o.hidden / 128) : 0;
  int first = 0, local = 0;
  ncclMoeGetLocalExperts(moe, &first, &local);
  void* x = dev_alloc(me, xb * maxT);
  auto* sc = static_cast<float*>(dev_alloc(me, nscale * 4 * maxT));
  auto* idx = static_cast<int32_t*>(dev_alloc(me, 4ull * maxT * o.topk));
  auto* w = static_cast<float*>(dev_alloc(me, 4ull * maxT * o.topk));
  auto* nt = static_cast<int32_t*>(dev_alloc(me, 4));
  auto* counter = static_cast<uint64_t*>(dev_alloc(me, 8));
  void* rx = dev_alloc(me, cap * xb);
  auto* rs = static_cast<float*>(dev_alloc(me, cap * nscale * 4));
  auto* rc = static_cast<int32_t*>(dev_alloc(me, 4ull * local));
  void* ey = dev_alloc(me, cap * o.hidden * 2);
  void* y = dev_alloc(me, static_cast<size_t>(maxT) * o.hidden * 2);
  auto* one = static_cast<float*>(dev_alloc(me, 4));
  const size_t a2a_max =
      static_cast<size_t>(maxT) * std::max(xb + nscale * 4, static_cast<size_t>(o.topk) * o.hidden * 2);
  void* a2a_s = dev_alloc(me, a2a_max * R);
  void* a2a_r = dev_alloc(me, a2a_max * R);
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cudaEvent_t ev[3];
  for (auto& e : ev) CK(cudaEventCreate(&e));
  std::vector<Row> rows;
  for (int T : o.tokens) {
    CK(cudaMemcpy(nt, &T, 4, cudaMemcpyHostToDevice));
    const size_t d_bytes = static_cast<size_t>(T) * (xb + nscale * 4);          // per peer
    const size_t c_bytes = static_cast<size_t>(T) * o.topk * o.hidden * 2 / R;  // per peer
    auto capture = [&](bool moe_graph) {
      cudaGraph_t g;
      cudaGraphExec_t ge;
      CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
      if (moe_graph) CK(routes_launch(idx, w, nt, o.topk, o.experts, me, counter, st));
      if (nccl != nullptr) NK(ncclAllReduce(one, one, 1, ncclFloat32, ncclSum, nccl, st));  // align the ranks
      CK(cudaEventRecordWithFlags(ev[0], st, cudaEventRecordExternal));  // a timing node in the graph
      if (moe_graph) {
        if (ncclMoeDispatch(x, fp8 ? sc : nullptr, idx, w, nt, rx, fp8 ? rs : nullptr, rc, moe, st) !=
            ncclSuccess)
          die(me, std::string("dispatch: ") + ncclMoeGetLastError(moe));
      } else {
        all_to_all(me, a2a_s, a2a_r, d_bytes, R, nccl, st);
      }
      CK(cudaEventRecordWithFlags(ev[1], st, cudaEventRecordExternal));  // a timing node in the graph
      if (moe_graph) {
        if (ncclMoeCombine(ey, y, moe, st) != ncclSuccess)
          die(me, std::string("combine: ") + ncclMoeGetLastError(moe));
      } else {
        all_to_all(me, a2a_s, a2a_r, c_bytes, R, nccl, st);
      }
      CK(cudaEventRecordWithFlags(ev[2], st, cudaEventRecordExternal));  // a timing node in the graph
      CK(cudaStreamEndCapture(st, &g));
      CK(cudaGraphInstantiate(&ge, g, 0));
      CK(cudaGraphDestroy(g));
      return ge;
    };
    auto measure = [&](cudaGraphExec_t ge, std::vector<double>* d, std::vector<double>* c,
                       std::vector<double>* post, std::vector<double>* cpost) {
      for (int it = -o.warmup; it < o.iters; ++it) {
        if (nccl == nullptr && !oob.barrier().ok()) die(me, "barrier failed");
        CK(cudaGraphLaunch(ge, st));
        CK(cudaStreamSynchronize(st));
        if (it < 0) continue;
        float a = 0, b = 0;
        CK(cudaEventElapsedTime(&a, ev[0], ev[1]));
        CK(cudaEventElapsedTime(&b, ev[1], ev[2]));
        d->push_back(a * 1e3);
        c->push_back(b * 1e3);
        if (post != nullptr) {
          ncclMoeStats_t s{};
          s.size = sizeof s;
          if (ncclMoeGetStats(moe, &s) == ncclSuccess) {
            post->push_back(s.proxyPostUs);
            cpost->push_back(s.combinePostUs);
          }
        }
      }
    };
    std::vector<double> d, c, nd, nc, post, cpost;
    cudaGraphExec_t g_moe = capture(true);
    measure(g_moe, &d, &c, &post, &cpost);
    CK(cudaGraphExecDestroy(g_moe));
    ncclResult_t aerr = ncclSuccess;
    ncclMoeCommGetAsyncError(moe, &aerr);
    if (aerr != ncclSuccess) die(me, std::string("async error: ") + ncclMoeGetLastError(moe));
    if (!o.no_nccl) {
      cudaGraphExec_t g_nccl = capture(false);
      measure(g_nccl, &nd, &nc, nullptr, nullptr);
      CK(cudaGraphExecDestroy(g_nccl));
    }
    if (o.breakdown) {
      // One graph: events between the four half-calls, then an empty kernel on the same grid.
      cudaEvent_t e[6];
      for (auto& x : e) CK(cudaEventCreate(&x));
      cudaGraph_t g;
      cudaGraphExec_t ge;
      CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
      CK(routes_launch(idx, w, nt, o.topk, o.experts, me, counter, st));
      if (nccl != nullptr) NK(ncclAllReduce(one, one, 1, ncclFloat32, ncclSum, nccl, st));
      auto mark = [&](int i) { CK(cudaEventRecordWithFlags(e[i], st, cudaEventRecordExternal)); };
      mark(0);
      if (ncclMoeDispatchSend(x, fp8 ? sc : nullptr, idx, w, nt, rx, fp8 ? rs : nullptr, rc, moe, st) !=
          ncclSuccess)
        die(me, std::string("dispatch send: ") + ncclMoeGetLastError(moe));
      mark(1);
      if (ncclMoeDispatchRecv(moe, st) != ncclSuccess)
        die(me, std::string("dispatch recv: ") + ncclMoeGetLastError(moe));
      mark(2);
      if (ncclMoeCombineSend(ey, moe, st) != ncclSuccess)
        die(me, std::string("combine send: ") + ncclMoeGetLastError(moe));
      mark(3);
      if (ncclMoeCombineRecv(y, moe, st) != ncclSuccess)
        die(me, std::string("combine recv: ") + ncclMoeGetLastError(moe));
      mark(4);
      int sms = 0;
      CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
      CK(empty_launch(sms, 512, st));
      mark(5);
      CK(cudaStreamEndCapture(st, &g));
      CK(cudaGraphInstantiate(&ge, g, 0));
      CK(cudaGraphDestroy(g));
      std::vector<double> part[5];
      for (int it = -o.warmup; it < o.iters; ++it) {
        if (nccl == nullptr && !oob.barrier().ok()) die(me, "barrier failed");
        CK(cudaGraphLaunch(ge, st));
        CK(cudaStreamSynchronize(st));
        if (it < 0) continue;
        for (int i = 0; i < 5; ++i) {
          float ms = 0;
          CK(cudaEventElapsedTime(&ms, e[i], e[i + 1]));
          part[i].push_back(ms * 1e3);
        }
      }
      CK(cudaGraphExecDestroy(ge));
      for (auto& x : e) cudaEventDestroy(x);
      if (me == 0)
        printf(
            "# breakdown T=%d (rank 0, p50 us): dispatch send %.1f, recv %.1f; combine send %.1f, "
            "recv %.1f; empty kernel %dx512 %.1f\n",
            T, pct(part[0], .5), pct(part[1], .5), pct(part[2], .5), pct(part[3], .5), sms, pct(part[4], .5));
    }
    const double peer = me == 0 && R > 1 ? peer_copy_us(me, dev, d_bytes) : -1;
    // Pool at rank 0.
    const size_t n = d.size(), m = nd.size();
    post.resize(n, 0);
    cpost.resize(n, 0);
    std::vector<double> mine(4 * n + 2 * m), all(mine.size() * R);
    std::copy(d.begin(), d.end(), mine.begin());
    std::copy(c.begin(), c.end(), mine.begin() + n);
    std::copy(nd.begin(), nd.end(), mine.begin() + 2 * n);
    std::copy(nc.begin(), nc.end(), mine.begin() + 2 * n + m);
    std::copy(post.begin(), post.end(), mine.begin() + 2 * n + 2 * m);
    std::copy(cpost.begin(), cpost.end(), mine.begin() + 3 * n + 2 * m);
    if (!oob.allgather(mine.data(), all.data(), mine.size() * sizeof(double)).ok())
      die(me, "allgather of results failed");
    if (me != 0) continue;
    std::vector<double> D, C, ND, NC, P, CP;
    Row row{T, static_cast<double>(d_bytes), 0, 0, 0, 0, -1, 0, 0, peer, 0, 0, 0, 0, 0};
    for (int r = 0; r < R; ++r) {
      const double* b = all.data() + r * mine.size();
      D.insert(D.end(), b, b + n);
      C.insert(C.end(), b + n, b + 2 * n);
      ND.insert(ND.end(), b + 2 * n, b + 2 * n + m);
      NC.insert(NC.end(), b + 2 * n + m, b + 2 * n + 2 * m);
      P.insert(P.end(), b + 2 * n + 2 * m, b + 3 * n + 2 * m);
      CP.insert(CP.end(), b + 3 * n + 2 * m, b + 4 * n + 2 * m);
      const double p = pct(std::vector<double>(b, b + n), 0.5);
      if (p > row.slow_d50) row.slow_d50 = p, row.slow_rank = r;
    }
    row.d50 = pct(D, .5), row.d99 = pct(D, .99), row.c50 = pct(C, .5), row.c99 = pct(C, .99);
    row.n_d50 = pct(ND, .5), row.n_c50 = pct(NC, .5);
    row.post50 = pct(P, .5), row.cpost50 = pct(CP, .5);
    row.peer_gbs = peer > 0 ? d_bytes / (peer * 1e3) : 0;
    rows.push_back(row);
    auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };
    printf(
        "%7d %10.0f %9.1f %9.1f %9.1f %9.1f %9.1f %4d %9.1f %9.1f %6.2f %6.2f %9.1f %8.1f %6.2f %8.1f %8.2f "
        "%8.2f\n",
        T, row.bytes, row.d50, row.d99, row.c50, row.c99, row.slow_d50, row.slow_rank, row.n_d50, row.n_c50,
        ratio(row.d50, row.n_d50), ratio(row.c50, row.n_c50), row.peer_us, row.peer_gbs,
        ratio(row.d50, row.peer_us), row.d50 > 0 ? row.bytes / (row.d50 * 1e3) : 0, row.post50, row.cpost50);
    fflush(stdout);
  }
  if (ncclMoeCommDestroy(moe) != ncclSuccess)
    die(me, std::string("destroy: ") + ncclMoeGetLastError(nullptr));
  if (nccl != nullptr) ncclCommDestroy(nccl);
  return rows;
}

void header(const Opts& o) {
  char host[256] = "";
  gethostname(host, sizeof host - 1);
  int v = 0;
  ncclGetVersion(&v);
  const std::string path = o.fabric ? "every peer through the fabric proxy (MOEFABRIC_FORCE_FABRIC=1)"
                           : o.node_size > 0
                               ? "nodes of " + std::to_string(o.node_size) + " ranks (MOEFABRIC_NODE_SIZE)"
                               : std::string("NVLink");
  const char* prov = getenv("MOEFABRIC_PROVIDER");
  const char* staging = getenv("MOEFABRIC_MOE_STAGING");
  const std::string via = o.fabric || o.node_size > 0
                              ? std::string(", provider ") + (prov && *prov ? prov : "default") +
                                    ", staging " + (staging && *staging ? staging : "auto")
                              : "";
  printf("# moefabric-moe-gpu-perf: CUDA backend (%s%s), host %s, NCCL %d, %d ranks\n", path.c_str(),
         via.c_str(), host, v, o.ranks);
  printf(
      "# E %d, top-%d, hidden %d, %s dispatch, bf16 combine; %d iters + %d warmup per row, each a CUDA\n"
      "# graph replay with fresh device-side routing; times between CUDA events, p50/p99 pooled over ranks\n",
      o.experts, o.topk, o.hidden, o.dtype.c_str(), o.iters, o.warmup);
  printf("#\n# %5s %10s %9s %9s %9s %9s %9s %4s %9s %9s %6s %6s %9s %8s %6s %8s %8s %8s\n", "T", "disp_B",
         "disp_p50", "disp_p99", "comb_p50", "comb_p99", "slow_d50", "slow", "a2a_d50", "a2a_c50", "d/a2a",
         "c/a2a", "peer_cp", "peer", "d/cp", "disp", "post", "cpost");
  printf("# %5s %10s %9s %9s %9s %9s %9s %4s %9s %9s %6s %6s %9s %8s %6s %8s %8s %8s\n", "", "(/peer)",
         "(us)", "(us)", "(us)", "(us)", "(us)", "rank", "(us)", "(us)", "", "", "(us)", "(GB/s)", "",
         "(GB/s)", "(us)", "(us)");
  fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  Opts o;
  CLI::App app{"ncclMoe CUDA backend dispatch/combine latency over NVLink, in CUDA graphs"};
  perf::init_app(app, argc, argv);
  app.add_option("-r,--ranks", o.ranks, "ranks (one process each; GPUs shared round robin with --no-nccl)")
      ->check(CLI::Range(1, 4096));
  app.add_option("--tokens", o.tokens, "tokens per rank to sweep")->delimiter(',');
  app.add_option("--hidden", o.hidden, "hidden size");
  app.add_option("-k,--topk", o.topk, "top-k");
  app.add_option("-E,--experts", o.experts, "experts");
  app.add_option("-d,--dtype", o.dtype, "dispatch type")->check(CLI::IsMember({"bf16", "fp8"}));
  app.add_option("-n,--iters", o.iters, "timed iterations per row")->check(CLI::PositiveNumber);
  app.add_option("-w,--warmup,--warmup_iters", o.warmup, "untimed iterations per row")
      ->check(CLI::NonNegativeNumber);
  app.add_flag(
      "--no-nccl", o.no_nccl,
      "no NCCL: skip the all_to_all baseline, bootstrap over the launcher, align the ranks with a host "
      "barrier (ranks may share a GPU)");
  app.add_flag("--breakdown", o.breakdown,
               "also time each half-call (split API) and an empty kernel on the same grid");
  app.add_flag("--fabric", o.fabric,
               "every peer through the fabric proxy (sets MOEFABRIC_FORCE_FABRIC=1; provider from "
               "MOEFABRIC_PROVIDER, e.g. shm)");
  app.add_option("--node-size", o.node_size, "sets MOEFABRIC_NODE_SIZE (0: leave it)")
      ->check(CLI::Range(0, 4096));
  app.add_option("-J,--json", o.json, "also write the results as JSON to this file (docs/perf-json.md)")
      ->type_name("FILE");
  app.add_option("-T,--timeout", o.timeout, "seconds before the ranks are killed")
      ->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  // The forked ranks inherit these.
  if (o.fabric) setenv("MOEFABRIC_FORCE_FABRIC", "1", 1);
  if (o.node_size > 0) setenv("MOEFABRIC_NODE_SIZE", std::to_string(o.node_size).c_str(), 1);
  std::unique_ptr<OobChannel> oob = moefabric::oob_from_env_or_exit();  // moefabric-run, torchrun or mpirun
  const bool launched = oob != nullptr;
  if (launched) o.ranks = oob->nranks();
  if (!launched || oob->rank() == 0) header(o);
  auto body = [&](OobChannel& ch) {
    std::string gpu;
    std::vector<Row> rows = run_rank(ch, o, &gpu);
    if (ch.rank() == 0 && !o.json.empty()) {
      const char* path = o.fabric ? "fabric" : o.node_size > 0 ? "nodes" : "nvlink";
      perf::Json results = perf::Json::array();
      for (const Row& r : rows)
        results.push_back({{"tokens", r.T},
                           {"dispatch_bytes_per_peer", r.bytes},
                           {"dispatch_p50_us", r.d50},
                           {"dispatch_p99_us", r.d99},
                           {"combine_p50_us", r.c50},
                           {"combine_p99_us", r.c99},
                           {"slowest_rank_dispatch_p50_us", r.slow_d50},
                           {"slowest_rank", r.slow_rank},
                           {"nccl_a2a_dispatch_p50_us", r.n_d50},
                           {"nccl_a2a_combine_p50_us", r.n_c50},
                           {"peer_copy_us", r.peer_us},
                           {"peer_copy_GBps", r.peer_gbs},
                           {"proxy_post_p50_us", r.post50},
                           {"proxy_combine_post_p50_us", r.cpost50},
                           {"path", path}});
      int v = 0;
      perf::Meta meta{"moefabric-moe-gpu-perf"};
      meta.gpu = gpu;
      if (ncclGetVersion(&v) == ncclSuccess) meta.nccl_version = perf::nccl_version_string(v);
      if (o.fabric || o.node_size > 0) meta.provider = perf::moe_provider();
      perf::Json config = {{"backend", "cuda"},
                           {"path", path},
                           {"ranks", o.ranks},
                           {"hidden", o.hidden},
                           {"topk", o.topk},
                           {"experts", o.experts},
                           {"dtype", o.dtype},
                           {"iters", o.iters},
                           {"warmup", o.warmup},
                           {"node_size", o.node_size},
                           {"nccl_baseline", !o.no_nccl}};
      if (Status s = perf::write_json(o.json, perf::document(meta, config, results)); !s.ok())
        fprintf(stderr, "moefabric-moe-gpu-perf: %s\n", s.message().c_str());
    }
    return 0;
  };
  if (launched) {
    const int rc = body(*oob);
    if (oob->rank() == 0) printf("# done\n");
    return rc;
  }
  auto res = moefabric::launch_fork(o.ranks, body, o.timeout);
  if (!res.ok) {
    fprintf(stderr, "moefabric-moe-gpu-perf: failed:\n%s", res.report.c_str());
    return 1;
  }
  printf("# done\n");
  return 0;
}
