// What the MoE protocol puts on the wire besides token rows: the 32-bit immediate of every write
// and the checks applied to a peer's dispatch header and token records before they are used.
// The format is documented in docs/moe-protocol.md; the parsers are fuzzed in tests/unit.
#pragma once

#include <cstdint>
#include <string>

#include "collectives/layout.h"
#include "common/status.h"

namespace moefabric::moe {

const char* kind_name(WriteKind k);

// imm = kind:3 | stripes:2 | seq:15 | src:12 (MSB to LSB). The stripe field belongs to the
// transport (fabric::RmaRails: stripe count - 1 of a write split over rails); it is zero in what
// imm_encode makes and in what the transport hands back.
inline constexpr uint32_t kSeqBits = 15;
inline constexpr uint32_t kSeqMask = (1u << kSeqBits) - 1;
inline constexpr int kStripeShift = 27;
inline constexpr uint32_t kStripeField = 3u << kStripeShift;

constexpr uint32_t imm_encode(WriteKind kind, uint64_t seq, int src) {
  return (static_cast<uint32_t>(kind) << 29) | ((static_cast<uint32_t>(seq) & kSeqMask) << 12) |
         (static_cast<uint32_t>(src) & 0xfffu);
}

struct ImmFields {
  WriteKind kind;
  uint64_t seq;  // full sequence number, reconstructed
  int src;
};

// Decodes `imm` relative to the local op counter `cur` (peers are at most one op apart, so the
// full sequence is the one closest to `cur`). A remote error, saying why, for anything that
// cannot be ours.
Status imm_decode(uint32_t imm, uint64_t cur, int nranks, int self, ImmFields* out);

// The grant the receiver writes into the sender's control slot.
struct Grant {
  uint64_t seq;
  uint32_t offset;  // records into the receiver's overflow region
  uint32_t count;   // records granted (= ntokens - nprivate)
};

// The request a sender writes into the receiver's control slot when more than nprivate records
// go there: the receiver grants from it (its proxy never reads a header or a record).
struct Request {
  uint64_t seq;
  uint32_t ntokens;
  uint32_t nprivate;
};

// Checks a grant request from `src` for op `seq` (sizes within maxTokensPerRank and P).
// A remote error saying what is wrong otherwise.
Status request_check(const Layout& l, const Request& r, uint64_t seq);

// Checks a dispatch header from `src` for op `seq`. On success the header is safe to use: every
// size and offset it implies lies inside our regions; else a remote error saying what is wrong.
Status header_check(const Layout& l, const DispatchHeader& h, const uint32_t* counts, int src, uint64_t seq);

}  // namespace moefabric::moe
