// The LoRA linear of ops/lora_linear.h for a few rows of x — the projections of a decode step, where
// x has one row per sequence (T ≤ kLoraGemvMaxRows) and the step is bound by reading the weights and
// by the number of kernels it launches — as GEMVs, for up to kLoraGemvMaxProjections projections that
// share x (q, k, v; gate, up) in two launches:
//   u_p[t][j] = bf16( Σ_k x[t][k] · A_p[j][k] )                                     (adapters only)
//   y_p[t][n] = bf16( Σ_k x[t][k] · w_p[n][k] + b_p[n] + s_p · Σ_j u_p[t][j] · B_p[n][j] )
// fp32 products and one fp32 sum per output, x (T, K) bf16, y_p (T, N_p) bf16, u_p (T, R_p) bf16 (the
// backward's u, as lora_linear_forward writes it). w_p is a bf16 weight W_p, or an NF4 weight read
// straight from its codes:
//   w[n][k] = kNf4Table[code(n·K + k)] · A[(n·K + k) / blocksize]   (ops/nf4.h; fp32, not rounded)
// the NF4 values themselves, as the fp32 reference's nf4 mode multiplies by (models/weights.h
// apply_nf4_roundtrip). Dequantizing to a bf16 scratch and calling a GEMM (the path for longer T)
// reads 0.56 bytes per weight, writes 2 and reads them again; this reads the 0.56, and the scale is
// applied once per chunk of 8 or 32 weights of one block: rounding each weight to bf16 as the GEMM
// path does would cost ~3 instructions a weight, and at the copy bandwidth (~6e12 weights/s from
// 0.5-byte codes on an H100) ~4.5 instructions per weight need about the GPU's whole issue rate
// (132 SMs × 4 schedulers × 32 lanes × 1.75 GHz ≈ 3e13/s); this leaves ~5 (a nibble's extraction,
// ~2 on Hopper, its table load, an FMA, x's conversion), at the edge of that budget: the table load
// conflict-free is worth it (tools/perf_notes.md).
// What differs from lora_linear_forward (the GEMM path): one rounding of y instead of three (x·Wᵀ,
// + b, + s·u·Bᵀ each rounded to bf16), and NF4 weights unrounded.
// NF4 on the tensor cores (lora_gemv_tensor_cores: K a multiple of 64, blocksizes powers of two from
// 64): each code value is rounded to bf16 and a group of 64 weights of one block is summed before its
// scale multiplies it,
//   y[t][n] = bf16( Σ_groups A_group · Σ_{k in group} x[t][k] · bf16(kNf4Table[code(n·K + k)]) + ... ),
// i.e. the weight bf16(table[code])·A: one rounding of each weight's code value (relative 2^-9), where
// the GEMM path rounds table[code]·A (the same size of error, at another place). At 0.5 bytes a weight
// the per-weight path above needs most of the GPU's issue rate (~5 instructions a weight); this one
// ~1.5 (a byte's two bf16 values from one shared-memory lookup; the products and sums in mma.sync).
//
// CUDA (ops/lora_gemv.cu): u by 1-8 warps a row of A_p (as many as leave each 16 chunks of 8 a lane,
// all loaded before the first multiply); y by one warp per output row of w_p over the projections'
// rows end to end; a lane takes 8 bf16 weights (16 bytes) or 32 NF4 weights (16 bytes of codes; 8
// weights and 4 bytes when K or a blocksize is not a multiple of 32) at a time and loads the next
// chunks (kPrefetch) before multiplying the current one; each NF4 code is looked up in a 16-entry shared table (16
// banks: a warp's lookups never conflict); lane j adds the adapter term of rank j and lane 0 the bias before the warp
// sums its lanes. x, u and B are read through the read-only cache (a few KB, shared by every warp).
#pragma once
#include <cstdint>

#include "ops/cuda_common.h"
#include "ops/nf4.h"

namespace loom {

// Rows of x one call takes; above it the dequantize + GEMM path reads the weights once for many rows.
constexpr int kLoraGemvMaxRows = 8;
// Projections one call takes (q, k and v share their input).
constexpr int kLoraGemvMaxProjections = 3;

// One projection: its weight (W, or nf4 when W is null), bias, adapter and outputs.
struct GemvProjection {
  const bf16* W = nullptr;     // (N, K) bf16; null: the weight is nf4
  Nf4Device nf4;               // (N, K) NF4, when W is null
  const bf16* bias = nullptr;  // (N) or null
  const bf16* A = nullptr;     // (R, K) adapter, or null (no adapter, or adapters off)
  const bf16* B = nullptr;     // (N, R)
  int R = 0;
  float scale = 0.f;
  bf16* y = nullptr;  // (T, N) written
  bf16* u = nullptr;  // (T, R) written when A is set
  int N = 0;
};

// Whether lora_gemv can multiply these NF4 projections on the tensor cores (see above): NF4 weights, K
// a multiple of 64, every blocksize (and nested blocksize) a power of two, the blocksize at least 64,
// and the scales of all nested (double-quantized) or none.
bool lora_gemv_tensor_cores(const GemvProjection* p, int count, int K);
// Whether it does, where it can: for T rows of x against `weights` = K · Σ N of the call, the kernel
// measured (or, between measured row counts, interpolated) faster. On an H100 (2026-12-07,
// build/gemv_bench, tools/perf_notes.md) the tensor cores were 1.0x-1.28x the CUDA-core kernel on every
// one-row call of 2^24 weights or more (llama-3.1-8b nf4) and 0.66x-0.84x on every one-row call of at
// most 6.3M (qwen3-0.6b nf4: the pair table's fill and the tiles' K split cost more than they save); at
// 8 rows 3.3x a llama-3.1-8b token and 1.4x a qwen3-0.6b one. Both kernels' times grow about linearly
// in the rows, which puts qwen3-0.6b's crossing at ~3.3 rows: from 4 rows every call takes them.
bool lora_gemv_tensor_cores_faster(int64_t T, int64_t weights);

// The count projections p[0..count) of x (T, K): y and u written as above. Every weight of one call is
// bf16 or every one NF4; K and NF4 blocksizes multiples of 8; x, W, A, B 16-byte aligned.
void lora_gemv(const GemvProjection* p, int count, const bf16* x, int64_t T, int K, cudaStream_t stream);

// Reference for one projection, the weight given as its fp32 values w (N, K) (a bf16 W's values, or
// nf4_dequantize_ref's): u (T, R) = bf16-rounded fp32 values of x·Aᵀ summed in double, y (T, N) fp32
// = x·wᵀ + b + s·u·Bᵀ summed in double. bias, A (and u, B) may be null.
void lora_gemv_ref(float* y, float* u, const float* x, const float* w, const float* bias, const float* A,
                   const float* B, int R, float scale, int64_t T, int N, int K);

// The fp32 values lora_gemv multiplies for the NF4 weight q whose quant_map holds `table` (16 values;
// kNf4Table for bitsandbytes' NF4), the w of lora_gemv_ref: table[code]·A (with kNf4Table what
// nf4_dequantize_ref gives), or on the tensor cores bf16(table[code])·A.
void lora_gemv_nf4_values_ref(float* w, const Nf4Host& q, const float* table, bool tensor_cores);

}  // namespace loom
