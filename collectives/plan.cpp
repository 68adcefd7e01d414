#include "collectives/plan.h"

#include <algorithm>

namespace moefabric::moe {

const char* combine_mode_name(CombineMode m) { return m == CombineMode::kPerRank ? "per-rank" : "per-pair"; }

bool parse_combine_mode(const std::string& s, CombineMode* out) {
  if (s == "per-pair")
    *out = CombineMode::kPerPair;
  else if (s == "per-rank")
    *out = CombineMode::kPerRank;
  else
    return false;
  return true;
}

Status plan_rank(const Layout& l, int src, const int32_t* idx, int T, CombineMode mode,
                 std::vector<PeerTraffic>* out) {
  const int R = l.nranks, K = l.topk;
  out->assign(R, PeerTraffic{});
  std::vector<int> last_token(R, -1);  // the last token counted as a record per destination
  for (int t = 0; t < T; ++t) {
    for (int k = 0; k < K; ++k) {
      const int e = idx[static_cast<size_t>(t) * K + k];
      if (e < 0) continue;
      if (e >= l.experts)
        return Status::invalid_argument("token " + std::to_string(t) + " selects expert " +
                                        std::to_string(e) + " of " + std::to_string(l.experts));
      const int d = l.owner(e);
      PeerTraffic& p = (*out)[d];
      ++p.pairs;
      if (last_token[d] != t) last_token[d] = t, ++p.records;
    }
  }
  for (int d = 0; d < R; ++d) {
    PeerTraffic& p = (*out)[d];
    p.nprivate = std::min<uint32_t>(p.records, static_cast<uint32_t>(l.max_private));
    p.combine_rows = mode == CombineMode::kPerRank ? p.records : p.pairs;
    if (d == src) continue;
    p.dispatch_bytes = l.dispatch_bytes(p.records);
    p.dispatch_bytes_1 = l.header_bytes + l.record_bytes * p.nprivate;
    p.dispatch_writes = l.dispatch_writes(p.records);
    p.grants = p.records > p.nprivate ? 1 : 0;
    p.combine_bytes = l.y_row_bytes * p.combine_rows;
    p.combine_wire_bytes = l.combine_wire_bytes(p.combine_rows);
    p.combine_writes = 1;
  }
  return {};
}

Status plan_world(const Layout& l, const std::vector<const int32_t*>& idx, const std::vector<int>& T,
                  CombineMode mode, WorldPlan* out) {
  out->assign(l.nranks, {});
  for (int s = 0; s < l.nranks; ++s)
    if (Status st = plan_rank(l, s, idx[s], T[s], mode, &(*out)[s]); !st.ok())
      return st.prepend("rank " + std::to_string(s) + ": ");
  return {};
}

RankStats rank_stats(const WorldPlan& w, int r) {
  RankStats st;
  const int R = static_cast<int>(w.size());
  for (int d = 0; d < R; ++d) {
    const PeerTraffic& out = w[r][d];  // r as the source
    st.dispatch_bytes_sent += out.dispatch_bytes;
    st.dispatch_writes_max_peer = std::max(st.dispatch_writes_max_peer, out.dispatch_writes);
    const PeerTraffic& in = w[d][r];  // r as the destination: returns rows, answers with grants
    st.combine_bytes_sent += in.combine_wire_bytes;  // rows, or the 16-byte empty marker
    st.combine_writes_max_peer = std::max(st.combine_writes_max_peer, in.combine_writes);
    st.grants_sent += in.grants;
  }
  return st;
}

}  // namespace moefabric::moe
