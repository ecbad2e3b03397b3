// What the GPU tests share: a typed device array that can be poisoned, uploaded and read back, and
// bf16-representable random inputs (rounded first, so the reference and the kernel see one value).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "ops/cuda_common.h"
#include "tests/test_util.h"

namespace loom::test {

inline float round_bf16(float x) { return bf16_bits_to_float(float_to_bf16_bits(x)); }

inline std::vector<float> random_bf16_values(size_t n, uint64_t seed, float amplitude) {
  std::vector<float> v = random_floats(n, seed, -amplitude, amplitude);
  for (float& x : v) x = round_bf16(x);
  return v;
}

template <class T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t n) : n_(n) { CUDA_CHECK(cudaMalloc(&ptr_, std::max<size_t>(n, 1) * sizeof(T))); }
  ~DeviceArray() { cudaFree(ptr_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  T* get() const { return ptr_; }
  // All bytes 0xff: a NaN in bf16 and in fp32.
  void poison() { CUDA_CHECK(cudaMemset(ptr_, 0xff, n_ * sizeof(T))); }
  template <class H>
  void upload(const std::vector<H>& host) {
    static_assert(sizeof(H) == sizeof(T), "host and device element sizes differ");
    CUDA_CHECK(cudaMemcpy(ptr_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  template <class H>
  std::vector<H> download() const {
    static_assert(sizeof(H) == sizeof(T), "host and device element sizes differ");
    std::vector<H> host(n_);
    CUDA_CHECK(cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  T* ptr_ = nullptr;
  size_t n_;
};

}  // namespace loom::test
