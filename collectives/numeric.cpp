#include "collectives/numeric.h"

#include <cmath>

namespace moefabric::moe {

// fmaf is one rounding by definition; with an FMA unit it is one instruction, otherwise libm
// emulates it exactly. Both clones give identical bits. (ThreadSanitizer cannot run the ifunc
// resolver that target_clones needs before its own init, so that build keeps the default.)
#if defined(__SANITIZE_THREAD__)
#define MF_FMA_CLONES
#else
#define MF_FMA_CLONES __attribute__((target_clones("fma", "default")))
#endif
MF_FMA_CLONES
void combine_row(uint16_t* out, const uint16_t* const* rows, const float* w, int n, int hidden) {
  for (int c = 0; c < hidden; ++c) {
    float acc = 0.0f;
    for (int i = 0; i < n; ++i) acc = std::fmaf(w[i], bf16_to_float(rows[i][c]), acc);
    out[c] = float_to_bf16(acc);
  }
}

}  // namespace moefabric::moe
