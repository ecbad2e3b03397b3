// Reference of ops/lora_gemv.h: fp32 values in, sums in double, u rounded to bf16 as the GPU stores it.
#include <vector>

#include "ops/cuda_common.h"
#include "ops/error.h"
#include "ops/lora_gemv.h"

namespace loom {

void lora_gemv_ref(float* y, float* u, const float* x, const float* w, const float* bias, const float* A,
                   const float* B, int R, float scale, int64_t T, int N, int K) {
  LOOM_CHECK(T >= 0 && N >= 1 && K >= 1 && (!A || (u && B && R >= 1)), "lora_gemv_ref: T ", T, ", N ", N, ", K ", K,
             ", R ", R);
  for (int64_t t = 0; t < T; ++t) {
    const float* xt = x + t * K;
    if (A)
      for (int j = 0; j < R; ++j) {
        double sum = 0;
        for (int k = 0; k < K; ++k) sum += double(xt[k]) * double(A[int64_t(j) * K + k]);
        u[t * R + j] = bf16_bits_to_float(float_to_bf16_bits(float(sum)));
      }
    for (int n = 0; n < N; ++n) {
      double sum = bias ? double(bias[n]) : 0.0;
      for (int k = 0; k < K; ++k) sum += double(xt[k]) * double(w[int64_t(n) * K + k]);
      if (A)
        for (int j = 0; j < R; ++j) sum += double(scale) * double(u[t * R + j]) * double(B[int64_t(n) * R + j]);
      y[t * N + n] = float(sum);
    }
  }
}

void lora_gemv_nf4_values_ref(float* w, const Nf4Host& q, const float* table, bool tensor_cores) {
  const std::vector<float> scales = nf4_block_scales(q);
  float values[16];
  for (int c = 0; c < 16; ++c) values[c] = tensor_cores ? bf16_bits_to_float(float_to_bf16_bits(table[c])) : table[c];
  const int64_t n = q.numel();
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t byte = q.codes[size_t(i / 2)];
    w[i] = values[i % 2 == 0 ? byte >> 4 : byte & 0xF] * scales[size_t(i / q.blocksize)];
  }
}

}  // namespace loom
