// fp32 <-> bf16 conversions and fills (math in ops/cast.h).
// Each thread owns 8 consecutive elements: one 16-byte bf16 vector (two fp32 ones) when the
// pointers are 16-byte aligned and the 8 elements are all in range, else element by element.
#include "ops/cast.h"
#include "ops/kernel_util.cuh"

namespace loom {
namespace {

constexpr int kThreads = 256;

// ---------------------------------------------------------------------------------------------
// CUDA kernels

template <bool kVec>
__global__ void cast_fp32_to_bf16_kernel(bf16* out, const float* in, int64_t n) {
  const int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * kBf16PerVec;
  if (i >= n) return;
  if (kVec && i + kBf16PerVec <= n) {
    const float4 lo = *reinterpret_cast<const float4*>(in + i);
    const float4 hi = *reinterpret_cast<const float4*>(in + i + 4);
    const float x[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
    store_bf16x8(out + i, x);
    return;
  }
  for (int64_t j = i; j < n && j < i + kBf16PerVec; ++j) out[j] = __float2bfloat16_rn(in[j]);
}

template <bool kVec>
__global__ void cast_bf16_to_fp32_kernel(float* out, const bf16* in, int64_t n) {
  const int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * kBf16PerVec;
  if (i >= n) return;
  if (kVec && i + kBf16PerVec <= n) {
    float x[8];
    load_bf16x8(x, in + i);
    *reinterpret_cast<float4*>(out + i) = make_float4(x[0], x[1], x[2], x[3]);
    *reinterpret_cast<float4*>(out + i + 4) = make_float4(x[4], x[5], x[6], x[7]);
    return;
  }
  for (int64_t j = i; j < n && j < i + kBf16PerVec; ++j) out[j] = __bfloat162float(in[j]);
}

template <bool kVec>
__global__ void fill_bf16_kernel(bf16* out, float value, int64_t n) {
  const int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * kBf16PerVec;
  if (i >= n) return;
  if (kVec && i + kBf16PerVec <= n) {
    const float x[8] = {value, value, value, value, value, value, value, value};
    store_bf16x8(out + i, x);
    return;
  }
  for (int64_t j = i; j < n && j < i + kBf16PerVec; ++j) out[j] = __float2bfloat16_rn(value);
}

template <bool kVec>
__global__ void fill_fp32_kernel(float* out, float value, int64_t n) {
  const int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * kBf16PerVec;
  if (i >= n) return;
  if (kVec && i + kBf16PerVec <= n) {
    const float4 v = make_float4(value, value, value, value);
    *reinterpret_cast<float4*>(out + i) = v;
    *reinterpret_cast<float4*>(out + i + 4) = v;
    return;
  }
  for (int64_t j = i; j < n && j < i + kBf16PerVec; ++j) out[j] = value;
}

int64_t blocks_for(int64_t n) { return ceil_div(ceil_div(n, kBf16PerVec), kThreads); }

void check_count(int64_t n, const char* op) {
  LOOM_CHECK(n >= 0, op, ": element count must be >= 0 (found ", n, ")");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// kernel launchers

void cast_fp32_to_bf16(bf16* out, const float* in, int64_t n, cudaStream_t stream) {
  check_count(n, "cast_fp32_to_bf16");
  if (n == 0) return;
  if (is_aligned_16(out) && is_aligned_16(in))
    cast_fp32_to_bf16_kernel<true><<<blocks_for(n), kThreads, 0, stream>>>(out, in, n);
  else
    cast_fp32_to_bf16_kernel<false><<<blocks_for(n), kThreads, 0, stream>>>(out, in, n);
  CUDA_CHECK(cudaGetLastError());
}

void cast_bf16_to_fp32(float* out, const bf16* in, int64_t n, cudaStream_t stream) {
  check_count(n, "cast_bf16_to_fp32");
  if (n == 0) return;
  if (is_aligned_16(out) && is_aligned_16(in))
    cast_bf16_to_fp32_kernel<true><<<blocks_for(n), kThreads, 0, stream>>>(out, in, n);
  else
    cast_bf16_to_fp32_kernel<false><<<blocks_for(n), kThreads, 0, stream>>>(out, in, n);
  CUDA_CHECK(cudaGetLastError());
}

void fill(bf16* out, float value, int64_t n, cudaStream_t stream) {
  check_count(n, "fill");
  if (n == 0) return;
  if (is_aligned_16(out))
    fill_bf16_kernel<true><<<blocks_for(n), kThreads, 0, stream>>>(out, value, n);
  else
    fill_bf16_kernel<false><<<blocks_for(n), kThreads, 0, stream>>>(out, value, n);
  CUDA_CHECK(cudaGetLastError());
}

void fill(float* out, float value, int64_t n, cudaStream_t stream) {
  check_count(n, "fill");
  if (n == 0) return;
  if (is_aligned_16(out))
    fill_fp32_kernel<true><<<blocks_for(n), kThreads, 0, stream>>>(out, value, n);
  else
    fill_fp32_kernel<false><<<blocks_for(n), kThreads, 0, stream>>>(out, value, n);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace loom
