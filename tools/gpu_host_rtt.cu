// GPU <-> host-thread round trip through pinned, mapped host memory: the floor under the MoE
// fabric path's doorbell (GPU -> proxy) and arrival flag (proxy -> GPU). Block 0 thread 0 stores
// i to `bell` (st.release.sys); a host thread spinning on it stores i to `flag`; `pollers` blocks
// (one thread each, as the ingest kernels poll) wait for it with ld.acquire.sys. Prints p50/p99.
// Build and run on the GPU machine (repo root):
//   nvcc -O2 -std=c++20 -arch=sm_90 -I. -o /tmp/rtt tools/gpu_host_rtt.cu && /tmp/rtt
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <thread>
#include <vector>

#include "kernels/device_common.cuh"  // the kernels' own flag loads and stores

using moefabric::moe::kern::global_timer_ns;
using moefabric::moe::kern::ld_acquire_sys;
using moefabric::moe::kern::st_release_sys;

// Each wait gives up after 1 s (ns[] then holds ~0 and the run reports a timeout).
__global__ void ping(uint64_t* bell, const uint64_t* flag, int n, uint64_t* ns) {
  for (int i = 1; i <= n; ++i) {
    const uint64_t t0 = global_timer_ns();
    if (blockIdx.x == 0) st_release_sys(bell, i);
    while (ld_acquire_sys(flag) < static_cast<uint64_t>(i)) {
      if (global_timer_ns() - t0 > 1000000000ull) {
        if (blockIdx.x == 0) ns[i - 1] = ~0ull;
        return;
      }
    }
    if (blockIdx.x == 0) ns[i - 1] = global_timer_ns() - t0;
    __syncthreads();
  }
}

#define CHECK_CUDA(call)                                                 \
  do {                                                                   \
    cudaError_t e_ = (call);                                             \
    if (e_ != cudaSuccess) {                                             \
      fprintf(stderr, "%s failed: %s\n", #call, cudaGetErrorString(e_)); \
      return 1;                                                          \
    }                                                                    \
  } while (0)

int main() {
  const int n = 2000;
  for (int pollers : {1, 132}) {
    uint64_t *h = nullptr, *d = nullptr, *ns = nullptr;
    CHECK_CUDA(cudaHostAlloc(&h, 2 * sizeof(uint64_t), cudaHostAllocMapped));
    h[0] = h[1] = 0;
    CHECK_CUDA(cudaHostGetDevicePointer(&d, h, 0));
    CHECK_CUDA(cudaMalloc(&ns, n * sizeof(uint64_t)));
    CHECK_CUDA(cudaMemset(ns, 0, n * sizeof(uint64_t)));
    std::atomic<bool> stop{false};
    std::thread host([&] {
      for (uint64_t i = 1; i <= static_cast<uint64_t>(n) && !stop; ++i) {
        while (__atomic_load_n(&h[0], __ATOMIC_ACQUIRE) < i && !stop) {
        }
        __atomic_store_n(&h[1], i, __ATOMIC_RELEASE);
      }
    });
    ping<<<pollers, 1>>>(d, d + 1, n, ns);
    cudaError_t e = cudaDeviceSynchronize();
    stop = true;
    host.join();
    std::vector<uint64_t> v(n);
    CHECK_CUDA(e);
    CHECK_CUDA(cudaMemcpy(v.data(), ns, n * sizeof(uint64_t), cudaMemcpyDeviceToHost));
    if (std::find(v.begin(), v.end(), ~0ull) != v.end()) {
      fprintf(stderr, "a wait for the host thread's flag timed out after 1 s\n");
      return 1;
    }
    std::sort(v.begin() + 100, v.end());
    printf("gpu->host->gpu round trip, %3d polling block(s): p50 %.2f us, p99 %.2f us\n", pollers,
           v[100 + (n - 100) / 2] / 1000.0, v[100 + (n - 100) * 99 / 100] / 1000.0);
    cudaFree(ns);
    cudaFreeHost(h);
  }
  return 0;
}
