// The buffer layout of one ncclMoe comm: record and region sizes, every offset a peer may write
// to, and the expert -> rank map. Shared by the allocator, the proxy, the host backend and the
// CUDA kernels; pure arithmetic, unit-tested on the CPU.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define MF_HD __host__ __device__
#else
#define MF_HD
#endif

namespace moefabric {
class Status;  // common/status.h (this header stays pure: the CUDA kernels include it)
}  // namespace moefabric

namespace moefabric::moe {

MF_HD constexpr size_t round_up(size_t v, size_t a) { return a == 0 ? v : (v + a - 1) / a * a; }

inline constexpr uint32_t kHeaderMagic = 0x4d664448u;  // "MfDH"
inline constexpr int kMaxTopk = 16;
inline constexpr int kMaxRanks = 4096;      // 12 bits of the immediate
inline constexpr size_t kMarkerBytes = 16;  // combine's empty write (a source with no rows), and barriers

// What travels in front of each peer's private region (one per source at the receiver).
struct DispatchHeader {
  uint32_t magic;
  uint32_t seq;  // full op sequence number
  uint32_t src_rank;
  uint32_t ntokens;       // tokens packed for this destination
  uint32_t nprivate;      // min(ntokens, maxPrivateTokens): records in this write
  uint32_t npairs;        // (token, k) pairs the destination holds = combine rows it returns
  uint32_t combine_base;  // row offset of those returns in the source's combine region
  uint32_t nlocal;        // destination's local expert count (cross-check)
  // followed by uint32_t counts[nlocal]: pairs per local expert of the destination
};

// Kinds of writes (3 bits of the immediate; collectives/protocol.h). The CUDA kernels index the
// proxy's arrival flags by them.
enum class WriteKind : uint32_t {
  kDispatchPrivate = 0,  // header + first nprivate records into the source's private region
  kDispatchRest = 1,     // remaining records into the granted overflow range
  kGrant = 2,            // receiver -> sender: overflow offset for this op
  kCombine = 3,          // expert outputs back to the home rank (or an empty marker)
  kBarrier = 4,          // destroy: no more writes from this peer
  kRequest = 5,          // sender -> receiver: more than nprivate records, please grant
};
inline constexpr int kNumKinds = 6;
// What the proxy posts from: written by its client (the host backend's pack, or the CUDA
// kernels) before the doorbell, in host memory (pinned and mapped for the kernels); the proxy
// reads nothing else of the op.
struct SendPlan {    // per destination
  uint32_t ntokens;  // records packed for it
  uint32_t pad;
  uint64_t offset;  // its chunk (header, then records) in the send block
};
struct ReturnPlan {       // per source, for the combine
  uint32_t rows;          // rows it gets back (0: the 16-byte empty marker)
  uint32_t row_start;     // first of them in the combine staging
  uint32_t combine_base;  // where they land in its combine region (its header said)
  uint32_t pad;
};

// One packed token: [int32 src_token, int32 topk[K], (per-rank combine) fp32 w[K], pad to 16]
// [x: H*elt, pad 16][scales: H/sb*4, pad 16]
struct Layout {
  int nranks = 0, rank = 0;
  int experts = 0, topk = 0, hidden = 0, max_tokens = 0;
  int elt_bytes = 2;  // dispatch element size (bf16 2, fp8 1)
  int scale_block = 128;
  bool scales = false;  // fp8: fp32 scales travel with the token
  int alignment = 1;
  int max_private = 0;    // P, clamped to max_tokens
  int max_local = 0;      // ceil(E / R)
  bool per_rank = false;  // ncclMoeCombinePerRank: weights travel, one combine row per (token, rank)

  size_t meta_bytes = 0, x_bytes = 0, scale_bytes = 0, record_bytes = 0;
  size_t header_bytes = 0;      // DispatchHeader + counts, padded to 64
  size_t private_bytes = 0;     // header + P records: one per source
  size_t overflow_records = 0;  // shared overflow capacity (records)
  size_t y_row_bytes = 0;       // combine row (bf16 H)
  size_t capacity_rows = 0;     // recvX / expertY rows (worst case)
  size_t combine_rows = 0;      // combine region rows at the home rank: max_tokens * (K or min(K, R))
  size_t return_rows = 0;       // combine rows this rank may return in one op (all sources)
  size_t send_records = 0;      // records one dispatch may pack (all destinations): maxT * min(K, R)
  // per peer: grant (16) + grant request (16) + scratch for empty writes / barrier (16), padded
  size_t ctrl_slot_bytes = 64;

  // regions a peer writes into (offsets inside the one registered receive block)
  size_t off_private = 0, off_overflow = 0, off_combine = 0, off_ctrl = 0, recv_block_bytes = 0;
  // send side (registered too): the dispatch area, where each destination's header and records
  // lie back to back at an offset computed per op (send_chunk_bytes, 64-byte aligned); combine
  // staging (return_rows); outgoing grants
  size_t off_send = 0, send_area_bytes = 0, off_csend = 0, off_grant_out = 0, send_block_bytes = 0;

  MF_HD int first_expert(int r) const { return static_cast<int>(static_cast<int64_t>(r) * experts / nranks); }
  MF_HD int local_count(int r) const { return first_expert(r + 1) - first_expert(r); }
  MF_HD int owner(int e) const {
    // largest r with first_expert(r) <= e
    int r = static_cast<int>((static_cast<int64_t>(e + 1) * nranks + experts - 1) / experts) - 1;
    return r;
  }
  MF_HD size_t private_offset(int src) const { return off_private + private_bytes * src; }
  MF_HD size_t overflow_offset(size_t rec) const { return off_overflow + record_bytes * rec; }
  MF_HD size_t combine_offset(size_t row) const { return off_combine + y_row_bytes * row; }
  MF_HD size_t ctrl_offset(int src) const { return off_ctrl + ctrl_slot_bytes * src; }
  // Bytes one destination's header + `records` records take in the dispatch area.
  MF_HD size_t send_chunk_bytes(size_t records) const {
    return round_up(header_bytes + record_bytes * records, 64);
  }
  // Rows a destination gets back for `records` tokens holding `pairs` (token, expert) pairs.
  MF_HD size_t rows_returned(size_t records, size_t pairs) const { return per_rank ? records : pairs; }
  // What one op writes to a peer (docs/moe-protocol.md, "Accounting"): the dispatch's bytes and
  // writes for `records` records, and the combine's bytes for `rows` returned rows.
  MF_HD size_t dispatch_bytes(size_t records) const { return header_bytes + record_bytes * records; }
  MF_HD uint32_t dispatch_writes(size_t records) const {
    return records > static_cast<size_t>(max_private) ? 2 : 1;
  }
  MF_HD size_t combine_wire_bytes(size_t rows) const { return rows ? y_row_bytes * rows : kMarkerBytes; }
};

// Fills every derived field from the resolved configuration. An invalid-argument status saying
// why when the sizes overflow what one registration or the 32-bit wire fields can carry.
Status layout_init(Layout* l, int nranks, int rank, int experts, int topk, int hidden, int max_tokens,
                   int elt_bytes, bool scales, int scale_block, int alignment, int max_private,
                   bool per_rank);

}  // namespace moefabric::moe
