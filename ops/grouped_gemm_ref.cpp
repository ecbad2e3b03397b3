// Grouped GEMMs, references (math in ops/grouped_gemm.h): each group a plain triple loop in double.
#include "ops/error.h"
#include "ops/grouped_gemm.h"

namespace loom {
namespace {

void check_offsets(const char* what, const int32_t* offsets, int E) {
  LOOM_CHECK(offsets[0] == 0, what, ": offsets[0] is ", offsets[0], ", not 0");
  for (int e = 0; e < E; ++e)
    LOOM_CHECK(offsets[e + 1] >= offsets[e], what, ": group ", e, " ends at ", offsets[e + 1], " before it starts at ",
               offsets[e]);
}

// Y_e = alpha · X_e · op(W_e) (+ Y_e); W_e's element (n, k) at w[n·w_n + k·w_k].
void grouped_rows(float* Y, const float* X, const float* W, int64_t w_stride, int64_t w_n, int64_t w_k,
                  const int32_t* offsets, int E, int N, int K, float alpha, bool accumulate) {
  for (int e = 0; e < E; ++e) {
    const float* w = W + e * w_stride;
    for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r)
      for (int n = 0; n < N; ++n) {
        double sum = 0;
        for (int k = 0; k < K; ++k) sum += double(X[r * K + k]) * double(w[n * w_n + k * w_k]);
        Y[r * N + n] = float(alpha * sum + (accumulate ? double(Y[r * N + n]) : 0.0));
      }
  }
}

}  // namespace

void grouped_gemm_nt_ref(float* Y, const float* X, const float* W, int64_t w_stride, const int32_t* offsets, int E,
                         int N, int K, float alpha, bool accumulate) {
  check_offsets("grouped_gemm_nt_ref", offsets, E);
  grouped_rows(Y, X, W, w_stride, K, 1, offsets, E, N, K, alpha, accumulate);
}

void grouped_gemm_nn_ref(float* Y, const float* X, const float* W, int64_t w_stride, const int32_t* offsets, int E,
                         int N, int K, float alpha, bool accumulate) {
  check_offsets("grouped_gemm_nn_ref", offsets, E);
  grouped_rows(Y, X, W, w_stride, 1, N, offsets, E, N, K, alpha, accumulate);
}

void grouped_gemm_tn_ref(float* D, int64_t d_stride, const float* Y, const float* X, const int32_t* offsets, int E,
                         int N, int K, float alpha) {
  check_offsets("grouped_gemm_tn_ref", offsets, E);
  for (int e = 0; e < E; ++e) {
    float* d = D + e * d_stride;
    for (int n = 0; n < N; ++n)
      for (int k = 0; k < K; ++k) {
        double sum = 0;
        for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r) sum += double(Y[r * N + n]) * double(X[r * K + k]);
        d[n * K + k] = float(double(d[n * K + k]) + alpha * sum);
      }
  }
}

}  // namespace loom
