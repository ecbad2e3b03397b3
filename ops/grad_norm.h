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

// CUDA path (ops/grad_norm.cu): no host sync, deterministic (fixed partial sums, no float atomics).
#include "ops/cuda_common.h"

namespace loom {
// Floats of scratch grad_norm_clip needs for its per-block partial sums.
constexpr int kGradNormPartials = 1024;
// g (n) read, one contiguous buffer of every gradient. norm (one device float) = sqrt(sum g^2) (=);
// coef (one device float) = clip_coefficient(norm, max_norm) (=), 1 when max_norm <= 0.
// partials: kGradNormPartials floats on the device.
void grad_norm_clip(float* norm, float* coef, float* partials, const float* g, int64_t n, float max_norm,
                    cudaStream_t stream);
// g (n) *= *s, s one float on the device (the clip coefficient, when AdamW does not fold it in).
void scale_by(float* g, const float* s, int64_t n, cudaStream_t stream);
}  // namespace loom
