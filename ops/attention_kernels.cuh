// Flash attention kernels (FlashAttention-2 algorithm) for packed documents: causal, GQA,
// optional sliding window, head dims 64 and 128, bf16 in/out, fp32 softmax and accumulators.
// The math and the masking rule are in ops/attention.h; launchers, validation and the choice of
// kernels in ops/attention.cu. This file holds what both kernel families share; the families:
//   ops/attention_short_kernels.cuh  64-token tiles, 16 rows a warp: documents of a few hundred
//                                    tokens (the sft workloads) waste least on masked pairs
//   ops/attention_long_kernels.cuh   128-token tiles, 32 rows a warp: long documents, where every
//                                    fragment read from shared memory feeding two mma pays off
// Measured on an H100 (tools/perf_notes.md): on one 16K-token document the long kernels are 1.12x
// (forward) and 1.20x (backward) the short ones; on ~240-token documents the short ones win.
//
// Tiling. The packed buffer of T tokens is cut into tiles regardless of document boundaries, so
// the grid is known on the host without reading cu_seqlens (no host sync). A tile may straddle
// documents: each query row carries its own lowest visible key
//   row_lo(i) = max(doc_start(i), i - window + 1)
// and key j is visible from query i iff row_lo(i) <= j <= i. Key (forward) or query (backward)
// steps that no row of the tile can see are never visited; steps that every row sees whole skip the
// per-element mask; within a visited step, each warp also skips the tensor-core work of the rows or
// 16 x 16 groups it owns that see none of it.
//
// Backward (both families), one block per (key tile, kv head), looping over every query step that
// can see the tile and every query head of the GQA group (the FlashAttention-2 order, so dK and
// dV stay in registers and need no atomics):
//   S^T = K Q^T ; P^T = exp2(S^T * scale*log2 e - lse*log2 e)         (recomputed, not stored)
//   dP^T = V dO^T ; dS^T = P^T * (dP^T - delta)   with delta_i = dout_i . out_i (prep kernel)
//   dV += P^T dO ; dK += dS^T Q ; dq_accum += dS K  (fp32 atomics; scaled and converted after)
//
// mma.sync m16n8k16 fragments (PTX ISA, "Matrix fragments for mma.m16n8k16"), with
// g = lane / 4 and c = lane % 4:
//   A (16x16, row-major): a0 (g, 2c..2c+1), a1 (g+8, 2c..), a2 (g, 2c+8..), a3 (g+8, 2c+8..)
//   B (16x8, k x n):      b0 (k = 2c..2c+1, n = g), b1 (k = 2c+8.., n = g)
//   C (16x8, fp32):       c0,c1 (g, 2c..2c+1), c2,c3 (g+8, 2c..2c+1)
// ldmatrix.x4 lets lanes 8q..8q+7 name the rows of 8x8 matrix q; without .trans each lane gets
// (row g, cols 2c..2c+1) of every matrix, with .trans (rows 2c..2c+1, col g).
#pragma once
#include <cstdint>

#include "ops/cuda_common.h"
#include "ops/kernel_util.cuh"

namespace loom::attn {

// Kernel arguments (as flash-attention's flash.h). Strides are in elements between consecutive
// tokens; within a token the heads are contiguous, D elements each.
struct AttnParams {  // what forward and backward share
  const bf16* q;  // (T, H, D)
  const bf16* k;  // (T, KVH, D)
  const bf16* v;  // (T, KVH, D)
  int64_t q_row_stride, k_row_stride, v_row_stride;
  const int32_t* cu_seqlens;  // (ndoc + 1), device
  int ndoc;
  int T, H, KVH;
  int window;        // 0 = no sliding window
  float scale;       // applied to q . k
  float scale_log2;  // scale * log2(e): the softmax runs on exp2
};

struct FwdParams : AttnParams {
  bf16* out;   // (T, H, D)
  float* lse;  // (T, H), natural log
  int64_t out_row_stride;
};

struct BwdParams : AttnParams {
  const bf16* out;    // (T, H, D) from the forward
  const float* lse;   // (T, H) from the forward
  const bf16* dout;   // (T, H, D)
  bf16* dq;           // (T, H, D)
  bf16* dk;           // (T, KVH, D)
  bf16* dv;           // (T, KVH, D)
  int64_t out_row_stride, dout_row_stride, dq_row_stride, dk_row_stride, dv_row_stride;
  float* dq_accum;  // (T, H, D) fp32 scratch: sum_j dS_ij k_j
  float* delta;     // (T, H) fp32 scratch: dout_i . out_i
  int* row_lo;      // (T) scratch: lowest_visible_key of each query (one search per row, not per use)
};

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ---------------------------------------------------------------------------------------------
// Device helpers

// Two floats as a bf16 pair; the first lands in the low half (the lower column of a fragment).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// exp2 on the special-function unit; exp2(-inf) = 0, which the masking relies on.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Index d of the document holding token i: the largest d with cu_seqlens[d] <= i (so empty
// documents are stepped over).
__device__ __forceinline__ int doc_of(const AttnParams& p, int i) {
  int lo = 0, hi = p.ndoc - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) >> 1;
    if (p.cu_seqlens[mid] <= i) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// Lowest key visible from query i (i < T).
__device__ __forceinline__ int lowest_visible_key(const AttnParams& p, int i) {
  int lo = p.cu_seqlens[doc_of(p, i)];
  return p.window > 0 ? max(lo, i - p.window + 1) : lo;
}

// One past the highest query that can see key j (j < T).
__device__ __forceinline__ int query_end_for_key(const AttnParams& p, int j) {
  int end = p.cu_seqlens[doc_of(p, j) + 1];
  return p.window > 0 ? min(end, j + p.window) : end;
}

// Copies tokens [row0, row0 + ROWS) of one head (D bf16 each, `head` points at token 0 of that
// head) into a shared tile of row stride D + 8 elements. Tokens outside [0, T) are zero-filled.
template <int D, int THREADS, int ROWS>
__device__ __forceinline__ void load_tile_async(bf16* tile, const bf16* head, int64_t row_stride, int row0,
                                                int T) {
  constexpr int kChunksPerRow = D / 8;
  constexpr int kChunks = ROWS * kChunksPerRow;
  static_assert(kChunks % THREADS == 0, "tile chunks must divide evenly among the threads");
#pragma unroll
  for (int it = 0; it < kChunks / THREADS; ++it) {
    int chunk = it * THREADS + threadIdx.x;
    int r = chunk / kChunksPerRow, col = (chunk % kChunksPerRow) * 8;
    int t = row0 + r;
    bool inside = t >= 0 && t < T;
    const bf16* src = inside ? head + static_cast<int64_t>(t) * row_stride + col : head;
    cp_async_16(smem_addr(tile + r * (D + 8) + col), src, inside ? 16 : 0);
  }
}

// Masks of 16-row groups: bit q set = group q takes part; a warp skips the tensor-core work of
// groups its rows cannot see. MASK != 0 fixes the mask at compile time, leaving the unrolled loops
// free of branches (the common, fully visible case); MASK == 0 reads `mask` at run time
// (warp-uniform branches, which keep the compiler from hoisting loads across groups).
template <unsigned MASK>
__device__ __forceinline__ bool in_mask(unsigned mask, int group) {
  return ((MASK != 0 ? MASK : mask) >> group) & 1u;
}

// One 16 x KEYS score block (keys j0..) to log2 units. Where need_mask (the block crosses the causal
// diagonal or a row's lowest key), keys this thread's rows cannot see become -inf: its rows are row0
// (fragment row g) and row0 + 8, with lowest visible keys row_lo[0] and row_lo[1].
template <int KEYS>
__device__ __forceinline__ void scale_and_mask(float (&s)[KEYS / 8][4], float scale_log2, bool need_mask, int j0,
                                               int row0, const int (&row_lo)[2], int lane) {
  const int c = lane & 3;
#pragma unroll
  for (int nt = 0; nt < KEYS / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float x = s[nt][e] * scale_log2;
      if (need_mask) {
        const int r = e >> 1, j = j0 + nt * 8 + 2 * c + (e & 1);
        if (j < row_lo[r] || j > row0 + 8 * r) x = -INFINITY;
      }
      s[nt][e] = x;
    }
}

// Online-softmax step for one 16 x KEYS score block, without touching the output: s (scaled, log2
// units, masked = -inf) becomes P = exp2(s - m_new); the running max m and partial row sums l update;
// alpha gets the factor exp2(m_old - m_new) the output rows must be scaled by.
template <int KEYS>
__device__ __forceinline__ void softmax_step(float (&s)[KEYS / 8][4], float (&m)[2], float (&l)[2],
                                             float (&alpha)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < KEYS / 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
    float m_new = fmaxf(m[r], quad_max(mx));
    // A row that has seen no visible key yet keeps m = -inf; 0 stands in so exp2 gives 0, not NaN.
    float m_ref = m_new == -INFINITY ? 0.f : m_new;
    alpha[r] = fast_exp2(m[r] - m_ref);
    m[r] = m_new;
    float sum = 0.f;
#pragma unroll
    for (int nt = 0; nt < KEYS / 8; ++nt) {
      s[nt][2 * r] = fast_exp2(s[nt][2 * r] - m_ref);
      s[nt][2 * r + 1] = fast_exp2(s[nt][2 * r + 1] - m_ref);
      sum += s[nt][2 * r] + s[nt][2 * r + 1];
    }
    l[r] = l[r] * alpha[r] + sum;
  }
}

// Output rows o (16 x D fragments) times the per-row factors alpha.
template <int D>
__device__ __forceinline__ void scale_rows(float (&o)[D / 8][4], const float (&alpha)[2]) {
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) {
    o[dt][0] *= alpha[0];
    o[dt][1] *= alpha[0];
    o[dt][2] *= alpha[1];
    o[dt][3] *= alpha[1];
  }
}

// The whole online-softmax step: softmax_step, then the output rows rescaled.
template <int D, int KEYS>
__device__ __forceinline__ void online_softmax(float (&s)[KEYS / 8][4], float (&o)[D / 8][4], float (&m)[2],
                                               float (&l)[2]) {
  float alpha[2];
  softmax_step<KEYS>(s, m, l, alpha);
  scale_rows<D>(o, alpha);
}

// Zeroes the fp32 accumulator fragments.
template <int NT>
__device__ __forceinline__ void zero(float (&acc)[NT][4]) {
#pragma unroll
  for (int i = 0; i < NT; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
}
template <int MT, int NT>
__device__ __forceinline__ void zero(float (&acc)[MT][NT][4]) {
#pragma unroll
  for (int m = 0; m < MT; ++m) zero(acc[m]);
}

// Writes a warp's 16 x (8*NT) fp32 fragments, times `mul`, as bf16 rows [row0, row0 + 16) of a
// (T, heads, D) tensor at column col0 of head `head`; rows at or past T are skipped.
template <int NT, int D>
__device__ __forceinline__ void store_rows_bf16(bf16* dst, int64_t row_stride, int head, int row0, int col0,
                                                const float (&acc)[NT][4], float mul, int T, int lane) {
  const int g = lane >> 2, c = lane & 3;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    int t = row0 + g + 8 * r;
    if (t >= T) continue;
    bf16* out = dst + static_cast<int64_t>(t) * row_stride + static_cast<int64_t>(head) * D + col0 + 2 * c;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
      *reinterpret_cast<uint32_t*>(out + nt * 8) = pack_bf16(acc[nt][2 * r] * mul, acc[nt][2 * r + 1] * mul);
  }
}

// dq_accum rows [row0, row0 + 16) of head h, columns col0.. += a warp's 16 x (8*NT) fragments.
// Rows at or past T are skipped. sm_90 adds two floats per atomic.
template <int NT, int D>
__device__ __forceinline__ void add_dq(const BwdParams& p, const float (&acc)[NT][4], int row0, int h, int col0,
                                       int lane) {
  const int g = lane >> 2, c = lane & 3;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row0 + g + 8 * r;
    if (i >= p.T) continue;
    float* dst = p.dq_accum + (static_cast<int64_t>(i) * p.H + h) * D + col0 + 2 * c;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#if __CUDA_ARCH__ >= 900
      atomicAdd(reinterpret_cast<float2*>(dst + nt * 8), make_float2(acc[nt][2 * r], acc[nt][2 * r + 1]));
#else
      atomicAdd(dst + nt * 8, acc[nt][2 * r]);
      atomicAdd(dst + nt * 8 + 1, acc[nt][2 * r + 1]);
#endif
    }
  }
}

// The per-query data a backward step reads, staged in shared memory (lse in log2 units). Query i of
// head h; past T, lse = +inf makes P = 0 and delta = 0 keeps dS = 0.
struct BwdRowData {
  float lse, delta;
  int row_lo;
};
__device__ __forceinline__ BwdRowData bwd_row_data(const BwdParams& p, int i, int h) {
  if (i >= p.T) return BwdRowData{INFINITY, 0.f, 0};
  const int64_t at = static_cast<int64_t>(i) * p.H + h;
  return BwdRowData{p.lse[at] * kLog2e, p.delta[at], p.row_lo[i]};
}

// delta_i = dout_i . out_i for every (token, head), one warp each; also zeroes that row of dq_accum
// and, once per token, finds its lowest visible key.
template <int D>
__global__ void attention_backward_prep_kernel(const BwdParams p) {
  constexpr int kPerLane = D / 32;  // 2 or 4 elements, read as bf16 pairs
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= static_cast<int64_t>(p.T) * p.H) return;
  const int64_t t = row / p.H;
  const int h = static_cast<int>(row % p.H);
  const bf16* o = p.out + t * p.out_row_stride + static_cast<int64_t>(h) * D + lane * kPerLane;
  const bf16* dout = p.dout + t * p.dout_row_stride + static_cast<int64_t>(h) * D + lane * kPerLane;
  float acc = 0.f;
#pragma unroll
  for (int e = 0; e < kPerLane / 2; ++e) {
    float2 a = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(o)[e]);
    float2 b = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(dout)[e]);
    acc += a.x * b.x + a.y * b.y;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) p.delta[row] = acc;
  if (lane == 0 && h == 0) p.row_lo[t] = lowest_visible_key(p, static_cast<int>(t));
  float* dq_row = p.dq_accum + row * D;
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) dq_row[lane + 32 * e] = 0.f;
}

// dq = bf16(scale * dq_accum), 8 elements a thread.
template <int D>
__global__ void attention_dq_convert_kernel(const BwdParams p) {
  constexpr int kChunksPerRow = D / 8;
  const int64_t chunk = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (chunk >= static_cast<int64_t>(p.T) * p.H * kChunksPerRow) return;
  const int64_t row = chunk / kChunksPerRow;
  const int col = static_cast<int>(chunk % kChunksPerRow) * 8;
  const float4* src = reinterpret_cast<const float4*>(p.dq_accum + row * D + col);
  float4 x = src[0], y = src[1];
  uint4 packed = {pack_bf16(x.x * p.scale, x.y * p.scale), pack_bf16(x.z * p.scale, x.w * p.scale),
                  pack_bf16(y.x * p.scale, y.y * p.scale), pack_bf16(y.z * p.scale, y.w * p.scale)};
  const int64_t t = row / p.H;
  const int h = static_cast<int>(row % p.H);
  *reinterpret_cast<uint4*>(p.dq + t * p.dq_row_stride + static_cast<int64_t>(h) * D + col) = packed;
}

}  // namespace loom::attn
