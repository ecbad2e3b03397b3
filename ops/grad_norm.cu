// Global gradient norm and clip coefficient, as torch.nn.utils.clip_grad_norm_ (math in ops/grad_norm.h):
//   norm = sqrt(sum g^2) ; coef = min(1, max_norm / (norm + 1e-6)) ; g *= coef (or AdamW folds coef in)
// Two launches, both deterministic: kGradNormPartials blocks each write the sum of squares of a fixed
// grid-stride slice (partials, =), then one block sums the partials in a fixed tree and writes norm
// and coef (=). The result depends on n and the data only, never on timing.
#include "ops/grad_norm.h"
#include "ops/kernel_util.cuh"

namespace loom {
namespace {

constexpr int kThreads = 256;

// ---------------------------------------------------------------------------------------------
// CUDA kernels

template <bool kVec>
__global__ void sum_squares_partials_kernel(float* partials, const float* g, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  float sum = 0.f;
  if (kVec) {
    const int64_t vecs = n / kF32PerVec;
    for (int64_t i = first; i < vecs; i += stride) {
      const float4 x = reinterpret_cast<const float4*>(g)[i];
      sum += x.x * x.x + x.y * x.y + x.z * x.z + x.w * x.w;
    }
    for (int64_t i = vecs * kF32PerVec + first; i < n; i += stride) sum += g[i] * g[i];
  } else {
    for (int64_t i = first; i < n; i += stride) sum += g[i] * g[i];
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// One block of kGradNormPartials threads.
__global__ void norm_and_coef_kernel(float* norm, float* coef, const float* partials, float max_norm) {
  const float total = block_sum(partials[threadIdx.x]);
  if (threadIdx.x != 0) return;
  const float root = sqrtf(total);
  *norm = root;
  // As clip_coefficient() and torch: `max_norm / t` on an fp32 tensor is reciprocal(t) * max_norm.
  *coef = max_norm > 0.f ? fminf(1.f, __fmul_rn(__frcp_rn(__fadd_rn(root, 1e-6f)), max_norm)) : 1.f;
}

template <bool kVec>
__global__ void scale_kernel(float* g, const float* s, int64_t n) {
  const int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * kF32PerVec;
  if (i >= n) return;
  const float factor = *s;
  if (kVec && i + kF32PerVec <= n) {
    float4 x = *reinterpret_cast<float4*>(g + i);
    x.x *= factor, x.y *= factor, x.z *= factor, x.w *= factor;
    *reinterpret_cast<float4*>(g + i) = x;
    return;
  }
  for (int64_t j = i; j < n && j < i + kF32PerVec; ++j) g[j] *= factor;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// kernel launchers

void grad_norm_clip(float* norm, float* coef, float* partials, const float* g, int64_t n, float max_norm,
                    cudaStream_t stream) {
  LOOM_CHECK(n >= 0, "grad_norm_clip: element count must be >= 0 (found ", n, ")");
  if (is_aligned_16(g))
    sum_squares_partials_kernel<true><<<kGradNormPartials, kThreads, 0, stream>>>(partials, g, n);
  else
    sum_squares_partials_kernel<false><<<kGradNormPartials, kThreads, 0, stream>>>(partials, g, n);
  CUDA_CHECK(cudaGetLastError());
  norm_and_coef_kernel<<<1, kGradNormPartials, 0, stream>>>(norm, coef, partials, max_norm);
  CUDA_CHECK(cudaGetLastError());
}

void scale_by(float* g, const float* s, int64_t n, cudaStream_t stream) {
  LOOM_CHECK(n >= 0, "scale_by: element count must be >= 0 (found ", n, ")");
  if (n == 0) return;
  const int64_t blocks = ceil_div(ceil_div(n, kF32PerVec), kThreads);
  if (is_aligned_16(g))
    scale_kernel<true><<<blocks, kThreads, 0, stream>>>(g, s, n);
  else
    scale_kernel<false><<<blocks, kThreads, 0, stream>>>(g, s, n);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace loom
