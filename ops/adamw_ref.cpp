// AdamW, fp32 CPU reference, operation for operation as torch.optim.AdamW's single-tensor path
// (torch/optim/adam.py, _single_tensor_adam, decoupled weight decay). Scalars that torch keeps
// as Python floats are computed here in double and rounded to fp32 where they meet a tensor:
//   p  *= f32(1 - lr*wd)
//   m   = lerp(m, g, f32(1 - b1))                    = fma(w, g - m, m)       (w < 0.5)
//   v   = v * f32(b2) + (f32(1 - b2) * g) * g        = fma((1-b2)*g, g, v*b2)
//   bc1 = 1 - b1^step, bc2 = 1 - b2^step, step_size = lr / bc1          (double)
//   p  += (f32(-step_size) * m) / (sqrt(v) / f32(sqrt(bc2)) + eps)
// The fmas are where torch's AVX2/AVX512 CPU kernels fuse (lerp_vec uses fmadd; addcmul's
// v + s*g*g is contracted); with them m and v match torch bit for bit. The one remaining
// difference: torch's MKL sqrt is 1 ulp off on ~20% of inputs, sqrtf is correctly rounded.
#include <cmath>

#include "ops/adamw.h"

namespace loom {
namespace {
// torch's lerp: the formula is picked by |weight| < 0.5 so that it is exact at both ends.
inline float lerp(float start, float end, float weight) {
  if (std::fabs(weight) < 0.5f) return std::fma(weight, end - start, start);
  return std::fma(weight - 1.0f, end - start, end);
}
}  // namespace

void adamw_ref(float* p, float* m, float* v, const float* g, int64_t n, const AdamWParams& a) {
  const double lr = a.lr, beta1 = a.beta1, beta2 = a.beta2;
  const float decay = static_cast<float>(1.0 - lr * double(a.weight_decay));
  const float m_weight = static_cast<float>(1.0 - beta1);
  const float v_decay = static_cast<float>(beta2), v_weight = static_cast<float>(1.0 - beta2);
  const double bias_correction1 = 1.0 - std::pow(beta1, double(a.step));
  const double bias_correction2 = 1.0 - std::pow(beta2, double(a.step));
  const float neg_step_size = static_cast<float>(-(lr / bias_correction1));
  const float bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  const bool decays = a.weight_decay != 0.f;
#pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) {
    float param = decays ? p[i] * decay : p[i];
    const float grad = g[i];
    const float exp_avg = lerp(m[i], grad, m_weight);
    const float exp_avg_sq = std::fma(v_weight * grad, grad, v[i] * v_decay);
    const float denom = std::sqrt(exp_avg_sq) / bias_correction2_sqrt + a.eps;
    param += (neg_step_size * exp_avg) / denom;
    p[i] = param;
    m[i] = exp_avg;
    v[i] = exp_avg_sq;
  }
}

}  // namespace loom
