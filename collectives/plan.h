// The traffic of one op, counted: what the host backend's packing (host_backend.cpp) and the proxy
// (proxy.cpp) put on the wire for a routing, per (source, destination) rank pair, without moving a
// byte. Pure arithmetic over a Layout; the scale model (perf/scale_model.cpp) is built on it and
// tests/moe/test_moe_plan.cpp checks it against ncclMoeGetStats of real runs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "collectives/layout.h"
#include "common/status.h"

namespace moefabric::moe {

// What one expert rank returns in combine for the tokens a source sent it.
enum class CombineMode {
  kPerPair,  // one bf16 row per (token, expert) pair (ncclMoeCombinePerPair)
  kPerRank,  // one pre-reduced bf16 row per (token, expert rank): rows = records (ncclMoeCombinePerRank;
             // the layout's records then carry the K weights: layout_init(..., per_rank = true))
};
const char* combine_mode_name(CombineMode m);
bool parse_combine_mode(const std::string& s, CombineMode* out);

inline constexpr size_t kGrantBytes = 16;  // sizeof(Grant)

// One (source -> destination) pair of one op. For the source itself every byte and write is 0
// (its own tokens never cross a transport) while records / pairs / combine_rows still count.
struct PeerTraffic {
  uint32_t records = 0;   // (token, destination rank): a token picking several of its experts crosses once
  uint32_t pairs = 0;     // (token, expert) pairs landing at the destination
  uint32_t nprivate = 0;  // records in dispatch write 1: min(records, maxPrivateTokens)
  uint64_t dispatch_bytes = 0;      // header + records x record_bytes
  uint64_t dispatch_bytes_1 = 0;    // of which in write 1: header + nprivate records
  uint32_t dispatch_writes = 0;     // 1, or 2 when records > nprivate
  uint32_t grants = 0;              // 1 when records > nprivate: the destination's grant back
  uint32_t combine_rows = 0;        // rows the destination returns to the source
  uint64_t combine_bytes = 0;       // payload: combine_rows x y_row_bytes
  uint64_t combine_wire_bytes = 0;  // payload, or the 16-byte marker when there are no rows (ncclMoeGetStats)
  uint32_t combine_writes = 0;      // 1 per peer
};

// One source rank's op: entry d is what it sends destination d (and gets back from it). idx is
// [T, K] global expert ids, -1 = empty slot. Invalid argument, naming it, for an id outside [-1, E).
Status plan_rank(const Layout& l, int src, const int32_t* idx, int T, CombineMode mode,
                 std::vector<PeerTraffic>* out);

// What one rank's ncclMoeGetStats reports after the op (the "last dispatch/combine" fields).
struct RankStats {
  uint64_t dispatch_bytes_sent = 0;  // dispatchBytesSent
  uint64_t combine_bytes_sent = 0;   // combineBytesSent
  uint32_t dispatch_writes_max_peer = 0;
  uint32_t combine_writes_max_peer = 0;
  uint32_t grants_sent = 0;  // grants this rank (as a destination) sent its sources
};

// All ranks' plans of one op: plan[s][d] (s, d in [0, R)).
using WorldPlan = std::vector<std::vector<PeerTraffic>>;

// Plans every rank; idx[s] is rank s's [T[s], K] routing.
Status plan_world(const Layout& l, const std::vector<const int32_t*>& idx, const std::vector<int>& T,
                  CombineMode mode, WorldPlan* out);

// Rank r's stats from the world plan: sends are row r, combine and grants come from column r.
RankStats rank_stats(const WorldPlan& w, int r);

}  // namespace moefabric::moe
