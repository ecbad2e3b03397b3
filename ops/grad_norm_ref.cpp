// Global gradient-norm clipping, fp32 CPU reference (grad_norm.h), as
// torch.nn.utils.clip_grad_norm_: torch holds the total norm as an fp32 tensor, so
//   coef = (1 / (f32(norm) + f32(1e-6))) * max_norm     (`max_norm / t` is reciprocal(t) * max_norm)
// clamped to at most 1.
#include <algorithm>
#include <vector>

#include "ops/grad_norm.h"
#include "ops/parallel.h"

namespace loom {

// In fixed blocks, each summed in order, then the block sums in order: the same bits on any number
// of threads. (An OpenMP reduction adds the threads' partial sums in the order they finish: on 16
// cores the grad norm of one run moved in its last bit from run to run.)
double sum_squares_ref(const float* g, int64_t n) {
  constexpr int64_t kBlock = int64_t(1) << 14;
  std::vector<double> block_sum(size_t((n + kBlock - 1) / kBlock), 0.0);
#pragma omp parallel for schedule(static) if (worth_threads(n))
  for (int64_t b = 0; b < int64_t(block_sum.size()); ++b) {
    double s = 0;
    for (int64_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i) s += double(g[i]) * double(g[i]);
    block_sum[size_t(b)] = s;
  }
  double sum = 0;
  for (double s : block_sum) sum += s;
  return sum;
}

float clip_coefficient(double norm, float max_norm) {
  if (max_norm <= 0.f) return 1.f;
  const float coef = (1.0f / (static_cast<float>(norm) + 1e-6f)) * max_norm;
  return std::min(coef, 1.0f);
}

void scale_ref(float* g, int64_t n, float s) {
#pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) g[i] *= s;
}

}  // namespace loom
