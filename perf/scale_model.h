// moefabric-model's pieces (docs/scale-model.md): routings, the exact traffic of a routing
// counted by the protocol's own planner (collectives/plan.h), and the cost model that turns
// traffic into latency. Every constant lives in one table with its source.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "collectives/layout.h"
#include "collectives/plan.h"
#include "common/status.h"

namespace moefabric::model {

using moe::CombineMode;

struct Shape {
  int tokens = 128, hidden = 7168, topk = 8, experts = 256;
  int max_private = 128;  // maxPrivateTokens (the library's default)
  int gpus_per_node = 8;
  bool fp8 = true;
  CombineMode combine = CombineMode::kPerPair;
  bool force_fabric = false;  // every peer, self included, through the proxy (measured on one GPU)
  bool host_backend = false;  // CPU data movement: the receiver reads the receive block in place
};

// Every rank's [T, K] expert ids (-1 empty), as the ranks would pass them to ncclMoeDispatch.
struct Routing {
  std::vector<std::vector<int32_t>> idx;
  std::vector<int> T;
  int max_tokens() const;
};

// "uniform[:F]" (K distinct experts, uniform; a fraction F of the slots empty), "zipf:S" (K distinct experts, popularity 1/rank^S over
// a seeded permutation of the experts), "trace:FILE" (docs/scale-model.md#routing-traces).
Status make_routing(const std::string& spec, const Shape& s, int ranks, uint64_t seed, Routing* out);
Status write_trace(const std::string& path, const Shape& s, const Routing& r);

// How a system shapes its traffic. moefabric and moefabric-node are this library (the second
// a what-if); the others model published systems' traffic (docs/scale-model.md#other-systems).
enum class System {
  kMoefabric,
  kMoefabricNode,
  kPplxGarden,
  kPplxGardenScatter,
  kUcclEp,
  kDeepEpLL,
};
const char* system_name(System s);
bool parse_system(const std::string& s, System* out);

// One phase's per-rank load.
struct PhaseLoad {
  std::vector<double> nic_out_b, nic_in_b, nic_out_w, nic_in_w;  // bytes and writes over the NIC
  std::vector<double> nvl_out_b, nvl_in_b;                       // direct NVLink stores
  std::vector<double> fwd_out_b,
      fwd_in_b;                // node mode: the NVLink hop after (dispatch) / before (combine) the NIC
  std::vector<double> kern_b;  // bytes the rank's kernels pack and unpack
  std::vector<char> grant;     // an overflow grant round trip on a NIC path
  std::vector<char> fabric;    // the rank has a peer (or itself) behind the proxy
  bool staging = true;         // GPU: NIC bytes land in staging and are copied once more
  void resize(int R);
};

struct Traffic {
  int ranks = 0, nodes = 0;
  PhaseLoad dispatch, combine;
  moe::WorldPlan plan;              // rank-level plan (every system's pairs/records come from it)
  moe::Layout layout;               // of rank 0 (sizes are equal on every rank)
  uint64_t memory_bytes = 0;        // per GPU: registered protocol blocks (+ NVLink block)
  uint64_t fabric_block_bytes = 0;  // of which the fabric protocol's send + receive blocks
  uint64_t user_bytes = 0;  // the caller's recvX + recvScales + expertY at ncclMoeGetRecvCapacity rows
};

Status compute_traffic(System sys, const Shape& s, const Routing& r, Traffic* out);

// The cost model's constants: one table, each with its unit and source.
struct Constant {
  std::string key;
  double value;
  std::string unit, source;
};
struct Platform {
  std::string name, desc;
  double nic_GBps, lat_us, msg_us;  // per GPU: NIC bandwidth; one-way small-write latency; NIC time per write
  double post_us;                   // the proxy's cost to post one write
  bool host;                        // host backend: data movement on the CPU (host_* constants)
};
const std::vector<Constant>& constants();
double constant(const std::string& key);
const std::vector<Platform>& platforms();
const Platform* find_platform(const std::string& name);

struct PhasePrediction {
  double us = 0;            // slowest rank
  double kernel_us = 0;     // of that rank: kernels
  double kernel_bytes = 0;  // of that rank: bytes its kernels pack, copy and unpack
  double post_us = 0;       // the most posting time any rank needs (all its NIC writes, one thread)
  double wire_us = 0;       // the most NIC wire time any rank needs
  double nic_out_max_b = 0, nvl_out_max_b = 0;
  double nic_writes_max = 0;
  int slow_rank = 0;
};
struct Prediction {
  PhasePrediction dispatch, combine;
  int proxy_threads_needed = 1;  // posting never longer than the wire time (docs/scale-model.md)
};

// proxy_threads: threads posting a GPU's writes (moefabric, pplx-garden, UCCL-EP; DeepEP LL posts
// from the GPU).
Prediction predict(System sys, const Platform& p, const Traffic& t, int proxy_threads);

}  // namespace moefabric::model
