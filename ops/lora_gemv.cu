// LoRA linear as GEMVs on the GPU (math in ops/lora_gemv.h).
#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

#include "ops/device.h"
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

// The loads of pipelined_chunks' first kPrefetch chunks.
template <typename Load>
__device__ __forceinline__ void first_chunk_loads(int first, int step, int K, Load load) {
#pragma unroll
  for (int s = 0; s < kPrefetch; ++s)
    if (first + s * step < K) load(s, first + s * step);
}

// pipelined_chunks after its first_chunk_loads (issued earlier, so that other work can overlap them).
template <typename Load, typename Chunk>
__device__ __forceinline__ void pipelined_chunks_loaded(int first, int step, int K, Load load, Chunk chunk) {
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

// Calls chunk(slot, k) for this lane's chunks k = first, first + step, ... < K in order, after
// load(slot, k) has filled slot k's registers kPrefetch chunks earlier (slot = the chunk's index mod
// kPrefetch, a compile-time constant after unrolling, so the slots stay in registers).
template <typename Load, typename Chunk>
__device__ __forceinline__ void pipelined_chunks(int first, int step, int K, Load load, Chunk chunk) {
  first_chunk_loads(first, step, K, load);
  pipelined_chunks_loaded(first, step, K, load, chunk);
}

// acc[t] += Σ_i x[t][k + i]·w[i] in order over chunk w, 8 bf16 weights (16 bytes), for t < kRows.
template <int kRows>
__device__ __forceinline__ void fma_bf16_chunk(float (&acc)[kRows], const uint4& w, const bf16* x, int K, int k) {
  const __nv_bfloat162* wv = reinterpret_cast<const __nv_bfloat162*>(&w);
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
}

// This lane's share of Σ_k x[t][k]·w[k] over a bf16 row w, for t < kRows: 8 weights (16 bytes) at
// a time, kPrefetch chunks loaded ahead.
template <int kRows>
__device__ __forceinline__ void dot_bf16(float (&acc)[kRows], const bf16* w, const bf16* x, int K, int lane) {
  uint4 slot[kPrefetch];
  pipelined_chunks(
      lane * 8, 32 * 8, K, [&](int s, int k) { slot[s] = __ldg(reinterpret_cast<const uint4*>(w + k)); },
      [&](int s, int k) { fma_bf16_chunk<kRows>(acc, slot[s], x, K, k); });
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

// The bits of u's value at p, read after wait_for_prior_grids (lora_u_kernel, which writes u, may
// still be running when a kernel launched after it starts: launch_gemv): through L2 only, as L1 may
// hold older sectors, and with the volatile overload, which the compiler keeps after the wait (CUDA
// 13's bf16 __ldcg is not volatile and could be moved above it).
__device__ __forceinline__ uint32_t load_u_bits(const bf16* p) {
  return __ldcg(reinterpret_cast<const unsigned short*>(p));
}

// Chunks (8 bf16) of a row of A that a lane of lora_u_kernel loads before its first multiply. u is on
// every GEMV's path (the GEMV waits for it after its first tile). Measured on an H100
// (tools/perf_notes.md): splitting long rows over warps shortened it (llama-3.1-8b's down at 8 rows,
// 47 → 27 µs a call); the deeper loads alone did not (K 4,096: still ≈ 10 µs, the length of one warp's
// chain of loads and FMAs).
constexpr int kUChunks = 16;

// Warps that share a row of A in lora_u_kernel: enough that each one's part is at most kUChunks chunks
// a lane, a power of two up to a block's warps (past 8 · 32 · 8 · kUChunks = 32,768 columns they loop).
int u_split(int K) {
  int split = 1;
  while (split < kWarpsPerBlock && int64_t(split) * 32 * 8 * kUChunks < K) split *= 2;
  return split;
}

// u_p = bf16(x·A_pᵀ): `split` warps a row of the adapters' A (rows end to end); warp i of a row takes
// its chunks i, i + split, ... at 8 bf16 a lane, kUChunks loaded before the first is multiplied, and
// the row's warps add their sums in warp order through shared memory.
// The kernel launched after it (launch_gemv) may start at once: it waits for u where it reads it.
template <int kRows>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    lora_u_kernel(const GemvBatch b, const bf16* x, int K, int split) {
  allow_dependent_launch();
  __shared__ float sums[kWarpsPerBlock][kRows];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, piece = warp % split;
  int p, j;
  const bool found = locate(b, (blockIdx.x * kWarpsPerBlock + warp) / split,
                            [](const GemvProjection& q) { return q.A ? q.R : 0; }, p, j);
  float acc[kRows] = {};
  if (found) {
    const bf16* a = b.p[p].A + int64_t(j) * K;
    const int step = split * 32 * 8;
    for (int k0 = (piece * 32 + lane) * 8; k0 < K; k0 += kUChunks * step) {
      uint4 chunk[kUChunks];
#pragma unroll
      for (int s = 0; s < kUChunks; ++s)
        if (k0 + s * step < K) chunk[s] = __ldg(reinterpret_cast<const uint4*>(a + k0 + s * step));
#pragma unroll
      for (int s = 0; s < kUChunks; ++s)
        if (k0 + s * step < K) fma_bf16_chunk<kRows>(acc, chunk[s], x, K, k0 + s * step);
    }
    warp_sum(acc);
  }
  if (lane == 0)
#pragma unroll
    for (int t = 0; t < kRows; ++t) sums[warp][t] = acc[t];
  __syncthreads();
  if (found && piece == 0 && lane < kRows) {  // lane t: u[t][j]
    float u = 0.f;
    for (int i = 0; i < split; ++i) u += sums[warp + i][lane];
    b.p[p].u[int64_t(lane) * b.p[p].R + j] = __float2bfloat16_rn(u);
  }
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
  if (q.A) {  // lane j: s·u[t][j]·B[n][j], u read once lora_u_kernel is done (launch_gemv)
    wait_for_prior_grids();
    for (int j = lane; j < q.R; j += 32) {
      const float bj = q.scale * __bfloat162float(q.B[int64_t(n) * q.R + j]);
#pragma unroll
      for (int t = 0; t < kRows; ++t) {
        const float u = __uint_as_float(load_u_bits(q.u + int64_t(t) * q.R + j) << 16);  // bf16 bits -> fp32
        acc[t] = fmaf(u, bj, acc[t]);
      }
    }
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

// ---------------------------------------------------------------------------------------------
// NF4 weights on the tensor cores (lora_gemv_tensor_cores). A block takes tiles of 16 rows of one
// projection; its warps split K (warp w of S: groups [w·G/S, (w+1)·G/S) of G = K/64) and add their
// partial sums through shared memory in warp order. One mma.m16n8k16 multiplies 16 rows by 16 weights
// of each row against x's rows as its 8 columns (columns t >= T multiply zeros). Which 16 k a mma takes
// is free (the sum runs over every k once), so each takes 16 of one 64-weight group, whose one scale
// then multiplies the group's 4 mma sums in fp32: lane (g, c) = (lane / 4, lane % 4) holds rows g and
// g + 8, and for the group at k0 loads bytes [8c, 8c + 8) of each row's 32 code bytes (k0 + 16c ..
// k0 + 16c + 15) and x[g][k0 + 16c ..] (16 bf16). In mma j of the group, its A registers are the
// bf16 pairs of bytes 2j (k0 + 16c + 4j, + 1: fragment columns 2c, 2c + 1) and 2j + 1 (+ 2, + 3:
// columns 2c + 8, 2c + 9) of both rows, its B registers x's words 2j and 2j + 1: the same k on both
// sides. A byte's two weights come from one lookup in a 256-entry table of bf16 pairs
// {bf16(table[byte >> 4]), bf16(table[byte & 15])} kept in 32 copies: lane l reads copy l, at byte
// 256·byte + 4·l of the table (bank l), an offset one byte permute forms from the code byte and 4·l.
// The adapter term is one more mma per 16 ranks, s·(u·Bᵀ) with B's 16 rows of the tile as A and u's
// rows as the columns; warp w takes ranks [16w, 16w + 16) (and + 16S, ... past 16S ranks), so the
// warps' partial sums carry it into the same ordered sum.
// A warp's loads run ahead across tiles: the next tile's first kPrefetch groups (and its B rows) are
// issued before this tile's partial sums are added and stored, so that the block's barrier and
// stores overlap them. Tiles each of 16 rows · K/S weights a warp were too short to hide the
// latency when every tile started with all its loads outstanding (tools/perf_notes.md).
// What a group costs a lane is counted in instructions: ncu put the kernel at ~177 a group and lane,
// issue-bound at 4 warps a scheduler (tools/perf_notes.md), so a tile's pointers, shifts and scale
// arrays sit in registers for its groups, and the scales' two layouts (nested or not) are two kernels.
constexpr int kMmaGroup = 64;    // weights of a row that one scale covers in every allowed layout
constexpr int kMmaRows = 16;     // a tile: the mma's M
constexpr int kMmaRanks = 16;    // the mma's K: adapter ranks one mma takes
constexpr int kMmaMaxWarps = 8;  // the K split of a tile
constexpr int kPairCopies = 32;                    // of the pair table, one a lane (bank l for lane l)
constexpr int kPairStride = 256;                   // bytes from a code byte's entries to the next byte's
constexpr int kPairTableBytes = 256 * kPairStride;  // 64 KB, dynamic shared memory (half of it unused)

// log2(v) for a power of two v, else -1.
int log2_exact(int64_t v) {
  if (v <= 0 || (v & (v - 1)) != 0) return -1;
  int s = 0;
  while ((int64_t{1} << s) < v) ++s;
  return s;
}

struct MmaBatch {
  GemvProjection p[kLoraGemvMaxProjections];
  int block_shift[kLoraGemvMaxProjections];   // log2 blocksize
  int nested_shift[kLoraGemvMaxProjections];  // log2 nested_blocksize
  int count = 0;
  int tiles = 0;
};

// N rounded up to whole tiles.
__device__ __forceinline__ int tile_rows(int N) { return (N + kMmaRows - 1) / kMmaRows * kMmaRows; }

// A tile: its projection and first row, and what this lane reads of it: its 8 code bytes of group 0 of
// rows g and g + 8 (the next group's 32 bytes on), those rows' first elements (rows past N, the last
// tile's, read row N - 1 and are not stored; elements fit 32 bits: lora_gemv_tensor_cores), and the
// projection's scales (absmax, or nested_absmax and absmax_q) with their shifts.
struct MmaTile {
  int p = 0, row0 = 0;
  const uint2* codes[2];
  uint32_t first[2];
  const float* absmax;
  const uint8_t* absmax_q;
  int block_shift, nested_shift;
};

template <bool kNested>
__device__ __forceinline__ MmaTile locate_tile(const MmaBatch& b, int tile, int g, int c, int K) {
  MmaTile t;
  t.row0 = tile * kMmaRows;
  while (t.row0 >= tile_rows(b.p[t.p].N)) t.row0 -= tile_rows(b.p[t.p].N), ++t.p;
  const Nf4Device& w = b.p[t.p].nf4;
  const int last = b.p[t.p].N - 1;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    t.first[r] = uint32_t(min(t.row0 + g + 8 * r, last)) * uint32_t(K);
    t.codes[r] = reinterpret_cast<const uint2*>(w.codes + t.first[r] / 2) + c;
  }
  t.absmax = kNested ? w.nested_absmax : w.absmax;
  t.absmax_q = w.absmax_q;
  t.block_shift = b.block_shift[t.p];
  t.nested_shift = b.nested_shift[t.p];
  return t;
}

// One group's loads of a lane, issued kPrefetch groups ahead: rows g and g + 8's 8 code bytes and their
// scales (absmax, or nested_absmax and absmax_q). x's 16 values (a few KB, in L1) are loaded when the
// group is multiplied, ahead of its 16 table lookups: 8 registers a group fewer held in flight.
struct MmaGroupLoads {
  uint2 codes[2];
  float absmax[2];
  uint32_t q[2];
};

template <bool kNested>
__device__ __forceinline__ void load_group(MmaGroupLoads& ld, const MmaTile& t, int group) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    ld.codes[r] = __ldg(t.codes[r] + 4 * group);
    const uint32_t block = (t.first[r] + uint32_t(group) * kMmaGroup) >> t.block_shift;
    if constexpr (kNested) {
      ld.absmax[r] = __ldg(t.absmax + (block >> t.nested_shift));
      ld.q[r] = __ldg(t.absmax_q + block);
    } else {
      ld.absmax[r] = __ldg(t.absmax + block);
    }
  }
}

// The bf16 pair (v[j], v[j + 1]) as an mma register (v[j] in the low half), zero past `count`
// values; two 2-byte loads, as v + j need not be 4-byte aligned (an odd rank). u is read with
// load_u_bits (`coherent`).
__device__ __forceinline__ uint32_t bf16_pair(const bf16* v, int j, int count, bool coherent) {
  const auto load = [&](int i) -> uint32_t {
    return coherent ? load_u_bits(v + i) : __ldg(reinterpret_cast<const unsigned short*>(v) + i);
  };
  return (j < count ? load(j) : 0u) | (j + 1 < count ? load(j + 1) : 0u) << 16;
}

// Lane (g, c)'s A registers of the adapter's mma over ranks [16·step, 16·step + 16): B's rows g and
// g + 8 of the tile at ranks 16·step + 2c, + 1 and + 8, + 9.
__device__ __forceinline__ void load_lora_b(uint32_t (&a)[4], const GemvProjection& q, const MmaTile& t, int step,
                                            int g, int c) {
  const int j = kMmaRanks * step + 2 * c;
  const bf16* rows[2] = {q.B + int64_t(min(t.row0 + g, q.N - 1)) * q.R,
                         q.B + int64_t(min(t.row0 + g + 8, q.N - 1)) * q.R};
  a[0] = bf16_pair(rows[0], j, q.R, false);
  a[1] = bf16_pair(rows[1], j, q.R, false);
  a[2] = bf16_pair(rows[0], j + 8, q.R, false);
  a[3] = bf16_pair(rows[1], j + 8, q.R, false);
}

// Its B registers: u's row g (T - 1 past T: never stored) at the same ranks. After
// wait_for_prior_grids: lora_u_kernel writes u.
__device__ __forceinline__ void load_lora_u(uint32_t (&u)[2], const GemvProjection& q, int step, int T, int g, int c) {
  const int j = kMmaRanks * step + 2 * c;
  const bf16* row = q.u + int64_t(min(g, T - 1)) * q.R;
  u[0] = bf16_pair(row, j, q.R, true);
  u[1] = bf16_pair(row, j + 8, q.R, true);
}

// The bf16 pair of byte i of `word` (i a constant after unrolling) from this lane's copy of the pair
// table: byte offset 256·byte + lane4 (lane4 = 4·lane < 256), one byte permute of the two.
__device__ __forceinline__ uint32_t code_pair(const char* pairs, uint32_t lane4, uint32_t word, int i) {
  const uint32_t offset = __byte_perm(word, lane4, 0x5504u | uint32_t(i) << 4);  // bytes: lane4, byte i, 0, 0
  return *reinterpret_cast<const uint32_t*>(pairs + offset);
}

// The pair table {bf16(table[byte >> 4]), bf16(table[byte & 15])} in its 32 copies, and the nested map.
template <bool kNested>
__device__ __forceinline__ void fill_tables(char* pairs, float* nested_map, const Nf4Device& w) {
  for (int e = threadIdx.x; e < 256 * kPairCopies; e += blockDim.x) {
    const int byte = e / kPairCopies, copy = e % kPairCopies;
    const __nv_bfloat162 v = __floats2bfloat162_rn(__ldg(w.quant_map + (byte >> 4)), __ldg(w.quant_map + (byte & 15)));
    *reinterpret_cast<__nv_bfloat162*>(pairs + byte * kPairStride + 4 * copy) = v;
  }
  if constexpr (kNested)
    for (int e = threadIdx.x; e < 256; e += blockDim.x) nested_map[e] = __ldg(w.nested_map + e);
}

// acc += one group's 4 mma sums (rows g, g + 8 of the tile against x's rows, x_group: this lane's 16
// values of the group), unscaled.
__device__ __forceinline__ void group_mma(float (&acc)[4], const MmaGroupLoads& ld, const uint4* x_group,
                                          const char* pairs, uint32_t lane4) {
  const uint4 x[2] = {__ldg(x_group), __ldg(x_group + 1)};
  const uint32_t* xw = reinterpret_cast<const uint32_t*>(x);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint32_t word0 = j < 2 ? ld.codes[0].x : ld.codes[0].y;
    const uint32_t word1 = j < 2 ? ld.codes[1].x : ld.codes[1].y;
    const int byte = 2 * (j % 2);
    const uint32_t a[4] = {code_pair(pairs, lane4, word0, byte), code_pair(pairs, lane4, word1, byte),
                           code_pair(pairs, lane4, word0, byte + 1), code_pair(pairs, lane4, word1, byte + 1)};
    mma_16816(acc, a, xw[2 * j], xw[2 * j + 1]);
  }
}

template <bool kNested>
__global__ void __launch_bounds__(kMmaMaxWarps * 32, 2)
    lora_gemv_mma_kernel(const MmaBatch b, const bf16* x, int T, int K) {
  extern __shared__ __align__(16) char pairs[];      // kPairTableBytes
  __shared__ float nested_map[256];
  __shared__ float partial[2][kMmaMaxWarps][4][32];  // a warp's sums, [tile parity][warp][register][lane]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int g = lane / 4, c = lane % 4;
  const int groups = K / kMmaGroup;
  const int first = warp * groups / warps, last = (warp + 1) * groups / warps;
  const uint32_t lane4 = uint32_t(lane) * 4u;
  // Columns t >= T of the mma read x's last row again: never stored, and no loads to predicate.
  const uint4* x_lane = reinterpret_cast<const uint4*>(x + int64_t(min(g, T - 1)) * K + 16 * c);
  const float* tables_of[2] = {};  // the code table and nested map in shared memory
  int u_of = -1;                   // the projection whose u registers `u` holds
  uint32_t u[2] = {}, lora_b[4] = {};
  MmaGroupLoads ld[kPrefetch];
  // A tile's loads ahead of its sums: its first kPrefetch groups and this warp's first 16 ranks of B.
  auto issue_first_loads = [&](const MmaTile& t) {
    first_chunk_loads(first, 1, last, [&](int s, int group) { load_group<kNested>(ld[s], t, group); });
    const GemvProjection& q = b.p[t.p];
    if (q.A && kMmaRanks * warp < q.R) load_lora_b(lora_b, q, t, warp, g, c);
  };
  MmaTile tile = locate_tile<kNested>(b, blockIdx.x, g, c, K);
  issue_first_loads(tile);
  for (int index = blockIdx.x, parity = 0; index < b.tiles; index += gridDim.x, parity ^= 1) {
    const GemvProjection& q = b.p[tile.p];
    const Nf4Device& w = q.nf4;
    // Block-uniform (the tile is the block's). Every warp's lookups of the tables' last use came before
    // the last tile's barrier, so the barrier after the fill is the only one it needs.
    if (w.quant_map != tables_of[0] || w.nested_map != tables_of[1]) {
      fill_tables<kNested>(pairs, nested_map, w);
      __syncthreads();
      tables_of[0] = w.quant_map, tables_of[1] = w.nested_map;
    }
    const float nested_offset = w.nested_offset;
    float total[4] = {};
    pipelined_chunks_loaded(
        first, 1, last, [&](int s, int group) { load_group<kNested>(ld[s], tile, group); },
        [&](int s, int group) {
          float scale[2];
#pragma unroll
          for (int r = 0; r < 2; ++r)
            scale[r] = kNested ? __fadd_rn(__fmul_rn(nested_map[ld[s].q[r]], ld[s].absmax[r]), nested_offset)
                               : ld[s].absmax[r];
          float acc[4] = {};
          group_mma(acc, ld[s], x_lane + 8 * group, pairs, lane4);
          total[0] = fmaf(scale[0], acc[0], total[0]);
          total[1] = fmaf(scale[0], acc[1], total[1]);
          total[2] = fmaf(scale[1], acc[2], total[2]);
          total[3] = fmaf(scale[1], acc[3], total[3]);
        });
    if (q.A) {  // this warp's ranks: s·(u·Bᵀ)
      float lora[4] = {};
      for (int step = warp; kMmaRanks * step < q.R; step += warps) {
        if (step == warp && u_of != tile.p) {
          wait_for_prior_grids();
          load_lora_u(u, q, step, T, g, c);
          u_of = tile.p;
        }
        if (step == warp) {
          mma_16816(lora, lora_b, u[0], u[1]);
        } else {  // past 16·S ranks: loaded here
          uint32_t a[4], v[2];
          load_lora_b(a, q, tile, step, g, c);
          load_lora_u(v, q, step, T, g, c);
          mma_16816(lora, a, v[0], v[1]);
        }
      }
#pragma unroll
      for (int r = 0; r < 4; ++r) total[r] = fmaf(q.scale, lora[r], total[r]);
    }
    const int done_p = tile.p, done_row0 = tile.row0;
    if (index + gridDim.x < b.tiles) {
      tile = locate_tile<kNested>(b, index + gridDim.x, g, c, K);
      issue_first_loads(tile);
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) partial[parity][warp][r][lane] = total[r];
    // One barrier a tile: the next tile writes the other half of partial, which this tile's sums below
    // finish reading before any thread passes the next tile's barrier.
    __syncthreads();
    const GemvProjection& done = b.p[done_p];
    // Output (row, t) of the tile: fragment register (row / 8)·2 + t % 2 of lane (row % 8)·4 + t / 2.
    for (int i = threadIdx.x; i < kMmaRows * 8; i += blockDim.x) {
      const int row = i / 8, t = i % 8, n = done_row0 + row;
      if (t >= T || n >= done.N) continue;
      const int from_lane = (row % 8) * 4 + t / 2, reg = (row / 8) * 2 + t % 2;
      float y = 0.f;
      for (int v = 0; v < warps; ++v) y += partial[parity][v][reg][from_lane];
      if (done.bias) y += __bfloat162float(done.bias[n]);
      done.y[int64_t(t) * done.N + n] = __float2bfloat16_rn(y);
    }
  }
}

// Blocks of `threads` threads of `kernel`, each with `dynamic_shared` bytes of dynamic shared memory
// (allowed it before: allow_smem), resident at once on the current device (asked once per device,
// kernel and block size).
int resident_blocks(const void* kernel, int threads, int dynamic_shared) {
  static std::mutex mutex;
  static std::map<std::tuple<int, const void*, int>, int> known;
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  const std::lock_guard<std::mutex> lock(mutex);
  auto [it, added] = known.emplace(std::make_tuple(device, kernel, threads), 0);
  if (added) {
    int blocks = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, dynamic_shared));
    it->second = std::max(1, cuda_multiprocessors() * blocks);
  }
  return it->second;
}

// Warps a tile's K is split over: as many as leave every warp at least kPrefetch groups, at most 8.
int mma_warps(int K) { return std::clamp(K / kMmaGroup / kPrefetch, 1, kMmaMaxWarps); }

// Launches `kernel` on `stream`; with after_u, right after lora_u_kernel, overlapping it where the GPU
// can (Hopper's programmatic dependent launch: the kernel's blocks start while lora_u_kernel's run,
// and wait for u where they read it, wait_for_prior_grids). u's kernel reads a few KB with few warps
// and took 3-10 µs of each call's 17-56 on an H100 (tools/perf_notes.md).
template <typename... Params, typename... Args>
void launch_gemv(void (*kernel)(Params...), unsigned blocks, unsigned threads, size_t dynamic_shared, bool after_u,
                 cudaStream_t stream, Args... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(blocks);
  config.blockDim = dim3(threads);
  config.dynamicSmemBytes = dynamic_shared;
  config.stream = stream;
  cudaLaunchAttribute overlap;
  overlap.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  overlap.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &overlap;
  config.numAttrs = after_u && LOOM_GPU_ARCH >= 90 ? 1 : 0;
  CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, args...));
}

// u_blocks: the blocks of the lora_u_kernel launched just before (0: none).
template <bool kNested>
void launch_mma(const MmaBatch& b, const bf16* x, int T, int K, int u_blocks, cudaStream_t stream) {
  constexpr auto kernel = lora_gemv_mma_kernel<kNested>;
  allow_smem<kernel>(kPairTableBytes);
  const int threads = mma_warps(K) * 32;
  // The tiles are dealt to blocks in turn, so every block must start at once: while u's blocks run
  // (after_u: u_blocks of them, each taking an SM's room for one of these at 96-112 registers a
  // thread and 73 KB of shared memory), that many fewer fit.
  const int room = resident_blocks(reinterpret_cast<const void*>(kernel), threads, kPairTableBytes) - u_blocks;
  const int blocks = std::min(b.tiles, std::max(1, room));
  launch_gemv(kernel, blocks, threads, kPairTableBytes, u_blocks > 0, stream, b, x, T, K);
}

void launch_mma(const GemvProjection* p, int count, const bf16* x, int T, int K, int u_blocks, cudaStream_t stream) {
  MmaBatch b;
  b.count = count;
  for (int i = 0; i < count; ++i) {
    b.p[i] = p[i];
    b.block_shift[i] = log2_exact(p[i].nf4.blocksize);
    b.nested_shift[i] = p[i].nf4.nested() ? log2_exact(p[i].nf4.nested_blocksize) : 0;
    b.tiles += int(ceil_div(p[i].N, kMmaRows));
  }
  if (p[0].nf4.nested())  // every projection's, or none's (lora_gemv_tensor_cores)
    launch_mma<true>(b, x, T, K, u_blocks, stream);
  else
    launch_mma<false>(b, x, T, K, u_blocks, stream);
}

unsigned blocks_for(int rows) { return unsigned(ceil_div(rows, kWarpsPerBlock)); }

template <int kRows>
void launch(const GemvBatch& b, const bf16* x, int K, bool nf4, bool wide, bool tensor_cores, cudaStream_t stream) {
  int adapter_rows = 0, rows = 0;
  for (int p = 0; p < b.count; ++p) adapter_rows += b.p[p].A ? b.p[p].R : 0, rows += b.p[p].N;
  const bool after_u = adapter_rows > 0;
  const int split = u_split(K);
  const int u_blocks = after_u ? int(blocks_for(adapter_rows * split)) : 0;
  if (after_u) lora_u_kernel<kRows><<<u_blocks, kWarpsPerBlock * 32, 0, stream>>>(b, x, K, split);
  const unsigned threads = kWarpsPerBlock * 32;
  if (tensor_cores)
    launch_mma(b.p, b.count, x, kRows, K, u_blocks, stream);
  else if (!nf4)
    launch_gemv(lora_gemv_kernel<kRows, 0>, blocks_for(rows), threads, 0, after_u, stream, b, x, K);
  else if (wide)
    launch_gemv(lora_gemv_kernel<kRows, 4>, blocks_for(rows), threads, 0, after_u, stream, b, x, K);
  else
    launch_gemv(lora_gemv_kernel<kRows, 1>, blocks_for(rows), threads, 0, after_u, stream, b, x, K);
}

}  // namespace

bool lora_gemv_tensor_cores(const GemvProjection* p, int count, int K) {
  if (K % kMmaGroup != 0) return false;
  for (int i = 0; i < count; ++i) {
    const Nf4Device& w = p[i].nf4;
    if (p[i].W || w.blocksize % kMmaGroup != 0 || log2_exact(w.blocksize) < 0) return false;
    if (w.nested() != p[0].nf4.nested()) return false;  // one kernel for each layout of the scales
    if (int64_t(p[i].N) * K > int64_t{UINT32_MAX}) return false;  // the kernel's 32-bit element indices
    if (w.nested() && log2_exact(w.nested_blocksize) < 0) return false;
  }
  return count > 0;
}

bool lora_gemv_tensor_cores_faster(int64_t T, int64_t weights) { return T >= 4 || weights >= (int64_t{1} << 24); }

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
  int64_t weights = 0;  // K · Σ N
  for (int i = 0; i < count; ++i) {
    const GemvProjection& q = p[i];
    weights += int64_t(q.N) * K;
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
  const bool tensor_cores = nf4 && lora_gemv_tensor_cores(p, count, K) && lora_gemv_tensor_cores_faster(T, weights);
  switch (T) {
    case 1: launch<1>(b, x, K, nf4, wide, tensor_cores, stream); break;
    case 2: launch<2>(b, x, K, nf4, wide, tensor_cores, stream); break;
    case 3: launch<3>(b, x, K, nf4, wide, tensor_cores, stream); break;
    case 4: launch<4>(b, x, K, nf4, wide, tensor_cores, stream); break;
    case 5: launch<5>(b, x, K, nf4, wide, tensor_cores, stream); break;
    case 6: launch<6>(b, x, K, nf4, wide, tensor_cores, stream); break;
    case 7: launch<7>(b, x, K, nf4, wide, tensor_cores, stream); break;
    default: launch<8>(b, x, K, nf4, wide, tensor_cores, stream); break;
  }
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace loom
