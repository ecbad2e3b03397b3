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
// The same over the rows of one [gate | up] buffer, as a mixture-of-experts layer's single gate/up
// product writes it: gate_up (rows, 2·width), h and dh (rows, width); width a multiple of 8, every
// buffer 16-byte aligned. The backward may write dgate_up over gate_up.
void swiglu_forward_fused(bf16* h, const bf16* gate_up, int64_t rows, int width, cudaStream_t stream);
void swiglu_backward_fused(bf16* dgate_up, const bf16* dh, const bf16* gate_up, int64_t rows, int width,
                           cudaStream_t stream);
}  // namespace loom
