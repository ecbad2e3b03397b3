// LoRA linear as GEMVs on the GPU (math in ops/lora_gemv.h).
#include "ops/error.h"
#include "ops/kernel_util.cuh"
#include "ops/lora_gemv.h"

namespace loom {
namespace {

constexpr int kWarpsPerBlock = 8;  // 256 threads

// Shifts that divide an NF4 weight's element index by its blocksize and a block index by the nested
// blocksize when they are powers of two (bitsandbytes' are), -1 otherwise: a 64-bit division by a
// run-time value is ~20 instructions, a shift one.
struct ScaleShifts {
  int block = -1, nested = -1;
};

struct GemvBatch {
  GemvProjection p[kLoraGemvMaxProjections];
  ScaleShifts shifts[kLoraGemvMaxProjections];
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
// at ~0.45 TB/s (tools/perf_notes.md); kDepth chunks in registers cover the memory latency with
// fewer resident warps. The chunks are still multiplied in order k = first, first + step, ..., so the
// sums and their bits do not change.
constexpr int kBf16Depth = 4;

// Calls chunk(slot, k) for this lane's chunks k = first, first + step, ... < K in order, after
// load(slot, k) has filled slot k's registers kDepth chunks earlier (slot = the chunk's index mod
// kDepth, a compile-time constant after unrolling, so the slots stay in registers). between() runs
// once, after the first loads are issued and before the first chunk: work that hides their latency.
template <int kDepth, typename Load, typename Between, typename Chunk>
__device__ __forceinline__ void pipelined_chunks(int first, int step, int K, Load load, Between between, Chunk chunk) {
#pragma unroll
  for (int s = 0; s < kDepth; ++s)
    if (first + s * step < K) load(s, first + s * step);
  between();
  for (int k0 = first; k0 < K; k0 += kDepth * step) {
#pragma unroll
    for (int s = 0; s < kDepth; ++s) {
      const int k = k0 + s * step;
      if (k >= K) break;
      chunk(s, k);
      if (k + kDepth * step < K) load(s, k + kDepth * step);
    }
  }
}

// This lane's share of Σ_k x[t][k]·w[k] over a bf16 row w, for t < kRows: 8 weights (16 bytes) at
// a time, kBf16Depth chunks loaded ahead.
template <int kRows>
__device__ __forceinline__ void dot_bf16(float (&acc)[kRows], const bf16* w, const bf16* x, int K, int lane) {
  uint4 slot[kBf16Depth];
  pipelined_chunks<kBf16Depth>(
      lane * 8, 32 * 8, K, [&](int s, int k) { slot[s] = __ldg(reinterpret_cast<const uint4*>(w + k)); }, [] {},
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

// v / d, by `shift` when d = 2^shift (ScaleShifts).
__device__ __forceinline__ int64_t divide(int64_t v, int d, int shift) { return shift >= 0 ? v >> shift : v / d; }

// nf4_scale_load (ops/nf4.h) of the block holding element `element`, its divisions as shifts where they can be.
__device__ __forceinline__ Nf4ScaleParts scale_load(const Nf4Device& w, ScaleShifts s, int64_t element) {
  const int64_t block = divide(element, w.blocksize, s.block);
  if (!w.nested()) return {w.absmax[block], 0u};
  return {w.nested_absmax[divide(block, w.nested_blocksize, s.nested)], w.absmax_q[block]};
}

// The NF4 values of a byte of codes, {table[byte >> 4], table[byte & 15]} (its high nibble is the first
// weight), in kPairCopies copies: copy g of byte b is float2 number b·kPairCopies + g, so a lane that
// reads copy lane % 16 only touches banks 2g and 2g + 1, and a warp's 64-bit lookups (two 16-lane
// phases) never conflict, whatever the bytes. One lookup per two weights, ~1.5 instructions a weight
// (shift, mask-or, load; the 16-entry table of one float per code cost ~3.5: the nibble's shift and
// mask, the table's base, the load).
constexpr int kPairCopies = 16;
constexpr int kPairTableBytes = 256 * kPairCopies * 8;  // 32 KB

// The pair of byte `i` of `word` (i a constant after unrolling) from lane's copy (copy_offset = g·8).
__device__ __forceinline__ float2 code_pair(const float2* pairs, uint32_t word, int i, uint32_t copy_offset) {
  const int shift = 8 * i - 7;  // byte i, times 128 bytes (kPairCopies float2)
  const uint32_t byte_offset = (shift >= 0 ? word >> shift : word << -shift) & 0x7f80u;
  return *reinterpret_cast<const float2*>(reinterpret_cast<const char*>(pairs) + (byte_offset | copy_offset));
}

// Fills the pair table from a 16-entry code table (the block's threads together).
__device__ __forceinline__ void fill_pairs(float2* pairs, const float* quant_map) {
  for (int e = threadIdx.x; e < 256 * kPairCopies; e += blockDim.x) {
    const int byte = e / kPairCopies;
    pairs[e] = make_float2(__ldg(quant_map + (byte >> 4)), __ldg(quant_map + (byte & 15)));
  }
}

// Rows of an NF4 projection a warp takes together: x's loads and conversions are shared by them (with
// more rows of x, fewer weight rows keep the accumulators in registers).
template <int kRows>
constexpr int nf4_warp_rows() {
  return kRows <= 4 ? 2 : 1;
}
template <int kRows>
constexpr int nf4_tile_rows() {
  return kWarpsPerBlock * nf4_warp_rows<kRows>();
}
// Tiles (blocks) of a projection of n rows.
template <int kRows>
__host__ __device__ __forceinline__ int nf4_tiles(int n) {
  return (n + nf4_tile_rows<kRows>() - 1) / nf4_tile_rows<kRows>();
}

// NF4 chunks a lane has loaded ahead (a chunk is kWarpRows rows' 16 or 4 bytes: 64 bytes a lane at
// one row of x, so two chunks keep ~4 KB a warp in flight).
constexpr int kNf4Depth = 2;

template <int kRows>
__device__ __forceinline__ void warp_sum(float (&acc)[kRows]) {
#pragma unroll
  for (int t = 0; t < kRows; ++t) acc[t] = group_sum(acc[t]);
}

// Output row n of projection q from this lane's share acc of Σ_k x[t][k]·w[n][k]: lane j adds the
// adapter term s·u[t][j]·B[n][j], lane 0 the bias, the warp sums, lane 0 writes y.
template <int kRows>
__device__ __forceinline__ void finish_row(const GemvProjection& q, int n, float (&acc)[kRows], int lane) {
  if (q.A)
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

// y_p of bf16 weights: one warp per output row of the projections, end to end.
template <int kRows>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) bf16_gemv_kernel(const GemvBatch b, const bf16* x, int K) {
  const int lane = threadIdx.x % 32;
  int p, n;
  if (!locate(b, blockIdx.x * kWarpsPerBlock + threadIdx.x / 32, [](const GemvProjection& q) { return q.N; }, p, n))
    return;
  const GemvProjection& q = b.p[p];
  float acc[kRows] = {};
  dot_bf16<kRows>(acc, q.W + int64_t(n) * K, x, K, lane);
  finish_row(q, n, acc, lane);
}

// y_p of NF4 weights: a block takes nf4_tile_rows rows of one projection (tiles of the projections end
// to end), a warp nf4_warp_rows of them; a lane takes chunks of 8·kWords weights (4·kWords bytes of
// codes) of each of its warp's rows at k = lane·chunk, + 32·chunk, ..., kNf4Depth loaded ahead. Each
// row's chunk is summed in fp32 in weight order and times its block's scale added to the row's sum, as
// the one-row-a-warp kernel did, so the rows' bits are what they were (ops/lora_gemv.h).
template <int kRows, int kWords>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) nf4_gemv_kernel(const GemvBatch b, const bf16* x, int K) {
  constexpr int kWarpRows = nf4_warp_rows<kRows>(), kChunk = 8 * kWords;
  __shared__ float2 pairs[256 * kPairCopies];
  const int lane = threadIdx.x % 32;
  int p, tile;
  if (!locate(b, blockIdx.x, [](const GemvProjection& q) { return nf4_tiles<kRows>(q.N); }, p,
              tile))
    return;  // the whole block: past the last tile
  const GemvProjection& q = b.p[p];
  const Nf4Device& w = q.nf4;
  const ScaleShifts shifts = b.shifts[p];
  const int n0 = tile * nf4_tile_rows<kRows>() + threadIdx.x / 32 * kWarpRows;
  const bool active = n0 < q.N;  // a warp past N fills the table with the others, then leaves
  int64_t row[kWarpRows];        // rows past N repeat the last one (their loads stay in bounds) and are not written
#pragma unroll
  for (int r = 0; r < kWarpRows; ++r) row[r] = int64_t(min(n0 + r, q.N - 1)) * K;
  Codes<kWords> codes[kNf4Depth][kWarpRows];
  Nf4ScaleParts scale[kNf4Depth][kWarpRows];  // finished when the chunk is multiplied
  float acc[kWarpRows][kRows] = {};
  const uint32_t copy_offset = (lane % kPairCopies) * 8;
  pipelined_chunks<kNf4Depth>(
      lane * kChunk, 32 * kChunk, active ? K : 0,
      [&](int s, int k) {
#pragma unroll
        for (int r = 0; r < kWarpRows; ++r) {
          codes[s][r].load(w.codes + (row[r] + k) / 2);
          scale[s][r] = scale_load(w, shifts, row[r] + k);
        }
      },
      [&] {  // the table, while the first chunks' loads are in flight
        fill_pairs(pairs, w.quant_map);
        __syncthreads();
      },
      [&](int s, int k) {
        float part[kWarpRows][kRows] = {};
#pragma unroll
        for (int j = 0; j < kWords; ++j) {  // word j: weights k + 8j .. k + 8j + 7
          float xf[kRows][8];
#pragma unroll
          for (int t = 0; t < kRows; ++t) load_bf16x8(xf[t], x + int64_t(t) * K + k + 8 * j);
#pragma unroll
          for (int r = 0; r < kWarpRows; ++r)
#pragma unroll
            for (int i = 0; i < 4; ++i) {  // byte i: weights 2i and 2i + 1
              const float2 v = code_pair(pairs, codes[s][r].word[j], i, copy_offset);
#pragma unroll
              for (int t = 0; t < kRows; ++t) {
                part[r][t] = fmaf(v.x, xf[t][2 * i], part[r][t]);
                part[r][t] = fmaf(v.y, xf[t][2 * i + 1], part[r][t]);
              }
            }
        }
#pragma unroll
        for (int r = 0; r < kWarpRows; ++r) {
          const float chunk_scale = nf4_scale_finish(w, scale[s][r]);
#pragma unroll
          for (int t = 0; t < kRows; ++t) acc[r][t] = fmaf(chunk_scale, part[r][t], acc[r][t]);
        }
      });
#pragma unroll
  for (int r = 0; r < kWarpRows; ++r)
    if (active && n0 + r < q.N) finish_row(q, n0 + r, acc[r], lane);
}

// log2(v) when v is a power of two, else -1.
int log2_of_power(int v) {
  if (v <= 0 || (v & (v - 1)) != 0) return -1;
  int shift = 0;
  while ((1 << shift) != v) ++shift;
  return shift;
}

unsigned blocks_for(int rows) { return unsigned(ceil_div(rows, kWarpsPerBlock)); }

template <int kRows>
void launch(const GemvBatch& b, const bf16* x, int K, bool nf4, bool wide, cudaStream_t stream) {
  int adapter_rows = 0, rows = 0, tiles = 0;
  for (int p = 0; p < b.count; ++p)
    adapter_rows += b.p[p].A ? b.p[p].R : 0, rows += b.p[p].N, tiles += nf4_tiles<kRows>(b.p[p].N);
  if (adapter_rows > 0) lora_u_kernel<kRows><<<blocks_for(adapter_rows), kWarpsPerBlock * 32, 0, stream>>>(b, x, K);
  if (!nf4)
    bf16_gemv_kernel<kRows><<<blocks_for(rows), kWarpsPerBlock * 32, 0, stream>>>(b, x, K);
  else if (wide)
    nf4_gemv_kernel<kRows, 4><<<unsigned(tiles), kWarpsPerBlock * 32, 0, stream>>>(b, x, K);
  else
    nf4_gemv_kernel<kRows, 1><<<unsigned(tiles), kWarpsPerBlock * 32, 0, stream>>>(b, x, K);
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
      b.shifts[i] = {log2_of_power(w.blocksize), w.nested() ? log2_of_power(w.nested_blocksize) : -1};
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
