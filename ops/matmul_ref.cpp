// fp32 GEMM for the reference path (matmul.h): C (M, N) = alpha * op(A) op(B) + beta * C.
//
// Rows of C are independent, so OpenMP splits them across threads and every thread keeps one
// contiguous row of op(A) (a column of A when trans_a: gathered once, then read K times).
//   op(B) = B (K, N):    row_c += a_k * B[k, :]      (i-k-j: the inner loop streams rows of B)
//   op(B) = Bᵀ, B (N, K): c_j = a · B[j, :]           (dot products over contiguous rows)
// Dot products are split over independent lanes (omp simd reduction) so -O2 vectorises them.
// beta == 0 never reads C (BLAS convention: C may hold garbage or NaN).
#include <cstring>
#include <vector>

#include "ops/error.h"
#include "ops/matmul.h"
#include "ops/parallel.h"

namespace loom {
namespace {

struct GemmArgs {
  const float* A;  // (M, K), or (K, M) when trans_a
  const float* B;  // (K, N), or (N, K) when trans_b
  int64_t M, N, K;
  bool trans_a, trans_b;
};

// Row i of op(A): a view of A's row, or A's column i copied into scratch (K).
const float* row_of_op_a(const GemmArgs& g, int64_t i, float* scratch) {
  if (!g.trans_a) return g.A + i * g.K;
  for (int64_t k = 0; k < g.K; ++k) scratch[k] = g.A[k * g.M + i];
  return scratch;
}

float dot(const float* a, const float* b, int64_t K) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < K; ++k) sum += a[k] * b[k];
  return sum;
}

// acc (N) = a (K) · op(B).
void row_times_op_b(float* acc, const float* a, const GemmArgs& g) {
  if (g.trans_b) {
    for (int64_t j = 0; j < g.N; ++j) acc[j] = dot(a, g.B + j * g.K, g.K);
    return;
  }
  std::memset(acc, 0, sizeof(float) * g.N);
  for (int64_t k = 0; k < g.K; ++k) {
    const float a_k = a[k];
    const float* b_row = g.B + k * g.N;
#pragma omp simd
    for (int64_t j = 0; j < g.N; ++j) acc[j] += a_k * b_row[j];
  }
}

void store_row(float* c, const float* acc, int64_t N, float alpha, float beta) {
  if (beta == 0.f) {
    for (int64_t j = 0; j < N; ++j) c[j] = alpha * acc[j];
  } else {
    for (int64_t j = 0; j < N; ++j) c[j] = alpha * acc[j] + beta * c[j];
  }
}

}  // namespace

void matmul_ref(float* C, const float* A, const float* B, int64_t M, int64_t N, int64_t K, bool trans_a,
                bool trans_b, float alpha, float beta) {
  LOOM_CHECK(M >= 0 && N >= 0 && K >= 0, "matmul_ref: sizes must be >= 0 (found M ", M, ", N ", N, ", K ", K, ")");
  const GemmArgs g{A, B, M, N, K, trans_a, trans_b};
#pragma omp parallel if (worth_threads(M * N * K))
  {
    std::vector<float> a_scratch(trans_a ? K : 0), acc(N);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < M; ++i) {
      const float* a = row_of_op_a(g, i, a_scratch.data());
      row_times_op_b(acc.data(), a, g);
      store_row(C + i * N, acc.data(), N, alpha, beta);
    }
  }
}

}  // namespace loom
