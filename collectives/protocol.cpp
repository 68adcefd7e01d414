#include "collectives/protocol.h"

namespace moefabric::moe {

const char* kind_name(WriteKind k) {
  switch (k) {
    case WriteKind::kDispatchPrivate:
      return "dispatch (counts + private tokens)";
    case WriteKind::kDispatchRest:
      return "dispatch (granted tokens)";
    case WriteKind::kGrant:
      return "dispatch grant";
    case WriteKind::kCombine:
      return "combine";
    case WriteKind::kBarrier:
      return "destroy barrier";
    case WriteKind::kRequest:
      return "dispatch grant request";
  }
  return "unknown";
}

Status imm_decode(uint32_t imm, uint64_t cur, int nranks, int self, ImmFields* out) {
  uint32_t kind = imm >> 29;
  uint32_t s = (imm >> 12) & kSeqMask;
  int src = static_cast<int>(imm & 0xfffu);
  if (kind >= kNumKinds) return Status::remote_error("unknown write kind " + std::to_string(kind));
  if (imm & kStripeField) return Status::remote_error("stripe bits set in a delivered immediate");
  if (src >= nranks || src == self)
    return Status::remote_error("immediate names source rank " + std::to_string(src) + " (comm has " +
                                std::to_string(nranks) + " ranks, self " + std::to_string(self) + ")");
  // Closest value to cur with the same low bits.
  const uint64_t mod = uint64_t{1} << kSeqBits;
  uint64_t base = cur & ~static_cast<uint64_t>(kSeqMask);
  uint64_t best = base | s;
  if (best > cur + mod / 2)
    best -= mod;
  else if (best + mod / 2 < cur)
    best += mod;
  if (best + 1 < cur || best > cur + 1 || best == 0)
    return Status::remote_error("sequence " + std::to_string(best) + " is not within one op of ours (" +
                                std::to_string(cur) + ")");
  out->kind = static_cast<WriteKind>(kind);
  out->seq = best;
  out->src = src;
  return {};
}

Status header_check(const Layout& l, const DispatchHeader& h, const uint32_t* counts, int src, uint64_t seq) {
  auto bad = [&](const std::string& w) { return Status::remote_error("malformed dispatch header: " + w); };
  if (h.magic != kHeaderMagic) return bad("bad magic");
  if (h.seq != static_cast<uint32_t>(seq))
    return bad("sequence " + std::to_string(h.seq) + ", expected " + std::to_string(seq));
  if (h.src_rank != static_cast<uint32_t>(src))
    return bad("claims source rank " + std::to_string(h.src_rank));
  if (h.ntokens > static_cast<uint32_t>(l.max_tokens))
    return bad(std::to_string(h.ntokens) + " tokens > maxTokensPerRank " + std::to_string(l.max_tokens));
  uint32_t np = h.ntokens < static_cast<uint32_t>(l.max_private) ? h.ntokens : l.max_private;
  if (h.nprivate != np)
    return bad("nprivate " + std::to_string(h.nprivate) + ", expected " + std::to_string(np));
  if (h.nlocal != static_cast<uint32_t>(l.local_count(l.rank)))
    return bad("expert count " + std::to_string(h.nlocal) + " disagrees with ours");
  if (static_cast<uint64_t>(h.npairs) > static_cast<uint64_t>(h.ntokens) * l.topk)
    return bad("more (token, expert) pairs than tokens x top-k");
  if (static_cast<uint64_t>(h.combine_base) + l.rows_returned(h.ntokens, h.npairs) > l.combine_rows)
    return bad("combine range beyond the source's combine region");
  if (h.ntokens > 0 && h.npairs == 0) return bad("tokens without experts");
  uint64_t sum = 0;
  for (uint32_t j = 0; j < h.nlocal; ++j) sum += counts[j];
  if (sum != h.npairs)
    return bad("per-expert counts sum to " + std::to_string(sum) + ", header says " +
               std::to_string(h.npairs));
  return {};
}

Status request_check(const Layout& l, const Request& r, uint64_t seq) {
  const uint32_t P = static_cast<uint32_t>(l.max_private);
  if (r.seq != seq)
    return Status::remote_error("grant request for op " + std::to_string(r.seq) + " during op " +
                                std::to_string(seq));
  if (r.ntokens > static_cast<uint32_t>(l.max_tokens) || r.ntokens <= P || r.nprivate != P)
    return Status::remote_error("malformed grant request (" + std::to_string(r.ntokens) + " tokens, " +
                                std::to_string(r.nprivate) + " private; maxTokensPerRank " +
                                std::to_string(l.max_tokens) + ", P " + std::to_string(P) + ")");
  return {};
}

}  // namespace moefabric::moe
