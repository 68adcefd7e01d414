// The CUDA-graph test's stand-in expert (fake_expert.cu), on the device and on the host.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

cudaError_t fake_expert_launch(const void* recv_x, uint16_t* expert_y, size_t rows, int hidden, int elt_bytes,
                               cudaStream_t stream);
void fake_expert_host(const void* recv_x, uint16_t* expert_y, size_t rows, int hidden, int elt_bytes);
