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
  MF_CHECK(host_pack_dispatch(x, scales, idx, T));
  ring(WriteKind::kDispatchPrivate, seq_);
  return Status::kOk;
}

Status Comm::host_pack_dispatch(const void* x, const float* scales, const int32_t* idx, int T) {
  uint8_t* send = send_block_.get();
  const int K = cfg_.topk;
  const size_t nscale = l_.scales ? static_cast<size_t>(cfg_.hidden / cfg_.scale_block) : 0;
  for (int d = 0; d < R_; ++d) {
    auto* h = reinterpret_cast<DispatchHeader*>(send + l_.send_offset(d));
    std::memset(h, 0, l_.header_bytes);
    sent_tokens_[d] = sent_pairs_[d] = 0;
  }
  int dests[kMaxTopk];
  for (int t = 0; t < T; ++t) {
    const int32_t* row = idx + static_cast<size_t>(t) * K;
    int nd = 0;
    for (int k = 0; k < K; ++k) {
      if (row[k] < 0) continue;
      int d = owner_[row[k]];
      auto* counts =
          reinterpret_cast<uint32_t*>(reinterpret_cast<DispatchHeader*>(send + l_.send_offset(d)) + 1);
      ++counts[row[k] - l_.first_expert(d)];
      ++sent_pairs_[d];
      bool seen = false;
      for (int i = 0; i < nd; ++i) seen |= dests[i] == d;
      if (!seen) dests[nd++] = d;
    }
    // One record per destination rank, however many of its experts the token picked.
    for (int i = 0; i < nd; ++i) {
      int d = dests[i];
      uint8_t* rec = send + l_.send_offset(d) + l_.header_bytes + l_.record_bytes * sent_tokens_[d]++;
      auto* meta = reinterpret_cast<int32_t*>(rec);
      meta[0] = t;
      std::memcpy(meta + 1, row, sizeof(int32_t) * K);
      std::memcpy(rec + l_.meta_bytes, static_cast<const uint8_t*>(x) + l_.x_bytes * t, l_.x_bytes);
      if (nscale)
        std::memcpy(rec + l_.meta_bytes + round_up(l_.x_bytes, 16), scales + nscale * t,
                    nscale * sizeof(float));
    }
  }
  uint32_t base = 0;
  dispatch_bytes_ = 0;
  last_dispatch_writes_ = 0;
  for (int d = 0; d < R_; ++d) {
    auto* h = reinterpret_cast<DispatchHeader*>(send + l_.send_offset(d));
    h->magic = kHeaderMagic;
    h->seq = static_cast<uint32_t>(seq_);
    h->src_rank = static_cast<uint32_t>(me_);
    h->ntokens = sent_tokens_[d];
    h->nprivate = std::min<uint32_t>(sent_tokens_[d], static_cast<uint32_t>(l_.max_private));
    h->npairs = sent_pairs_[d];
    h->combine_base = base;
    h->nlocal = static_cast<uint32_t>(l_.local_count(d));
    combine_base_[d] = base;
    base += sent_pairs_[d];
    if (d != me_) {
      dispatch_bytes_ += l_.header_bytes + l_.record_bytes * h->ntokens;
      last_dispatch_writes_ = std::max<uint32_t>(last_dispatch_writes_, h->ntokens > h->nprivate ? 2 : 1);
    }
  }
  return Status::kOk;
}

Status Comm::dispatch_recv() {
  MF_CHECK(wait_arrivals(WriteKind::kDispatchPrivate, seq_, "dispatch"));
  std::vector<bool> rest(R_, false);
  bool any = false;
  for (int s = 0; s < R_; ++s) {
    if (s == me_) continue;
    const DispatchHeader& h = header_copy(s, seq_).h;  // checked by the proxy
    rest[s] = h.ntokens > h.nprivate;
    any |= rest[s];
  }
  if (any) MF_CHECK(wait_arrivals(WriteKind::kDispatchRest, seq_, "dispatch", &rest));
  if (g_test_before_unpack != nullptr) g_test_before_unpack(me_, recv_block_.get(), l_);
  MF_CHECK(host_unpack_dispatch());
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
      reinterpret_cast<const DispatchHeader*>(send_block_.get() + l_.send_offset(me_));
  auto header = [&](int s) -> const DispatchHeader& { return s == me_ ? *own : header_copy(s, seq_).h; };
  auto counts_of = [&](int s) -> const uint32_t* {
    return s == me_ ? reinterpret_cast<const uint32_t*>(own + 1) : header_copy(s, seq_).counts.data();
  };
  auto record = [&](int s, const DispatchHeader& h, uint32_t i) -> const uint8_t* {
    if (s == me_ || i < h.nprivate)
      return (s == me_ ? reinterpret_cast<const uint8_t*>(own) : recv_block_.get() + l_.private_offset(s)) +
             l_.header_bytes + l_.record_bytes * i;
    return recv_block_.get() +
           l_.overflow_offset(overflow_off_[s].load(std::memory_order_relaxed) + (i - h.nprivate));
  };
  // Pass 1: each record's metadata (token, K expert ids) is copied once and checked.
  const size_t meta_ints = 1 + static_cast<size_t>(K);
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
  const int32_t* meta = meta_copy_.data();
  for (int s = 0; s < R_; ++s) {
    const DispatchHeader& h = header(s);
    src_pair_start_[s] = static_cast<uint32_t>(row_of_pair_.size());
    src_combine_base_[s] = h.combine_base;
    for (uint32_t i = 0; i < h.ntokens; ++i, meta += meta_ints) {
      const uint8_t* rec = record(s, h, i);
      for (int k = 0; k < K; ++k) {
        int e = meta[1 + k];
        if (e < first || e >= first + L) continue;
        const size_t row = cursor[e - first]++;
        if (row >= end[e - first] || row >= l_.capacity_rows)
          return fail(Status::kInternalError, "dispatch: row %zu of expert %d beyond its segment", row, e);
        std::memcpy(rx + l_.x_bytes * row, rec + l_.meta_bytes, l_.x_bytes);
        if (nscale)
          std::memcpy(recv_scales_ + nscale * row, rec + l_.meta_bytes + round_up(l_.x_bytes, 16),
                      nscale * sizeof(float));
        row_of_pair_.push_back(static_cast<uint32_t>(row));
      }
    }
    src_pairs_[s] = static_cast<uint32_t>(row_of_pair_.size()) - src_pair_start_[s];
  }
  src_pair_start_[R_] = static_cast<uint32_t>(row_of_pair_.size());
  return Status::kOk;
}

Status Comm::combine_send(const void* expert_y) {
  MF_CHECK(wait_local_writes(static_cast<int>(WriteKind::kCombine), "combine"));
  host_pack_combine(expert_y);
  combine_bytes_ = 0;
  for (int s = 0; s < R_; ++s)
    if (s != me_) combine_bytes_ += l_.y_row_bytes * src_pairs_[s];
  last_combine_writes_ = R_ > 1 ? 1 : 0;
  ring(WriteKind::kCombine, seq_);
  return Status::kOk;
}

void Comm::host_pack_combine(const void* expert_y) {
  const auto* ey = static_cast<const uint8_t*>(expert_y);
  uint8_t* csend = send_block_.get() + l_.off_csend;
  for (int s = 0; s < R_; ++s) {
    // Our own tokens' rows go straight into our combine region.
    uint8_t* dst = s == me_ ? recv_block_.get() + l_.combine_offset(src_combine_base_[s])
                            : csend + l_.y_row_bytes * src_pair_start_[s];
    for (uint32_t p = src_pair_start_[s]; p < src_pair_start_[s + 1]; ++p, dst += l_.y_row_bytes)
      std::memcpy(dst, ey + l_.y_row_bytes * row_of_pair_[p], l_.y_row_bytes);
  }
}

Status Comm::combine_recv(void* y) {
  MF_CHECK(wait_arrivals(WriteKind::kCombine, seq_, "combine"));
  host_reduce_combine(y);
  ++ops_;
  return Status::kOk;
}

void Comm::host_reduce_combine(void* y) {
  const int K = cfg_.topk, H = cfg_.hidden;
  std::vector<uint32_t> cursor(R_, 0);
  std::vector<const uint16_t*> rows(K);
  std::vector<float> wk(K);
  auto* out = static_cast<uint16_t*>(y);
  const uint8_t* region = recv_block_.get();
  for (int t = 0; t < T_; ++t) {
    int n = 0;
    for (int k = 0; k < K; ++k) {
      int e = idx_copy_[static_cast<size_t>(t) * K + k];
      if (e < 0) continue;
      int o = owner_[e];
      rows[n] = reinterpret_cast<const uint16_t*>(region + l_.combine_offset(combine_base_[o] + cursor[o]++));
      wk[n++] = weights_[static_cast<size_t>(t) * K + k];
    }
    combine_row(out + static_cast<size_t>(t) * H, rows.data(), wk.data(), n, H);
  }
}

}  // namespace moefabric::moe
