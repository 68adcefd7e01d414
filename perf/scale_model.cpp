// moefabric-model: predicts ncclMoe dispatch/combine latency and memory at EP8-EP256 on EFA and
// ConnectX from the protocol's exact traffic (collectives/plan.h over the real Layout) and a cost
// model whose constants come from our measurements and published figures (docs/scale-model.md).
// Prints a table (and per-peer traffic with --traffic), checks itself against every measured and
// published point with --validate, writes everything as JSON with -J (schema moefabric-perf/1).
#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "kernels/layout.h"
#include "perf/perf_tool.h"
#include "perf/scale_model.h"

namespace perf = moefabric::perf;
namespace model = moefabric::model;
using model::System;
using moefabric::Status;

namespace {

struct Opts {
  std::vector<std::string> platforms{"p5", "p5en", "cx7"}, systems{"moefabric"};
  std::vector<int> ep{8, 16, 32, 64, 128, 256};
  model::Shape shape;
  std::string dtype = "fp8", combine = "per-pair", routing = "uniform", json, write_trace;
  uint64_t seed = 1;
  int proxy_threads = 1, traffic_rank = 0;
  bool traffic = false, validate = false, show_constants = false;
  // What-if overrides of the cross-node platforms' (p5, p5en, cx7) network constants; < 0: keep.
  double nic_GBps = -1, lat_us = -1, msg_us = -1, post_us = -1;
};

struct Row {
  std::string platform, system;
  int ep, nodes;
  model::Prediction pr;
  model::Traffic tr;
};

double mb(double b) { return b / 1e6; }

perf::Json row_json(const Row& r, const Opts& o) {
  auto ph = [](const model::PhasePrediction& p) {
    return perf::Json{{"us", p.us},
                      {"kernel_us", p.kernel_us},
                      {"kernel_bytes", p.kernel_bytes},
                      {"slow_rank", p.slow_rank},
                      {"nic_bytes_out_max", p.nic_out_max_b},
                      {"nvlink_bytes_out_max", p.nvl_out_max_b},
                      {"nic_writes_out_max", p.nic_writes_max},
                      {"post_us_one_thread", p.post_us},
                      {"wire_us", p.wire_us}};
  };
  return perf::Json{{"platform", r.platform},
                    {"system", r.system},
                    {"ranks", r.ep},
                    {"nodes", r.nodes},
                    {"tokens", o.shape.tokens},
                    {"combine_mode", o.combine},
                    {"dispatch_us", r.pr.dispatch.us},
                    {"combine_us", r.pr.combine.us},
                    {"total_us", r.pr.dispatch.us + r.pr.combine.us},
                    {"dispatch", ph(r.pr.dispatch)},
                    {"combine", ph(r.pr.combine)},
                    {"proxy_threads", o.proxy_threads},
                    {"proxy_threads_needed", r.pr.proxy_threads_needed},
                    {"memory_bytes_per_gpu", r.tr.memory_bytes},
                    {"fabric_block_bytes", r.tr.fabric_block_bytes},
                    {"user_buffer_bytes", r.tr.user_bytes}};
}

Status model_point(const Opts& o, model::Shape s, System sys, const model::Platform& pf, int R,
                   int proxy_threads, Row* row, const std::string& routing = "") {
  s.host_backend = pf.host;
  if (pf.host) s.gpus_per_node = 1;  // the host backend reaches every peer through the provider
  model::Routing rt;
  MF_CHECK(model::make_routing(routing.empty() ? o.routing : routing, s, R, o.seed, &rt));
  MF_CHECK(model::compute_traffic(sys, s, rt, &row->tr));
  model::Platform p = pf;
  if (!pf.host && pf.name != "shm") {
    if (o.nic_GBps > 0) p.nic_GBps = o.nic_GBps;
    if (o.lat_us >= 0) p.lat_us = o.lat_us;
    if (o.msg_us >= 0) p.msg_us = o.msg_us;
    if (o.post_us >= 0) p.post_us = o.post_us;
  }
  row->pr = model::predict(sys, p, row->tr, proxy_threads);
  row->platform = pf.name;
  row->system = model::system_name(sys);
  row->ep = R;
  row->nodes = row->tr.nodes;
  return {};
}

// --- validation ---------------------------------------------------------------------------

struct Sample {
  int ranks, tokens;
  double dispatch_us, combine_us;
  bool calibration;  // a constant was fitted to this point
};
struct Series {
  const char *kind, *system, *platform, *routing;  // kind: published or measured
  int gpus_per_node;
  bool force_fabric;
  const char* source;
  std::vector<Sample> samples;
};

// Decode shape of every point: hidden 7168, top-8 of 256 experts, fp8 dispatch, bf16 combine.
// GPU runs route K distinct experts per token; moefabric-moe-perf leaves 10% of the slots empty.
const std::vector<Series>& series() {
  const std::vector<Sample> pplx = {{8, 128, 49.7, 64.2, false},
                                    {16, 128, 214.8, 241.5, false},
                                    {32, 128, 229.1, 335.0, false},
                                    {64, 128, 266.7, 391.2, false}};
  const std::vector<Sample> uccl = {
      {16, 128, 226, 293, false}, {24, 128, 386, 580, false}, {32, 128, 465, 694, false}};
  const std::vector<Sample> ep1 = {{1, 1, 13.8, 11.4, true},
                                   {1, 32, 14.7, 13.5, false},
                                   {1, 128, 19.2, 24.2, false},
                                   {1, 512, 36.1, 81.0, false},
                                   {1, 4096, 222.8, 535.2, true}};
  const std::vector<Sample> ep2 = {
      {2, 1, 15.8, 13.5, false}, {2, 128, 23.5, 38.1, false}, {2, 512, 50.4, 117.8, false}};
  const std::vector<Sample> forced = {
      {1, 1, 19.1, 16.9, false}, {1, 128, 26.2, 41.8, false}, {1, 512, 43.9, 136.2, false}};
  const std::vector<Sample> host_shm = {{2, 1, 11.1, 66.7, true}, {2, 128, 852.6, 6724.9, true}};
  const std::vector<Sample> host_tcp = {{2, 1, 20.4, 106.9, false}, {2, 128, 916.7, 7573.6, false}};
  static const std::vector<Series> s = {
      {"published", "pplx-garden", "p5en", "uniform", 8, false, "pplx-garden on p5en", pplx},
      {"published", "pplx-garden-scatter", "p5en", "uniform", 8, false, "pplx-garden on p5en", pplx},
      {"published", "uccl-ep", "p5en", "uniform", 8, false, "UCCL-EP on p5en", uccl},
      {"measured", "moefabric", "p5", "uniform", 1, false, "EP1, one H100 (docs/results/README.md)", ep1},
      {"measured", "moefabric", "p5en", "uniform", 2, false,
       "EP2 NVLink, 2 x H200 (docs/results/moe-ep2-2xh200.txt)", ep2},
      {"measured", "moefabric", "shm", "uniform", 1, true, "EP1 forced fabric, GPU staging, H100 (same)",
       forced},
      {"measured", "moefabric", "host-shm", "uniform:0.1", 1, false, "host backend EP2, H200 host (same)",
       host_shm},
      {"measured", "moefabric", "host-tcp", "uniform:0.1", 1, false, "host backend EP2, H200 host (same)",
       host_tcp},
  };
  return s;
}

perf::Json validate(const Opts& o, bool print) {
  perf::Json rows = perf::Json::array();
  if (print) {
    printf(
        "# validation: decode shape (hidden 7168, top-8 of 256 experts, fp8 dispatch, bf16 combine), "
        "routing %s\n",
        o.routing.c_str());
    printf("#%-11s %-19s %-8s %4s %5s %9s %9s %7s %9s %9s %7s  %s\n", "kind", "system", "plat", "EP", "T",
           "disp_meas", "disp_pred", "err%", "comb_meas", "comb_pred", "err%", "source");
  }
  for (const Series& ser : series())
    for (const Sample& p : ser.samples) {
      model::Shape s;
      s.tokens = p.tokens;
      s.gpus_per_node = ser.gpus_per_node;
      s.force_fabric = ser.force_fabric;
      System sys;
      model::parse_system(ser.system, &sys);
      const int threads =
          sys == System::kUcclEp ? static_cast<int>(model::constant("proxy_threads_uccl_ep")) : 1;
      Row r;
      if (Status st =
              model_point(o, s, sys, *model::find_platform(ser.platform), p.ranks, threads, &r, ser.routing);
          !st.ok()) {
        fprintf(stderr, "moefabric-model: validation point EP%d: %s\n", p.ranks, st.message().c_str());
        continue;
      }
      const char* kind = p.calibration ? "calibration" : ser.kind;
      const double ed = 100.0 * (r.pr.dispatch.us - p.dispatch_us) / p.dispatch_us;
      const double ec = 100.0 * (r.pr.combine.us - p.combine_us) / p.combine_us;
      if (print)
        printf(" %-11s %-19s %-8s %4d %5d %9.1f %9.1f %+7.1f %9.1f %9.1f %+7.1f  %s\n", kind, ser.system,
               ser.platform, p.ranks, p.tokens, p.dispatch_us, r.pr.dispatch.us, ed, p.combine_us,
               r.pr.combine.us, ec, ser.source);
      rows.push_back({{"kind", kind},
                      {"system", ser.system},
                      {"platform", ser.platform},
                      {"ranks", p.ranks},
                      {"tokens", p.tokens},
                      {"force_fabric", ser.force_fabric},
                      {"dispatch_measured_us", p.dispatch_us},
                      {"dispatch_predicted_us", r.pr.dispatch.us},
                      {"dispatch_error_pct", ed},
                      {"combine_measured_us", p.combine_us},
                      {"combine_predicted_us", r.pr.combine.us},
                      {"combine_error_pct", ec},
                      {"source", ser.source}});
    }
  if (print) {
    double sum = 0, worst = 0;
    int n = 0;
    for (const auto& v : rows)
      if (v["kind"] != "calibration")
        for (const char* k : {"dispatch_error_pct", "combine_error_pct"}) {
          const double e = std::fabs(v[k].get<double>());
          sum += e, worst = std::max(worst, e), ++n;
        }
    printf("# %d checked values (calibration points excluded): mean |error| %.1f%%, worst %.1f%%\n", n,
           n ? sum / n : 0.0, worst);
  }
  return rows;
}

// --- traffic table -------------------------------------------------------------------------

perf::Json traffic_table(const Opts& o, const Row& r, bool print) {
  perf::Json rows = perf::Json::array();
  const int R = r.ep, G = std::max(1, std::min(o.shape.gpus_per_node, R));
  const int first = o.traffic_rank < 0 ? 0 : o.traffic_rank,
            last = o.traffic_rank < 0 ? R - 1 : o.traffic_rank;
  if (print)
    printf("# traffic of one op (%s, EP%d, %d GPUs per node, combine %s): per source rank and peer\n",
           r.system.c_str(), R, G, o.combine.c_str());
  if (print)
    printf("#%5s %5s %-6s %8s %8s %12s %7s %6s %9s %12s\n", "rank", "peer", "link", "records", "pairs",
           "disp_bytes", "writes", "grant", "comb_rows", "comb_bytes");
  for (int s = first; s <= last && s < R; ++s)
    for (int d = 0; d < R; ++d) {
      const moefabric::moe::PeerTraffic& p = r.tr.plan[s][d];
      const char* link = d == s ? "self" : s / G == d / G ? "nvlink" : "nic";
      if (print)
        printf(" %5d %5d %-6s %8u %8u %12llu %7u %6u %9u %12llu\n", s, d, link, p.records, p.pairs,
               static_cast<unsigned long long>(p.dispatch_bytes), p.dispatch_writes, p.grants, p.combine_rows,
               static_cast<unsigned long long>(p.combine_wire_bytes));
      rows.push_back({{"rank", s},
                      {"peer", d},
                      {"link", link},
                      {"records", p.records},
                      {"pairs", p.pairs},
                      {"dispatch_bytes", p.dispatch_bytes},
                      {"dispatch_writes", p.dispatch_writes},
                      {"grants", p.grants},
                      {"combine_rows", p.combine_rows},
                      {"combine_bytes", p.combine_wire_bytes},
                      {"combine_writes", p.combine_writes}});
    }
  return rows;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moefabric-model: predicted ncclMoe latency and memory at scale (docs/scale-model.md)"};
  perf::init_app(app, argc, argv);
  Opts o;
  app.add_option("-p,--platform", o.platforms, "platforms: p5, p5en, cx7, shm")->delimiter(',');
  app.add_option("-r,--ranks,--ep", o.ep, "EP sizes (ranks)")->delimiter(',');
  app.add_option("-s,--system", o.systems,
                 "moefabric, moefabric-node, pplx-garden, pplx-garden-scatter, uccl-ep, deepep-ll")
      ->delimiter(',');
  app.add_option("--tokens", o.shape.tokens, "tokens per rank")->check(CLI::PositiveNumber);
  app.add_option("--hidden", o.shape.hidden, "hidden size")->check(CLI::PositiveNumber);
  app.add_option("-k,--topk", o.shape.topk, "experts per token")->check(CLI::Range(1, 16));
  app.add_option("-E,--experts", o.shape.experts, "experts")->check(CLI::PositiveNumber);
  app.add_option("-d,--dtype", o.dtype, "dispatch type")->check(CLI::IsMember({"fp8", "bf16"}));
  app.add_option("--max-private", o.shape.max_private, "maxPrivateTokens")->check(CLI::NonNegativeNumber);
  app.add_option("-g,--gpus-per-node", o.shape.gpus_per_node, "GPUs per node (NVLink domain)")
      ->check(CLI::PositiveNumber);
  app.add_option("--combine", o.combine, "combine rows: per-pair (protocol v1) or per-rank (pre-reduced)")
      ->check(CLI::IsMember({"per-pair", "per-rank"}));
  app.add_option("--routing", o.routing, "uniform, zipf:S or trace:FILE");
  app.add_option("--seed", o.seed, "routing seed");
  app.add_option("--proxy-threads", o.proxy_threads, "threads posting one GPU's writes")
      ->check(CLI::PositiveNumber);
  app.add_option("--nic-GBps", o.nic_GBps, "what-if: NIC GB/s per GPU on p5, p5en, cx7 (validation too)");
  app.add_option("--latency-us", o.lat_us, "what-if: one-way network latency on p5, p5en, cx7");
  app.add_option("--per-write-us", o.msg_us, "what-if: NIC time per write on p5, p5en, cx7");
  app.add_option("--post-us", o.post_us, "what-if: proxy posting cost per write on p5, p5en, cx7");
  app.add_flag("--traffic", o.traffic, "print the per-peer traffic of the first EP size");
  app.add_option("--rank", o.traffic_rank, "source rank of --traffic (-1: every rank)");
  app.add_flag("--validate", o.validate, "model every measured and published point and print the error");
  app.add_flag("--constants", o.show_constants, "print the cost model's constants with their sources");
  app.add_option("-J,--json", o.json, "also write the results as JSON to this file (docs/perf-json.md)");
  app.add_option("--write-trace", o.write_trace, "write the routing of the first EP size as a trace file");
  CLI11_PARSE(app, argc, argv);
  o.shape.fp8 = o.dtype == "fp8";
  moefabric::moe::parse_combine_mode(o.combine, &o.shape.combine);
  std::vector<System> systems;
  for (const std::string& n : o.systems) {
    System s;
    if (!model::parse_system(n, &s)) {
      fprintf(stderr, "moefabric-model: unknown system '%s'\n", n.c_str());
      return 2;
    }
    systems.push_back(s);
  }
  if (o.traffic && o.traffic_rank >= o.ep.front()) {
    fprintf(stderr, "moefabric-model: --rank %d is not a rank of EP%d\n", o.traffic_rank, o.ep.front());
    return 2;
  }
  for (const std::string& n : o.platforms)
    if (!model::find_platform(n)) {
      fprintf(stderr, "moefabric-model: unknown platform '%s'\n", n.c_str());
      return 2;
    }

  perf::Json consts = perf::Json::array(), plats = perf::Json::array();
  for (const auto& c : model::constants())
    consts.push_back({{"key", c.key}, {"value", c.value}, {"unit", c.unit}, {"source", c.source}});
  for (const auto& p : model::platforms())
    plats.push_back({{"name", p.name},
                     {"desc", p.desc},
                     {"nic_GBps", p.nic_GBps},
                     {"latency_us", p.lat_us},
                     {"per_write_us", p.msg_us}});
  if (o.show_constants) {
    for (const auto& c : model::constants())
      printf("%-26s %10g %-9s %s\n", c.key.c_str(), c.value, c.unit.c_str(), c.source.c_str());
    for (const auto& p : model::platforms())
      printf("platform %-6s NIC %5.1f GB/s/GPU, latency %5.2f us, per write %.4f us: %s\n", p.name.c_str(),
             p.nic_GBps, p.lat_us, p.msg_us, p.desc.c_str());
  }

  printf(
      "# moefabric-model: T %d, hidden %d, top-%d of %d experts, %s dispatch, bf16 combine (%s), "
      "%d GPUs per node, maxPrivateTokens %d, routing %s, %d proxy thread(s)\n",
      o.shape.tokens, o.shape.hidden, o.shape.topk, o.shape.experts, o.dtype.c_str(), o.combine.c_str(),
      o.shape.gpus_per_node, o.shape.max_private, o.routing.c_str(), o.proxy_threads);
  printf("#%-8s %-19s %5s %5s %9s %9s %9s %10s %10s %10s %8s %8s %7s %9s %9s\n", "plat", "system", "EP",
         "nodes", "disp_us", "comb_us", "total_us", "nic_MB_d", "nic_MB_c", "nvl_MB_d", "wr_out", "post_us",
         "thr_ok", "mem_MB", "user_MB");
  perf::Json results = perf::Json::array(), traffic;
  std::vector<Row> rows;
  for (const std::string& pn : o.platforms)
    for (System sys : systems)
      for (int R : o.ep) {
        Row r;
        if (Status st = model_point(o, o.shape, sys, *model::find_platform(pn), R, o.proxy_threads, &r);
            !st.ok()) {
          fprintf(stderr, "moefabric-model: EP%d: %s\n", R, st.message().c_str());
          return 2;
        }
        printf(" %-8s %-19s %5d %5d %9.1f %9.1f %9.1f %10.2f %10.2f %10.2f %8.0f %8.1f %7d %9.1f %9.1f\n",
               pn.c_str(), r.system.c_str(), R, r.nodes, r.pr.dispatch.us, r.pr.combine.us,
               r.pr.dispatch.us + r.pr.combine.us, mb(r.pr.dispatch.nic_out_max_b),
               mb(r.pr.combine.nic_out_max_b), mb(r.pr.dispatch.nvl_out_max_b),
               r.pr.dispatch.nic_writes_max + r.pr.combine.nic_writes_max,
               r.pr.dispatch.post_us + r.pr.combine.post_us, r.pr.proxy_threads_needed, mb(r.tr.memory_bytes),
               mb(r.tr.user_bytes));
        results.push_back(row_json(r, o));
        if (rows.empty() && o.traffic) traffic = traffic_table(o, r, true);
        if (rows.empty() && !o.write_trace.empty()) {
          model::Routing rt;
          Status st = model::make_routing(o.routing, o.shape, R, o.seed, &rt);
          if (st.ok()) st = model::write_trace(o.write_trace, o.shape, rt);
          if (!st.ok()) {
            fprintf(stderr, "moefabric-model: %s\n", st.message().c_str());
            return 2;
          }
        }
        rows.push_back(std::move(r));
      }
  perf::Json val = o.validate || !o.json.empty() ? validate(o, o.validate) : perf::Json::array();
  if (!o.json.empty()) {
    perf::Json config{{"tokens", o.shape.tokens},
                      {"hidden", o.shape.hidden},
                      {"topk", o.shape.topk},
                      {"experts", o.shape.experts},
                      {"dtype", o.dtype},
                      {"combine_mode", o.combine},
                      {"max_private", o.shape.max_private},
                      {"gpus_per_node", o.shape.gpus_per_node},
                      {"routing", o.routing},
                      {"seed", o.seed},
                      {"proxy_threads", o.proxy_threads},
                      {"platforms", plats},
                      {"constants", consts}};
    perf::Json doc = perf::document(perf::Meta{"moefabric-model", std::nullopt, std::nullopt, std::nullopt},
                                    config, results);
    doc["validation"] = val;
    if (o.traffic) doc["traffic"] = traffic;
    if (Status s = perf::write_json(o.json, doc); !s.ok()) {
      fprintf(stderr, "moefabric-model: %s\n", s.message().c_str());
      return 2;
    }
  }
  return 0;
}
