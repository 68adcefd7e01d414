// Fresh routing on the device for moefabric-moe-gpu-perf: every launch writes new topkIdx and
// topkWeights (distinct experts per token) from a device-side counter, so a captured graph
// dispatches a different routing each replay with no host work.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

cudaError_t routes_launch(int32_t* idx, float* w, const int32_t* ntokens, int topk, int experts, int rank,
                          uint64_t* counter, cudaStream_t stream);

// An empty kernel on `blocks` x `threads` (the grid the MoE kernels use): the floor one kernel
// launch costs inside a graph, for --breakdown.
cudaError_t empty_launch(int blocks, int threads, cudaStream_t stream);
