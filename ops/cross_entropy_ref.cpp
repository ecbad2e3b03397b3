// LM head + cross-entropy, fp32 CPU reference (math in cross_entropy.h), chunked over tokens:
// only (chunk, V) logits exist at a time, and they are overwritten in place by dz.
// Per row, with m = max z (subtracted so exp never overflows):
//   lse = m + log(sum exp(z - m))     (sum in double, lse rounded to fp32 as torch's log_softmax)
//   loss = lse - z[y] ;  dz = (exp(z - lse) - onehot(y)) * w       (w = token_weight[t])
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/error.h"
#include "ops/cross_entropy.h"
#include "ops/matmul.h"
#include "ops/parallel.h"

namespace loom {
namespace {

float row_logsumexp(const float* z, int V) {
  const float m = *std::max_element(z, z + V);
  double sum = 0;
  for (int v = 0; v < V; ++v) sum += std::exp(z[v] - m);
  return m + static_cast<float>(std::log(sum));
}

// Turns the logits row into dz (or zeros for an ignored token); returns loss_t (0 when ignored).
float row_loss_and_dlogits(float* z, int V, int32_t target, float weight, bool want_grad) {
  if (target == kIgnoreIndex) {
    if (want_grad) std::fill(z, z + V, 0.f);
    return 0.f;
  }
  const float lse = row_logsumexp(z, V);
  const float loss = lse - z[target];
  if (want_grad) {
    for (int v = 0; v < V; ++v) z[v] = std::exp(z[v] - lse) * weight;
    z[target] -= weight;
  }
  return loss;
}

void check_targets(const int32_t* targets, int64_t T, int V) {
  for (int64_t t = 0; t < T; ++t)
    LOOM_CHECK(targets[t] == kIgnoreIndex || (targets[t] >= 0 && targets[t] < V),
               "cross-entropy: target of token ", t, " is ", targets[t], "; expected a token id in [0, ", V,
               ") or ", kIgnoreIndex, " (ignored); check the tokenizer's vocabulary against the model's vocab_size");
}

}  // namespace

CrossEntropyOut lm_head_cross_entropy_ref(float* dx, float* token_loss, const float* x, const float* W,
                                          const int32_t* targets, const float* token_weight, int64_t T, int C, int V,
                                          int chunk) {
  LOOM_CHECK(chunk > 0, "cross-entropy: chunk must be > 0 tokens (found ", chunk, ")");
  LOOM_CHECK(dx == nullptr || token_weight != nullptr,
             "cross-entropy: dx needs token_weight (T floats: the objective's per-token gradient weights)");
  check_targets(targets, T, V);
  const bool want_grad = dx != nullptr;
  std::vector<float> logits(static_cast<size_t>(std::min<int64_t>(chunk, T)) * V);  // (chunk, V)
  std::vector<float> row_loss(std::min<int64_t>(chunk, T));                          // (chunk)
  CrossEntropyOut result;
  for (int64_t t0 = 0; t0 < T; t0 += chunk) {
    const int64_t rows = std::min<int64_t>(chunk, T - t0);
    matmul_ref(logits.data(), x + t0 * C, W, rows, V, C, false, true);  // z = x·Wᵀ
#pragma omp parallel for if (worth_threads(rows * V))
    for (int64_t r = 0; r < rows; ++r) {
      const float weight = want_grad ? token_weight[t0 + r] : 0.f;  // token_weight may be null without dx
      row_loss[r] = row_loss_and_dlogits(logits.data() + r * V, V, targets[t0 + r], weight, want_grad);
    }
    // Summed in token order, so the total does not depend on the chunk size or the thread count.
    for (int64_t r = 0; r < rows; ++r) {
      if (token_loss != nullptr) token_loss[t0 + r] = row_loss[r];
      result.loss_sum += row_loss[r];
      result.n_targets += targets[t0 + r] != kIgnoreIndex;
    }
    if (want_grad) matmul_ref(dx + t0 * C, logits.data(), W, rows, C, V, false, false);  // dx = dz·W
  }
  return result;
}

}  // namespace loom
