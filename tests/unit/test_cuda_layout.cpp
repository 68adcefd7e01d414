// The CUDA backend's receive-block layout (kernels/layout.h, shared with the kernels) and backend
// selection, on the CPU.
#include <catch2/catch.hpp>

#include <cstring>

#include "kernels/layout.h"
#include "collectives/engine.h"
#include "collectives/layout.h"

using namespace moefabric::moe;

TEST_CASE("cuda layout: regions are disjoint, aligned and inside the block", "[moe][layout][cuda]") {
  struct Shape {
    int R, E, K, H, T;
    bool fp8;
    int sb, align;
  };
  const Shape shapes[] = {{2, 256, 8, 7168, 128, true, 128, 1},   {2, 8, 2, 64, 16, false, 32, 1},
                          {8, 384, 8, 7168, 4096, true, 128, 16}, {3, 7, 3, 96, 5, true, 32, 4},
                          {1, 4, 1, 16, 1, false, 16, 1},         {32, 32, 16, 256, 64, false, 128, 1}};
  for (const Shape& s : shapes) {
    for (int me = 0; me < s.R; ++me) {
      CudaLayout l;
      REQUIRE(cuda_layout_init(&l, s.R, me, s.E, s.K, s.H, s.T, s.fp8 ? 1 : 2, s.fp8, s.sb, s.align).ok());
      // Same capacity and expert ownership as the host backend's layout.
      Layout h;
      REQUIRE(
          layout_init(&h, s.R, me, s.E, s.K, s.H, s.T, s.fp8 ? 1 : 2, s.fp8, s.sb, s.align, 128, false).ok());
      CHECK(l.capacity_rows == h.capacity_rows);
      for (int e = 0; e < s.E; ++e) CHECK(l.owner(e) == h.owner(e));
      for (int r = 0; r <= s.R; ++r) CHECK(l.first_expert(r) == h.first_expert(r));
      CHECK(l.slot_bytes % 16 == 0);
      CHECK(l.off_idx % 16 == 0);
      CHECK(l.off_tok % 16 == 0);
      CHECK(l.off_comb % 16 == 0);
      CHECK(l.dcount_offset(s.R - 1) + 8 <= l.off_ccount);
      CHECK(l.ccount_offset(s.R - 1) + 8 <= l.off_bcount);
      CHECK(l.bcount_offset(s.R - 1) + 8 <= l.off_ntok);
      CHECK(l.ntok_offset(s.R - 1) + 4 <= l.off_idx);
      CHECK(l.idx_offset(s.R - 1) + 4ull * s.T * s.K <= l.off_tok);
      CHECK(l.token_offset(s.R - 1, s.T - 1) + l.slot_bytes <= l.off_comb);
      CHECK(l.combine_offset(static_cast<size_t>(s.T) * s.K - 1) + l.y_row_bytes <= l.block_bytes);
      CHECK(l.x_bytes + l.scale_bytes <= l.slot_bytes);
      // A fabric source's record lands in a slot of the same size (kernels/fabric.cu copies
      // slot_bytes from the record's x onwards).
      CHECK(h.record_bytes - h.meta_bytes == l.slot_bytes);
    }
  }
}

TEST_CASE("cuda layout: limits of the CUDA backend", "[moe][layout][cuda]") {
  CudaLayout l;
  // No fixed-width rank sets: 256 ranks (fabric peers) with 1024 experts initialise.
  CHECK(cuda_layout_init(&l, 256, 255, 1024, 8, 7168, 128, 1, true, 128, 1).ok());
  CHECK(l.local_count(255) == 4);
  moefabric::Status s = cuda_layout_init(&l, 4097, 0, 8192, 2, 64, 16, 2, false, 128, 1);
  CHECK_FALSE(s.ok());
  CHECK_THAT(s.message(), Catch::Contains("4096 ranks"));
  s = cuda_layout_init(&l, 2, 0, 10000, 2, 64, 16, 2, false, 128, 1);
  CHECK_FALSE(s.ok());
  CHECK_THAT(s.message(), Catch::Contains("4096 experts"));
}

namespace {
ncclResult_t self_gather(const void* send, void* recv, size_t bytes, void*) {
  std::memcpy(recv, send, bytes);
  return ncclSuccess;
}
}  // namespace

TEST_CASE("backend choice: CUDA without a GPU (or without a CUDA build) fails clearly", "[moe][cuda]") {
  const moefabric::Status probe = cuda_backend_probe();
  if (probe.ok()) {
    SUCCEED("a GPU is current here: the gpu suite covers the CUDA backend");
    return;
  }
  CHECK(!probe.message().empty());
  ncclMoeConfig_t c = NCCL_MOE_CONFIG_INITIALIZER;
  c.numExperts = 8;
  c.numTopk = 2;
  c.hidden = 64;
  c.maxTokensPerRank = 16;
  c.backend = ncclMoeBackendCuda;
  std::unique_ptr<Engine> e;
  const moefabric::Status s = engine_create(1, 0, self_gather, nullptr, &c, &e);
  CHECK(s == moefabric::Status::kInvalidUsage);
  INFO(s.message());
  CHECK(s.message().find("ncclMoeBackendCuda") != std::string::npos);
  CHECK(!e);
}
