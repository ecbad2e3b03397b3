// AdamW exactly as torch.optim.AdamW (foreach=False), on fp32 master weights:
//   p -= lr * wd * p
//   m = b1*m + (1-b1)*g ; v = b2*v + (1-b2)*g^2
//   bc1 = 1 - b1^step ; bc2 = 1 - b2^step
//   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
#pragma once
#include <cstdint>

namespace loom {

struct AdamWParams {
  double lr = 2e-4, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;  // Python floats in torch
  int step = 1;  // 1-based, already incremented for this update
};

// p, m, v (n) updated in place; g (n) read.
void adamw_ref(float* p, float* m, float* v, const float* g, int64_t n, const AdamWParams& a);

}  // namespace loom

// CUDA path (ops/adamw.cu).
#include "ops/cuda_common.h"

namespace loom {
// p, m, v (n) fp32 updated in place; g (n) read. grad_coef: a float on the device that multiplies g
// first (the clip coefficient from grad_norm_clip: clipping folded into the update, no host sync),
// or nullptr. Bias corrections are computed on the host from a.step, in double as torch does.
void adamw_update(float* p, float* m, float* v, const float* g, const float* grad_coef, int64_t n,
                  const AdamWParams& a, cudaStream_t stream);
}  // namespace loom
