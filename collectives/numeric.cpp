#include "collectives/numeric.h"

#include <cmath>

namespace moefabric::moe {

// fmaf is one rounding by definition; with an FMA unit it is one instruction, otherwise libm
// emulates it exactly. Both clones give identical bits.
__attribute__((target_clones("fma", "default")))
void combine_row(uint16_t* out, const uint16_t* const* rows, const float* w, int n, int hidden) {
  for (int c = 0; c < hidden; ++c) {
    float acc = 0.0f;
    for (int i = 0; i < n; ++i) acc = std::fmaf(w[i], bf16_to_float(rows[i][c]), acc);
    out[c] = float_to_bf16(acc);
  }
}

}  // namespace moefabric::moe
