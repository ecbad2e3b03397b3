// LoRA linear as GEMVs on the GPU (math in ops/lora_gemv.h).
#include "ops/error.h"
#include "ops/kernel_util.cuh"
#include "ops/lora_gemv.h"

namespace loom {
namespace {

constexpr int kWarpsPerBlock = 8;  // 256 threads

struct GemvBatch {
  GemvProjection p[kLoraGemvMaxProjections];
  int count = 0;
};

// The projection of warp-row `row` (rows of the projections end to end, `rows_of` giving each one's
// count) and the row inside it; false past the last.
template <typename RowsOf>
__device__ __forceinline__ bool locate(const GemvBatch& b, int row, RowsOf rows_of, int& p, int& n) {
  for (p = 0; p < b.count; ++p) {
    if (row < rows_of(b.p[p])) return n = row, true;
    row -= rows_of(b.p[p]);
  }
  return false;
}

// Chunks of a row a lane has loaded ahead of the one it multiplies. One chunk ahead (16 bytes a lane,
// 512 bytes a warp) kept too few bytes in flight: the bf16 GEMV read at ~1.8 TB/s of ~3.3 and the NF4 one
// at ~0.45 TB/s (tools/perf_notes.md); kPrefetch chunks in registers cover the memory latency with
// fewer resident warps. An NF4 chunk's scale is loaded with it and finished when it is multiplied
// (nf4_scale_load): the nested map's lookup depends on absmax_q's load and would stall the loads behind
// it. The chunks are still multiplied in order k = lane·chunk, + 32·chunk, ..., so the sums and their
// bits do not change.
constexpr int kPrefetch = 4;

// Calls chunk(slot, k) for this lane's chunks k = first, first + step, ... < K in order, after
// load(slot, k) has filled slot k's registers kPrefetch chunks earlier (slot = the chunk's index mod
// kPrefetch, a compile-time constant after unrolling, so the slots stay in registers).
template <typename Load, typename Chunk>
__device__ __forceinline__ void pipelined_chunks(int first, int step, int K, Load load, Chunk chunk) {
#pragma unroll
  for (int s = 0; s < kPrefetch; ++s)
    if (first + s * step < K) load(s, first + s * step);
  for (int k0 = first; k0 < K; k0 += kPrefetch * step) {
#pragma unroll
    for (int s = 0; s < kPrefetch; ++s) {
      const int k = k0 + s * step;
      if (k >= K) break;
      chunk(s, k);
      if (k + kPrefetch * step < K) load(s, k + kPrefetch * step);
    }
  }
}

// This lane's share of Σ_k x[t][k]·w[k] over a bf16 row w, for t < kRows: 8 weights (16 bytes) at
// a time, kPrefetch chunks loaded ahead.
template <int kRows>
__device__ __forceinline__ void dot_bf16(float (&acc)[kRows], const bf16* w, const bf16* x, int K, int lane) {
  uint4 slot[kPrefetch];
  pipelined_chunks(
      lane * 8, 32 * 8, K, [&](int s, int k) { slot[s] = __ldg(reinterpret_cast<const uint4*>(w + k)); },
      [&](int s, int k) {
        const __nv_bfloat162* wv = reinterpret_cast<const __nv_bfloat162*>(&slot[s]);
#pragma unroll
        for (int t = 0; t < kRows; ++t) {
          const uint4 packed = __ldg(reinterpret_cast<const uint4*>(x + int64_t(t) * K + k));
          const __nv_bfloat162* xv = reinterpret_cast<const __nv_bfloat162*>(&packed);
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const float2 wf = __bfloat1622float2(wv[i]), xf = __bfloat1622float2(xv[i]);
            acc[t] = fmaf(wf.x, xf.x, acc[t]);
            acc[t] = fmaf(wf.y, xf.y, acc[t]);
          }
        }
      });
}

// kWords 32-bit words of NF4 codes: 8·kWords weights of one quantization block.
template <int kWords>
struct Codes {
  uint32_t word[kWords];
  __device__ __forceinline__ void load(const uint8_t* p) {
    if constexpr (kWords == 4) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
      word[0] = v.x, word[1] = v.y, word[2] = v.z, word[3] = v.w;
    } else {
      word[0] = __ldg(reinterpret_cast<const uint32_t*>(p));
    }
  }
};

// This lane's share of Σ_k x[t][k]·w[n][k] over NF4 row n (code_values: the 16 code values in shared
// memory): chunks of 8·kWords weights, kPrefetch loaded ahead, each chunk's partial sum times its
// block's scale.
template <int kRows, int kWords>
__device__ __forceinline__ void dot_nf4(float (&acc)[kRows], const Nf4Device& w, const float* code_values, int n,
                                        const bf16* x, int K, int lane) {
  constexpr int kChunk = 8 * kWords;
  const int64_t row = int64_t(n) * K;
  Codes<kWords> codes[kPrefetch];
  Nf4ScaleParts scale[kPrefetch];  // finished when the chunk is multiplied (nf4_scale_load)
  pipelined_chunks(
      lane * kChunk, 32 * kChunk, K,
      [&](int s, int k) {
        codes[s].load(w.codes + (row + k) / 2);
        scale[s] = nf4_scale_load(w, (row + k) / w.blocksize);
      },
      [&](int s, int k) {
        const float chunk_scale = nf4_scale_finish(w, scale[s]);
        float part[kRows] = {};
#pragma unroll
        for (int j = 0; j < kWords; ++j) {  // word j: weights k + 8j .. k + 8j + 7; byte i holds 2i (high) and 2i + 1
          float2 v[4];
#pragma unroll
          for (int i = 0; i < 4; ++i)  // byte i: its high nibble is weight 2i, its low nibble 2i + 1
            v[i] = make_float2(code_values[(codes[s].word[j] >> (8 * i + 4)) & 0xFu],
                               code_values[(codes[s].word[j] >> (8 * i)) & 0xFu]);
#pragma unroll
          for (int t = 0; t < kRows; ++t) {
            const uint4 packed = __ldg(reinterpret_cast<const uint4*>(x + int64_t(t) * K + k + 8 * j));
            const __nv_bfloat162* xv = reinterpret_cast<const __nv_bfloat162*>(&packed);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const float2 xf = __bfloat1622float2(xv[i]);
              part[t] = fmaf(v[i].x, xf.x, part[t]);
              part[t] = fmaf(v[i].y, xf.y, part[t]);
            }
          }
        }
#pragma unroll
        for (int t = 0; t < kRows; ++t) acc[t] = fmaf(chunk_scale, part[t], acc[t]);
      });
}

template <int kRows>
__device__ __forceinline__ void warp_sum(float (&acc)[kRows]) {
#pragma unroll
  for (int t = 0; t < kRows; ++t) acc[t] = group_sum(acc[t]);
}

// u_p = bf16(x·A_pᵀ): one warp per row of the adapters' A, end to end.
template <int kRows>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) lora_u_kernel(const GemvBatch b, const bf16* x, int K) {
  const int lane = threadIdx.x % 32;
  int p, j;
  if (!locate(b, blockIdx.x * kWarpsPerBlock + threadIdx.x / 32, [](const GemvProjection& q) { return q.A ? q.R : 0; },
              p, j))
    return;
  const GemvProjection& q = b.p[p];
  float acc[kRows] = {};
  dot_bf16<kRows>(acc, q.A + int64_t(j) * K, x, K, lane);
  warp_sum(acc);
  if (lane == 0)
#pragma unroll
    for (int t = 0; t < kRows; ++t) q.u[int64_t(t) * q.R + j] = __float2bfloat16_rn(acc[t]);
}

// y_p: one warp per output row of the projections, end to end; kWords 0 for bf16 weights, else the
// NF4 chunk's words.
template <int kRows, int kWords>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) lora_gemv_kernel(const GemvBatch b, const bf16* x, int K) {
  // 16 floats a projection, in 16 banks: a warp's lookups never conflict (a 256-entry table of a byte's two
  // values, one lookup per two weights, conflicted ~3.5-way and bound the kernel: tools/perf_notes.md).
  __shared__ float code_values[kWords ? kLoraGemvMaxProjections : 1][16];
  if constexpr (kWords > 0) {
    const int p = threadIdx.x / 16, code = threadIdx.x % 16;
    if (p < b.count) code_values[p][code] = b.p[p].nf4.quant_map[code];
    __syncthreads();
  }
  const int lane = threadIdx.x % 32;
  int p, n;
  if (!locate(b, blockIdx.x * kWarpsPerBlock + threadIdx.x / 32, [](const GemvProjection& q) { return q.N; }, p, n))
    return;
  const GemvProjection& q = b.p[p];
  float acc[kRows] = {};
  if constexpr (kWords > 0)
    dot_nf4<kRows, kWords>(acc, q.nf4, code_values[p], n, x, K, lane);
  else
    dot_bf16<kRows>(acc, q.W + int64_t(n) * K, x, K, lane);
  if (q.A)  // lane j: s·u[t][j]·B[n][j]
    for (int j = lane; j < q.R; j += 32) {
      const float bj = q.scale * __bfloat162float(q.B[int64_t(n) * q.R + j]);
#pragma unroll
      for (int t = 0; t < kRows; ++t) acc[t] = fmaf(__bfloat162float(q.u[int64_t(t) * q.R + j]), bj, acc[t]);
    }
  if (q.bias && lane == 0) {
    const float bias = __bfloat162float(q.bias[n]);
#pragma unroll
    for (int t = 0; t < kRows; ++t) acc[t] += bias;
  }
  warp_sum(acc);
  if (lane == 0)
#pragma unroll
    for (int t = 0; t < kRows; ++t) q.y[int64_t(t) * q.N + n] = __float2bfloat16_rn(acc[t]);
}

unsigned blocks_for(int rows) { return unsigned(ceil_div(rows, kWarpsPerBlock)); }

template <int kRows>
void launch(const GemvBatch& b, const bf16* x, int K, bool nf4, bool wide, cudaStream_t stream) {
  int adapter_rows = 0, rows = 0;
  for (int p = 0; p < b.count; ++p) adapter_rows += b.p[p].A ? b.p[p].R : 0, rows += b.p[p].N;
  if (adapter_rows > 0) lora_u_kernel<kRows><<<blocks_for(adapter_rows), kWarpsPerBlock * 32, 0, stream>>>(b, x, K);
  if (!nf4)
    lora_gemv_kernel<kRows, 0><<<blocks_for(rows), kWarpsPerBlock * 32, 0, stream>>>(b, x, K);
  else if (wide)
    lora_gemv_kernel<kRows, 4><<<blocks_for(rows), kWarpsPerBlock * 32, 0, stream>>>(b, x, K);
  else
    lora_gemv_kernel<kRows, 1><<<blocks_for(rows), kWarpsPerBlock * 32, 0, stream>>>(b, x, K);
}

}  // namespace

void lora_gemv(const GemvProjection* p, int count, const bf16* x, int64_t T, int K, cudaStream_t stream) {
  LOOM_CHECK(T >= 1 && T <= kLoraGemvMaxRows, "lora_gemv: T = ", T, " rows (1 to ", kLoraGemvMaxRows, ")");
  LOOM_CHECK(count >= 1 && count <= kLoraGemvMaxProjections, "lora_gemv: ", count, " projections (1 to ",
             kLoraGemvMaxProjections, ")");
  LOOM_CHECK(K >= 8 && K % 8 == 0 && x && is_aligned_16(x), "lora_gemv: K = ", K,
             " (a multiple of 8) and a 16-byte aligned x are needed");
  GemvBatch b;
  b.count = count;
  const bool nf4 = p[0].W == nullptr;
  bool wide = K % 32 == 0;
  for (int i = 0; i < count; ++i) {
    const GemvProjection& q = p[i];
    LOOM_CHECK(q.N >= 1 && q.y && (q.W == nullptr) == nf4, "lora_gemv: projection ", i, " needs N >= 1, y, and ",
               nf4 ? "an NF4" : "a bf16", " weight as projection 0's");
    if (nf4) {
      const Nf4Device& w = q.nf4;
      LOOM_CHECK(w.numel == int64_t(q.N) * K && w.blocksize % 8 == 0, "lora_gemv: projection ", i, ": an NF4 weight of ",
                 w.numel, " elements, blocksize ", w.blocksize, " for (", q.N, ", ", K, ") (blocksize a multiple of 8)");
      const bool scales = w.nested() ? w.nested_absmax && w.nested_map : w.absmax != nullptr;
      LOOM_CHECK(w.codes && is_aligned_16(w.codes) && w.quant_map && scales, "lora_gemv: projection ", i,
                 ": an NF4 weight needs 16-byte aligned codes, its code table and its scales");
      wide = wide && q.nf4.blocksize % 32 == 0;
    } else {
      LOOM_CHECK(is_aligned_16(q.W), "lora_gemv: projection ", i, ": W must be 16-byte aligned");
    }
    LOOM_CHECK(!q.A || (q.B && q.u && q.R >= 1 && is_aligned_16(q.A)), "lora_gemv: projection ", i,
               ": an adapter needs B, u (the (T, R) buffer), a rank >= 1 and a 16-byte aligned A");
    b.p[i] = q;
  }
  switch (T) {
    case 1: launch<1>(b, x, K, nf4, wide, stream); break;
    case 2: launch<2>(b, x, K, nf4, wide, stream); break;
    case 3: launch<3>(b, x, K, nf4, wide, stream); break;
    case 4: launch<4>(b, x, K, nf4, wide, stream); break;
    case 5: launch<5>(b, x, K, nf4, wide, stream); break;
    case 6: launch<6>(b, x, K, nf4, wide, stream); break;
    case 7: launch<7>(b, x, K, nf4, wide, stream); break;
    default: launch<8>(b, x, K, nf4, wide, stream); break;
  }
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace loom
