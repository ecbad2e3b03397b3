// y = x · Wᵀ for a few rows of x, with W read straight from its NF4 codes (ops/nf4.h layout): the
// base projection of a decode step, where x has one row per sequence (T ≤ kNf4GemvMaxRows) and the
// step is bound by reading W. Dequantizing W to a bf16 scratch and calling a GEMM (the path for
// longer T) reads 0.56 bytes per weight, writes 2 and reads them again; this reads the 0.56.
//   w[n][k] = kNf4Table[code(n·K + k)] · A[(n·K + k) / blocksize]   (ops/nf4.h; fp32, not rounded)
//   y[t][n] = bf16( Σ_chunks A · Σ_{k in chunk} x[t][k] · table[code k] )   fp32 products and sums
// with x (T, K) bf16, y (T, N) bf16, a chunk 8 or 32 consecutive weights of one quantization block.
// The weights are the NF4 values themselves, as the fp32 reference's nf4 mode multiplies by
// (models/weights.h apply_nf4_roundtrip); the GEMM path multiplies by them rounded to bf16 (one
// rounding more, ≤ 2^-9 relative per weight). Why not round here too: rounding a weight costs ~3
// instructions, and at the copy bandwidth (~6e12 weights/s on an H100 from 0.5-byte codes) ~4.5
// instructions per weight would need the whole issue rate of the GPU (132 SMs × 4 schedulers × 32
// lanes × 1.75 GHz ≈ 3e13/s); one scale per chunk leaves ~1.5 per weight (a table load per two
// weights, an FMA each).
//
// CUDA (ops/nf4_gemv.cu): one warp per output row n; each lane takes 32 consecutive weights (16 bytes
// of codes; 8 and 4 bytes when K or the blocksize is not a multiple of 32) at a time, loads the next
// chunk's codes and scale before multiplying the current one, looks each byte's two code values up
// in a 256-entry shared table, and the warp sums its lanes by shuffles. x is read through the
// read-only cache (a few KB, shared by every warp).
#pragma once
#include <cstdint>
#include <vector>

#include "ops/nf4.h"

namespace loom {

// Rows of x one call takes; above it the dequantize + GEMM path reads W once for many rows.
constexpr int kNf4GemvMaxRows = 8;

// Reference: y (T, N) fp32 from x (T, K) fp32 and the host weight q (N, K) dequantized in fp32
// (nf4_dequantize_ref), sums in double.
void nf4_gemv_ref(float* y, const float* x, const Nf4Host& q, int64_t T);

// y (T, N) bf16 written; x (T, K) bf16, 16-byte aligned; w the (N, K) weight; 1 ≤ T ≤ kNf4GemvMaxRows,
// K and w.blocksize multiples of 8.
void nf4_gemv(bf16* y, const bf16* x, const Nf4Device& w, int64_t T, int N, int K, cudaStream_t stream);

}  // namespace loom
