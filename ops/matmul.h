// Plain fp32 GEMM for the reference path (row-major, OpenMP over rows of C):
//   C (M, N) = alpha * op(A) * op(B) + beta * C,  op(A) (M, K), op(B) (K, N).
// trans_a: A is stored (K, M); trans_b: B is stored (N, K) — the torch Linear layout x·Wᵀ.
#pragma once
#include <cstdint>

namespace loom {
void matmul_ref(float* C, const float* A, const float* B, int64_t M, int64_t N, int64_t K, bool trans_a,
                bool trans_b, float alpha = 1.f, float beta = 0.f);
}  // namespace loom
