// Dropout, fp32 CPU reference (math in dropout.h).
#include "ops/dropout.h"

namespace loom {

void dropout_forward_ref(float* y, const float* x, int64_t n, uint64_t seed, uint64_t stream, float p) {
#pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * dropout_factor(seed, stream, uint64_t(i), p);
}

void dropout_backward_ref(float* dx, const float* dy, int64_t n, uint64_t seed, uint64_t stream, float p) {
#pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) dx[i] += dy[i] * dropout_factor(seed, stream, uint64_t(i), p);
}

}  // namespace loom
