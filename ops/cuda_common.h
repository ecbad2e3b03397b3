// Shared by every CUDA file: error checks, bf16 helpers, launch arithmetic.
// One CHECK_GEN macro serves CUDA, cuBLAS and NCCL (as llama.cpp's CUDA_CHECK_GEN): it takes
// the success value and the function that decodes an error, prints the statement, file:line,
// device and message, then ends every rank through loom::die().
#pragma once
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "ops/error.h"

namespace loom {
[[noreturn]] void cuda_fatal(const char* stmt, const char* file, int line, const std::string& what);
const char* cublas_status_string(cublasStatus_t s);
}  // namespace loom

#define CHECK_GEN(stmt, success, decode)                                          \
  do {                                                                            \
    auto check_gen_status_ = (stmt);                                              \
    if (check_gen_status_ != (success))                                           \
      ::loom::cuda_fatal(#stmt, __FILE__, __LINE__, decode(check_gen_status_));   \
  } while (0)

#define CUDA_CHECK(stmt) CHECK_GEN(stmt, cudaSuccess, cudaGetErrorString)
#define CUBLAS_CHECK(stmt) CHECK_GEN(stmt, CUBLAS_STATUS_SUCCESS, ::loom::cublas_status_string)

namespace loom {
using bf16 = __nv_bfloat16;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Host-side bf16 conversion with round-to-nearest-even, bit-exact with __float2bfloat16.
inline uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_bits_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

// The median of `runs` timings of run() (CUDA events on `stream`) after `warmup` untimed calls, in ms:
// the device ceilings' and the benchmarks' one timer.
template <class F>
double median_event_ms(int warmup, int runs, cudaStream_t stream, F&& run) {
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < warmup; ++i) run();
  std::vector<float> ms(size_t(runs), 0.f);
  for (float& t : ms) {
    CUDA_CHECK(cudaEventRecord(start, stream));
    run();
    CUDA_CHECK(cudaEventRecord(stop, stream));
    CUDA_CHECK(cudaEventSynchronize(stop));
    CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
  }
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  return runs % 2 ? ms[size_t(runs / 2)] : 0.5 * (ms[size_t(runs / 2 - 1)] + ms[size_t(runs / 2)]);
}
}  // namespace loom
