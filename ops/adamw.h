// AdamW exactly as torch.optim.AdamW (foreach=False), on fp32 master weights:
//   p -= lr * wd * p
//   m = b1*m + (1-b1)*g ; v = b2*v + (1-b2)*g^2
//   bc1 = 1 - b1^step ; bc2 = 1 - b2^step
//   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
#pragma once
#include <cstdint>

namespace loom {

struct AdamWParams {
  float lr = 2e-4f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.f;
  int step = 1;  // 1-based, already incremented for this update
};

// p, m, v (n) updated in place; g (n) read.
void adamw_ref(float* p, float* m, float* v, const float* g, int64_t n, const AdamWParams& a);

}  // namespace loom
