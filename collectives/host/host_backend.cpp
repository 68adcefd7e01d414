// The host backend's data movement (after the Engine's checks, engine.h): packing tokens per
// destination rank, laying received tokens out expert-major, and the combine reduction, done on
// the calling CPU thread. This is the bit-exact reference the CUDA backend is checked against.
#include <algorithm>
#include <cstring>

#include "collectives/comm.h"
#include "collectives/numeric.h"
#include "common/log.h"

namespace moefabric::moe {

void (*g_test_before_unpack)(int rank, uint8_t* recv_block, const Layout& l) = nullptr;

Status Comm::dispatch_send(const void* x, const float* scales, const int32_t* idx, const float* w, int T,
                           void* recv_x, float* recv_scales, int32_t* recv_counts) {
  const int K = cfg_.topk;
  // The previous op's writes from the send buffer must have completed locally.
  MF_CHECK(wait_local_writes(static_cast<int>(WriteKind::kDispatchPrivate), "dispatch"));
  MF_CHECK(wait_local_writes(static_cast<int>(WriteKind::kDispatchRest), "dispatch"));
  seq_ = seq_ + 1;
  cur_seq_.store(seq_, std::memory_order_release);
  T_ = T;
  weights_ = w;
  idx_copy_.assign(idx, idx + static_cast<size_t>(T) * K);
  recv_x_ = recv_x;
  recv_scales_ = recv_scales;
  recv_counts_ = recv_counts;
  MF_CHECK(host_pack_dispatch(x, scales, idx, w, T));
  ring(WriteKind::kDispatchPrivate, seq_);
  return Status::kOk;
}

// Distinct destination ranks of one token's experts, in first-seen k order; returns how many.
int Comm::token_dests(const int32_t* row, int* dests) const {
  int nd = 0;
  for (int k = 0; k < cfg_.topk; ++k) {
    if (row[k] < 0) continue;
    const int d = owner_[row[k]];
    bool seen = false;
    for (int i = 0; i < nd; ++i) seen |= dests[i] == d;
    if (!seen) dests[nd++] = d;
  }
  return nd;
}

// Two passes over the routing: count records and pairs per destination (and pairs per expert),
// which places every destination's chunk in the dispatch area; then write headers and records.
Status Comm::host_pack_dispatch(const void* x, const float* scales, const int32_t* idx, const float* w,
                                int T) {
  uint8_t* send = send_block_.get();
  const int K = cfg_.topk;
  const size_t nscale = l_.scales ? static_cast<size_t>(cfg_.hidden / cfg_.scale_block) : 0;
  std::fill(sent_tokens_.begin(), sent_tokens_.end(), 0);
  std::fill(sent_pairs_.begin(), sent_pairs_.end(), 0);
  std::fill(expert_pairs_.begin(), expert_pairs_.end(), 0);
  int dests[kMaxTopk];
  for (int t = 0; t < T; ++t) {
    const int32_t* row = idx + static_cast<size_t>(t) * K;
    for (int k = 0; k < K; ++k)
      if (row[k] >= 0) ++expert_pairs_[row[k]], ++sent_pairs_[owner_[row[k]]];
    const int nd = token_dests(row, dests);
    for (int i = 0; i < nd; ++i) ++sent_tokens_[dests[i]];
  }
  size_t off = l_.off_send;
  uint32_t base = 0;
  dispatch_bytes_ = 0;
  last_dispatch_writes_ = 0;
  for (int d = 0; d < R_; ++d) {
    sh_.plan[d].offset = off;
    off += l_.send_chunk_bytes(sent_tokens_[d]);
    auto* h = reinterpret_cast<DispatchHeader*>(send + sh_.plan[d].offset);
    std::memset(h, 0, l_.header_bytes);
    h->magic = kHeaderMagic;
    h->seq = static_cast<uint32_t>(seq_);
    h->src_rank = static_cast<uint32_t>(me_);
    h->ntokens = sent_tokens_[d];
    h->nprivate = std::min<uint32_t>(sent_tokens_[d], static_cast<uint32_t>(l_.max_private));
    h->npairs = sent_pairs_[d];
    h->combine_base = base;
    h->nlocal = static_cast<uint32_t>(l_.local_count(d));
    sh_.plan[d].ntokens = h->ntokens;
    std::memcpy(h + 1, expert_pairs_.data() + l_.first_expert(d), sizeof(uint32_t) * h->nlocal);
    combine_base_[d] = base;
    base += static_cast<uint32_t>(l_.rows_returned(sent_tokens_[d], sent_pairs_[d]));
    ncclMoePeerStats_t& ps = peer_stats_[d];
    ps.dispatchBytes = ps.combineBytes = 0;
    ps.dispatchWrites = ps.combineWrites = ps.records = ps.rowsReturned = 0;
    if (d != me_) {
      ps.records = h->ntokens;
      ps.dispatchBytes = l_.dispatch_bytes(h->ntokens);
      ps.dispatchWrites = l_.dispatch_writes(h->ntokens);
      dispatch_bytes_ += ps.dispatchBytes;
      last_dispatch_writes_ = std::max(last_dispatch_writes_, ps.dispatchWrites);
    }
  }
  if (off > l_.off_send + l_.send_area_bytes)
    return fail(Status::kInternalError, "dispatch: %zu B of records exceed the send area of %zu B",
                off - l_.off_send, l_.send_area_bytes);
  // One record per destination rank, however many of its experts the token picked.
  std::fill(sent_tokens_.begin(), sent_tokens_.end(), 0);
  for (int t = 0; t < T; ++t) {
    const int32_t* row = idx + static_cast<size_t>(t) * K;
    const int nd = token_dests(row, dests);
    for (int i = 0; i < nd; ++i) {
      const int d = dests[i];
      uint8_t* rec = send + sh_.plan[d].offset + l_.header_bytes + l_.record_bytes * sent_tokens_[d]++;
      auto* meta = reinterpret_cast<int32_t*>(rec);
      meta[0] = t;
      std::memcpy(meta + 1, row, sizeof(int32_t) * K);
      if (l_.per_rank) std::memcpy(meta + 1 + K, w + static_cast<size_t>(t) * K, sizeof(float) * K);
      std::memcpy(rec + l_.meta_bytes, static_cast<const uint8_t*>(x) + l_.x_bytes * t, l_.x_bytes);
      if (nscale)
        std::memcpy(rec + l_.meta_bytes + round_up(l_.x_bytes, 16), scales + nscale * t,
                    nscale * sizeof(float));
    }
  }
  return Status::kOk;
}

Status Comm::dispatch_recv() {
  MF_CHECK(wait_arrivals(WriteKind::kDispatchPrivate, seq_, "dispatch"));
  MF_CHECK(copy_headers());
  std::vector<bool> rest(R_, false);
  bool any = false;
  for (int s = 0; s < R_; ++s) {
    if (s == me_) continue;
    const DispatchHeader& h = hdr_[s].h;
    rest[s] = h.ntokens > h.nprivate;
    any |= rest[s];
  }
  if (any) MF_CHECK(wait_arrivals(WriteKind::kDispatchRest, seq_, "dispatch", &rest));
  // The rest arrived into the range we granted for the count the source asked for.
  for (int s = 0; s < R_; ++s)
    if (rest[s] && sh_.granted[s] != hdr_[s].h.ntokens - hdr_[s].h.nprivate)
      return fail(Status::kRemoteError, "dispatch: rank %d's header says %u tokens, its grant request %u", s,
                  hdr_[s].h.ntokens, sh_.granted[s] + hdr_[s].h.nprivate);
  if (g_test_before_unpack != nullptr) g_test_before_unpack(me_, recv_block_.get(), l_);
  MF_CHECK(host_unpack_dispatch());
  return Status::kOk;
}

Status Comm::copy_headers() {
  for (int s = 0; s < R_; ++s) {
    if (s == me_) continue;
    HeaderCopy& hc = hdr_[s];
    const uint8_t* region = recv_block_.get() + l_.private_offset(s);
    std::memcpy(&hc.h, region, sizeof(DispatchHeader));
    std::memcpy(hc.counts.data(), region + sizeof(DispatchHeader), sizeof(uint32_t) * hc.counts.size());
    if (Status st = header_check(l_, hc.h, hc.counts.data(), s, seq_); !st.ok())
      return fail(st.code(), "dispatch: rank %d sent a %s", s, st.message().c_str());
  }
  return Status::kOk;
}

// Every index that decides where bytes go (token, expert ids, counts) comes from memory peers
// cannot write: our own send block, the proxy's checked header copies, and the record metadata
// copied once here in pass 1, checked, and used from that copy in pass 2. The record's token
// bytes are copied as data, and every row is bounded by the capacity before its copy.
Status Comm::host_unpack_dispatch() {
  const int K = cfg_.topk, E = cfg_.experts;
  const int L = l_.local_count(me_), first = l_.first_expert(me_);
  const size_t nscale = l_.scales ? static_cast<size_t>(cfg_.hidden / cfg_.scale_block) : 0;
  const DispatchHeader* own =
      reinterpret_cast<const DispatchHeader*>(send_block_.get() + sh_.plan[me_].offset);
  auto header = [&](int s) -> const DispatchHeader& { return s == me_ ? *own : hdr_[s].h; };
  auto counts_of = [&](int s) -> const uint32_t* {
    return s == me_ ? reinterpret_cast<const uint32_t*>(own + 1) : hdr_[s].counts.data();
  };
  auto record = [&](int s, const DispatchHeader& h, uint32_t i) -> const uint8_t* {
    if (s == me_ || i < h.nprivate)
      return (s == me_ ? reinterpret_cast<const uint8_t*>(own) : recv_block_.get() + l_.private_offset(s)) +
             l_.header_bytes + l_.record_bytes * i;
    return recv_block_.get() + l_.overflow_offset(sh_.overflow_off[s] + (i - h.nprivate));
  };
  // Pass 1: each record's metadata (token, K expert ids, and K weights with per-rank combine) is
  // copied once and checked.
  const size_t meta_ints = 1 + static_cast<size_t>(K) * (l_.per_rank ? 2 : 1);
  std::vector<uint32_t> total(L, 0), actual(L);
  meta_copy_.clear();
  for (int s = 0; s < R_; ++s) {
    const DispatchHeader& h = header(s);
    const uint32_t* counts = counts_of(s);
    std::fill(actual.begin(), actual.end(), 0);
    int prev = -1;
    for (uint32_t i = 0; i < h.ntokens; ++i) {
      const size_t at = meta_copy_.size();
      meta_copy_.resize(at + meta_ints);
      int32_t* meta = meta_copy_.data() + at;
      std::memcpy(meta, record(s, h, i), sizeof(int32_t) * meta_ints);
      if (meta[0] <= prev || meta[0] >= cfg_.max_tokens)
        return fail(Status::kRemoteError, "dispatch: rank %d sent token index %d out of order or range", s,
                    meta[0]);
      prev = meta[0];
      bool mine = false;
      for (int k = 0; k < K; ++k) {
        int e = meta[1 + k];
        if (e < -1 || e >= E)
          return fail(Status::kRemoteError, "dispatch: rank %d sent expert id %d for token %d", s, e,
                      meta[0]);
        if (e >= first && e < first + L) ++actual[e - first], mine = true;
      }
      if (!mine)
        return fail(Status::kRemoteError, "dispatch: rank %d sent token %d that selects none of our experts",
                    s, meta[0]);
    }
    for (int j = 0; j < L; ++j) {
      if (actual[j] != counts[j])
        return fail(Status::kRemoteError, "dispatch: rank %d announced %u rows for expert %d but sent %u", s,
                    counts[j], first + j, actual[j]);
      total[j] += counts[j];
    }
  }
  std::vector<size_t> cursor(L), end(L);
  size_t off = 0;
  for (int j = 0; j < L; ++j) {
    cursor[j] = off;
    end[j] = off + total[j];
    off += round_up(total[j], static_cast<size_t>(l_.alignment));
  }
  if (off > l_.capacity_rows)
    return fail(Status::kInternalError, "dispatch: %zu rows exceed the capacity of %zu", off,
                l_.capacity_rows);
  for (int j = 0; j < L; ++j) recv_counts_[j] = static_cast<int32_t>(total[j]);
  // Pass 2: rows go to their expert segments in (source, token, k) order, from the copies.
  auto* rx = static_cast<uint8_t*>(recv_x_);
  row_of_pair_.clear();
  weight_of_pair_.clear();
  pairs_of_record_.clear();
  const int32_t* meta = meta_copy_.data();
  uint32_t rows_out = 0;
  for (int s = 0; s < R_; ++s) {
    const DispatchHeader& h = header(s);
    src_pair_start_[s] = static_cast<uint32_t>(row_of_pair_.size());
    src_record_start_[s] = static_cast<uint32_t>(pairs_of_record_.size());
    sh_.ret[s].row_start = rows_out;
    sh_.ret[s].combine_base = h.combine_base;
    for (uint32_t i = 0; i < h.ntokens; ++i, meta += meta_ints) {
      const uint8_t* rec = record(s, h, i);
      const size_t pairs_before = row_of_pair_.size();
      for (int k = 0; k < K; ++k) {
        int e = meta[1 + k];
        if (e < first || e >= first + L) continue;
        if (l_.per_rank) {
          float wk;
          std::memcpy(&wk, meta + 1 + K + k, sizeof wk);
          weight_of_pair_.push_back(wk);
        }
        const size_t row = cursor[e - first]++;
        if (row >= end[e - first] || row >= l_.capacity_rows)
          return fail(Status::kInternalError, "dispatch: row %zu of expert %d beyond its segment", row, e);
        std::memcpy(rx + l_.x_bytes * row, rec + l_.meta_bytes, l_.x_bytes);
        if (nscale)
          std::memcpy(recv_scales_ + nscale * row, rec + l_.meta_bytes + round_up(l_.x_bytes, 16),
                      nscale * sizeof(float));
        row_of_pair_.push_back(static_cast<uint32_t>(row));
      }
      if (l_.per_rank) pairs_of_record_.push_back(static_cast<uint8_t>(row_of_pair_.size() - pairs_before));
    }
    sh_.ret[s].rows = static_cast<uint32_t>(
        l_.rows_returned(h.ntokens, static_cast<uint32_t>(row_of_pair_.size()) - src_pair_start_[s]));
    rows_out += sh_.ret[s].rows;
  }
  src_pair_start_[R_] = static_cast<uint32_t>(row_of_pair_.size());
  src_record_start_[R_] = static_cast<uint32_t>(pairs_of_record_.size());
  rows_out_ = rows_out;
  if (rows_out > l_.return_rows)
    return fail(Status::kInternalError, "dispatch: %u combine rows exceed the staging of %zu", rows_out,
                l_.return_rows);
  return Status::kOk;
}

Status Comm::combine_send(const void* expert_y) {
  MF_CHECK(wait_local_writes(static_cast<int>(WriteKind::kCombine), "combine"));
  host_pack_combine(expert_y);
  combine_bytes_ = 0;
  for (int s = 0; s < R_; ++s) {
    if (s == me_) continue;
    ncclMoePeerStats_t& ps = peer_stats_[s];
    ps.rowsReturned = sh_.ret[s].rows;
    ps.combineBytes = l_.combine_wire_bytes(sh_.ret[s].rows);  // rows, or the empty marker
    ps.combineWrites = 1;
    combine_bytes_ += ps.combineBytes;
  }
  last_combine_writes_ = R_ > 1 ? 1 : 0;
  ring(WriteKind::kCombine, seq_);
  return Status::kOk;
}

// Rows for each source in its return order: per pair, the expert rows as they are; per rank, one
// row per record, the fmaf sum of its pairs in k order (weights applied), rounded to bf16.
void Comm::host_pack_combine(const void* expert_y) {
  const auto* ey = static_cast<const uint8_t*>(expert_y);
  uint8_t* csend = send_block_.get() + l_.off_csend;
  const int H = cfg_.hidden;
  const uint16_t* rows[kMaxTopk];
  for (int s = 0; s < R_; ++s) {
    // Our own tokens' rows go straight into our combine region.
    uint8_t* dst = s == me_ ? recv_block_.get() + l_.combine_offset(sh_.ret[s].combine_base)
                            : csend + l_.y_row_bytes * sh_.ret[s].row_start;
    if (!l_.per_rank) {
      for (uint32_t p = src_pair_start_[s]; p < src_pair_start_[s + 1]; ++p, dst += l_.y_row_bytes)
        std::memcpy(dst, ey + l_.y_row_bytes * row_of_pair_[p], l_.y_row_bytes);
      continue;
    }
    uint32_t p = src_pair_start_[s];
    for (uint32_t i = src_record_start_[s]; i < src_record_start_[s + 1]; ++i, dst += l_.y_row_bytes) {
      const int n = pairs_of_record_[i];
      for (int j = 0; j < n; ++j)
        rows[j] = reinterpret_cast<const uint16_t*>(ey + l_.y_row_bytes * row_of_pair_[p + j]);
      combine_row(reinterpret_cast<uint16_t*>(dst), rows, weight_of_pair_.data() + p, n, H);
      p += n;
    }
  }
}

Status Comm::combine_recv(void* y) {
  MF_CHECK(wait_arrivals(WriteKind::kCombine, seq_, "combine"));
  host_reduce_combine(y);
  ++ops_;
  return Status::kOk;
}

// Per pair: y[t] = bf16(fmaf over k of w[t,k] * row(t,k)). Per rank: the rows of t's ranks,
// ascending, summed in fp32 (fmaf with weight 1, i.e. exact adds rounded once each), then bf16.
void Comm::host_reduce_combine(void* y) {
  const int K = cfg_.topk, H = cfg_.hidden;
  std::vector<uint32_t> cursor(R_, 0);
  const uint16_t* rows[kMaxTopk];
  float wk[kMaxTopk];
  int dests[kMaxTopk];
  auto* out = static_cast<uint16_t*>(y);
  const uint8_t* region = recv_block_.get();
  auto row_from = [&](int o) {
    return reinterpret_cast<const uint16_t*>(region + l_.combine_offset(combine_base_[o] + cursor[o]++));
  };
  for (int t = 0; t < T_; ++t) {
    const int32_t* idx = idx_copy_.data() + static_cast<size_t>(t) * K;
    int n = 0;
    if (l_.per_rank) {
      n = token_dests(idx, dests);
      std::sort(dests, dests + n);
      for (int i = 0; i < n; ++i) rows[i] = row_from(dests[i]), wk[i] = 1.0f;
    } else {
      for (int k = 0; k < K; ++k) {
        if (idx[k] < 0) continue;
        rows[n] = row_from(owner_[idx[k]]);
        wk[n++] = weights_[static_cast<size_t>(t) * K + k];
      }
    }
    combine_row(out + static_cast<size_t>(t) * H, rows, wk, n, H);
  }
}

}  // namespace moefabric::moe
