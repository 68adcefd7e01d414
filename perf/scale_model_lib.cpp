#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <numeric>
#include <random>
#include <sstream>

#include "kernels/layout.h"
#include "perf/scale_model.h"

namespace moefabric::model {

int Routing::max_tokens() const {
  int m = 1;
  for (int t : T) m = std::max(m, t);
  return m;
}

// --- routings -------------------------------------------------------------------------------

namespace {

// K distinct experts drawn by weight (cumulative table), without replacement by rejection.
void draw_distinct(std::mt19937_64& rng, const std::vector<double>& cum, int K, int32_t* row) {
  std::uniform_real_distribution<double> u(0.0, cum.back());
  const int E = static_cast<int>(cum.size());
  for (int k = 0; k < K; ++k) {
    int e;
    bool dup;
    do {
      e = static_cast<int>(std::upper_bound(cum.begin(), cum.end(), u(rng)) - cum.begin());
      e = std::min(e, E - 1);
      dup = false;
      for (int j = 0; j < k; ++j) dup |= row[j] == e;
    } while (dup);
    row[k] = e;
  }
}

Status read_trace(const std::string& path, const Shape& s, int R, Routing* out) {
  std::ifstream f(path);
  if (!f) return Status::system_error("cannot open trace " + path);
  std::vector<std::pair<int, std::vector<int32_t>>> rows;
  std::string line;
  int lineno = 0, max_rank = -1;
  while (std::getline(f, line)) {
    ++lineno;
    const size_t hash = line.find('#');
    if (hash != std::string::npos) line.resize(hash);
    std::istringstream in(line);
    int rank;
    if (!(in >> rank)) continue;  // blank or comment
    std::vector<int32_t> ids;
    long v;
    while (in >> v) ids.push_back(static_cast<int32_t>(v));
    const bool bad_id =
        std::any_of(ids.begin(), ids.end(), [&](int32_t e) { return e < -1 || e >= s.experts; });
    if (rank < 0 || static_cast<int>(ids.size()) != s.topk || bad_id || !in.eof())
      return Status::invalid_argument(path + ":" + std::to_string(lineno) +
                                      ": want 'rank e_1 ... e_K' with K = " + std::to_string(s.topk) +
                                      " ids in [-1, " + std::to_string(s.experts) + ")");
    max_rank = std::max(max_rank, rank);
    rows.push_back({rank, std::move(ids)});
  }
  if (rows.empty()) return Status::invalid_argument(path + ": no tokens");
  out->idx.assign(R, {});
  out->T.assign(R, 0);
  if (max_rank + 1 == R) {  // recorded at this EP size: every rank's own tokens
    for (auto& [r, ids] : rows) out->idx[r].insert(out->idx[r].end(), ids.begin(), ids.end()), ++out->T[r];
    return {};
  }
  // Another EP size: the tokens, in file order, are dealt T per rank (cycling when short).
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < s.tokens; ++t) {
      const auto& ids = rows[(static_cast<size_t>(r) * s.tokens + t) % rows.size()].second;
      out->idx[r].insert(out->idx[r].end(), ids.begin(), ids.end());
      ++out->T[r];
    }
  return {};
}

}  // namespace

Status make_routing(const std::string& spec, const Shape& s, int R, uint64_t seed, Routing* out) {
  if (spec.rfind("trace:", 0) == 0) return read_trace(spec.substr(6), s, R, out);
  std::vector<double> weight(s.experts, 1.0);
  double empty = 0;
  if (spec.rfind("zipf:", 0) == 0) {
    double a = 0;
    try {
      a = std::stod(spec.substr(5));
    } catch (const std::exception&) {
      return Status::invalid_argument("zipf:S needs a number, not '" + spec.substr(5) + "'");
    }
    std::vector<int> perm(s.experts);
    std::iota(perm.begin(), perm.end(), 0);
    std::mt19937_64 prng(seed ^ 0x5eedull);
    std::shuffle(perm.begin(), perm.end(), prng);
    for (int i = 0; i < s.experts; ++i) weight[perm[i]] = 1.0 / std::pow(i + 1.0, a);
  } else if (spec.rfind("uniform:", 0) == 0) {
    char* end = nullptr;
    empty = std::strtod(spec.c_str() + 8, &end);
    if (*end != '\0' || !(empty >= 0 && empty < 1))
      return Status::invalid_argument("uniform:F needs a fraction of empty slots in [0, 1), not '" +
                                      spec.substr(8) + "'");
  } else if (spec != "uniform") {
    return Status::invalid_argument("routing must be uniform[:F], zipf:S or trace:FILE, not '" + spec + "'");
  }
  if (s.topk > s.experts) return Status::invalid_argument("top-k larger than the expert count");
  std::vector<double> cum(s.experts);
  std::partial_sum(weight.begin(), weight.end(), cum.begin());
  out->idx.assign(R, {});
  out->T.assign(R, s.tokens);
  for (int r = 0; r < R; ++r) {
    std::mt19937_64 rng(seed * 1000003ull + static_cast<uint64_t>(r));
    out->idx[r].resize(static_cast<size_t>(s.tokens) * s.topk);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    for (int t = 0; t < s.tokens; ++t) {
      int32_t* row = &out->idx[r][static_cast<size_t>(t) * s.topk];
      draw_distinct(rng, cum, s.topk, row);
      if (empty > 0)
        for (int k = 0; k < s.topk; ++k)
          if (u(rng) < empty) row[k] = -1;
    }
  }
  return {};
}

Status write_trace(const std::string& path, const Shape& s, const Routing& r) {
  std::ofstream f(path);
  f << "# moefabric routing trace v1: one token per line, 'rank e_1 ... e_K' (-1 = empty slot)\n";
  f << "# ranks " << r.idx.size() << ", top-k " << s.topk << ", experts " << s.experts << "\n";
  for (size_t rank = 0; rank < r.idx.size(); ++rank)
    for (int t = 0; t < r.T[rank]; ++t) {
      f << rank;
      for (int k = 0; k < s.topk; ++k) f << ' ' << r.idx[rank][static_cast<size_t>(t) * s.topk + k];
      f << '\n';
    }
  f.close();
  if (f) return {};
  return Status::system_error("cannot write " + path);
}

// --- systems and traffic --------------------------------------------------------------------

namespace {
const char* const kSystemNames[] = {"moefabric",           "moefabric-node", "pplx-garden",
                                    "pplx-garden-scatter", "uccl-ep",        "deepep-ll"};
}

const char* system_name(System s) { return kSystemNames[static_cast<int>(s)]; }

bool parse_system(const std::string& s, System* out) {
  for (int i = 0; i < 7; ++i)
    if (s == kSystemNames[i]) {
      *out = static_cast<System>(i);
      return true;
    }
  return false;
}

void PhaseLoad::resize(int R) {
  for (auto* v :
       {&nic_out_b, &nic_in_b, &nic_out_w, &nic_in_w, &nvl_out_b, &nvl_in_b, &fwd_out_b, &fwd_in_b, &kern_b})
    v->assign(R, 0.0);
  grant.assign(R, 0);
  fabric.assign(R, 0);
}

namespace {

// One write of `bytes` from s to d: over NVLink inside a node, else over the NIC.
void add(PhaseLoad& p, int s, int d, double bytes, double writes, bool nvlink) {
  if (nvlink) {
    p.nvl_out_b[s] += bytes;
    p.nvl_in_b[d] += bytes;
  } else {
    p.nic_out_b[s] += bytes;
    p.nic_in_b[d] += bytes;
    p.nic_out_w[s] += writes;
    p.nic_in_w[d] += writes;
    if (p.staging) p.kern_b[d] += bytes;  // the receiver's ingest kernel copies what landed in its staging
    p.fabric[s] = p.fabric[d] = 1;
  }
}

Status layout_for(const Shape& s, int nranks, int max_tokens, int max_private, moe::Layout* l) {
  return moe::layout_init(l, nranks, 0, s.experts, s.topk, s.hidden, max_tokens, s.fp8 ? 1 : 2, s.fp8, 128, 1,
                          max_private, s.combine == CombineMode::kPerRank);
}

}  // namespace

Status compute_traffic(System sys, const Shape& s, const Routing& r, Traffic* t) {
  const int R = static_cast<int>(r.idx.size()), G = std::max(1, std::min(s.gpus_per_node, R));
  if (R % G != 0)
    return Status::invalid_argument(std::to_string(R) + " ranks do not fill nodes of " + std::to_string(G));
  if (s.experts < R) return Status::invalid_argument("fewer experts than ranks");
  const int maxT = r.max_tokens();
  // pplx-garden sizes its buffers for every token (no private/overflow split: no grants).
  const bool pplx = sys == System::kPplxGarden || sys == System::kPplxGardenScatter;
  const int P = pplx ? maxT : s.max_private;
  moe::Layout& l = t->layout;
  MF_CHECK(layout_for(s, R, maxT, P, &l));
  std::vector<const int32_t*> idx(R);
  for (int i = 0; i < R; ++i) idx[i] = r.idx[i].data();
  const CombineMode mode =
      sys == System::kMoefabric || sys == System::kMoefabricNode ? s.combine : CombineMode::kPerPair;
  MF_CHECK(moe::plan_world(l, idx, r.T, mode, &t->plan));
  t->ranks = R;
  t->nodes = R / G;
  t->dispatch.resize(R);
  t->combine.resize(R);
  t->dispatch.staging = t->combine.staging = !s.host_backend;
  PhaseLoad &D = t->dispatch, &C = t->combine;
  const auto& w = t->plan;
  auto node = [G](int rank) { return rank / G; };
  const double rec = static_cast<double>(l.record_bytes), xb = static_cast<double>(l.x_bytes),
               yb = static_cast<double>(l.y_row_bytes);

  // Kernels: every system packs what it sends (records, or one message per pair) and lays out
  // what it receives per (token, expert); combine stages the rows it returns and reduces what
  // comes back.
  const bool per_expert = sys == System::kUcclEp || sys == System::kDeepEpLL;
  for (int a = 0; a < R; ++a)
    for (int b = 0; b < R; ++b) {
      const moe::PeerTraffic& p = w[a][b];
      D.kern_b[a] += (per_expert ? p.pairs : p.records) * rec;
      D.kern_b[b] += p.pairs * xb;
      C.kern_b[b] += p.combine_rows * yb;
      C.kern_b[a] += p.combine_rows * yb;
    }

  if (s.force_fabric) {
    // Forced through the fabric on one GPU: the self "write" lands in staging (no byte crosses
    // the provider with GPU staging) and the ingest kernels copy it once more.
    for (int a = 0; a < R; ++a) {
      D.kern_b[a] += w[a][a].records * rec;
      C.kern_b[a] += w[a][a].combine_rows * yb;
      D.fabric[a] = C.fabric[a] = 1;
    }
  }
  if (sys == System::kMoefabricNode && t->nodes > 1) {
    // One record per (token, destination node) over the NIC to the rank of the same local index
    // there, which forwards it over NVLink to the node's other ranks that need it; combine comes
    // back the same way, reduced per node in per-rank mode.
    moe::Layout ln;
    MF_CHECK(layout_for(s, t->nodes, maxT, s.max_private, &ln));
    moe::WorldPlan wn(R);
    for (int a = 0; a < R; ++a) MF_CHECK(moe::plan_rank(ln, node(a), idx[a], r.T[a], mode, &wn[a]));
    for (int a = 0; a < R; ++a)
      for (int n = 0; n < t->nodes; ++n) {
        if (n == node(a)) {
          for (int d = n * G; d < (n + 1) * G; ++d)
            if (d != a) {
              add(D, a, d, static_cast<double>(w[a][d].dispatch_bytes), 1, true);
              add(C, d, a, static_cast<double>(w[a][d].combine_wire_bytes), 1, true);
            }
          continue;
        }
        const moe::PeerTraffic& pn = wn[a][n];
        const int land = n * G + a % G;
        add(D, a, land, static_cast<double>(pn.dispatch_bytes), pn.dispatch_writes, false);
        if (pn.grants) {
          add(D, land, a, moe::kGrantBytes, 1, false);
          D.grant[a] = D.grant[land] = 1;
        }
        add(C, land, a, static_cast<double>(pn.combine_wire_bytes), 1, false);
        for (int d = n * G; d < (n + 1) * G; ++d) {
          if (d == land) continue;
          const double fwd = w[a][d].records * rec, back = w[a][d].combine_rows * yb;
          D.fwd_out_b[land] += fwd;
          D.fwd_in_b[d] += fwd;
          C.fwd_out_b[d] += back;
          C.fwd_in_b[land] += back;
        }
      }
  } else {
    for (int a = 0; a < R; ++a)
      for (int d = 0; d < R; ++d) {
        if (d == a) continue;
        const moe::PeerTraffic& p = w[a][d];
        const bool nvl = node(a) == node(d);
        if (per_expert) {
          // One message per (token, expert) each way, plus a count/flag write per peer.
          add(D, a, d, p.pairs * rec + 16, p.pairs + 1, nvl);
          add(C, d, a, p.pairs * yb + 16, p.pairs + 1, nvl);
        } else if (pplx) {
          // A route exchange (counts per peer), then the (token, rank) records: in one write per
          // peer, or (scatter) one write per record; combine returns the rows the same way.
          const double wd = sys == System::kPplxGardenScatter ? p.records + 1.0 : 2.0;
          const double wc = sys == System::kPplxGardenScatter ? std::max<uint32_t>(p.records, 1) : 1.0;
          add(D, a, d, static_cast<double>(p.dispatch_bytes), wd, nvl);
          add(C, d, a, static_cast<double>(p.combine_wire_bytes), wc, nvl);
        } else {
          add(D, a, d, static_cast<double>(p.dispatch_bytes), p.dispatch_writes, nvl);
          if (p.grants) {
            add(D, d, a, moe::kGrantBytes, 1, nvl);
            if (!nvl) D.grant[a] = D.grant[d] = 1;
          }
          add(C, d, a, static_cast<double>(p.combine_wire_bytes), p.combine_writes, nvl);
        }
      }
  }

  // Memory per GPU: the fabric protocol's registered blocks (at the node count in node mode) and,
  // with more than one GPU per node, the CUDA backend's NVLink receive block for the node.
  moe::Layout lm;
  const int fabric_ranks = sys == System::kMoefabricNode ? t->nodes : R;
  MF_CHECK(layout_for(s, std::max(1, fabric_ranks), maxT, s.max_private, &lm));
  t->fabric_block_bytes = t->nodes > 1 ? lm.recv_block_bytes + lm.send_block_bytes : 0;
  t->memory_bytes = t->fabric_block_bytes;
  t->user_bytes = l.capacity_rows * (l.x_bytes + l.scale_bytes + l.y_row_bytes);
  if (G > 1) {
    moe::CudaLayout cl;
    if (moe::cuda_layout_init(&cl, G, 0, s.experts, s.topk, s.hidden, maxT, s.fp8 ? 1 : 2, s.fp8, 128, 1)
            .ok())
      t->memory_bytes += cl.block_bytes;
  }
  return {};
}

// --- cost model -----------------------------------------------------------------------------

const std::vector<Constant>& constants() {
  static const std::vector<Constant> c = {
      {"kernel_dispatch_fixed_us", 13.8, "us",
       "measured: CUDA backend EP1 on one H100, fp8 dispatch at T = 1 (docs/results/README.md)"},
      {"kernel_dispatch_GBps", 1270, "GB/s",
       "fit to one measurement: (222.8 - 13.8) us for the kernel bytes of EP1 T = 4096 (265 MB; same table)"},
      {"kernel_combine_fixed_us", 11.4, "us",
       "measured: EP1 on one H100, bf16 combine at T = 1 (same table)"},
      {"kernel_combine_GBps", 1794, "GB/s",
       "fit to one measurement: (535.2 - 11.4) us for EP1 T = 4096 (940 MB)"},
      {"nvlink_GBps", 305.8, "GB/s",
       "measured: cudaMemcpyPeerAsync of 7.3 MB between two H200 (docs/results/moe-ep2-2xh200.txt, peer_cp)"},
      {"doorbell_us", 2.05, "us",
       "measured: GPU -> host thread -> GPU round trip through pinned memory, one polling block "
       "(tools/gpu_host_rtt.cu, docs/results/README.md)"},
      {"post_us", 0.5, "us/write",
       "measured: fabric proxy doorbell -> write posted, EP1 with GPU staging on an H100 "
       "(docs/results/README.md); "
       "taken for efa and verbs too"},
      {"host_dispatch_fixed_us", 0.0, "us",
       "fit: host backend EP2 over shm, T = 1 and T = 128, H200 host (-0.07, clamped to 0)"},
      {"host_dispatch_GBps", 11.0, "GB/s", "fit: the T = 128 point (pack, record checks, unpack)"},
      {"host_combine_fixed_us", 3.4, "us", "fit: host backend EP2 over shm, T = 1 and T = 128, H200 host"},
      {"host_combine_GBps", 4.27, "GB/s", "fit: the same two points (row staging, fp32 reduction)"},
      {"post_us_host_shm", 1.6, "us/write",
       "measured: proxy posting, host backend EP2 over shm, T = 1, H200 host (docs/results/README.md)"},
      {"post_us_host_tcp", 9.8, "us/write", "measured: the same over tcp on lo"},
      {"tcp_lat_us", 5.72, "us",
       "measured: raw fi_writedata 8 B latency over tcp;ofi_rxm on lo, H200 host "
       "(docs/results/net-perf-h200-host.txt)"},
      {"shm_GBps", 16.3, "GB/s",
       "measured: raw fi_writedata bandwidth at 1 MiB over shm, H200 host (same file)"},
      {"tcp_GBps", 8.0, "GB/s", "measured: the same over tcp on lo"},
      {"shm_lat_us", 1.19, "us",
       "measured: raw fi_writedata 8 B latency over libfabric shm, H200 host "
       "(docs/results/net-perf-h200-host.txt)"},
      {"proxy_threads_uccl_ep", 4, "threads", "assumption: UCCL-EP's CPU proxy threads per GPU"},
  };
  return c;
}

double constant(const std::string& key) {
  for (const Constant& c : constants())
    if (c.key == key) return c.value;
  return NAN;
}

const std::vector<Platform>& platforms() {
  // Bandwidth: 400 Gb/s per GPU on all three (line rate; TransferEngine reports 400 Gb/s peaks on
  // EFA and ConnectX-7). Latency and per-write cost: docs/scale-model.md#constants.
  const double post = constant("post_us");
  static const std::vector<Platform> p = {
      {"p5", "H100, 4 x 100 Gb/s EFA (v2) per GPU", 50.0, 15.0, 0.25 / 4, post, false},
      {"p5en", "H200, 2 x 200 Gb/s EFA (v3) per GPU", 50.0, 12.0, 0.25 / 2, post, false},
      {"cx7", "H100, 1 x 400 Gb/s ConnectX-7 (InfiniBand) per GPU", 50.0, 2.5, 0.01, post, false},
      {"shm", "one host, libfabric shm, GPU staging (forced-fabric runs on one GPU)", constant("shm_GBps"),
       constant("shm_lat_us"), 0.0, post, false},
      {"host-shm", "host backend on the CPU, libfabric shm (H200 host)", constant("shm_GBps"),
       constant("shm_lat_us"), 0.0, constant("post_us_host_shm"), true},
      {"host-tcp", "host backend on the CPU, libfabric tcp on lo (H200 host)", constant("tcp_GBps"),
       constant("tcp_lat_us"), 0.0, constant("post_us_host_tcp"), true},
  };
  return p;
}

const Platform* find_platform(const std::string& name) {
  for (const Platform& p : platforms())
    if (p.name == name) return &p;
  return nullptr;
}

namespace {

PhasePrediction phase(System sys, const Platform& pf, const PhaseLoad& L, bool dispatch, int threads) {
  const bool cpu_proxy = sys != System::kDeepEpLL;
  const std::string k = std::string(pf.host ? "host_" : "kernel_") + (dispatch ? "dispatch_" : "combine_");
  const double kfix = constant(k + "fixed_us"), kbw = constant(k + "GBps") * 1e3;  // B/us
  const double nic = pf.nic_GBps * 1e3, nvl = constant("nvlink_GBps") * 1e3;
  // The host backend's caller rings the proxy through a queue: no GPU -> host doorbell.
  const double post = pf.post_us, bell = pf.host ? 0 : constant("doorbell_us");
  // pplx-garden's route exchange: one more latency before the tokens go.
  const bool pplx = sys == System::kPplxGarden || sys == System::kPplxGardenScatter;
  const double rounds = pplx && dispatch ? 2 : 1;
  PhasePrediction out;
  const int R = static_cast<int>(L.kern_b.size());
  for (int r = 0; r < R; ++r) {
    // Kernels; NVLink stores are the send kernel's own stores, so they overlap its local work.
    const double direct = std::max(L.nvl_out_b[r], L.nvl_in_b[r]) / nvl;
    const double kern = kfix + std::max(L.kern_b[r] / kbw, direct);
    // The NIC path after the send kernel: doorbell to the proxy, one latency, and the slower of
    // posting every write and draining the bytes after the first write is posted (the NIC sends
    // while the proxy posts); an overflow grant adds a round trip and a post.
    const double writes = std::max(L.nic_out_w[r], L.nic_in_w[r]);
    const double post1 = cpu_proxy ? L.nic_out_w[r] * post : 0;
    const double wire = std::max(L.nic_out_b[r], L.nic_in_b[r]) / nic + writes * pf.msg_us;
    double nic_t = 0;
    if (L.fabric[r]) {
      const double first = cpu_proxy ? post : 0;
      nic_t =
          (cpu_proxy ? bell : 0) + rounds * pf.lat_us + std::max(post1 / std::max(1, threads), first + wire);
      if (L.grant[r]) nic_t += 2 * pf.lat_us + post;
    }
    const double fwd = std::max(L.fwd_out_b[r], L.fwd_in_b[r]) / nvl;
    const double total = kern + nic_t + fwd;
    if (total > out.us)
      out.us = total, out.kernel_us = kern, out.kernel_bytes = L.kern_b[r], out.slow_rank = r;
    out.post_us = std::max(out.post_us, post1);
    out.wire_us = std::max(out.wire_us, wire);
    out.nic_out_max_b = std::max(out.nic_out_max_b, L.nic_out_b[r]);
    out.nvl_out_max_b = std::max(out.nvl_out_max_b, L.nvl_out_b[r] + L.fwd_out_b[r]);
    out.nic_writes_max = std::max(out.nic_writes_max, L.nic_out_w[r]);
  }
  return out;
}

}  // namespace

Prediction predict(System sys, const Platform& p, const Traffic& t, int threads) {
  Prediction out;
  out.dispatch = phase(sys, p, t.dispatch, true, threads);
  out.combine = phase(sys, p, t.combine, false, threads);
  // Threads so that posting a phase's writes takes no longer than putting its bytes on the wire.
  for (const PhasePrediction* ph : {&out.dispatch, &out.combine})
    if (ph->wire_us > 0)
      out.proxy_threads_needed =
          std::max(out.proxy_threads_needed, static_cast<int>(std::ceil(ph->post_us / ph->wire_us - 1e-9)));
  return out;
}

}  // namespace moefabric::model
