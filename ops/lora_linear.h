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

// CUDA path (ops/lora_linear.cu): bf16 storage, fp32 accumulation (cuBLASLt through ops/gemm.h).
// The same products as the reference, in this order:
//   forward   y = x·Wᵀ ; y += b ; xl = dropout(x) ; u = xl·Aᵀ ; y += s·u·Bᵀ
//   backward  dx = dy·W (+ dx) ; du = s·dy·B ; dB += s·dyᵀ·u ; dA += duᵀ·xl ; dx += mask·(du·A)
// With dropout the mask is drawn again in backward from (dropout_seed, dropout_stream), never stored.
#include "ops/gemm.h"

namespace loom {

struct LoraDevice {
  const bf16* A = nullptr;  // (R, in) bf16 copy of the adapter; nullptr: no adapter on this linear, or adapters off
  const bf16* B = nullptr;  // (out, R)
  float* dA = nullptr;      // (R, in) fp32 gradient, accumulated (+=); backward only
  float* dB = nullptr;      // (out, R)
  int R = 0;
  float scale = 0.f;
  float dropout = 0.f;  // p of the LoRA input's dropout (ops/dropout.h); 0 = off (and always 0 when scoring)
  uint64_t dropout_seed = 0, dropout_stream = 0;  // the mask: ops/dropout.h dropout_forward(seed, stream, ...)
  uint64_t dropout_first = 0;  // the mask's element of x's first: rows r0.. of a longer x start at r0·in
};

// y (T, out) = x·Wᵀ + bias + scale·(xl·Aᵀ)·Bᵀ, xl = dropout(x); u (T, R) = xl·Aᵀ written when A is set.
// x_dropped: (T, in) scratch, needed only when dropout > 0. W: bf16 (out, in) (the caller dequantizes NF4
// first). bias (out) or nullptr. Without A (lora.A == nullptr) only y = x·Wᵀ + bias is computed.
void lora_linear_forward(GemmContext& ctx, bf16* y, bf16* u, const bf16* x, const bf16* W, const bf16* bias,
                         const LoraDevice& lora, bf16* x_dropped, int64_t T, int in, int out, cudaStream_t stream);

// u (T, R) = xl·Aᵀ alone, the bits lora_linear_forward writes: what a backward needs of a linear whose
// output nothing reads (the MLP's down projection when recompute: full rebuilds a layer, whose output
// the backward never uses). Without A nothing is done.
void lora_linear_input_product(GemmContext& ctx, bf16* u, const bf16* x, const LoraDevice& lora, bf16* x_dropped,
                               int64_t T, int in, cudaStream_t stream);

// dx (T, in) = dy·W (+ dx when accumulate) + mask·(du·A); dB += scale·dyᵀ·u; dA += duᵀ·xl; du = scale·dy·B.
// x and u are the forward's input and saved u. du: (T, R) scratch; x_dropped: (T, in) scratch when
// dropout > 0 (holds xl, then du·A). Without A only dx is computed.
void lora_linear_backward(GemmContext& ctx, bf16* dx, bool accumulate, const bf16* dy, const bf16* x, const bf16* u,
                          const bf16* W, const LoraDevice& lora, bf16* du, bf16* x_dropped, int64_t T, int in, int out,
                          cudaStream_t stream);

}  // namespace loom
