// The few CUDA driver calls the transport needs, loaded lazily: the plugin does not link CUDA and
// runs on machines without it.
#pragma once

#include <string>

#include "common/status.h"

namespace moefabric::fabric::cuda {

// Whether the CUDA driver library can be loaded.
bool loadable();

// CUDA device ordinal of a device pointer; -1 when unknown.
int device_of(const void* ptr);

// A fence on the calling thread's legacy default stream. Providers that move GPU memory with
// host-issued cudaMemcpy (shm, tcp) report a completion as soon as the copy is issued, and a copy
// into device memory may still be in flight then. Recording the fence after the completion and
// waiting for it (iflush) makes the bytes visible before NCCL's kernels read them. The copies and
// the fence share the legacy stream, so the fence waits for nothing the copies did not.
class Fence {
 public:
  Fence() = default;
  ~Fence();
  Fence(const Fence&) = delete;
  Fence& operator=(const Fence&) = delete;

  Status record();  // creates the event on first use
  Status query(bool* done);

 private:
  void* event_ = nullptr;  // CUevent
};

}  // namespace moefabric::fabric::cuda
