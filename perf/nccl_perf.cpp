// moefabric-nccl-perf: a small nccl-tests style benchmark (all_reduce, all_to_all)
// used to compare NCCL traffic through the moefabric net plugin against NCCL's
// own transports. Plain C++ on the CUDA runtime + NCCL APIs; no kernels.
//
// Process layout: the parent never touches CUDA. It forks one child per rank
// first (CUDA state does not survive fork), then creates the ncclUniqueId (the
// bootstrap root thread lives in the caller, so the parent must outlive init)
// and hands it to the children through pipes. Children stream progress and
// result messages back over a second pipe; the parent prints the table, keeps
// a per-rank watchdog and turns any failure or stall into a non-zero exit.
#include <cuda_runtime.h>
#include <nccl.h>

#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "perf/perf_tool.h"

namespace perf = moefabric::perf;

namespace {

// Child-side context for the error macros. Trivially initialised on purpose.
int g_rank = -1;
ncclComm_t g_comm = nullptr;

[[noreturn]] void die() {
  std::fflush(stdout);
  std::fflush(stderr);
  _exit(1);  // not exit(): atexit/static teardown of CUDA/NCCL may hang after a failure
}

[[noreturn]] void fail(const char* file, int line, const char* kind, const char* err, const char* call) {
  std::fprintf(stderr, "%s:%d rank %d: %s error '%s' in %s (NCCL last error: %s)\n", file, line, g_rank, kind,
               err, call, ncclGetLastError(g_comm));
  die();
}
#define CUDACHECK(cmd)                                                                     \
  do {                                                                                     \
    cudaError_t e_ = (cmd);                                                                \
    if (e_ != cudaSuccess) fail(__FILE__, __LINE__, "CUDA", cudaGetErrorString(e_), #cmd); \
  } while (0)
#define NCCLCHECK(cmd)                                                                     \
  do {                                                                                     \
    ncclResult_t r_ = (cmd);                                                               \
    if (r_ != ncclSuccess) fail(__FILE__, __LINE__, "NCCL", ncclGetErrorString(r_), #cmd); \
  } while (0)

enum Op : int { kAllReduce = 0, kAllToAll = 1 };
const char* opName(int op) { return op == kAllReduce ? "all_reduce" : "all_to_all"; }

struct Config {
  int ranks = 0;
  perf::Sweep sweep;
  int warmup = 5, iters = 20, timeoutSec = 120;
  std::string op = "all", jsonFile, label;
  bool check = true;
};

// Fixed-size message children send to the parent; well under PIPE_BUF, so
// each write() is atomic and reads never see a torn message.
enum MsgType : int { kInfo, kProgress, kResult, kDone };
struct Msg {
  int type, rank, op, iters, dev, pid;
  unsigned long long bytes, count, wrong;
  double avgUs, minUs;
  char stage[16], host[64], gpu[256], bus[32];  // gpu sized like cudaDeviceProp::name
};

void sendMsg(int fd, Msg m) {
  m.rank = g_rank;
  const char* p = reinterpret_cast<const char*>(&m);
  size_t left = sizeof m;
  while (left > 0) {
    ssize_t w = write(fd, p, left);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      std::fprintf(stderr, "rank %d: lost pipe to parent\n", g_rank);
      die();
    }
    p += w;
    left -= size_t(w);
  }
}

bool readAll(int fd, void* buf, size_t len) {
  char* p = static_cast<char*>(buf);
  while (len > 0) {
    ssize_t r = read(fd, p, len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    len -= size_t(r);
  }
  return true;
}

// Element counts per op for a requested per-rank byte size. all_to_all needs
// the send buffer to split into n equal float chunks, so round down.
size_t countFor(int op, size_t bytes, int n) {
  size_t unit = op == kAllToAll ? size_t(n) : 1;
  return bytes / (unit * sizeof(float)) * unit;
}

std::vector<size_t> sizeList(const Config& c, int op, int n) {
  std::vector<size_t> out;
  for (size_t b = c.sweep.min_bytes; b <= c.sweep.max_bytes; b *= size_t(c.sweep.factor)) {
    size_t cnt = countFor(op, b, n);
    if (cnt > 0 && (out.empty() || out.back() != cnt)) out.push_back(cnt);
    if (b > c.sweep.max_bytes / size_t(c.sweep.factor)) break;  // avoid overflow
  }
  return out;
}

// Small integers so that float sums over ranks are exact.
inline float arValue(int r, size_t i) { return float(int((i * 3 + size_t(r) * 5) % 13) - 6); }
inline float a2aValue(int src, int dst, size_t k) {
  return float((size_t(src) * 7 + size_t(dst) * 3 + k) % 251);
}

// Wait for the stream while watching for NCCL async errors (a plain
// cudaStreamSynchronize would block forever if a peer or the network died).
void waitStream(cudaStream_t s) {
  for (;;) {
    cudaError_t e = cudaStreamQuery(s);
    if (e == cudaSuccess) return;
    if (e != cudaErrorNotReady) CUDACHECK(e);
    ncclResult_t async = ncclSuccess;
    NCCLCHECK(ncclCommGetAsyncError(g_comm, &async));
    if (async != ncclSuccess && async != ncclInProgress) NCCLCHECK(async);
    sched_yield();
  }
}

[[noreturn]] void childMain(const Config& c, int rank, int n, int ngpu, int idFd, int outFd) {
  g_rank = rank;
  Msg m{.type = kInfo, .dev = rank % ngpu, .pid = int(getpid())};
  CUDACHECK(cudaSetDevice(m.dev));
  cudaDeviceProp prop{};
  CUDACHECK(cudaGetDeviceProperties(&prop, m.dev));
  std::snprintf(m.gpu, sizeof m.gpu, "%s", prop.name);
  CUDACHECK(cudaDeviceGetPCIBusId(m.bus, sizeof m.bus, m.dev));
  gethostname(m.host, sizeof m.host - 1);
  sendMsg(outFd, m);

  ncclUniqueId id;
  if (!readAll(idFd, &id, sizeof id)) {
    std::fprintf(stderr, "rank %d: no ncclUniqueId from parent\n", rank);
    die();
  }
  close(idFd);

  auto progress = [&](int op, size_t bytes, const char* stage) {
    Msg p{.type = kProgress, .op = op, .bytes = bytes};
    std::snprintf(p.stage, sizeof p.stage, "%s", stage);
    sendMsg(outFd, p);
  };
  progress(-1, 0, "init");
  NCCLCHECK(ncclCommInitRank(&g_comm, n, id, rank));
  cudaStream_t stream;
  // Non-blocking stream: every copy/memset below is explicitly ordered on it
  // (plain cudaMemset/cudaMemcpy would go to the legacy stream and race with it).
  CUDACHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  std::vector<int> ops;
  if (c.op != "all_to_all") ops.push_back(kAllReduce);
  if (c.op != "all_reduce") ops.push_back(kAllToAll);
  size_t maxCount = countFor(kAllReduce, c.sweep.max_bytes, n);
  float *sendBuf = nullptr, *recvBuf = nullptr;
  CUDACHECK(cudaMalloc(&sendBuf, maxCount * sizeof(float)));
  CUDACHECK(cudaMalloc(&recvBuf, maxCount * sizeof(float)));
  CUDACHECK(cudaMemsetAsync(sendBuf, 0, maxCount * sizeof(float), stream));
  std::vector<float> host(c.check ? maxCount : 0);
  std::vector<cudaEvent_t> ev(size_t(c.iters) + 1);
  for (auto& e : ev) CUDACHECK(cudaEventCreate(&e));

  auto launch = [&](int op, size_t count) {
    if (op == kAllReduce)
      NCCLCHECK(ncclAllReduce(sendBuf, recvBuf, count, ncclFloat, ncclSum, g_comm, stream));
    else  // ncclAlltoAll's count is per peer
      NCCLCHECK(ncclAlltoAll(sendBuf, recvBuf, count / size_t(n), ncclFloat, g_comm, stream));
  };

  for (int op : ops) {
    for (size_t count : sizeList(c, op, n)) {
      size_t bytes = count * sizeof(float), chunk = count / size_t(n);
      // Big sizes take long per iteration; fewer iterations keep the run short.
      int iters = bytes >= (size_t(64) << 20) ? std::max(1, c.iters / 4) : c.iters;
      if (c.check) {  // all_to_all's pattern depends on the chunk size: refill per size
        for (size_t i = 0; i < count; ++i)
          host[i] = op == kAllReduce ? arValue(rank, i) : a2aValue(rank, int(i / chunk), i % chunk);
        CUDACHECK(cudaMemcpyAsync(sendBuf, host.data(), bytes, cudaMemcpyHostToDevice, stream));
      }
      progress(op, bytes, "warmup");
      for (int w = 0; w < c.warmup; ++w) launch(op, count);
      waitStream(stream);

      progress(op, bytes, "timing");
      // One event between iterations gives both the average and the best iteration.
      for (int i = 0; i < iters; ++i) {
        CUDACHECK(cudaEventRecord(ev[size_t(i)], stream));
        launch(op, count);
      }
      CUDACHECK(cudaEventRecord(ev[size_t(iters)], stream));
      waitStream(stream);
      float totalMs = 0, minMs = 1e30f;
      CUDACHECK(cudaEventElapsedTime(&totalMs, ev[0], ev[size_t(iters)]));
      for (int i = 0; i < iters; ++i) {
        float ms = 0;
        CUDACHECK(cudaEventElapsedTime(&ms, ev[size_t(i)], ev[size_t(i) + 1]));
        minMs = std::min(minMs, ms);
      }

      unsigned long long wrong = 0;
      if (c.check) {
        progress(op, bytes, "check");
        CUDACHECK(cudaMemsetAsync(recvBuf, 0xff, bytes, stream));  // NaN: unwritten output counts as wrong
        launch(op, count);
        waitStream(stream);
        CUDACHECK(cudaMemcpyAsync(host.data(), recvBuf, bytes, cudaMemcpyDeviceToHost, stream));
        waitStream(stream);
        for (size_t i = 0; i < count; ++i) {
          float want = 0;
          if (op == kAllReduce)
            for (int r = 0; r < n; ++r) want += arValue(r, i);
          else  // chunk j of my output is chunk `rank` of rank j's input
            want = a2aValue(int(i / chunk), rank, i % chunk);
          wrong += host[i] != want;
        }
      }
      sendMsg(outFd, Msg{.type = kResult,
                         .op = op,
                         .iters = iters,
                         .bytes = bytes,
                         .count = count,
                         .wrong = wrong,
                         .avgUs = 1e3 * double(totalMs) / iters,
                         .minUs = 1e3 * double(minMs)});
    }
  }
  progress(-1, 0, "teardown");
  for (auto& e : ev) CUDACHECK(cudaEventDestroy(e));
  CUDACHECK(cudaFree(sendBuf));
  CUDACHECK(cudaFree(recvBuf));
  CUDACHECK(cudaStreamDestroy(stream));
  NCCLCHECK(ncclCommDestroy(g_comm));
  g_comm = nullptr;
  sendMsg(outFd, Msg{.type = kDone});
  std::fflush(stdout);
  _exit(0);
}

// Count GPUs in a throw-away child: calling CUDA in the parent would make the
// later fork()ed ranks unable to use CUDA.
moefabric::Status probeGpus(int timeoutSec, int* count) {
  struct Reply {
    int count;
    char err[256];
  } rep{-1, "GPU probe crashed"};
  int fds[2];
  pid_t pid = pipe(fds) == 0 ? fork() : -1;
  if (pid < 0) return moefabric::Status::system_error("pipe/fork failed");
  if (pid == 0) {
    cudaError_t e = cudaGetDeviceCount(&rep.count);
    if (e != cudaSuccess) rep.count = -1;
    bool noGpu = e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice;
    std::snprintf(rep.err, sizeof rep.err, "cudaGetDeviceCount: %s%s", cudaGetErrorString(e),
                  noGpu ? " (no NVIDIA GPU or driver visible on this machine?)" : "");
    _exit(write(fds[1], &rep, sizeof rep) == ssize_t(sizeof rep) ? 0 : 1);
  }
  close(fds[1]);
  pollfd p{fds[0], POLLIN, 0};
  if (poll(&p, 1, timeoutSec * 1000) <= 0) {
    std::snprintf(rep.err, sizeof rep.err, "GPU probe timed out after %d s", timeoutSec);
    kill(pid, SIGKILL);
  } else if (readAll(fds[0], &rep, sizeof rep) && rep.count == 0) {
    rep.count = -1;
    std::snprintf(rep.err, sizeof rep.err, "no CUDA device visible");
  }
  close(fds[0]);
  waitpid(pid, nullptr, 0);
  if (rep.count < 0) return moefabric::Status::cuda_error(rep.err);
  *count = rep.count;
  return {};
}

const char* kEnvVars[] = {"NCCL_NET",         "NCCL_NET_PLUGIN", "NCCL_P2P_DISABLE",
                          "NCCL_SHM_DISABLE", "FI_PROVIDER",     "MOEFABRIC_PROVIDER"};

}  // namespace

int main(int argc, char** argv) {
  Config c;
  CLI::App app{"moefabric-nccl-perf: NCCL all_reduce / all_to_all bandwidth test, one process per GPU"};
  perf::init_app(app, argc, argv);
  app.add_option("-r,--ranks", c.ranks, "number of ranks, one process each (0: the visible GPUs)")
      ->check(CLI::NonNegativeNumber);
  perf::add_sweep(app, &c.sweep, 1 << 20);
  app.add_option("--op", c.op, "operation")->check(CLI::IsMember({"all_reduce", "all_to_all", "all"}));
  app.add_option("-n,--iters", c.iters, "timed iterations (a quarter for sizes >= 64 MiB)")
      ->check(CLI::PositiveNumber);
  app.add_option("-w,--warmup,--warmup_iters", c.warmup, "warmup iterations")->check(CLI::NonNegativeNumber);
  perf::add_check(app, &c.check, "verify results on the host");
  app.add_flag_callback(
      "--no-check", [&c] { c.check = false; }, "same as -c 0");
  app.add_option("-J,--json", c.jsonFile, "also write the results as JSON to this file (docs/perf-json.md)")
      ->type_name("FILE");
  app.add_option("--label", c.label, "free text for the preamble and JSON, e.g. moefabric/shm");
  app.add_option("-T,--timeout", c.timeoutSec, "fail if a rank makes no progress for SEC seconds")
      ->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  signal(SIGPIPE, SIG_IGN);  // a dead child must surface as an error, not kill us
  using Json = perf::Json;
  perf::Meta meta{"moefabric-nccl-perf"};
  Json config{{"label", c.label},
              {"op", c.op},
              {"check", c.check},
              {"min_bytes", c.sweep.min_bytes},
              {"max_bytes", c.sweep.max_bytes},
              {"step_factor", c.sweep.factor},
              {"iters", c.iters},
              {"warmup", c.warmup}};
  for (const char* v : kEnvVars) config["env"][v] = std::getenv(v) ? Json(std::getenv(v)) : Json(nullptr);
  Json results = Json::array(), summary = Json::object();
  // Every exit path after argument parsing goes through here, so --json always gets a record.
  auto finish = [&](int rc, const std::string& failure) {
    if (!failure.empty()) std::fprintf(stderr, "moefabric-nccl-perf: FAILED: %s\n", failure.c_str());
    if (c.jsonFile.empty()) return rc;
    Json doc = perf::document(meta, config, results);
    summary["error"] = failure.empty() ? Json(nullptr) : Json(failure);
    summary["exit_code"] = rc;
    doc["summary"] = summary;
    const moefabric::Status written = perf::write_json(c.jsonFile, doc);
    if (written.ok()) return rc;
    std::fprintf(stderr, "moefabric-nccl-perf: %s\n", written.message().c_str());
    return rc ? rc : 3;
  };

  int ngpu = 0;
  if (moefabric::Status s = probeGpus(c.timeoutSec, &ngpu); !s.ok())
    return finish(3, "cannot use CUDA: " + s.message());
  int n = c.ranks > 0 ? c.ranks : ngpu;
  const size_t N = size_t(n);

  // Fork all ranks before anything in this process touches CUDA or NCCL.
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t parentPid = getpid();
  std::vector<pid_t> pids(N, -1);
  std::vector<int> idFds(N, -1), outFds(N, -1);
  bool killed = false;
  auto killAll = [&] {
    killed = true;
    for (pid_t p : pids)
      if (p > 0) kill(p, SIGKILL);
  };
  for (int r = 0; r < n; ++r) {
    int idp[2], outp[2];
    pid_t pid = pipe(idp) == 0 && pipe(outp) == 0 ? fork() : -1;
    if (pid < 0) {
      std::perror("pipe/fork");
      killAll();
      return finish(3, "cannot start rank " + std::to_string(r));
    }
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the parent (and its watchdog)
      if (getppid() != parentPid) _exit(1);
      for (size_t k = 0; k < size_t(r); ++k) {  // earlier ranks' pipe ends are not ours
        close(idFds[k]);
        close(outFds[k]);
      }
      close(idp[1]);
      close(outp[0]);
      childMain(c, r, n, ngpu, idp[0], outp[1]);
    }
    close(idp[0]);
    close(outp[1]);  // so the read end sees EOF exactly when the child is gone
    pids[size_t(r)] = pid;
    idFds[size_t(r)] = idp[1];
    outFds[size_t(r)] = outp[0];
  }

  int ver = 0;
  ncclUniqueId id;
  ncclResult_t nr = ncclGetVersion(&ver);
  if (nr == ncclSuccess) nr = ncclGetUniqueId(&id);
  if (nr != ncclSuccess) {
    killAll();
    return finish(3, std::string("ncclGetUniqueId: ") + ncclGetErrorString(nr) + " (" +
                         ncclGetLastError(nullptr) + ")");
  }
  const std::string verStr = perf::nccl_version_string(ver);
  meta.nccl_version = verStr;
  config["ranks"] = n;
  for (int fd : idFds) {
    if (write(fd, &id, sizeof id) != ssize_t(sizeof id)) { /* that child is gone: reaped below */
    }
    close(fd);
  }

  // Parent event loop: collect messages, print rows, watch for stalls and failures.
  using Clock = std::chrono::steady_clock;
  std::vector<Msg> info(N), last(N);
  std::vector<Clock::time_point> lastSeen(N, Clock::now());
  std::vector<bool> alive(N, true), done(N, false);
  std::map<std::pair<int, unsigned long long>, std::vector<Msg>> pending;
  int infos = 0, liveCount = n, rows = 0, rc = 0;
  unsigned long long totalWrong = 0;
  double busSum = 0;
  std::string failure;
  Clock::time_point killAt = Clock::time_point::max(), giveUpAt = Clock::time_point::max();

  auto printPreamble = [&] {
    std::printf("# moefabric-nccl-perf  NCCL %s  label \"%s\"\n", verStr.c_str(), c.label.c_str());
    std::printf("# ranks %d  op %s  bytes %llu..%llu x%d  warmup %d  iters %d  check %s  timeout %d s\n", n,
                c.op.c_str(), static_cast<unsigned long long>(c.sweep.min_bytes),
                static_cast<unsigned long long>(c.sweep.max_bytes), c.sweep.factor, c.warmup, c.iters,
                c.check ? "on" : "off", c.timeoutSec);
    std::printf("# env");
    for (const char* v : kEnvVars) std::printf(" %s=%s", v, std::getenv(v) ? std::getenv(v) : "<unset>");
    std::printf("\n");
    if (n > ngpu) std::printf("# warning: %d ranks on %d GPUs (ranks share GPUs)\n", n, ngpu);
    for (const Msg& m : info) {
      std::printf("#  rank %2d  host %s  pid %d  device %d  %s  [%s]\n", m.rank, m.host, m.pid, m.dev, m.gpu,
                  m.bus);
      if (m.rank == 0) meta.gpu = m.gpu;
      config["rank_info"].push_back({{"rank", m.rank},
                                     {"host", m.host},
                                     {"pid", m.pid},
                                     {"device", m.dev},
                                     {"gpu", m.gpu},
                                     {"pci_bus_id", m.bus}});
    }
    const char* fmt = "#%11s  %12s  %6s  %10s  %5s  %10s  %10s  %7s  %7s  %6s\n";
    std::printf("#\n");
    std::printf(fmt, "size", "count", "type", "op", "iters", "time", "min", "algbw", "busbw", "#wrong");
    std::printf(fmt, "(B)", "(elements)", "", "", "", "(us)", "(us)", "(GB/s)", "(GB/s)", "");
    std::fflush(stdout);
  };

  // One row from every rank's result: the slowest rank defines the time, as in nccl-tests.
  auto printRow = [&](const std::vector<Msg>& ms) {
    const Msg& m0 = ms[0];
    double avg = 0, mn = 0;
    unsigned long long wrong = 0;
    for (const Msg& m : ms) {
      avg = std::max(avg, m.avgUs);
      mn = std::max(mn, m.minUs);  // the slowest rank's best iteration
      wrong += m.wrong;
    }
    double algbw = double(m0.bytes) / (avg * 1e3);  // bytes per ns == GB/s
    double busbw = algbw * (m0.op == kAllReduce ? 2.0 * (n - 1) / n : double(n - 1) / n);
    std::printf("%12llu  %12llu  %6s  %10s  %5d  %10.2f  %10.2f  %7.2f  %7.2f  %6s\n", m0.bytes, m0.count,
                "float", opName(m0.op), m0.iters, avg, mn, algbw, busbw,
                c.check ? std::to_string(wrong).c_str() : "N/A");
    std::fflush(stdout);
    totalWrong += wrong;
    busSum += busbw;
    ++rows;
    results.push_back({{"op", opName(m0.op)},
                       {"bytes", m0.bytes},
                       {"count", m0.count},
                       {"type", "float"},
                       {"iters", m0.iters},
                       {"time_us", avg},
                       {"min_time_us", mn},
                       {"algbw_gbps", algbw},
                       {"busbw_gbps", busbw},
                       {"wrong", c.check ? Json(wrong) : Json(nullptr)}});
  };

  auto describe = [&](size_t r) {
    const Msg& m = last[r];
    if (m.type != kProgress) return std::string("startup (CUDA init)");
    if (m.op < 0) return std::string(m.stage);
    return std::string(opName(m.op)) + " " + std::to_string(m.bytes) + " B, " + m.stage;
  };
  auto fail = [&](const std::string& why, int graceSec) {
    if (failure.empty()) failure = why;
    rc = 3;
    killAt = std::min(killAt, Clock::now() + std::chrono::seconds(graceSec));
  };

  while (liveCount > 0) {
    std::vector<pollfd> pfds;
    for (int fd : outFds)
      if (fd >= 0) pfds.push_back({fd, POLLIN, 0});
    if (pfds.empty() || poll(pfds.data(), pfds.size(), 200) <= 0) usleep(pfds.empty() ? 20000 : 0);
    for (const pollfd& p : pfds) {
      if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) continue;
      size_t r = size_t(std::find(outFds.begin(), outFds.end(), p.fd) - outFds.begin());
      Msg m{};
      if (!readAll(p.fd, &m, sizeof m)) {
        close(p.fd);
        outFds[r] = -1;
        continue;
      }
      lastSeen[r] = Clock::now();
      if (m.type == kInfo) {
        info[r] = m;
        if (++infos == n) printPreamble();
      } else if (m.type == kProgress) {
        last[r] = m;
      } else if (m.type == kDone) {
        done[r] = true;
      } else if (m.type == kResult) {  // a row is complete once every rank reported it
        auto& v = pending[{m.op, m.bytes}];
        v.push_back(m);
        if (v.size() < N) continue;
        printRow(v);
        pending.erase({m.op, m.bytes});
      }
    }
    // Reap a child only once its pipe hit EOF, so every message it sent has been read.
    for (size_t r = 0; r < N; ++r) {
      int st = 0;
      if (!alive[r] || outFds[r] >= 0 || waitpid(pids[r], &st, WNOHANG) != pids[r]) continue;
      alive[r] = false;
      pids[r] = -1;
      --liveCount;
      if (WIFEXITED(st) && WEXITSTATUS(st) == 0 && done[r]) continue;
      if (killed && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) {
        std::fprintf(stderr, "# rank %zu: killed by moefabric-nccl-perf during %s\n", r, describe(r).c_str());
        continue;
      }
      std::string how = WIFSIGNALED(st) ? "was killed by signal " + std::to_string(WTERMSIG(st))
                                        : "exited with status " + std::to_string(WEXITSTATUS(st));
      std::string msg = "rank " + std::to_string(r) + " " + how + " during " + describe(r);
      std::fprintf(stderr, "# error: %s\n", msg.c_str());
      // Peers are likely blocked in NCCL on the dead rank: give them a moment to report their own errors.
      fail(msg, 3);
    }
    auto now = Clock::now();
    for (size_t r = 0; r < N && failure.empty(); ++r) {
      if (!alive[r] || now - lastSeen[r] < std::chrono::seconds(c.timeoutSec)) continue;
      std::fprintf(stderr, "# watchdog: rank %zu made no progress for %d s (in %s); killing all ranks\n", r,
                   c.timeoutSec, describe(r).c_str());
      for (size_t k = 0; k < N; ++k)
        if (k != r && alive[k]) std::fprintf(stderr, "#   rank %zu was in %s\n", k, describe(k).c_str());
      fail("watchdog: rank " + std::to_string(r) + " stalled in " + describe(r), 0);
    }
    if (!killed && now >= killAt) {
      killAll();
      giveUpAt = now + std::chrono::seconds(10);
    }
    if (now >= giveUpAt) {  // e.g. stuck in the driver, immune to SIGKILL: still never hang
      std::fprintf(stderr, "# %d rank(s) did not die after SIGKILL; giving up on them\n", liveCount);
      break;
    }
  }

  if (rc == 0 && totalWrong > 0) rc = 1;
  double avgBus = rows ? busSum / rows : 0.0;
  if (infos == n) {
    std::printf("# Out of bounds values : %llu %s\n", totalWrong, rc ? "FAILED" : "OK");
    std::printf("# Avg bus bandwidth    : %.3f\n#\n", avgBus);
    std::fflush(stdout);
  }
  summary["out_of_bounds"] = totalWrong;
  summary["avg_busbw_gbps"] = avgBus;
  return finish(rc, failure);
}
