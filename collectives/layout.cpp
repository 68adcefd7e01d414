#include "collectives/layout.h"

#include <algorithm>

#include "common/status.h"
#include "kernels/layout.h"

namespace moefabric::moe {

Status layout_init(Layout* l, int nranks, int rank, int experts, int topk, int hidden, int max_tokens,
                   int elt_bytes, bool scales, int scale_block, int alignment, int max_private,
                   bool per_rank) {
  *l = Layout{};
  l->nranks = nranks;
  l->rank = rank;
  l->experts = experts;
  l->topk = topk;
  l->hidden = hidden;
  l->max_tokens = max_tokens;
  l->elt_bytes = elt_bytes;
  l->scales = scales;
  l->scale_block = scale_block;
  l->alignment = std::max(1, alignment);
  l->max_private = std::clamp(max_private, 0, max_tokens);
  l->max_local = (experts + nranks - 1) / nranks;
  l->per_rank = per_rank;
  const size_t ranks_per_token = static_cast<size_t>(std::min(topk, nranks));

  l->meta_bytes = round_up(4 + 4 * static_cast<size_t>(topk) * (per_rank ? 2 : 1), 16);
  l->x_bytes = static_cast<size_t>(hidden) * elt_bytes;
  l->scale_bytes = scales ? static_cast<size_t>(hidden / scale_block) * 4 : 0;
  l->record_bytes = l->meta_bytes + round_up(l->x_bytes, 16) + round_up(l->scale_bytes, 16);
  l->header_bytes = round_up(sizeof(DispatchHeader) + 4 * static_cast<size_t>(l->max_local), 64);
  l->private_bytes = round_up(l->header_bytes + l->record_bytes * l->max_private, 64);
  l->overflow_records = static_cast<size_t>(nranks - 1) * static_cast<size_t>(max_tokens - l->max_private);
  l->y_row_bytes = static_cast<size_t>(hidden) * 2;
  // A token may name one expert in several slots, so each token can add up to K rows here.
  l->capacity_rows = static_cast<size_t>(nranks) * max_tokens * topk +
                     static_cast<size_t>(l->max_local) * (l->alignment - 1);
  l->combine_rows = static_cast<size_t>(max_tokens) * (per_rank ? ranks_per_token : topk);
  // Per rank: one row per record, and each source sends us at most one record per token.
  l->return_rows = per_rank ? static_cast<size_t>(nranks) * max_tokens : l->capacity_rows;
  l->send_records = static_cast<size_t>(max_tokens) * ranks_per_token;

  size_t off = 0;
  l->off_private = off;
  off += l->private_bytes * nranks;
  l->off_overflow = off = round_up(off, 4096);
  off += l->record_bytes * l->overflow_records;
  l->off_combine = off = round_up(off, 4096);
  off += l->y_row_bytes * l->combine_rows;
  l->off_ctrl = off = round_up(off, 4096);
  off += l->ctrl_slot_bytes * nranks;
  l->recv_block_bytes = round_up(off, 4096);

  // Every destination's chunk is 64-byte aligned: at most 64 bytes of padding each.
  l->send_area_bytes =
      (l->header_bytes + 64) * static_cast<size_t>(nranks) + l->record_bytes * l->send_records;
  off = 0;
  l->off_send = off;
  off += l->send_area_bytes;
  l->off_csend = off = round_up(off, 4096);
  off += l->y_row_bytes * l->return_rows;
  l->off_grant_out = off = round_up(off, 4096);
  off += l->ctrl_slot_bytes * nranks;
  l->send_block_bytes = round_up(off, 4096);

  // The wire carries record offsets and row counts in 32 bits; one write must fit the provider.
  if (l->overflow_records > UINT32_MAX || l->combine_rows > UINT32_MAX || l->capacity_rows > UINT32_MAX)
    return Status::invalid_argument(
        "buffer sizes exceed the 32-bit wire fields (reduce maxTokensPerRank or numTopk)");
  return {};
}

Status cuda_layout_init(CudaLayout* l, int nranks, int rank, int experts, int topk, int hidden,
                        int max_tokens, int elt_bytes, bool scales, int scale_block, int alignment) {
  *l = CudaLayout{};
  l->nranks = nranks;
  l->rank = rank;
  l->experts = experts;
  l->topk = topk;
  l->hidden = hidden;
  l->max_tokens = max_tokens;
  l->elt_bytes = elt_bytes;
  l->scale_block = scale_block;
  l->nscale = scales ? hidden / scale_block : 0;
  l->alignment = alignment < 1 ? 1 : alignment;
  l->max_local = (experts + nranks - 1) / nranks;
  l->x_bytes = static_cast<size_t>(hidden) * elt_bytes;
  l->scale_bytes = static_cast<size_t>(l->nscale) * 4;
  l->slot_bytes = round_up(l->x_bytes, 16) + round_up(l->scale_bytes, 16);
  l->y_row_bytes = static_cast<size_t>(hidden) * 2;
  l->capacity_rows = static_cast<size_t>(nranks) * max_tokens * topk +
                     static_cast<size_t>(l->max_local) * (l->alignment - 1);
  const size_t R = static_cast<size_t>(nranks);
  size_t off = 0;
  l->off_dcount = off;
  off += 8 * R;
  l->off_ccount = off;
  off += 8 * R;
  l->off_bcount = off;
  off += 8 * R;
  l->off_ntok = off;
  off += 4 * R;
  l->off_idx = off = round_up(off, 256);
  off += 4 * R * max_tokens * topk;
  l->off_tok = off = round_up(off, 256);
  off += l->slot_bytes * R * max_tokens;
  l->off_comb = off = round_up(off, 256);
  off += l->y_row_bytes * max_tokens * topk;
  l->block_bytes = round_up(off, 4096);
  if (nranks > kMaxRanks) return Status::invalid_argument("more than 4096 ranks");
  if (l->max_local > kCudaMaxLocalExperts)
    return Status::invalid_argument("the CUDA backend supports at most 4096 experts per rank");
  // Rows and (source, token, k) codes travel as 32-bit values.
  if (l->capacity_rows >= UINT32_MAX || R * max_tokens * topk >= UINT32_MAX)
    return Status::invalid_argument(
        "receive capacity exceeds 32-bit row indices (reduce maxTokensPerRank or numTopk)");
  return {};
}

}  // namespace moefabric::moe
