// GPU <-> host-thread round trip through pinned, mapped host memory: the floor under the MoE
// fabric path's doorbell (GPU -> proxy) and arrival flag (proxy -> GPU). Block 0 thread 0 stores
// i to `bell` (st.release.sys); a host thread spinning on it stores i to `flag`; `pollers` blocks
// (one thread each, as the ingest kernels poll) wait for it with ld.acquire.sys. Prints p50/p99.
// Build and run on the GPU machine:  nvcc -O2 -arch=sm_90 -o /tmp/rtt tools/gpu_host_rtt.cu && /tmp/rtt
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

__device__ __forceinline__ uint64_t ld_acq(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_rel(uint64_t* p, uint64_t v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ uint64_t gtimer() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__global__ void ping(uint64_t* bell, const uint64_t* flag, int n, uint64_t* ns) {
  for (int i = 1; i <= n; ++i) {
    const uint64_t t0 = gtimer();
    if (blockIdx.x == 0) st_rel(bell, i);
    while (ld_acq(flag) < static_cast<uint64_t>(i)) {
    }
    if (blockIdx.x == 0) ns[i - 1] = gtimer() - t0;
    __syncthreads();
  }
}

int main(int argc, char** argv) {
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
