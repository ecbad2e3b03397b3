// Linear layer with a LoRA adapter (PEFT):  y = x·Wᵀ + b + s·(xl·Aᵀ)·Bᵀ,  s = alpha/r (rsLoRA alpha/√r)
//   x (N, in), W (out, in) frozen, b (out) frozen or absent, A (R, in), B (out, R);
//   xl = dropout(x) (xl == x when dropout is 0). u = xl·Aᵀ (N, R) is saved for backward.
// Backward:
//   du = s·dy·B (N, R) ; dB += s·dyᵀ·u (out, R) ; dA += duᵀ·xl (R, in)
//   dx  = dy·W          (base path)
//   dxl = du·A          (LoRA path; the model routes it through dropout's backward, or adds it to dx)
#pragma once
#include <cstdint>

namespace loom {

struct LoraRef {
  const float* A = nullptr;  // (R, in), nullptr = no adapter on this linear
  const float* B = nullptr;  // (out, R)
  int R = 0;
  float scale = 0.f;
};

// y (N, out) written; u (N, R) written when lora.A is set.
void lora_linear_forward_ref(float* y, float* u, const float* x, const float* xl, const float* W, const float* bias,
                             const LoraRef& lora, int64_t N, int in, int out);
// dx (N, in) written (=). dxl (N, in): if non-null written (=) with du·A, else du·A is added to dx.
// dA (R, in), dB (out, R) accumulated (+=). du_scratch (N, R) is caller-provided workspace.
void lora_linear_backward_ref(float* dx, float* dxl, float* dA, float* dB, float* du_scratch, const float* dy,
                              const float* xl, const float* u, const float* W, const LoraRef& lora, int64_t N, int in,
                              int out);

}  // namespace loom
