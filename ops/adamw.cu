// AdamW on fp32 master weights, as torch.optim.AdamW's single-tensor path (math in ops/adamw.h),
// operation for operation as adamw_ref, so that the two agree bit for bit:
//   g  = g * coef                                  (coef: device-side clip coefficient, or 1)
//   p *= f32(1 - lr*wd)                            (torch: param.mul_(1 - lr * weight_decay))
//   m  = lerp(m, g, f32(1 - b1))                   (torch's lerp: an fma, formula picked by |weight| < 0.5)
//   v  = fma(f32(1 - b2) * g, g, v * f32(b2))      (addcmul, contracted as torch's CPU kernel)
//   p += (f32(-lr / bc1) * m) / (sqrt(v) / f32(sqrt(bc2)) + eps)      bc = 1 - b^step
// m, v, p updated in place. The scalars come from the host in double, rounded to fp32 once, as torch
// turns its Python floats into fp32 operands. Every step is spelled with fmaf / __fmul_rn /
// __fadd_rn so nvcc contracts nothing else. One thread per 4 elements (float4).
#include <cmath>

#include "ops/adamw.h"
#include "ops/kernel_util.cuh"

namespace loom {
namespace {

constexpr int kThreads = 256;

struct AdamWScalars {
  float decay;            // 1 - lr * wd
  bool decays;            // wd != 0 (torch skips the multiply)
  float m_weight;         // 1 - beta1
  float v_decay;          // beta2
  float v_weight;         // 1 - beta2
  float eps;
  float neg_step_size;    // -lr / (1 - beta1^step)
  float bc2_sqrt;         // sqrt(1 - beta2^step)
};

// ---------------------------------------------------------------------------------------------
// CUDA kernels

__device__ __forceinline__ float torch_lerp(float start, float end, float weight) {
  const float diff = __fadd_rn(end, -start);
  return fabsf(weight) < 0.5f ? fmaf(weight, diff, start) : fmaf(weight - 1.f, diff, end);
}

__device__ __forceinline__ void adamw_element(float& p, float& m, float& v, float g, const AdamWScalars& s) {
  if (s.decays) p = __fmul_rn(p, s.decay);
  m = torch_lerp(m, g, s.m_weight);
  v = fmaf(__fmul_rn(s.v_weight, g), g, __fmul_rn(v, s.v_decay));
  const float denom = __fadd_rn(__fdiv_rn(sqrtf(v), s.bc2_sqrt), s.eps);
  p = __fadd_rn(p, __fdiv_rn(__fmul_rn(s.neg_step_size, m), denom));
}

template <bool kVec>
__global__ void adamw_kernel(float* p, float* m, float* v, const float* g, const float* grad_coef, int64_t n,
                             const AdamWScalars s) {
  const int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * kF32PerVec;
  if (i >= n) return;
  const float coef = grad_coef != nullptr ? *grad_coef : 1.f;
  if (kVec && i + kF32PerVec <= n) {
    float4 p4 = *reinterpret_cast<float4*>(p + i), m4 = *reinterpret_cast<float4*>(m + i);
    float4 v4 = *reinterpret_cast<float4*>(v + i);
    const float4 g4 = *reinterpret_cast<const float4*>(g + i);
    adamw_element(p4.x, m4.x, v4.x, __fmul_rn(g4.x, coef), s);
    adamw_element(p4.y, m4.y, v4.y, __fmul_rn(g4.y, coef), s);
    adamw_element(p4.z, m4.z, v4.z, __fmul_rn(g4.z, coef), s);
    adamw_element(p4.w, m4.w, v4.w, __fmul_rn(g4.w, coef), s);
    *reinterpret_cast<float4*>(p + i) = p4;
    *reinterpret_cast<float4*>(m + i) = m4;
    *reinterpret_cast<float4*>(v + i) = v4;
    return;
  }
  for (int64_t j = i; j < n && j < i + kF32PerVec; ++j) adamw_element(p[j], m[j], v[j], __fmul_rn(g[j], coef), s);
}

AdamWScalars scalars_for(const AdamWParams& a) {
  const double lr = a.lr, beta1 = a.beta1, beta2 = a.beta2;
  const double bc1 = 1.0 - std::pow(beta1, double(a.step));
  const double bc2 = 1.0 - std::pow(beta2, double(a.step));
  AdamWScalars s;
  s.decay = float(1.0 - lr * double(a.weight_decay));
  s.decays = a.weight_decay != 0.f;
  s.m_weight = float(1.0 - beta1);
  s.v_decay = float(beta2);
  s.v_weight = float(1.0 - beta2);
  s.eps = a.eps;
  s.neg_step_size = float(-(lr / bc1));
  s.bc2_sqrt = float(std::sqrt(bc2));
  return s;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// kernel launchers

void adamw_update(float* p, float* m, float* v, const float* g, const float* grad_coef, int64_t n,
                  const AdamWParams& a, cudaStream_t stream) {
  LOOM_CHECK(n >= 0 && a.step >= 1, "adamw_update: needs n >= 0 and step >= 1 (1-based, already incremented); found n ",
             n, ", step ", a.step);
  if (n == 0) return;
  const AdamWScalars s = scalars_for(a);
  const int64_t blocks = ceil_div(ceil_div(n, kF32PerVec), kThreads);
  if (is_aligned_16(p) && is_aligned_16(m) && is_aligned_16(v) && is_aligned_16(g))
    adamw_kernel<true><<<blocks, kThreads, 0, stream>>>(p, m, v, g, grad_coef, n, s);
  else
    adamw_kernel<false><<<blocks, kThreads, 0, stream>>>(p, m, v, g, grad_coef, n, s);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace loom
