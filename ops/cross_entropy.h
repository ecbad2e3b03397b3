// LM head fused with cross-entropy, chunked over tokens so that the (T, V) logits never exist
// whole. For token t with target y_t (already shifted: the id of token t+1, or -100 = ignored):
//   z = x_t·Wᵀ (V) ; lse = log sum exp z ; loss_t = lse - z[y_t]
//   dz = (softmax(z) - onehot(y_t)) * grad_scale ; dx_t = dz·W       (ignored tokens: dx_t = 0)
// grad_scale = 1 / (target tokens in the whole global batch), so summing over micro-batches and
// ranks gives the gradient of the global token mean (never a mean of means). W is frozen.
#pragma once
#include <cstdint>

namespace loom {

constexpr int32_t kIgnoreIndex = -100;

struct CrossEntropyOut {
  double loss_sum = 0;  // sum of loss_t over non-ignored tokens
  int64_t n_targets = 0;
};

// x (T, C), W (V, C), targets (T). dx (T, C) written (=) if non-null (else forward only).
// token_loss (T), if non-null, gets loss_t (0 for ignored tokens). chunk: tokens per chunk.
CrossEntropyOut lm_head_cross_entropy_ref(float* dx, float* token_loss, const float* x, const float* W,
                                          const int32_t* targets, int64_t T, int C, int V, float grad_scale,
                                          int chunk = 256);

}  // namespace loom
