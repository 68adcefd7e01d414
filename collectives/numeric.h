// Number formats shared by the host backend and the tests: bf16 <-> fp32 (round to nearest
// even) and the combine reduction in its one defined order.
#pragma once

#include <cstdint>
#include <cstring>

namespace moefabric::moe {

inline float bf16_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// out[c] = bf16(acc), acc = 0; for i < n: acc = fmaf(w[i], float(rows[i][c]), acc).
void combine_row(uint16_t* out, const uint16_t* const* rows, const float* w, int n, int hidden);

}  // namespace moefabric::moe
