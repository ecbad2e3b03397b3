// SwiGLU: h = silu(g) * u, silu(g) = g * sigmoid(g).
// Backward: dg = dh * u * sigmoid(g) * (1 + g * (1 - sigmoid(g))) ; du = dh * silu(g).
#pragma once
#include <cstdint>

namespace loom {
// h, gate, up (n) elementwise.
void swiglu_forward_ref(float* h, const float* gate, const float* up, int64_t n);
// dgate, dup (n) written (=).
void swiglu_backward_ref(float* dgate, float* dup, const float* dh, const float* gate, const float* up, int64_t n);
}  // namespace loom
