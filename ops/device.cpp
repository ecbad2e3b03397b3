#include "ops/device.h"

#include <cuda_runtime.h>

#include "ops/cuda_common.h"
#include "ops/error.h"

namespace loom {

int cuda_device_count() {
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky "no driver" error so later calls start clean
      return 0;
    }
    return n;
  }();
  return count;
}

std::string cuda_device_summary(int device) {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return cat("no CUDA device (", cudaGetErrorString(err), ")");
  }
  if (device >= n) return cat("no CUDA device ", device, " (", n, " present)");
  cudaDeviceProp p{};
  cudaGetDeviceProperties(&p, device);
  int driver = 0;
  cudaDriverGetVersion(&driver);
  char gib[32];
  std::snprintf(gib, sizeof gib, "%.1f", p.totalGlobalMem / double(1ull << 30));
  return cat(p.name, ", ", p.multiProcessorCount, " SMs, ", gib, " GiB, driver ", driver / 1000, ".",
             (driver % 1000) / 10);
}

int cuda_multiprocessors() {
  int device = 0, sms = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

}  // namespace loom
