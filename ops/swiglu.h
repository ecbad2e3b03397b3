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

// CUDA path (ops/swiglu.cu): bf16 in and out, fp32 math, one rounding per output.
#include "ops/cuda_common.h"

namespace loom {
// h, gate, up (n) elementwise; h written.
void swiglu_forward(bf16* h, const bf16* gate, const bf16* up, int64_t n, cudaStream_t stream);
// dgate, dup (n) written (=). dgate may alias gate and dup may alias up: every element is read before
// it is written, by the same thread, so the MLP backward can overwrite its saved activations (as unsloth).
void swiglu_backward(bf16* dgate, bf16* dup, const bf16* dh, const bf16* gate, const bf16* up, int64_t n,
                     cudaStream_t stream);
}  // namespace loom
