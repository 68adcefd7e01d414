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

__global__ void ping(uint64_t* bell, const uint64_t* flag, int n, uint64_t* ns) {
  for (int i = 1; i <= n; ++i) {
    const uint64_t t0 = global_timer_ns();
    if (blockIdx.x == 0) st_release_sys(bell, i);
    while (ld_acquire_sys(flag) < static_cast<uint64_t>(i)) {
    }
    if (blockIdx.x == 0) ns[i - 1] = global_timer_ns() - t0;
    __syncthreads();
  }
}

int main() {
  const int n = 2000;
  for (int pollers : {1, 132}) {
    uint64_t *h = nullptr, *d = nullptr, *ns = nullptr;
    if (cudaHostAlloc(&h, 2 * sizeof(uint64_t), cudaHostAllocMapped) != cudaSuccess) return 1;
    h[0] = h[1] = 0;
    cudaHostGetDevicePointer(&d, h, 0);
    cudaMalloc(&ns, n * sizeof(uint64_t));
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
    cudaMemcpy(v.data(), ns, n * sizeof(uint64_t), cudaMemcpyDeviceToHost);
    std::sort(v.begin() + 100, v.end());
    printf("gpu->host->gpu round trip, %3d polling block(s): p50 %.2f us, p99 %.2f us (%s)\n", pollers,
           v[100 + (n - 100) / 2] / 1000.0, v[100 + (n - 100) * 99 / 100] / 1000.0, cudaGetErrorString(e));
    cudaFree(ns);
    cudaFreeHost(h);
  }
  return 0;
}
