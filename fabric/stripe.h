// How one message is cut into writes over a peer's rails: pure arithmetic, shared by the net
// plugin's sends and the MoE proxies' writes (tests/unit/test_stripe.cpp).
#pragma once

#include <algorithm>
#include <cstddef>

namespace moefabric::fabric {

inline constexpr size_t kStripeAlign = 128;  // every segment but the last is a multiple of it

struct StripePlan {
  size_t seg = 0;        // bytes of every segment but the last (which is shorter or equal)
  int nseg = 0;          // segments (0 for an empty message)
  bool striped = false;  // segment i goes on rail i % nrails; else the whole message on one rail
};

// `len` bytes to a peer with `nrails` rails. A message of at least `stripe_min` bytes (and at
// least one aligned segment per rail) is striped: its segment count is a multiple of the rails'
// where `max_segs` allows. Segments are at most `max_write` bytes (0: no limit) and there are at
// most `max_segs` of them (0: no limit). False when `len` needs more than max_segs segments.
inline bool plan_stripes(size_t len, int nrails, size_t stripe_min, size_t max_write, int max_segs,
                         StripePlan* out) {
  *out = StripePlan{};
  if (len == 0) return true;
  const size_t nr = static_cast<size_t>(std::max(1, nrails));
  size_t nseg = max_write == 0 ? 1 : (len + max_write - 1) / max_write;
  out->striped = nr > 1 && len >= stripe_min && len >= nr * kStripeAlign;
  if (out->striped) {
    const size_t want = (std::max(nseg, nr) + nr - 1) / nr * nr;
    const size_t cap = max_segs > 0 ? static_cast<size_t>(max_segs) / nr * nr : want;
    nseg = std::max(nseg, std::min(want, cap));
  }
  if (max_segs > 0 && nseg > static_cast<size_t>(max_segs)) return false;
  size_t seg = (len + nseg - 1) / nseg;
  if (out->striped || nseg > 1) seg = (seg + kStripeAlign - 1) / kStripeAlign * kStripeAlign;
  // Alignment must not push a segment past max_write (one not a multiple of 128).
  if (max_write != 0 && seg > max_write)
    seg = std::max(kStripeAlign, max_write / kStripeAlign * kStripeAlign);
  out->seg = seg;
  out->nseg = static_cast<int>((len + seg - 1) / seg);  // rounding up may leave fewer segments
  return max_segs <= 0 || out->nseg <= max_segs;
}

}  // namespace moefabric::fabric
