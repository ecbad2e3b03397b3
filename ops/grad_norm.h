// Global gradient-norm clipping as torch.nn.utils.clip_grad_norm_ (norm_type 2):
//   norm = sqrt(sum over all grads of g^2) ; coef = min(1, max_norm / (norm + 1e-6)) ; g *= coef
#pragma once
#include <cstdint>

namespace loom {
// Sum of squares of g (n), accumulated in double.
double sum_squares_ref(const float* g, int64_t n);
// The factor torch multiplies every gradient by (1 when max_norm <= 0: clipping off).
float clip_coefficient(double norm, float max_norm);
void scale_ref(float* g, int64_t n, float s);
}  // namespace loom
