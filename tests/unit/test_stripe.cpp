// The one stripe planner (fabric/stripe.h) the net plugin's sends and the MoE proxies' writes
// share: segments cover the message exactly, in order, aligned, within the limits.
#include <catch2/catch.hpp>

#include <random>

#include "fabric/stripe.h"

using namespace moefabric::fabric;

namespace {
// Checks what every plan must satisfy; returns the plan.
StripePlan check(size_t len, int nrails, size_t stripe_min, size_t max_write, int max_segs) {
  StripePlan p;
  const bool ok = plan_stripes(len, nrails, stripe_min, max_write, max_segs, &p);
  INFO("len " << len << " rails " << nrails << " stripe_min " << stripe_min << " max_write " << max_write
              << " max_segs " << max_segs);
  if (!ok) {
    REQUIRE(max_segs > 0);
    REQUIRE(max_write > 0);
    REQUIRE((len + max_write - 1) / max_write > static_cast<size_t>(max_segs) / 1);  // too big for the limits
    return p;
  }
  if (len == 0) {
    REQUIRE(p.nseg == 0);
    return p;
  }
  REQUIRE(p.nseg >= 1);
  REQUIRE(p.seg * static_cast<size_t>(p.nseg - 1) < len);  // no empty segment
  REQUIRE(p.seg * static_cast<size_t>(p.nseg) >= len);     // covered
  if (p.nseg > 1) REQUIRE(p.seg % kStripeAlign == 0);
  if (max_write) REQUIRE(p.seg <= max_write);
  if (max_segs > 0) REQUIRE(p.nseg <= max_segs);
  if (p.striped) {
    REQUIRE(nrails > 1);
    REQUIRE(len >= stripe_min);
  } else {
    REQUIRE((nrails <= 1 || len < stripe_min || len < static_cast<size_t>(nrails) * kStripeAlign));
  }
  return p;
}
}  // namespace

TEST_CASE("stripe plan: the shapes both users rely on", "[stripe]") {
  // One rail: whole, unless max_write cuts it.
  StripePlan p = check(1000, 1, 4096, 0, 0);
  REQUIRE((p.nseg == 1 && !p.striped));
  p = check(10000, 1, 4096, 4096, 16);
  REQUIRE(p.nseg == 3);
  // Two rails, big message: an even count of 128-byte aligned stripes, as the plugin sends them.
  p = check(1000 * 1000 + 77, 2, 64 * 1024, 0, 2);
  REQUIRE((p.striped && p.nseg == 2 && p.seg == (500039 + 127) / 128 * 128));
  // Below stripe_min, or less than one aligned segment per rail: whole on one rail.
  REQUIRE_FALSE(check(1000, 2, 64 * 1024, 0, 2).striped);
  REQUIRE_FALSE(check(200, 2, 128, 0, 2).striped);
  // The plugin's limits: max_write 1 MiB, 16 segments, 4 rails: 8 MiB goes as 8 stripes.
  p = check(8u << 20, 4, 64 * 1024, 1u << 20, 16);
  REQUIRE((p.striped && p.nseg == 8));
  // Too big for 16 segments of max_write: refused.
  StripePlan q;
  REQUIRE_FALSE(plan_stripes(17u << 20, 1, 0, 1u << 20, 16, &q));
  // max_write not a multiple of 128: alignment never pushes a segment past it.
  p = check(1900, 1, 0, 1000, 16);
  REQUIRE(p.seg <= 1000);
}

TEST_CASE("stripe plan: random shapes keep every invariant", "[stripe]") {
  std::mt19937_64 rng(7);
  for (int i = 0; i < 200000; ++i) {
    const size_t len = rng() % 4 == 0 ? rng() % 512 : rng() % (64u << 20);
    const int nrails = 1 + static_cast<int>(rng() % 4);
    const size_t stripe_min = rng() % 2 ? 128 : rng() % (1u << 20);
    const size_t max_write = rng() % 3 == 0 ? 0 : 128 + rng() % (8u << 20);
    const int max_segs = rng() % 3 == 0 ? 0 : 1 + static_cast<int>(rng() % 16);
    check(len, nrails, stripe_min, max_write, max_segs);
  }
}
