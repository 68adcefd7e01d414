#include "tests/common/moe_fuzz.h"

#include <algorithm>
#include <cstdio>
#include <random>

namespace moetest {
namespace {

const char* routing_name(Routing r) {
  switch (r) {
    case Routing::kRandom:
      return "distinct";
    case Routing::kOneExpert:
      return "one-hot-expert";
    case Routing::kEmpty:
      return "all-empty";
    case Routing::kDuplicates:
      return "duplicates";
    case Routing::kSkewed:
      return "skewed-to-rank0";
    case Routing::kUniformDup:
      return "uniform";
    case Routing::kToOneRank:
      return "all-to-one-rank";
  }
  return "?";
}

}  // namespace

uint64_t fuzz_seed(uint64_t base, int nranks, uint64_t i) {
  uint64_t x = base ^ (static_cast<uint64_t>(nranks) << 48) ^ (i * 0x9e3779b97f4a7c15ull);
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::string FuzzCase::describe() const {
  const Shape& s = shape;
  const std::string sb = std::to_string(s.scale_block);
  std::string t;
  for (size_t r = 0; r < T.size(); ++r) {
    if (r) t.push_back(',');
    t.append(std::to_string(T[r]));
  }
  char b[400];
  snprintf(b, sizeof b,
           "seed 0x%016llx: R %d E %d K %d H %d %s%s align %d maxT %d P %d %s%s, routing %s, T [%s], "
           "%d op(s), %s stream%s",
           static_cast<unsigned long long>(seed), s.nranks, s.experts, s.topk, s.hidden,
           s.fp8 ? "fp8 sb" : "bf16", s.fp8 ? sb.c_str() : "", s.alignment, s.max_tokens, s.max_private,
           split ? "split" : "whole", s.per_rank ? ", per-rank combine" : "", routing_name(routing),
           t.c_str(), ops,
           stream == 0   ? "non-blocking"
           : stream == 1 ? "blocking"
                         : "legacy NULL",
           sync_between ? ", host sync between dispatch and combine" : "");
  return b;
}

FuzzCase fuzz_case(uint64_t seed, int R, const FuzzLimits& lim) {
  std::mt19937_64 rng(seed);
  auto pick = [&](int lo, int hi) {
    return lo + static_cast<int>(rng() % static_cast<uint64_t>(hi - lo + 1));
  };
  FuzzCase c;
  c.seed = seed;
  Shape& s = c.shape;
  s.nranks = R;
  // Experts: mostly not a multiple of R (uneven ownership), sometimes exactly R or a multiple.
  const int emax = std::max(R, lim.max_experts);
  switch (rng() % 6) {
    case 0:
      s.experts = R;
      break;
    case 1:
      s.experts = R * pick(1, std::max(1, emax / R));
      break;
    default:
      s.experts = pick(R, emax);
      if (R > 1 && s.experts % R == 0) s.experts = s.experts < emax ? s.experts + 1 : s.experts - 1;
      s.experts = std::max(s.experts, R);
  }
  s.topk = pick(1, 16);
  s.fp8 = rng() % 2;
  static const int kBlocks[] = {32, 64, 128};
  s.scale_block = kBlocks[rng() % 3];
  const int unit = s.fp8 ? std::max(16, s.scale_block) : 16;
  const int hmax_units = std::max(1, lim.max_hidden / unit);
  // Hidden sizes: half small (one to a few 1 KiB chunks), the rest up to the limit.
  const int hu = rng() % 2 ? pick(1, std::min(hmax_units, std::max(1, 1024 / unit))) : pick(1, hmax_units);
  s.hidden = hu * unit;
  s.alignment = pick(1, 16);
  // maxTokensPerRank: small counts (the block/warp split of few rows) as often as larger ones.
  static const int kMaxT[] = {1, 2, 3, 5, 8, 13, 16, 17, 31, 32, 48, 64, 100, 128, 200, 256};
  s.max_tokens = kMaxT[rng() % (sizeof kMaxT / sizeof kMaxT[0])];
  while (s.max_tokens > 1 && (static_cast<int64_t>(s.max_tokens) * s.hidden * s.topk > lim.max_elements ||
                              static_cast<int64_t>(R) * s.max_tokens * s.hidden > lim.max_elements))
    s.max_tokens /= 2;
  // Private region: none, a few tokens, or every token.
  switch (rng() % 4) {
    case 0:
      s.max_private = 0;
      break;
    case 1:
      s.max_private = pick(1, 4);
      break;
    case 2:
      s.max_private = pick(0, s.max_tokens);
      break;
    default:
      s.max_private = s.max_tokens;
      break;
  }
  c.split = rng() % 2;
  static const Routing kRoutings[] = {Routing::kUniformDup, Routing::kUniformDup, Routing::kRandom,
                                      Routing::kOneExpert,  Routing::kEmpty,      Routing::kDuplicates,
                                      Routing::kSkewed,     Routing::kToOneRank};
  c.routing = kRoutings[rng() % (sizeof kRoutings / sizeof kRoutings[0])];
  // Tokens per rank: independent draws, everyone at the maximum, or one rank empty.
  c.T.resize(R);
  const int tmode = static_cast<int>(rng() % 4);
  for (int r = 0; r < R; ++r) c.T[r] = tmode == 1 ? s.max_tokens : pick(0, s.max_tokens);
  if (tmode == 2) c.T[rng() % R] = 0;
  c.input_seed = rng();
  c.ops = pick(1, 4);
  c.stream = pick(0, 2);
  c.sync_between = rng() % 2;
  // Drawn last, so that the draws above (and so every recorded seed) stay as they were.
  s.per_rank = lim.per_rank_combine && rng() % 2;
  return c;
}

RankInput fuzz_input(const FuzzCase& c, int rank, int op) {
  return make_input(c.shape, rank, c.T[rank], c.input_seed + static_cast<uint64_t>(op), c.routing);
}

std::vector<FuzzCase> fuzz_regressions(int R) {
  std::vector<FuzzCase> out;
  // A shape whose y came out wrong (alignment 4) or whose dispatch hung (alignment 1) on the CUDA
  // backend: E not a multiple of the suite's 8/16/32, top-3 with empty slots and repeated
  // experts, hidden 256, every rank at T = maxTokensPerRank = 16.
  auto add = [&](bool fp8, int E, int align, bool split, uint64_t in, int stream, bool sync) {
    FuzzCase c;
    c.seed = 0x5eed000000000000ull | (static_cast<uint64_t>(fp8) << 32) | (static_cast<uint64_t>(E) << 16) |
             (static_cast<uint64_t>(align) << 8) | (static_cast<uint64_t>(split) << 4) |
             (static_cast<uint64_t>(stream) << 40) | (static_cast<uint64_t>(sync) << 44) | in;
    Shape& s = c.shape;
    s.nranks = R;
    s.experts = std::max(E, R);
    s.topk = 3;
    s.hidden = 256;
    s.max_tokens = 16;
    s.fp8 = fp8;
    s.scale_block = 128;
    s.alignment = align;
    s.max_private = 16;
    c.split = split;
    c.routing = Routing::kUniformDup;
    c.T.assign(R, 16);
    c.input_seed = in;
    c.ops = 4;
    c.stream = stream;
    c.sync_between = sync;
    out.push_back(c);
  };
  for (uint64_t in = 1; in <= 2; ++in)
    for (int stream = 0; stream < 3; stream += 2) {
      const bool sync = in == 2;
      add(true, 10, 4, true, in, stream, sync);
      add(false, 10, 4, false, in, stream, sync);
      add(false, 10, 1, false, in, stream, sync);
      add(true, 10, 1, true, in, stream, sync);
      add(true, 16, 4, true, in, stream, sync);
    }
  return out;
}

}  // namespace moetest
