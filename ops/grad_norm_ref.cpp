// Global gradient-norm clipping, fp32 CPU reference (grad_norm.h), as
// torch.nn.utils.clip_grad_norm_: torch holds the total norm as an fp32 tensor, so
//   coef = (1 / (f32(norm) + f32(1e-6))) * max_norm     (`max_norm / t` is reciprocal(t) * max_norm)
// clamped to at most 1.
#include <algorithm>

#include "ops/grad_norm.h"

namespace loom {

double sum_squares_ref(const float* g, int64_t n) {
  double sum = 0;
#pragma omp parallel for reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += double(g[i]) * double(g[i]);
  return sum;
}

float clip_coefficient(double norm, float max_norm) {
  if (max_norm <= 0.f) return 1.f;
  const float coef = (1.0f / (static_cast<float>(norm) + 1e-6f)) * max_norm;
  return std::min(coef, 1.0f);
}

void scale_ref(float* g, int64_t n, float s) {
#pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) g[i] *= s;
}

}  // namespace loom
