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
