// moefabric-moe-perf: ncclMoe dispatch/combine latency sweep, nccl-tests style. Run it under
// moefabric-run (moefabric-run -n 4 moefabric-moe-perf) or let it fork its own ranks
// (-r 2,4,8). One row per point: dispatch, combine and total p50/p99 pooled over all
// ranks' iterations, the slowest rank, DeepEP-style GB/s and the proxy's posting cost.
// perf/PERFORMANCE.md defines every column.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "include/moefabric/nccl_moe.h"
#include "common/launch.h"
#include "perf/perf_tool.h"
#include "tests/common/moe_reference.h"

namespace perf = moefabric::perf;

namespace {

using Clock = std::chrono::steady_clock;
using moefabric::OobChannel;
using moefabric::Status;
using namespace moetest;

struct Opts {
  std::vector<int> ranks{4}, tokens{1, 8, 32, 128}, hidden{2048}, topk{8}, experts{64};
  std::vector<std::string> dtypes{"fp8"};
  std::string combine = "pair";  // ncclMoeCombinePerPair, or "rank": ncclMoeCombinePerRank
  int iters = 100, warmup = 10, max_private = -1, timeout = 1800;
  bool check = false;
  std::string json;
};

struct Point {
  int ranks, tokens, hidden, topk, experts;
  std::string dtype;
  double d50, d99, c50, c99, t50, t99, slow_t50;
  int slow_rank;
  double d_gbs, c_gbs, post50, cpost50;
  uint32_t dw, cw;
  long wrong;
};

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * (v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

[[noreturn]] void die(int rank, const std::string& what) {
  fprintf(stderr, "moefabric-moe-perf: rank %d: %s\n", rank, what.c_str());
  fflush(stderr);
  _exit(2);
}

// Runs every point of the sweep on this rank; rank 0 returns the rows.
std::vector<Point> run_rank(OobChannel& oob, const Opts& o) {
  const int R = oob.nranks(), me = oob.rank();
  std::vector<Point> rows;
  const int max_t = *std::max_element(o.tokens.begin(), o.tokens.end());
  for (const std::string& dt : o.dtypes)
    for (int H : o.hidden)
      for (int K : o.topk)
        for (int E : o.experts) {
          Shape s;
          s.nranks = R;
          s.experts = E;
          s.topk = K;
          s.hidden = H;
          s.max_tokens = max_t;
          s.fp8 = dt == "fp8";
          s.scale_block = 128;
          s.per_rank = o.combine == "rank";
          if (o.max_private >= 0) s.max_private = o.max_private;
          ncclMoeConfig_t cfg = s.config();
          if (o.max_private < 0) cfg.maxPrivateTokens = NCCL_MOE_UNDEF_INT;
          ncclMoeComm_t moe = nullptr;
          if (ncclMoeCommInitAllGather(&moe, R, me, oob_allgather, &oob, &cfg) != ncclSuccess)
            die(me, std::string("init: ") + ncclMoeGetLastError(nullptr));
          size_t cap = 0;
          ncclMoeGetRecvCapacity(moe, &cap);
          std::vector<uint8_t> rx(cap * s.x_bytes());
          std::vector<float> rs(cap * s.nscale());
          std::vector<int32_t> counts(s.local(me));
          std::vector<uint16_t> ey(cap * H), y(static_cast<size_t>(max_t) * H);
          for (int T : o.tokens) {
            // Fresh routing every iteration from a pool generated up front.
            const int pool = 8;
            std::vector<RankInput> in;
            for (int i = 0; i < pool; ++i) in.push_back(make_input(s, me, T, 1 + i, Routing::kRandom));
            long wrong = 0;
            if (o.check) {
              std::vector<RankInput> all;
              if (!gather_inputs(&oob, s, in[0], &all)) die(me, "gathering inputs for --check failed");
              ExpectedLayout ex = expected_layout(s, all, me);
              int32_t t = T;
              if (ncclMoeDispatch(in[0].x.data(), s.fp8 ? in[0].scales.data() : nullptr, in[0].idx.data(),
                                  in[0].w.data(), &t, rx.data(), s.fp8 ? rs.data() : nullptr, counts.data(),
                                  moe, nullptr) != ncclSuccess)
                die(me, std::string("dispatch: ") + ncclMoeGetLastError(moe));
              wrong += !check_dispatch(s, all, me, ex, rx.data(), rs.data(), counts.data()).empty();
              fill_expert_y(s, all, me, ex, ey.data());
              if (ncclMoeCombine(ey.data(), y.data(), moe, nullptr) != ncclSuccess)
                die(me, std::string("combine: ") + ncclMoeGetLastError(moe));
              wrong += !check_combine(s, in[0], me, y.data()).empty();
            }
            std::vector<double> d, c, post, cpost;
            ncclMoeStats_t st{};
            st.size = sizeof st;
            for (int it = -o.warmup; it < o.iters; ++it) {
              const RankInput& x = in[(it + o.warmup) % pool];
              int32_t t = T;
              if (!oob.barrier().ok()) die(me, "barrier failed (a rank exited)");
              auto t0 = Clock::now();
              if (ncclMoeDispatch(x.x.data(), s.fp8 ? x.scales.data() : nullptr, x.idx.data(), x.w.data(), &t,
                                  rx.data(), s.fp8 ? rs.data() : nullptr, counts.data(), moe,
                                  nullptr) != ncclSuccess)
                die(me, std::string("dispatch: ") + ncclMoeGetLastError(moe));
              auto t1 = Clock::now();
              if (ncclMoeCombine(ey.data(), y.data(), moe, nullptr) != ncclSuccess)
                die(me, std::string("combine: ") + ncclMoeGetLastError(moe));
              auto t2 = Clock::now();
              ncclMoeGetStats(moe, &st);
              if (it < 0) continue;
              d.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
              c.push_back(std::chrono::duration<double, std::micro>(t2 - t1).count());
              post.push_back(st.proxyPostUs);
              cpost.push_back(st.combinePostUs);
            }
            // Selections (token, expert) of this rank for DeepEP-style bandwidth.
            double sel = 0;
            for (const RankInput& x : in)
              for (int32_t e : x.idx) sel += e >= 0;
            sel /= pool;
            // Pool every rank's samples at rank 0.
            const size_t n = d.size();
            std::vector<double> mine(4 * n + 2), all(mine.size() * R);
            std::copy(d.begin(), d.end(), mine.begin());
            std::copy(c.begin(), c.end(), mine.begin() + n);
            std::copy(post.begin(), post.end(), mine.begin() + 2 * n);
            std::copy(cpost.begin(), cpost.end(), mine.begin() + 3 * n);
            mine[4 * n] = sel;
            mine[4 * n + 1] = static_cast<double>(wrong);
            if (!oob.allgather(mine.data(), all.data(), mine.size() * sizeof(double)).ok())
              die(me, "allgather of results failed");
            if (me != 0) continue;
            std::vector<double> D, C, TT, P, CP;
            double slow = -1, sel_all = 0;
            int slow_rank = 0;
            long wrong_all = 0;
            for (int r = 0; r < R; ++r) {
              const double* b = all.data() + r * mine.size();
              std::vector<double> tr;
              for (size_t i = 0; i < n; ++i) {
                D.push_back(b[i]);
                C.push_back(b[n + i]);
                TT.push_back(b[i] + b[n + i]);
                tr.push_back(b[i] + b[n + i]);
                P.push_back(b[2 * n + i]);
                CP.push_back(b[3 * n + i]);
              }
              double p = pct(tr, 0.5);
              if (p > slow) slow = p, slow_rank = r;
              sel_all += b[4 * n];
              wrong_all += static_cast<long>(b[4 * n + 1]);
            }
            Point pt{R,
                     T,
                     H,
                     K,
                     E,
                     dt,
                     pct(D, .5),
                     pct(D, .99),
                     pct(C, .5),
                     pct(C, .99),
                     pct(TT, .5),
                     pct(TT, .99),
                     slow,
                     slow_rank,
                     0,
                     0,
                     pct(P, .5),
                     pct(CP, .5),
                     st.dispatchWritesMaxPeer,
                     st.combineWritesMaxPeer,
                     o.check ? wrong_all : -1};
            const double tok_bytes = static_cast<double>(s.x_bytes() + s.nscale() * 4);
            pt.d_gbs = sel_all / R * tok_bytes / (pt.d50 * 1e3);
            pt.c_gbs = sel_all / R * H * 2.0 / (pt.c50 * 1e3);
            rows.push_back(pt);
            printf(
                "%6d %6d %6d %4d %6d %5s %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %4d %8.2f %8.2f %8.1f "
                "%8.1f %3u/%u %6s\n",
                R, T, H, K, E, dt.c_str(), pt.d50, pt.d99, pt.c50, pt.c99, pt.t50, pt.t99, pt.slow_t50,
                pt.slow_rank, pt.d_gbs, pt.c_gbs, pt.post50, pt.cpost50, pt.dw, pt.cw,
                o.check ? std::to_string(wrong_all).c_str() : "-");
            fflush(stdout);
          }
          if (ncclMoeCommDestroy(moe) != ncclSuccess)
            die(me, std::string("destroy: ") + ncclMoeGetLastError(nullptr));
        }
  return rows;
}

void header(const Opts& o, const char* mode) {
  char host[256] = "";
  gethostname(host, sizeof host - 1);
  const char* prov = getenv("MOEFABRIC_PROVIDER");
  printf("# moefabric-moe-perf: backend host, provider %s, host %s, %s\n", prov ? prov : "(default)", host,
         mode);
  printf("# iters %d, warmup %d, maxPrivateTokens %s, combine per %s, check %s\n", o.iters, o.warmup,
         o.max_private < 0 ? "default" : std::to_string(o.max_private).c_str(), o.combine.c_str(),
         o.check ? "on" : "off");
  printf("#\n# %6s %6s %6s %4s %6s %5s %9s %9s %9s %9s %9s %9s %9s %4s %8s %8s %8s %8s %5s %6s\n", "ranks",
         "tokens", "hidden", "topk", "experts", "type", "disp_p50", "disp_p99", "comb_p50", "comb_p99",
         "tot_p50", "tot_p99", "slow_p50", "slow", "disp_GBs", "comb_GBs", "post_us", "cpost_us", "wr",
         "#wrong");
  printf("# %6s %6s %6s %4s %6s %5s %9s %9s %9s %9s %9s %9s %9s %4s %8s %8s %8s %8s %5s %6s\n", "", "", "",
         "", "", "", "(us)", "(us)", "(us)", "(us)", "(us)", "(us)", "(us)", "rank", "(GB/s)", "(GB/s)",
         "(us)", "(us)", "d/c", "");
  fflush(stdout);
}

// Writes the JSON file: `prior` (rows of earlier rank counts of this run) and `rows`.
void write_json(const Opts& o, const perf::Json& prior, const std::vector<Point>& rows) {
  if (o.json.empty()) return;
  perf::Json results = prior;
  for (const Point& p : rows)
    results.push_back({{"ranks", p.ranks},
                       {"tokens", p.tokens},
                       {"hidden", p.hidden},
                       {"topk", p.topk},
                       {"experts", p.experts},
                       {"type", p.dtype},
                       {"dispatch_p50_us", p.d50},
                       {"dispatch_p99_us", p.d99},
                       {"combine_p50_us", p.c50},
                       {"combine_p99_us", p.c99},
                       {"total_p50_us", p.t50},
                       {"total_p99_us", p.t99},
                       {"slowest_rank_total_p50_us", p.slow_t50},
                       {"slowest_rank", p.slow_rank},
                       {"dispatch_GBps", p.d_gbs},
                       {"combine_GBps", p.c_gbs},
                       {"proxy_post_us", p.post50},
                       {"combine_post_us", p.cpost50},
                       {"dispatch_writes_per_peer", p.dw},
                       {"combine_writes_per_peer", p.cw},
                       {"wrong", p.wrong >= 0 ? perf::Json(p.wrong) : perf::Json(nullptr)}});
  perf::Meta meta{"moefabric-moe-perf"};
  meta.provider = perf::moe_provider();
  perf::Json config = {
      {"backend", "host"},
      {"iters", o.iters},
      {"warmup", o.warmup},
      {"max_private_tokens", o.max_private >= 0 ? perf::Json(o.max_private) : perf::Json(nullptr)},
      {"combine_mode", o.combine == "rank" ? "per-rank" : "per-pair"},
      {"check", o.check}};
  if (Status s = perf::write_json(o.json, perf::document(meta, config, results)); !s.ok())
    fprintf(stderr, "moefabric-moe-perf: %s\n", s.message().c_str());
}

}  // namespace

int main(int argc, char** argv) {
  Opts o;
  CLI::App app{"ncclMoe dispatch/combine latency sweep (host backend)"};
  perf::init_app(app, argc, argv);
  app.add_option("-r,--ranks", o.ranks,
                 "rank counts to sweep when not launched by moefabric-run, torchrun or mpirun")
      ->delimiter(',');
  app.add_option("--tokens", o.tokens, "tokens per rank")->delimiter(',');
  app.add_option("--hidden", o.hidden, "hidden sizes")->delimiter(',');
  app.add_option("-k,--topk", o.topk, "top-k values")->delimiter(',');
  app.add_option("-E,--experts", o.experts, "expert counts")->delimiter(',');
  app.add_option("-d,--dtype", o.dtypes, "dispatch types: bf16, fp8")
      ->delimiter(',')
      ->check(CLI::IsMember({"bf16", "fp8"}));
  app.add_option("-n,--iters", o.iters, "timed iterations per point")->check(CLI::PositiveNumber);
  app.add_option("-w,--warmup,--warmup_iters", o.warmup, "untimed iterations per point")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-private", o.max_private, "maxPrivateTokens (-1: the library's default)");
  app.add_option("--combine", o.combine,
                 "combine mode: pair (a row per (token, expert)) or rank (pre-reduced)")
      ->check(CLI::IsMember({"pair", "rank"}))
      ->capture_default_str();
  perf::add_check(app, &o.check, "verify one iteration per point against the reference");
  app.add_option("-J,--json", o.json, "also write the results as JSON to this file (docs/perf-json.md)")
      ->type_name("FILE");
  app.add_option("-T,--timeout", o.timeout, "seconds before a self-launched sweep is killed")
      ->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  for (int t : o.tokens)
    if (t < 0 || t > (1 << 20)) {
      fprintf(stderr, "moefabric-moe-perf: bad token count %d\n", t);
      return 2;
    }

  std::unique_ptr<OobChannel> oob = moefabric::oob_from_env_or_exit();
  if (oob) {
    if (oob->rank() == 0) header(o, "launched by moefabric-run, torchrun or mpirun");
    std::vector<Point> rows = run_rank(*oob, o);
    if (oob->rank() == 0) write_json(o, perf::Json::array(), rows);
    return 0;
  }
  header(o, "self-launched ranks");
  // One JSON file for the whole sweep: each rank count's rank 0 rewrites it with the rows so far.
  perf::Json prior = perf::Json::array();
  for (int R : o.ranks) {
    if (R < 1) {
      fprintf(stderr, "moefabric-moe-perf: bad rank count %d\n", R);
      return 2;
    }
    auto res = moefabric::launch_fork(
        R,
        [&](OobChannel& ch) {
          std::vector<Point> rows = run_rank(ch, o);
          if (ch.rank() == 0) write_json(o, prior, rows);
          return 0;
        },
        o.timeout);
    if (!res.ok) {
      fprintf(stderr, "moefabric-moe-perf: %d ranks failed:\n%s", R, res.report.c_str());
      return 1;
    }
    if (!o.json.empty()) {
      std::ifstream f(o.json);
      perf::Json doc = perf::Json::parse(f, nullptr, false);
      if (!doc.is_discarded() && doc.contains("results")) prior = doc["results"];
    }
  }
  printf("# done\n");
  return 0;
}
