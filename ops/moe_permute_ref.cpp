// Mixture-of-experts token permutation, references (math in ops/moe_permute.h): the same roundings
// and summation orders as the kernels, std::fma where they fuse.
#include <cmath>
#include <vector>

#include "ops/error.h"
#include "ops/moe_permute.h"

namespace loom {
namespace {

float to_bf16(float x) { return bf16_bits_to_float(float_to_bf16_bits(x)); }

}  // namespace

void moe_permute_plan_ref(int32_t* counts, int32_t* offsets, int32_t* row_of, int32_t* slot_of,
                          const int32_t* experts, int64_t T, int E, int K) {
  const int64_t n = T * K;
  for (int e = 0; e < E; ++e) counts[e] = 0;
  for (int64_t s = 0; s < n; ++s) {
    LOOM_CHECK(experts[s] >= 0 && experts[s] < E, "moe_permute_plan_ref: slot ", s, " (token ", s / K, ", pick ",
               s % K, ") names expert ", experts[s], " of ", E);
    ++counts[experts[s]];
  }
  offsets[0] = 0;
  for (int e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + counts[e];
  std::vector<int32_t> next(offsets, offsets + E);  // the next free row of each expert
  for (int64_t s = 0; s < n; ++s) {
    const int32_t row = next[size_t(experts[s])]++;
    row_of[s] = row;
    slot_of[row] = int32_t(s);
  }
}

void moe_gather_ref(float* xs, const float* x, const int32_t* slot_of, int64_t T, int K, int C) {
  for (int64_t r = 0; r < T * K; ++r) {
    const int64_t t = slot_of[r] / K;
    for (int c = 0; c < C; ++c) xs[r * C + c] = x[t * C + c];
  }
}

void moe_combine_ref(float* y, const float* ys, const float* weights, const int32_t* row_of, int64_t T, int K, int C) {
  for (int64_t t = 0; t < T; ++t)
    for (int c = 0; c < C; ++c) {
      float acc = 0;
      for (int k = 0; k < K; ++k) acc = std::fma(weights[t * K + k], ys[int64_t(row_of[t * K + k]) * C + c], acc);
      y[t * C + c] = to_bf16(acc);
    }
}

void moe_combine_backward_ref(float* dys, float* dweights, const float* dy, const float* ys, const float* weights,
                              const int32_t* slot_of, int64_t T, int K, int C) {
  for (int64_t r = 0; r < T * K; ++r) {
    const int64_t s = slot_of[r], t = s / K;
    double dot = 0;
    for (int c = 0; c < C; ++c) {
      dys[r * C + c] = to_bf16(weights[s] * dy[t * C + c]);
      dot += double(dy[t * C + c]) * double(ys[r * C + c]);
    }
    dweights[s] = float(dot);
  }
}

void moe_gather_backward_ref(float* dx, const float* dxs, const int32_t* row_of, int64_t T, int K, int C) {
  for (int64_t t = 0; t < T; ++t)
    for (int c = 0; c < C; ++c) {
      float acc = 0;
      for (int k = 0; k < K; ++k) acc += dxs[int64_t(row_of[t * K + k]) * C + c];
      dx[t * C + c] = to_bf16(acc);
    }
}

}  // namespace loom
