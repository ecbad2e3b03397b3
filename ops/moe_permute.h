// The token permutation of a mixture-of-experts layer: the T·K (token, pick) slots sorted by expert,
// so that each expert's rows are contiguous for the grouped GEMMs (ops/grouped_gemm.h).
//   slot s = t·K + k picks expert experts[s] (moe_route's output, each expert at most once per token)
//   counts[e]  = #{s : experts[s] = e},  offsets[e] = Σ_{e' < e} counts[e'],  offsets[E] = T·K
//   row_of[s]  = offsets[experts[s]] + #{s' < s : experts[s'] = experts[s]}   (stable: by t within e)
//   slot_of[row_of[s]] = s                                                      (the inverse)
// Every slot has a row, so the sorted buffers always hold exactly T·K rows; only the split between
// experts varies, and it stays on the device.
//
// Data movement, x (T, C), y (T, C), sorted buffers (T·K, C), bf16; w (T, K) the routing weights:
//   gather            xs[r]   = x[slot_of[r] / K]                                  (a copy)
//   combine           y[t]    = bf16( Σ_k w[t,k] · xs_out[row_of[t·K + k]] )       fp32 fma in k order
//   combine backward  dys[r]  = bf16( w[s] · dy[s / K] ),  s = slot_of[r]          (one rounding)
//                     dw[s]   = Σ_c dy[s / K][c] · ys[row_of[s]][c]                 fp32
//   gather backward   dx[t]   = bf16( Σ_k dxs[row_of[t·K + k]] )                   fp32 in k order
// The references below round and sum exactly as the kernels do (std::fma for the fused multiply-add),
// so the GPU equals them bit for bit, except dw, whose sum over c runs in the kernel's lane order.
//
// CUDA (ops/moe_permute.cu), no host sync, no float atomics: the slots are cut into chunks of
// kMoePermuteChunk; (1) each chunk counts its experts (shared-memory integer histogram), (2) one block
// scans the chunk counts per expert in chunk order (each chunk's first row per expert) and the counts
// over the experts (offsets), (3) each chunk ranks its slots within their expert (count of earlier
// slots of the chunk with the same expert) and writes row_of and slot_of. Data kernels: one warp per
// row, 16-byte vectors (C a multiple of 8).
#pragma once
#include <cstddef>
#include <cstdint>

#include "ops/cuda_common.h"
#include "ops/moe_route.h"

namespace loom {

constexpr int kMoePermuteChunk = 512;  // slots per block of the plan's kernels

// ---- references (host; the layouts above, x/y rows as fp32 holding bf16 values)
// counts (E), offsets (E + 1), row_of and slot_of (T·K) written; every expert index in [0, E) (checked).
void moe_permute_plan_ref(int32_t* counts, int32_t* offsets, int32_t* row_of, int32_t* slot_of,
                          const int32_t* experts, int64_t T, int E, int K);
void moe_gather_ref(float* xs, const float* x, const int32_t* slot_of, int64_t T, int K, int C);
// y values rounded to bf16 as the kernel's output is.
void moe_combine_ref(float* y, const float* ys, const float* weights, const int32_t* row_of, int64_t T, int K, int C);
void moe_combine_backward_ref(float* dys, float* dweights, const float* dy, const float* ys, const float* weights,
                              const int32_t* slot_of, int64_t T, int K, int C);
void moe_gather_backward_ref(float* dx, const float* dxs, const int32_t* row_of, int64_t T, int K, int C);

// ---- device
// Bytes of the plan's workspace for T·K slots and E experts (chunk counts, then chunk bases).
size_t moe_permute_workspace_bytes(int64_t T, int E, int K);
// counts (E), offsets (E + 1), row_of and slot_of (T·K) written on the device from experts (T·K);
// 1 <= E <= kMoeMaxExperts (ops/moe_route.h), every expert index in [0, E) (the router's output).
void moe_permute_plan(int32_t* counts, int32_t* offsets, int32_t* row_of, int32_t* slot_of, void* workspace,
                      const int32_t* experts, int64_t T, int E, int K, cudaStream_t stream);
// xs (T·K, C) written. Every pointer 16-byte aligned, C a multiple of 8 (checked), here and below.
void moe_gather(bf16* xs, const bf16* x, const int32_t* slot_of, int64_t T, int K, int C, cudaStream_t stream);
// y (T, C) written from the experts' outputs ys (T·K, C) in sorted order.
void moe_combine(bf16* y, const bf16* ys, const float* weights, const int32_t* row_of, int64_t T, int K, int C,
                 cudaStream_t stream);
// dys (T·K, C) and dweights (T, K) written.
void moe_combine_backward(bf16* dys, float* dweights, const bf16* dy, const bf16* ys, const float* weights,
                          const int32_t* slot_of, int64_t T, int K, int C, cudaStream_t stream);
// dx (T, C) written.
void moe_gather_backward(bf16* dx, const bf16* dxs, const int32_t* row_of, int64_t T, int K, int C,
                         cudaStream_t stream);

}  // namespace loom
