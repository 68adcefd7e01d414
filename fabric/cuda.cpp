#include "fabric/cuda.h"

#include <dlfcn.h>
#include <pthread.h>

namespace moefabric::fabric::cuda {
namespace {

// CUDA driver API subset (the plugin declares what it uses; it never includes cuda.h).
using CuResult = int;
constexpr CuResult kSuccess = 0;
constexpr CuResult kNotReady = 600;                        // CUDA_ERROR_NOT_READY
constexpr unsigned kEventDisableTiming = 2;                // CU_EVENT_DISABLE_TIMING
constexpr int kPointerDeviceOrdinal = 9;                   // CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL
void* const kStreamLegacy = reinterpret_cast<void*>(0x1);  // CU_STREAM_LEGACY

struct Driver {
  bool ok = false;
  CuResult (*pointer_get_attribute)(void*, int, unsigned long long) = nullptr;
  CuResult (*event_create)(void**, unsigned) = nullptr;
  CuResult (*event_record)(void*, void*) = nullptr;
  CuResult (*event_query)(void*) = nullptr;
  CuResult (*event_destroy)(void*) = nullptr;
  CuResult (*get_error_string)(CuResult, const char**) = nullptr;
};

// Trivially constructible process-wide table, filled once (safe across dlopen/dlclose of the
// plugin: the driver stays loaded once CUDA is in use).
Driver g_driver;
pthread_once_t g_once = PTHREAD_ONCE_INIT;

template <class F>
bool bind(void* h, const char* name, F* fn) {
  *fn = reinterpret_cast<F>(dlsym(h, name));
  return *fn != nullptr;
}

void load() {
  void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  if (h == nullptr) h = dlopen("libcuda.so.1", RTLD_NOW);
  if (h == nullptr) return;
  Driver d;
  d.ok = bind(h, "cuPointerGetAttribute", &d.pointer_get_attribute) &&
         bind(h, "cuEventCreate", &d.event_create) && bind(h, "cuEventRecord", &d.event_record) &&
         bind(h, "cuEventQuery", &d.event_query) && bind(h, "cuEventDestroy_v2", &d.event_destroy) &&
         bind(h, "cuGetErrorString", &d.get_error_string);
  if (d.ok) g_driver = d;
}

const Driver& driver() {
  pthread_once(&g_once, load);
  return g_driver;
}

std::string describe(const char* call, CuResult rc) {
  const char* text = nullptr;
  if (driver().get_error_string == nullptr || driver().get_error_string(rc, &text) != kSuccess)
    text = nullptr;
  return std::string(call) + " failed: " + (text ? text : "CUDA error " + std::to_string(rc));
}

}  // namespace

bool loadable() {
  void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr) return false;
  dlclose(h);
  return true;
}

int device_of(const void* ptr) {
  const Driver& d = driver();
  if (!d.ok) return -1;
  int ordinal = -1;
  if (d.pointer_get_attribute(&ordinal, kPointerDeviceOrdinal, reinterpret_cast<unsigned long long>(ptr)) !=
      kSuccess)
    return -1;
  return ordinal;
}

Fence::~Fence() {
  if (event_ != nullptr && driver().ok) (void)driver().event_destroy(event_);
}

Status Fence::record() {
  const Driver& d = driver();
  if (!d.ok) return Status::system_error("the CUDA driver (libcuda.so.1) could not be loaded");
  if (event_ == nullptr) {
    CuResult rc = d.event_create(&event_, kEventDisableTiming);
    if (rc != kSuccess) {
      event_ = nullptr;
      return Status::system_error(describe("cuEventCreate", rc));
    }
  }
  CuResult rc = d.event_record(event_, kStreamLegacy);
  if (rc != kSuccess) return Status::system_error(describe("cuEventRecord", rc));
  return Status::kOk;
}

Status Fence::query(bool* done) {
  *done = false;
  CuResult rc = driver().event_query(event_);
  if (rc == kNotReady) return Status::kOk;
  if (rc != kSuccess) return Status::system_error(describe("cuEventQuery", rc));
  *done = true;
  return Status::kOk;
}

}  // namespace moefabric::fabric::cuda
