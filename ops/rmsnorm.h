// RMSNorm (HF LlamaRMSNorm): rstd = 1/sqrt(mean(x^2) + eps); y = (x * rstd) * w.
// Forward saves rstd (one float per row) for backward. The weight is frozen (no dweight).
// Backward: with xhat = x*rstd, dxhat = dy*w,
//   dx = rstd * (dxhat - xhat * mean(dxhat * xhat)).
// Also used for the Qwen3 q/k norms with N = T*heads rows of C = head_dim.
#pragma once
#include <cstdint>

namespace loom {
// out, inp (N, C); w (C); rstd (N) written.
void rmsnorm_forward_ref(float* out, float* rstd, const float* inp, const float* w, int64_t N, int C, float eps);
// dinp (N, C) written (=); dout, inp (N, C); rstd (N) from forward.
void rmsnorm_backward_ref(float* dinp, const float* dout, const float* inp, const float* w, const float* rstd,
                          int64_t N, int C);
}  // namespace loom

// CUDA path (ops/rmsnorm.cu): bf16 storage, fp32 math, casts as HF LlamaRMSNorm
// (normalise in fp32, round to bf16, multiply by the bf16 weight). Rows are contiguous;
// C % 8 == 0 and every pointer 16-byte aligned (one 16-byte vector = 8 bf16).
#include "ops/cuda_common.h"

namespace loom {
// Fused residual add + RMSNorm, the pre-norm of every block:
//   residual (N, C) = a + b  (written, rounded to bf16 as HF's residual add; may alias a or b)
//   out (N, C) = bf16(bf16(residual * rstd) * w) ; rstd (N) = 1/sqrt(mean(residual^2) + eps) (written)
// b == nullptr normalises a alone (first layer, Qwen3 q/k norms); residual must then be nullptr too.
void residual_rmsnorm_forward(bf16* residual, bf16* out, float* rstd, const bf16* a, const bf16* b, const bf16* w,
                              int64_t N, int C, float eps, cudaStream_t stream);
// out (N, C), rstd (N) written; inp (N, C), w (C). The Qwen3 q/k norm is N = T*heads rows of C = D.
void rmsnorm_forward(bf16* out, float* rstd, const bf16* inp, const bf16* w, int64_t N, int C, float eps,
                     cudaStream_t stream);
// dinp (N, C) = rmsnorm_backward(dout) + dresidual (written, =). dresidual (N, C) is the gradient
// arriving along the residual stream, or nullptr; dinp may alias dresidual or dout.
// inp is the forward's normalised input (the residual), rstd the forward's.
void rmsnorm_backward(bf16* dinp, const bf16* dout, const bf16* dresidual, const bf16* inp, const bf16* w,
                      const float* rstd, int64_t N, int C, cudaStream_t stream);
}  // namespace loom
