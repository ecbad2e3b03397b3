// y = x · Wᵀ for a few rows of x, with W read straight from its NF4 codes (ops/nf4.h layout): the
// base projection of a decode step, where x has one row per sequence (T ≤ kNf4GemvMaxRows) and the
// step is bound by reading W. Dequantizing W to a bf16 scratch and calling a GEMM (the path for
// longer T) reads 0.56 bytes per weight, writes 2 and reads them again; this reads the 0.56.
//   w[n][k] = bf16( kNf4Table[code(n·K + k)] · A[(n·K + k) / blocksize] )   (ops/nf4.h, as
//             nf4_dequantize writes it, so the same weights as the GEMM path)
//   y[t][n] = bf16( Σ_k x[t][k] · w[n][k] )   fp32 products and sums, x (T, K) bf16, y (T, N) bf16
// Only the order of the fp32 sum differs from the GEMM path.
//
// CUDA (ops/nf4_gemv.cu): one warp per output row n; each lane takes 8 consecutive weights (one
// 32-bit word of codes, inside one quantization block) at a time, 256 per warp step, multiplies them
// into T fp32 accumulators, and the warp sums its lanes by shuffles. x is read from global memory
// (a few KB, cached); the table in shared memory.
#pragma once
#include <cstdint>
#include <vector>

#include "ops/nf4.h"

namespace loom {

// Rows of x one call takes; above it the dequantize + GEMM path reads W once for many rows.
constexpr int kNf4GemvMaxRows = 8;

// Reference: y (T, N) fp32 from x (T, K) fp32 and the host weight q (N, K), w rounded to bf16 as above,
// sums in double.
void nf4_gemv_ref(float* y, const float* x, const Nf4Host& q, int64_t T);

// y (T, N) bf16 written; x (T, K) bf16, 16-byte aligned; w the (N, K) weight; 1 ≤ T ≤ kNf4GemvMaxRows,
// K and w.blocksize multiples of 8.
void nf4_gemv(bf16* y, const bf16* x, const Nf4Device& w, int64_t T, int N, int K, cudaStream_t stream);

}  // namespace loom
