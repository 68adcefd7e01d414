// moefabric-net-perf: ping-pong latency and windowed bandwidth through the net plugin's
// transport (the same code NCCL drives) between two local processes, with a raw libfabric
// baseline (plain fi_writedata on the same provider and NIC) in the same run.
#include <CLI/CLI.hpp>

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#ifdef MOEFABRIC_NET_PERF_CUDA
#include <cuda_runtime.h>
#endif

#include "common/launch.h"
#include "common/rendezvous.h"
#include "fabric/info.h"
#include "perf/perf_tool.h"
#include "plugin/net/net.h"

namespace {

using namespace moefabric;
using namespace moefabric::fabric;
using Clock = std::chrono::steady_clock;

struct Opts {
  perf::Sweep sweep;
  int warmup = 5, iters = 0, window = 16, timeout = 300;
  bool raw = true, check = false, gpu = false;
  std::string json;
  const char* where = "on this host";  // or launched from outside (moefabric-run, torchrun, mpirun)
};

// What rank 0 tells the parent through the pipe: a Hello once connected, then one Row per size.
struct Hello {
  char provider[64], nic[64], gpu[256];
};
struct Row {
  size_t bytes;
  double lat_plugin = 0, lat_raw = 0, bw_plugin = 0, bw_raw = 0;
  long wrong = 0;
};

int lat_iters(const Opts& o, size_t s) {
  if (o.iters > 0) return o.iters;
  return static_cast<int>(std::clamp<size_t>((64u << 20) / std::max<size_t>(s, 1), 5, 1000));
}
int bw_iters(const Opts& o, size_t s) {
  if (o.iters > 0) return o.iters;
  return static_cast<int>(std::clamp<size_t>((512u << 20) / (std::max<size_t>(s, 1) * o.window), 3, 200));
}

[[noreturn]] void die(int rank, const char* phase, const std::string& what) {
  fprintf(stderr, "moefabric-net-perf: rank %d: %s: %s\n", rank, phase, what.c_str());
  fflush(stderr);
  _exit(2);
}

// ---- message buffers: host memory, or GPU memory with --gpu ------------------------------------
struct Buffer {
  int rank = 0;
  bool gpu = false;
  uint8_t* p = nullptr;
  size_t n = 0;
  std::vector<uint8_t> host;  // the bytes (host buffers) or their staging copy (GPU buffers)

  Buffer(int r, bool on_gpu, size_t bytes, uint8_t fill) : rank(r), gpu(on_gpu), n(bytes), host(bytes, fill) {
    if (!gpu) {
      p = host.data();
      return;
    }
#ifdef MOEFABRIC_NET_PERF_CUDA
    if (cudaMalloc(reinterpret_cast<void**>(&p), n) != cudaSuccess) die(rank, "cudaMalloc", "failed");
    push(n);
#endif
  }
  ~Buffer() {
#ifdef MOEFABRIC_NET_PERF_CUDA
    if (gpu) cudaFree(p);
#endif
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  uint8_t* data() { return p; }
  // Makes the first `len` bytes of `host` the buffer's contents (GPU: copies them over).
  void push(size_t len) {
#ifdef MOEFABRIC_NET_PERF_CUDA
    if (gpu && cudaMemcpy(p, host.data(), len, cudaMemcpyHostToDevice) != cudaSuccess)
      die(rank, "cudaMemcpy", "upload failed");
#else
    (void)len;
#endif
  }
  // Brings the first `len` bytes into `host` (GPU: copies them back).
  void pull(size_t len) {
#ifdef MOEFABRIC_NET_PERF_CUDA
    if (gpu && cudaMemcpy(host.data(), p, len, cudaMemcpyDeviceToHost) != cudaSuccess)
      die(rank, "cudaMemcpy", "download failed");
#else
    (void)len;
#endif
  }
};

// ---- plugin path --------------------------------------------------------------------------
struct PluginPath {
  int rank;
  Clock::time_point deadline;
  void *sc = nullptr, *rc = nullptr, *lc = nullptr, *smh = nullptr, *rmh = nullptr;

  void wait(void* req, const char* what, size_t* size_out = nullptr) {
    int done = 0;
    size_t sizes[8];
    while (!done) {
      if (net_test(req, &done, sizes) != Status::kOk) die(rank, what, "request failed");
      if (Clock::now() > deadline) die(rank, what, "timed out waiting for completion");
    }
    if (size_out) *size_out = sizes[0];
  }
  void* send(void* buf, size_t n) {
    void* r = nullptr;
    while (!r) {
      if (net_isend(sc, buf, n, rank, smh, &r) != Status::kOk) die(rank, "isend", "failed");
      if (Clock::now() > deadline) die(rank, "isend", "not accepted before the deadline");
    }
    return r;
  }
  // After a receive into GPU memory, as NCCL does: iflush, and wait for it when it is needed.
  void flush(void* buf, size_t n) {
    void* r = nullptr;
    int size = static_cast<int>(n);
    if (net_iflush(rc, 1, &buf, &size, &rmh, &r) != Status::kOk) die(rank, "iflush", "failed");
    if (r != nullptr) wait(r, "iflush");
  }
  void* recv(void* buf, size_t n) {
    void* r = nullptr;
    int tag = 1 - rank;
    while (!r) {
      if (net_irecv(rc, 1, &buf, &n, &tag, &rmh, &r) != Status::kOk) die(rank, "irecv", "failed");
      if (Clock::now() > deadline) die(rank, "irecv", "not accepted before the deadline");
    }
    return r;
  }
};

// ---- raw libfabric baseline ----------------------------------------------------------------
struct RawPeerInfo {
  uint8_t name[64];
  uint64_t name_len, addr, key;
};

struct RawPath {
  int rank;
  Clock::time_point deadline;
  fid_fabric* fabric = nullptr;
  fid_domain* domain = nullptr;
  fid_av* av = nullptr;
  fid_cq* cq = nullptr;
  fid_ep* ep = nullptr;
  fid_mr* mr = nullptr;
  void* desc = nullptr;
  fi_addr_t peer = FI_ADDR_UNSPEC;
  uint64_t raddr = 0, rkey = 0;
  long remote = 0, local_pending = 0;
  // Some providers (tcp;ofi_rxm) consume a posted receive for each incoming write's immediate.
  std::vector<uint8_t> rx_pool = std::vector<uint8_t>(64 * 64);
  std::vector<fi_context2> rx_ctx = std::vector<fi_context2>(64);

  void check(int rc, const char* what) {
    if (rc != 0) die(rank, what, fi_strerror(-rc));
  }
  void open(const fi_info* info, void* buf, size_t len, bool gpu, OobChannel& oob) {
    check(fi_fabric(info->fabric_attr, &fabric, nullptr), "raw fi_fabric");
    check(fi_domain(fabric, const_cast<fi_info*>(info), &domain, nullptr), "raw fi_domain");
    fi_av_attr aa = {};
    aa.type = FI_AV_TABLE;
    check(fi_av_open(domain, &aa, &av, nullptr), "raw fi_av_open");
    fi_cq_attr ca = {};
    ca.format = FI_CQ_FORMAT_DATA;
    check(fi_cq_open(domain, &ca, &cq, nullptr), "raw fi_cq_open");
    check(fi_endpoint(domain, const_cast<fi_info*>(info), &ep, nullptr), "raw fi_endpoint");
    check(fi_ep_bind(ep, &av->fid, 0), "raw bind av");
    check(fi_ep_bind(ep, &cq->fid, FI_TRANSMIT | FI_RECV), "raw bind cq");
    check(fi_enable(ep), "raw fi_enable");
    uint64_t mode = info->domain_attr->mr_mode;
    iovec iov = {buf, len};
    fi_mr_attr attr = {};
    attr.mr_iov = &iov;
    attr.iov_count = 1;
    attr.access = FI_WRITE | FI_REMOTE_WRITE | FI_READ | FI_REMOTE_READ | FI_SEND | FI_RECV;
    attr.requested_key = 7;
    uint64_t flags = 0;
    this->gpu = gpu;
#ifdef MOEFABRIC_NET_PERF_CUDA
    if (gpu) {
      attr.iface = FI_HMEM_CUDA;
      if (cudaGetDevice(&attr.device.cuda) != cudaSuccess) die(rank, "cudaGetDevice", "failed");
      flags |= FI_HMEM_DEVICE_ONLY;
    }
#else
    (void)gpu;
#endif
    check(fi_mr_regattr(domain, &attr, flags, &mr), "raw fi_mr_regattr");
    if (mode & FI_MR_ENDPOINT) {
      check(fi_mr_bind(mr, &ep->fid, 0), "raw fi_mr_bind");
      check(fi_mr_enable(mr), "raw fi_mr_enable");
    }
    desc = fi_mr_desc(mr);
    RawPeerInfo me = {}, all[2];
    size_t nl = sizeof me.name;
    check(fi_getname(&ep->fid, me.name, &nl), "raw fi_getname");
    me.name_len = nl;
    me.addr = (mode & FI_MR_VIRT_ADDR) ? reinterpret_cast<uintptr_t>(buf) : 0;
    me.key = fi_mr_key(mr);
    if (Status s = oob.allgather(&me, all, sizeof me); !s.ok()) die(rank, "raw exchange", s.message());
    for (int i = 0; i < 64; ++i)
      check(static_cast<int>(fi_recv(ep, rx_pool.data() + 64 * i, 64, nullptr, FI_ADDR_UNSPEC, &rx_ctx[i])),
            "raw fi_recv");
    const RawPeerInfo& p = all[1 - rank];
    if (fi_av_insert(av, p.name, 1, &peer, 0, nullptr) != 1) die(rank, "raw fi_av_insert", "failed");
    raddr = p.addr;
    rkey = p.key;
  }
  void poll() {
    fi_cq_data_entry e[16];
    ssize_t n = fi_cq_read(cq, e, 16);
    if (n == -FI_EAGAIN) return;
    if (n == -FI_EAVAIL) {
      fi_cq_err_entry err = {};
      fi_cq_readerr(cq, &err, 0);
      die(rank, "raw completion", fi_strerror(err.err));
    }
    if (n < 0) die(rank, "raw fi_cq_read", fi_strerror(static_cast<int>(-n)));
    for (ssize_t i = 0; i < n; ++i) {
      if (e[i].flags & (FI_REMOTE_CQ_DATA | FI_REMOTE_WRITE))
        ++remote;
      else if (!(e[i].flags & FI_RECV))
        --local_pending;
      if (e[i].flags & FI_RECV) {
        auto* ctx = static_cast<fi_context2*>(e[i].op_context);
        size_t k = static_cast<size_t>(ctx - rx_ctx.data());
        if (k < rx_ctx.size()) (void)fi_recv(ep, rx_pool.data() + 64 * k, 64, nullptr, FI_ADDR_UNSPEC, ctx);
      }
    }
  }
  void write(void* buf, size_t n) {
    for (;;) {
      ssize_t rc = fi_writedata(ep, buf, n, desc, 1, peer, raddr, rkey, nullptr);
      if (rc == 0) break;
      if (rc != -FI_EAGAIN) die(rank, "raw fi_writedata", fi_strerror(static_cast<int>(-rc)));
      poll();
      if (Clock::now() > deadline) die(rank, "raw fi_writedata", "queue full until the deadline");
    }
    ++local_pending;
  }
  long expected = 0;  // absolute count: completions may be read early by another poll()
  bool gpu = false;
  void wait_remote(long n, const char* what) {
    expected += n;
    while (remote < expected) {
      poll();
      if (Clock::now() > deadline) die(rank, what, "timed out waiting for the peer's write");
    }
#ifdef MOEFABRIC_NET_PERF_CUDA
    // The provider's copies into GPU memory run on the legacy stream and may still be in flight
    // (the same fence the plugin's iflush waits for).
    if (gpu && cudaStreamSynchronize(cudaStreamLegacy) != cudaSuccess)
      die(rank, what, "cudaStreamSynchronize failed");
#endif
  }
  void drain_local() {
    while (local_pending > 0) {
      poll();
      if (Clock::now() > deadline) die(rank, "raw drain", "local completions missing");
    }
  }
  void close() {
    for (fid* f : {&mr->fid, &ep->fid, &cq->fid, &av->fid, &domain->fid, &fabric->fid}) fi_close(f);
  }
};

double secs(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

double ratio(double a, double b) { return b > 0 ? a / b : 0; }

void print_header(const Opts& o, const Hello& h, bool raw) {
  printf("# moefabric-net-perf: 2 processes %s, provider %s, NIC %s\n", o.where, h.provider, h.nic);
  printf(
      "# sizes %llu..%llu x%d, window %d, warmup %d, iters %s, raw baseline %s, buffers in %s memory%s%s\n",
      static_cast<unsigned long long>(o.sweep.min_bytes), static_cast<unsigned long long>(o.sweep.max_bytes),
      o.sweep.factor, o.window, o.warmup, o.iters > 0 ? std::to_string(o.iters).c_str() : "auto",
      raw     ? "fi_writedata"
      : o.raw ? "off (provider without FI_RMA)"
              : "off",
      o.gpu ? "GPU" : "host", h.gpu[0] ? ", " : "", h.gpu);
  for (const char* v : {"MOEFABRIC_PROVIDER", "MOEFABRIC_TCP_IFACE", "MOEFABRIC_PROTOCOL",
                        "MOEFABRIC_EAGER_MAX", "MOEFABRIC_GDR", "FI_PROVIDER"})
    if (getenv(v)) printf("# %s=%s\n", v, getenv(v));
  printf("#\n# %12s %14s %12s %10s %15s %12s %9s %7s\n", "size", "lat_plugin", "lat_raw", "lat_ratio",
         "bw_plugin", "bw_raw", "bw_ratio", "#wrong");
  printf("# %12s %14s %12s %10s %15s %12s %9s %7s\n", "(B)", "(us)", "(us)", "", "(GB/s)", "(GB/s)", "", "");
  fflush(stdout);
}

void print_row(const Row& x) {
  printf("  %12zu %14.2f %12.2f %10.2f %15.3f %12.3f %9.2f %7ld\n", x.bytes, x.lat_plugin, x.lat_raw,
         ratio(x.lat_plugin, x.lat_raw), x.bw_plugin, x.bw_raw, ratio(x.bw_plugin, x.bw_raw), x.wrong);
  fflush(stdout);
}

int run_rank(OobChannel& oob, const Opts& o, const std::vector<size_t>& sizes, int out_fd) {
  int rank = oob.rank();
  auto deadline = Clock::now() + std::chrono::seconds(o.timeout);
  Net* net = nullptr;
  if (Status s = Net::acquire(&net); !s.ok()) die(rank, "init", s.message());
  PluginPath pp{rank, deadline};
  char h[128] = {}, hall[256];
  if (net_listen(net, 0, h, &pp.lc) != Status::kOk) die(rank, "listen", "failed");
  if (Status s = oob.allgather(h, hall, 128); !s.ok()) die(rank, "handle exchange", s.message());
  while (!pp.sc || !pp.rc) {
    if (!pp.sc && net_connect(net, 0, hall + (1 - rank) * 128, &pp.sc) != Status::kOk)
      die(rank, "connect", "failed");
    if (!pp.rc && net_accept(pp.lc, &pp.rc) != Status::kOk) die(rank, "accept", "failed");
    if (Clock::now() > deadline) die(rank, "connect", "timed out");
  }
  size_t maxb = std::max<size_t>(o.sweep.max_bytes, 64);
#ifdef MOEFABRIC_NET_PERF_CUDA
  if (o.gpu) {
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) die(rank, "--gpu", "no CUDA device");
    const int local = moefabric::local_rank_from_env();  // torchrun's LOCAL_RANK, mpirun's
    if (cudaSetDevice((local >= 0 ? local : rank) % ndev) != cudaSuccess)
      die(rank, "cudaSetDevice", "failed");
  }
#endif
  Buffer sbuf(rank, o.gpu, maxb, static_cast<uint8_t>(rank + 1)), rbuf(rank, o.gpu, maxb * 2, 0);
  int ptr_type = o.gpu ? 2 /* NCCL_PTR_CUDA */ : 1 /* NCCL_PTR_HOST */;
  if (net_reg_mr(pp.sc, sbuf.data(), sbuf.n, ptr_type, &pp.smh) != Status::kOk ||
      net_reg_mr(pp.rc, rbuf.data(), rbuf.n, ptr_type, &pp.rmh) != Status::kOk)
    die(rank, "regMr",
        o.gpu ? "failed for GPU memory (MOEFABRIC_GDR=1 and a provider with FI_HMEM CUDA needed)" : "failed");

  RawPath raw{rank, deadline};
  std::vector<NicInfo> nics;
  if (Status s = nic_discover(net->params(), &nics); !s.ok()) die(rank, "discover", s.message());
  bool do_raw = o.raw && (nics[0].info->caps & FI_RMA);
  if (do_raw) raw.open(nics[0].info.get(), rbuf.data() + maxb, maxb, o.gpu, oob);
  if (rank == 0) {
    Hello hello{};
    snprintf(hello.provider, sizeof hello.provider, "%s", nics[0].provider.c_str());
    snprintf(hello.nic, sizeof hello.nic, "%s", nics[0].domain.c_str());
#ifdef MOEFABRIC_NET_PERF_CUDA
    cudaDeviceProp prop{};
    int dev = 0;
    if (o.gpu && cudaGetDevice(&dev) == cudaSuccess && cudaGetDeviceProperties(&prop, dev) == cudaSuccess)
      snprintf(hello.gpu, sizeof hello.gpu, "%s", prop.name);
#endif
    if (::write(out_fd, &hello, sizeof hello) != static_cast<ssize_t>(sizeof hello))
      die(rank, "report", "pipe to the parent closed");
    print_header(o, hello, do_raw);
  }

  for (size_t s : sizes) {
    Row row{s};
    // Plugin ping-pong.
    int li = lat_iters(o, s);
    if (o.check) {
      for (size_t i = 0; i < s; ++i) sbuf.host[i] = static_cast<uint8_t>(i * 7 + rank + s);
      sbuf.push(s);
    }
    if (Status s = oob.barrier(); !s.ok()) die(rank, "barrier", s.message());
    Clock::time_point t0;
    for (int it = -o.warmup; it < li; ++it) {
      if (it == 0) t0 = Clock::now();
      if (rank == 0) {
        void* r = pp.recv(rbuf.data(), s);
        pp.wait(pp.send(sbuf.data(), s), "ping send");
        size_t got = 0;
        pp.wait(r, "pong recv", &got);
        if (got != s) die(rank, "pong recv", "short message");
        if (o.gpu) pp.flush(rbuf.data(), s);
      } else {
        pp.wait(pp.recv(rbuf.data(), s), "ping recv");
        if (o.gpu) pp.flush(rbuf.data(), s);
        pp.wait(pp.send(sbuf.data(), s), "pong send");
      }
    }
    row.lat_plugin = secs(Clock::now() - t0) / li / 2 * 1e6;
    if (o.check) {
      rbuf.pull(s);
      for (size_t i = 0; i < s; ++i)
        if (rbuf.host[i] != static_cast<uint8_t>(i * 7 + (1 - rank) + s)) ++row.wrong;
    }
    // Plugin bandwidth: a window of messages, then a one-byte ack.
    int bi = bw_iters(o, s);
    if (Status s = oob.barrier(); !s.ok()) die(rank, "barrier", s.message());
    for (int it = -1; it < bi; ++it) {
      if (it == 0) t0 = Clock::now();
      std::vector<void*> reqs;
      if (rank == 0) {
        void* ack = pp.recv(rbuf.data(), 1);
        for (int w = 0; w < o.window; ++w) reqs.push_back(pp.send(sbuf.data(), s));
        for (void* r : reqs) pp.wait(r, "bw send");
        pp.wait(ack, "bw ack");
      } else {
        for (int w = 0; w < o.window; ++w) reqs.push_back(pp.recv(rbuf.data(), s));
        for (void* r : reqs) pp.wait(r, "bw recv");
        if (o.gpu) pp.flush(rbuf.data(), s);
        pp.wait(pp.send(sbuf.data(), 1), "bw ack");
      }
    }
    row.bw_plugin = static_cast<double>(s) * o.window * bi / secs(Clock::now() - t0) / 1e9;

    if (do_raw && s > 0) {
      if (Status s = oob.barrier(); !s.ok()) die(rank, "barrier", s.message());
      for (int it = -o.warmup; it < li; ++it) {
        if (it == 0) t0 = Clock::now();
        if (rank == 0) {
          raw.write(sbuf.data(), s);
          raw.wait_remote(1, "raw pong");
        } else {
          raw.wait_remote(1, "raw ping");
          raw.write(sbuf.data(), s);
        }
      }
      row.lat_raw = secs(Clock::now() - t0) / li / 2 * 1e6;
      raw.drain_local();
      if (Status s = oob.barrier(); !s.ok()) die(rank, "barrier", s.message());
      for (int it = -1; it < bi; ++it) {
        if (it == 0) t0 = Clock::now();
        if (rank == 0) {
          for (int w = 0; w < o.window; ++w) raw.write(sbuf.data(), s);
          raw.wait_remote(1, "raw bw ack");
        } else {
          raw.wait_remote(o.window, "raw bw data");
          raw.write(sbuf.data(), 1);
        }
        raw.drain_local();
      }
      row.bw_raw = static_cast<double>(s) * o.window * bi / secs(Clock::now() - t0) / 1e9;
    }
    if (rank == 0) {
      print_row(row);  // as soon as it is measured
      if (::write(out_fd, &row, sizeof row) != static_cast<ssize_t>(sizeof row))
        die(rank, "report", "pipe to the parent closed");
    }
    if (rank == 1 && row.wrong)
      die(rank, "check", std::to_string(row.wrong) + " wrong bytes at size " + std::to_string(s));
  }
  if (Status s = oob.barrier(); !s.ok()) die(rank, "final barrier", s.message());
  if (do_raw) raw.close();
  (void)net_dereg_mr(pp.sc, pp.smh);
  (void)net_dereg_mr(pp.rc, pp.rmh);
  (void)net_close_send(pp.sc);
  (void)net_close_recv(pp.rc);
  (void)net_close_listen(pp.lc);
  Net::release(net);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Opts o;
  std::string provider, iface;
  CLI::App app{"moefabric-net-perf: NCCL net plugin transport vs raw libfabric, two local processes"};
  perf::init_app(app, argc, argv);
  perf::add_sweep(app, &o.sweep, 1024);
  app.add_option("-n,--iters", o.iters, "timed iterations per size (0: scaled to the size)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("-w,--warmup,--warmup_iters", o.warmup, "warm-up iterations per size")
      ->check(CLI::NonNegativeNumber);
  perf::add_check(app, &o.check, "verify the ping-pong payloads");
  app.add_option("-J,--json", o.json, "also write the results as JSON to this file (docs/perf-json.md)")
      ->type_name("FILE");
  app.add_option("-T,--timeout", o.timeout, "seconds before a stalled run is killed")
      ->check(CLI::PositiveNumber);
  app.add_option("--window", o.window, "messages in flight for bandwidth")->check(CLI::Range(1, 32));
  app.add_option("--provider", provider, "libfabric provider (sets MOEFABRIC_PROVIDER)");
  app.add_option("--iface", iface, "tcp interface (sets MOEFABRIC_TCP_IFACE)");
  app.add_flag("--gpu", o.gpu,
               "message buffers in GPU memory (rank r on GPU r mod count; sets MOEFABRIC_GDR=1)");
  bool no_raw = false;
  app.add_flag("--no-raw", no_raw, "skip the raw libfabric baseline");
  CLI11_PARSE(app, argc, argv);
  o.raw = !no_raw;
  if (!provider.empty()) setenv("MOEFABRIC_PROVIDER", provider.c_str(), 1);
  if (!iface.empty()) setenv("MOEFABRIC_TCP_IFACE", iface.c_str(), 1);
#ifndef MOEFABRIC_NET_PERF_CUDA
  if (o.gpu) {
    fprintf(stderr, "moefabric-net-perf: --gpu needs a build with CUDA (meson -Dcuda=enabled)\n");
    return 2;
  }
#endif
  if (o.gpu) setenv("MOEFABRIC_GDR", "1", 0);

  std::vector<size_t> sizes;
  for (size_t s = o.sweep.min_bytes; s <= o.sweep.max_bytes; s = std::max(s * o.sweep.factor, s + 1))
    sizes.push_back(s);

  // Rank 0 prints the header and each row as it is measured; the parent gets them through the
  // pipe for the summary and the JSON file.
  int pfd[2];
  if (pipe(pfd) != 0) return 2;
  std::unique_ptr<OobChannel> env_oob = moefabric::oob_from_env_or_exit();
  LaunchResult res;
  if (env_oob) {
    // Launched by moefabric-run, torchrun or mpirun (one rank per host, say): rank 0 also does
    // the summary and the JSON file, from its rows in the pipe (a few KiB: it cannot fill).
    if (env_oob->nranks() != 2) {
      fprintf(stderr, "moefabric-net-perf: needs exactly 2 ranks, the launch has %d\n", env_oob->nranks());
      return 2;
    }
    o.where = "from the launcher's environment";
    const int rc = run_rank(*env_oob, o, sizes, pfd[1]);
    if (env_oob->rank() != 0) return rc;
    res.ok = rc == 0;
  } else {
    res = launch_fork(
        2,
        [&](OobChannel& oob) {
          ::close(pfd[0]);
          return run_rank(oob, o, sizes, pfd[1]);
        },
        o.timeout + 30);
  }
  ::close(pfd[1]);

  Hello hello{};
  bool connected = read(pfd[0], &hello, sizeof hello) == static_cast<ssize_t>(sizeof hello);
  std::vector<Row> rows;
  Row r;
  while (connected && read(pfd[0], &r, sizeof r) == static_cast<ssize_t>(sizeof r)) rows.push_back(r);
  ::close(pfd[0]);
  // Rows come from rank 0 (it checks what rank 1 sent); rank 1 fails the run on a bad byte.
  // A target is judged only against a raw baseline measured in this run at the sizes it names.
  long wrong = 0;
  int bw_points = 0, lat_points = 0;
  bool met_bw = true, met_lat = true;
  perf::Json results = perf::Json::array();
  for (const Row& x : rows) {
    wrong += x.wrong;
    if (x.bw_raw > 0 && x.bytes >= (1u << 20)) ++bw_points, met_bw &= ratio(x.bw_plugin, x.bw_raw) >= 0.9;
    if (x.lat_raw > 0 && x.bytes <= 4096) ++lat_points, met_lat &= x.lat_plugin - x.lat_raw <= 2.0;
    results.push_back({{"bytes", x.bytes},
                       {"lat_plugin_us", x.lat_plugin},
                       {"lat_raw_us", x.lat_raw},
                       {"bw_plugin_gbps", x.bw_plugin},
                       {"bw_raw_gbps", x.bw_raw},
                       {"wrong", x.wrong}});
  }
  auto verdict = [](int points, bool met) { return points == 0 ? nullptr : met ? "met" : "not met"; };
  const char *bw_verdict = verdict(bw_points, met_bw), *lat_verdict = verdict(lat_points, met_lat);
  const char* none = "no raw baseline measured";
  if (connected) {  // else the ranks said why on stderr
    if (rows.empty())
      printf("# Targets: no rows measured\n");
    else
      printf(
          "# Targets: bandwidth >= 0.90 x raw at >= 1 MiB: %s; latency within 2 us of raw up to 4 KiB: %s\n",
          bw_verdict ? bw_verdict : none, lat_verdict ? lat_verdict : none);
    printf("# Out of bounds values : %ld %s\n", wrong, wrong ? "FAILED" : "OK");
    fflush(stdout);
  }
  const int rc = !res.ok ? 2 : (wrong || rows.size() != sizes.size()) ? 1 : 0;
  if (!o.json.empty()) {
    perf::Meta meta{"moefabric-net-perf"};
    if (connected) meta.provider = hello.provider;
    if (hello.gpu[0]) meta.gpu = hello.gpu;
    perf::Json config = {{"nic", connected ? perf::Json(hello.nic) : perf::Json(nullptr)},
                         {"buffers", o.gpu ? "gpu" : "host"},
                         {"min_bytes", o.sweep.min_bytes},
                         {"max_bytes", o.sweep.max_bytes},
                         {"step_factor", o.sweep.factor},
                         {"iters", o.iters > 0 ? perf::Json(o.iters) : perf::Json("auto")},
                         {"warmup", o.warmup},
                         {"window", o.window},
                         {"raw_baseline", o.raw},
                         {"check", o.check}};
    perf::Json doc = perf::document(meta, config, results);
    auto or_null = [](const char* v) { return v ? perf::Json(v) : perf::Json(nullptr); };
    doc["summary"] = {{"wrong", wrong},
                      {"bandwidth_target", or_null(bw_verdict)},
                      {"latency_target", or_null(lat_verdict)},
                      {"exit_code", rc}};
    if (Status s = perf::write_json(o.json, doc); !s.ok())
      fprintf(stderr, "moefabric-net-perf: %s\n", s.message().c_str());
  }
  if (!res.ok) fprintf(stderr, "moefabric-net-perf: FAILED\n%s", res.report.c_str());
  return rc;
}
