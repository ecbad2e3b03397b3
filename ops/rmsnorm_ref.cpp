// RMSNorm, fp32 CPU reference (math in rmsnorm.h), cast for cast as HF LlamaRMSNorm in fp32:
//   var = mean(x^2) (fp32 result; the sum is taken in double, closer to torch's pairwise sum
//   than a running float sum), rstd = 1 / sqrtf(var + eps), y = (x * rstd) * w.
// Backward rebuilds xhat = x * rstd from the input instead of storing it:
//   dx = rstd * (dxhat - xhat * mean(dxhat * xhat)),  dxhat = dy * w.
#include <cmath>

#include "ops/rmsnorm.h"
#include "ops/parallel.h"

namespace loom {

void rmsnorm_forward_ref(float* out, float* rstd, const float* inp, const float* w, int64_t N, int C, float eps) {
#pragma omp parallel for if (worth_threads(N * C))
  for (int64_t n = 0; n < N; ++n) {
    const float* x = inp + n * C;
    float* y = out + n * C;
    double sum_sq = 0;
    for (int c = 0; c < C; ++c) sum_sq += double(x[c] * x[c]);
    const float var = static_cast<float>(sum_sq / C);
    const float r = 1.0f / std::sqrt(var + eps);
    for (int c = 0; c < C; ++c) y[c] = w[c] * (x[c] * r);
    rstd[n] = r;
  }
}

void rmsnorm_backward_ref(float* dinp, const float* dout, const float* inp, const float* w, const float* rstd,
                          int64_t N, int C) {
#pragma omp parallel for if (worth_threads(N * C))
  for (int64_t n = 0; n < N; ++n) {
    const float* x = inp + n * C;
    const float* dy = dout + n * C;
    float* dx = dinp + n * C;
    const float r = rstd[n];
    double dot = 0;  // sum(dxhat * xhat)
    for (int c = 0; c < C; ++c) dot += double(dy[c] * w[c]) * double(x[c] * r);
    const float mean_dot = static_cast<float>(dot / C);
    for (int c = 0; c < C; ++c) dx[c] = r * (dy[c] * w[c] - (x[c] * r) * mean_dot);
  }
}

}  // namespace loom
