// SwiGLU, fp32 CPU reference (math in swiglu.h). silu(g) = g / (1 + exp(-g)), the form torch's
// CPU silu kernel evaluates, so h matches HF's act_fn(gate) * up in fp32.
#include <cmath>

#include "ops/swiglu.h"
#include "ops/parallel.h"

namespace loom {
namespace {
inline float sigmoid(float g) { return 1.0f / (1.0f + std::exp(-g)); }
inline float silu(float g) { return g / (1.0f + std::exp(-g)); }
}  // namespace

void swiglu_forward_ref(float* h, const float* gate, const float* up, int64_t n) {
#pragma omp parallel for if (worth_threads(n))
  for (int64_t i = 0; i < n; ++i) h[i] = silu(gate[i]) * up[i];
}

void swiglu_backward_ref(float* dgate, float* dup, const float* dh, const float* gate, const float* up, int64_t n) {
#pragma omp parallel for if (worth_threads(n))
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i], s = sigmoid(g);
    dgate[i] = dh[i] * up[i] * s * (1.0f + g * (1.0f - s));
    dup[i] = dh[i] * silu(g);
  }
}

}  // namespace loom
