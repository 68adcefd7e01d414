#include "tests/common/moe_reference.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "common/launch.h"

namespace moetest {
namespace {

uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

float from_bf16(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t to_bf16_rne(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return 0x7fc0;
  uint32_t lsb = (u >> 16) & 1u;
  uint64_t r = static_cast<uint64_t>(u) + 0x7fffu + lsb;
  return static_cast<uint16_t>(r >> 16);
}

}  // namespace

ncclMoeConfig_t Shape::config() const {
  ncclMoeConfig_t c = NCCL_MOE_CONFIG_INITIALIZER;
  c.numExperts = experts;
  c.numTopk = topk;
  c.hidden = hidden;
  c.maxTokensPerRank = max_tokens;
  c.dispatchType = fp8 ? ncclFloat8e4m3 : ncclBfloat16;
  c.scaleBlock = scale_block;
  c.expertAlignment = alignment;
  c.maxPrivateTokens = max_private;
  c.backend = ncclMoeBackendHost;
  c.combineMode = per_rank ? ncclMoeCombinePerRank : ncclMoeCombinePerPair;
  return c;
}

RankInput make_input(const Shape& s, int rank, int T, uint64_t seed, Routing routing) {
  RankInput in;
  in.T = T;
  std::mt19937_64 rng(mix(seed * 7919 + static_cast<uint64_t>(rank)));
  in.x.resize(s.x_bytes() * T);
  for (auto& b : in.x) b = static_cast<uint8_t>(rng());
  in.scales.resize(s.nscale() * T);
  for (auto& v : in.scales) v = std::ldexp(static_cast<float>(rng() % 1000 + 1), -10);
  in.idx.assign(static_cast<size_t>(T) * s.topk, -1);
  in.w.resize(static_cast<size_t>(T) * s.topk);
  for (auto& v : in.w) v = static_cast<float>(rng() % 100000) / 100000.0f;
  const int hot = static_cast<int>(seed % static_cast<uint64_t>(s.experts));
  for (int t = 0; t < T; ++t) {
    int32_t* row = &in.idx[static_cast<size_t>(t) * s.topk];
    for (int k = 0; k < s.topk; ++k) {
      switch (routing) {
        case Routing::kRandom: {
          // distinct experts per token, some empty slots
          int e;
          bool dup;
          do {
            e = static_cast<int>(rng() % s.experts);
            dup = false;
            for (int j = 0; j < k; ++j) dup |= row[j] == e;
          } while (dup && k < s.experts);
          row[k] = rng() % 10 == 0 ? -1 : e;
          break;
        }
        case Routing::kOneExpert:
          row[k] = hot;
          break;
        case Routing::kEmpty:
          row[k] = -1;
          break;
        case Routing::kDuplicates:
          row[k] = static_cast<int>(rng() % std::min(s.experts, 3));
          break;
        case Routing::kSkewed:
          row[k] = rng() % 2 ? static_cast<int>(rng() % std::max(1, s.local(0)))
                             : static_cast<int>(rng() % s.experts);
          break;
        case Routing::kUniformDup:
          row[k] = rng() % 10 == 0 ? -1 : static_cast<int>(rng() % s.experts);
          break;
        case Routing::kToOneRank: {
          const int r = static_cast<int>(seed % static_cast<uint64_t>(s.nranks));
          row[k] = s.first(r) + static_cast<int>(rng() % std::max(1, s.local(r)));
          break;
        }
      }
    }
  }
  return in;
}

ExpectedLayout expected_layout(const Shape& s, const std::vector<RankInput>& all, int me) {
  ExpectedLayout ex;
  const int first = s.first(me), L = s.local(me);
  ex.counts.assign(L, 0);
  for (int j = 0; j < L; ++j) {
    for (int src = 0; src < s.nranks; ++src)
      for (int t = 0; t < all[src].T; ++t)
        for (int k = 0; k < s.topk; ++k)
          if (all[src].idx[static_cast<size_t>(t) * s.topk + k] == first + j) {
            ex.rows.push_back({src, t, k});
            ++ex.counts[j];
          }
    while (ex.rows.size() % s.alignment) ex.rows.push_back({-1, -1, -1});
  }
  return ex;
}

std::string check_dispatch(const Shape& s, const std::vector<RankInput>& all, int me,
                           const ExpectedLayout& ex, const uint8_t* recv_x, const float* recv_scales,
                           const int32_t* counts) {
  for (int j = 0; j < s.local(me); ++j)
    if (counts[j] != ex.counts[j])
      return "expert " + std::to_string(s.first(me) + j) + ": count " + std::to_string(counts[j]) +
             ", expected " + std::to_string(ex.counts[j]);
  for (size_t r = 0; r < ex.rows.size(); ++r) {
    const int src = ex.rows[r].src, t = ex.rows[r].token;
    if (src < 0) continue;
    if (std::memcmp(recv_x + s.x_bytes() * r, all[src].x.data() + s.x_bytes() * t, s.x_bytes()) != 0)
      return "row " + std::to_string(r) + " differs from rank " + std::to_string(src) + " token " +
             std::to_string(t);
    if (s.fp8 && std::memcmp(recv_scales + s.nscale() * r, all[src].scales.data() + s.nscale() * t,
                             s.nscale() * sizeof(float)) != 0)
      return "scales of row " + std::to_string(r) + " differ";
  }
  return "";
}

uint16_t expert_value(int expert, int src, int token, int k, int col) {
  uint64_t h = mix((static_cast<uint64_t>(expert) << 44) ^ (static_cast<uint64_t>(src) << 32) ^
                   (static_cast<uint64_t>(token) << 18) ^ (static_cast<uint64_t>(k) << 13) ^
                   static_cast<uint64_t>(col));
  uint16_t sign = static_cast<uint16_t>((h & 1) << 15);
  uint16_t exp = static_cast<uint16_t>(118 + (h >> 1) % 14);  // finite, 2^-9 .. 2^4
  uint16_t mant = static_cast<uint16_t>((h >> 8) & 0x7f);
  return static_cast<uint16_t>(sign | (exp << 7) | mant);
}

void fill_expert_y(const Shape& s, const std::vector<RankInput>& all, int me, const ExpectedLayout& ex,
                   uint16_t* expert_y) {
  (void)all;
  // Expert of each row: walk the segments again.
  size_t r = 0;
  for (int j = 0; j < s.local(me); ++j) {
    size_t end = r + ex.counts[j];
    for (; r < end; ++r)
      for (int c = 0; c < s.hidden; ++c)
        expert_y[r * s.hidden + c] =
            expert_value(s.first(me) + j, ex.rows[r].src, ex.rows[r].token, ex.rows[r].k, c);
    while (r < ex.rows.size() && ex.rows[r].src < 0) {
      for (int c = 0; c < s.hidden; ++c) expert_y[r * s.hidden + c] = 0x7fc0;  // padding: NaN
      ++r;
    }
  }
}

std::string check_combine(const Shape& s, const RankInput& mine, int me, const uint16_t* y) {
  const int K = s.topk;
  for (int t = 0; t < mine.T; ++t)
    for (int c = 0; c < s.hidden; ++c) {
      const int32_t* idx = mine.idx.data() + static_cast<size_t>(t) * K;
      const float* w = mine.w.data() + static_cast<size_t>(t) * K;
      float acc = 0.0f;
      if (!s.per_rank) {
        for (int k = 0; k < K; ++k)
          if (idx[k] >= 0) acc = std::fmaf(w[k], from_bf16(expert_value(idx[k], me, t, k, c)), acc);
      } else {
        for (int r = 0; r < s.nranks; ++r) {
          float part = 0.0f;
          bool any = false;
          for (int k = 0; k < K; ++k)
            if (idx[k] >= 0 && s.owner(idx[k]) == r) {
              part = std::fmaf(w[k], from_bf16(expert_value(idx[k], me, t, k, c)), part);
              any = true;
            }
          if (any) acc += from_bf16(to_bf16_rne(part));
        }
      }
      uint16_t want = to_bf16_rne(acc);
      uint16_t got = y[static_cast<size_t>(t) * s.hidden + c];
      if (got != want) {
        char b[160];
        snprintf(b, sizeof b, "y[%d][%d] = 0x%04x, expected 0x%04x", t, c, got, want);
        return b;
      }
    }
  return "";
}

namespace {
// Records (tokens routed there at least once) and (token, k) pairs from `src` to `dst`.
void routed(const Shape& s, const RankInput& in, int dst, uint32_t* records, uint32_t* pairs) {
  *records = *pairs = 0;
  for (int t = 0; t < in.T; ++t) {
    uint32_t n = 0;
    for (int k = 0; k < s.topk; ++k) {
      const int e = in.idx[static_cast<size_t>(t) * s.topk + k];
      n += e >= 0 && s.owner(e) == dst;
    }
    *pairs += n;
    *records += n > 0;
  }
}
size_t pad(size_t v, size_t a) { return (v + a - 1) / a * a; }
}  // namespace

std::string check_peer_stats(const Shape& s, const std::vector<RankInput>& all, int me,
                             const ncclMoePeerStats_t* got) {
  // Sizes as docs/moe-protocol.md defines them (written out here, not taken from the library).
  int max_local = 0;
  for (int r = 0; r < s.nranks; ++r) max_local = std::max(max_local, s.local(r));
  const size_t header = pad(32 + 4 * static_cast<size_t>(max_local), 64);
  const size_t record = pad(4 + 4 * static_cast<size_t>(s.topk) * (s.per_rank ? 2 : 1), 16) +
                        pad(s.x_bytes(), 16) + pad(s.nscale() * 4, 16);
  const uint32_t P = static_cast<uint32_t>(std::min(s.max_private, s.max_tokens));
  for (int p = 0; p < s.nranks; ++p) {
    uint32_t rec = 0, pairs = 0, back_rec = 0, back_pairs = 0;
    if (p != me) {
      routed(s, all[me], p, &rec, &pairs);            // what we send p
      routed(s, all[p], me, &back_rec, &back_pairs);  // what p sends us (we return its rows)
    }
    const uint32_t rows = s.per_rank ? back_rec : back_pairs;
    ncclMoePeerStats_t want{};
    if (p != me) {
      want.dispatchBytes = header + record * rec;
      want.dispatchWrites = rec > P ? 2 : 1;
      want.grantsSent = back_rec > P ? 1 : 0;
      want.records = rec;
      want.rowsReturned = rows;
      want.combineBytes = rows ? static_cast<uint64_t>(rows) * s.hidden * 2 : 16;
      want.combineWrites = 1;
    }
    const ncclMoePeerStats_t& g = got[p];
    char b[320];
    if (g.dispatchBytes != want.dispatchBytes || g.dispatchWrites != want.dispatchWrites ||
        g.grantsSent != want.grantsSent || g.records != want.records || g.rowsReturned != want.rowsReturned ||
        g.combineBytes != want.combineBytes || g.combineWrites != want.combineWrites) {
      snprintf(b, sizeof b,
               "peer stats to rank %d: got dispatch %llu B / %u writes / %u records, combine %llu B / %u "
               "writes / %u rows, %u grants; the protocol says %llu / %u / %u, %llu / %u / %u, %u",
               p, static_cast<unsigned long long>(g.dispatchBytes), g.dispatchWrites, g.records,
               static_cast<unsigned long long>(g.combineBytes), g.combineWrites, g.rowsReturned, g.grantsSent,
               static_cast<unsigned long long>(want.dispatchBytes), want.dispatchWrites, want.records,
               static_cast<unsigned long long>(want.combineBytes), want.combineWrites, want.rowsReturned,
               want.grantsSent);
      return b;
    }
  }
  return "";
}

ncclResult_t oob_allgather(const void* send, void* recv, size_t bytes, void* ctx) {
  return static_cast<moefabric::OobChannel*>(ctx)->allgather(send, recv, bytes).ok() ? ncclSuccess
                                                                                     : ncclSystemError;
}

bool gather_inputs(void* oob_ptr, const Shape& s, const RankInput& mine, std::vector<RankInput>* all) {
  auto* oob = static_cast<moefabric::OobChannel*>(oob_ptr);
  const int R = s.nranks;
  std::vector<int32_t> Ts(R);
  if (!oob->allgather(&mine.T, Ts.data(), sizeof(int32_t)).ok()) return false;
  // Pad every rank's arrays to max_tokens so the allgather sizes agree.
  const size_t M = static_cast<size_t>(s.max_tokens);
  auto gather = [&](const void* src, size_t bytes_per_token, size_t have, auto setter) {
    std::vector<uint8_t> buf(M * bytes_per_token, 0), out(M * bytes_per_token * R);
    if (have > 0) std::memcpy(buf.data(), src, have);
    if (!oob->allgather(buf.data(), out.data(), buf.size()).ok()) return false;
    for (int r = 0; r < R; ++r) setter(r, out.data() + r * buf.size());
    return true;
  };
  all->assign(R, RankInput{});
  for (int r = 0; r < R; ++r) (*all)[r].T = Ts[r];
  bool ok = gather(mine.x.data(), s.x_bytes(), mine.x.size(),
                   [&](int r, const uint8_t* p) { (*all)[r].x.assign(p, p + s.x_bytes() * Ts[r]); });
  ok = ok && gather(mine.scales.data(), s.nscale() * 4, mine.scales.size() * 4, [&](int r, const uint8_t* p) {
         (*all)[r].scales.resize(s.nscale() * Ts[r]);
         if (!(*all)[r].scales.empty()) std::memcpy((*all)[r].scales.data(), p, (*all)[r].scales.size() * 4);
       });
  ok = ok && gather(mine.idx.data(), s.topk * 4, mine.idx.size() * 4, [&](int r, const uint8_t* p) {
         (*all)[r].idx.resize(static_cast<size_t>(s.topk) * Ts[r]);
         if (!(*all)[r].idx.empty()) std::memcpy((*all)[r].idx.data(), p, (*all)[r].idx.size() * 4);
       });
  ok = ok && gather(mine.w.data(), s.topk * 4, mine.w.size() * 4, [&](int r, const uint8_t* p) {
         (*all)[r].w.resize(static_cast<size_t>(s.topk) * Ts[r]);
         if (!(*all)[r].w.empty()) std::memcpy((*all)[r].w.data(), p, (*all)[r].w.size() * 4);
       });
  return ok;
}

}  // namespace moetest
