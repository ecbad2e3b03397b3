// Reference of ops/nf4_gemv.h: dequantize in fp32 (the NF4 values), multiply and add in double.
#include <vector>

#include "ops/error.h"
#include "ops/nf4_gemv.h"

namespace loom {

void nf4_gemv_ref(float* y, const float* x, const Nf4Host& q, int64_t T) {
  LOOM_CHECK(T >= 0, "nf4_gemv_ref: T = ", T);
  const int64_t N = q.rows, K = q.cols;
  std::vector<float> w(size_t(q.numel()));
  nf4_dequantize_ref(w.data(), q);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double sum = 0;
      for (int64_t k = 0; k < K; ++k) sum += double(x[t * K + k]) * double(w[size_t(n * K + k)]);
      y[t * N + n] = float(sum);
    }
}

}  // namespace loom
