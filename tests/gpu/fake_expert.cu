// A stand-in expert for the CUDA-graph test: expertY[r][c] = bf16((byte(recvX[r][c]) - 128) / 16)
// (exact in bf16, never NaN), computed on the device inside the captured graph so that combine
// consumes what dispatch produced. fake_expert_host computes the same on the CPU.
#include "tests/gpu/fake_expert.h"

#include <cstring>

namespace {

__global__ void fake_expert_kernel(const uint8_t* recv_x, uint16_t* expert_y, size_t rows, int hidden,
                                   int elt_bytes) {
  const size_t n = rows * static_cast<size_t>(hidden);
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float v = (static_cast<float>(recv_x[i * elt_bytes]) - 128.0f) * 0.0625f;
    expert_y[i] = static_cast<uint16_t>(__float_as_uint(v) >> 16);
  }
}

}  // namespace

cudaError_t fake_expert_launch(const void* recv_x, uint16_t* expert_y, size_t rows, int hidden, int elt_bytes,
                               cudaStream_t stream) {
  fake_expert_kernel<<<132, 256, 0, stream>>>(static_cast<const uint8_t*>(recv_x), expert_y, rows, hidden,
                                              elt_bytes);
  return cudaGetLastError();
}

void fake_expert_host(const void* recv_x, uint16_t* expert_y, size_t rows, int hidden, int elt_bytes) {
  const auto* x = static_cast<const uint8_t*>(recv_x);
  for (size_t i = 0; i < rows * static_cast<size_t>(hidden); ++i) {
    const float v = (static_cast<float>(x[i * elt_bytes]) - 128.0f) * 0.0625f;
    uint32_t u;
    std::memcpy(&u, &v, 4);
    expert_y[i] = static_cast<uint16_t>(u >> 16);
  }
}
