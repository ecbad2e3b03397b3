// Grouped GEMMs over the experts on the GPU (math and tiling in ops/grouped_gemm.h).
#include "ops/grouped_gemm.h"
#include "ops/kernel_util.cuh"

namespace loom {
namespace {

constexpr int kTile = kGroupedGemmTile;  // output tile rows (m) and columns (n)
constexpr int kStepK = 32;               // k per shared-memory step
constexpr int kPitch = kStepK + 8;       // shared row pitch: 80 bytes, so a warp's fragment loads hit 32 banks
constexpr int kThreads = 128;            // 4 warps, each a 32×32 quarter of the tile
constexpr int kVecPerThread = kTile * kStepK / kBf16PerVec / kThreads;  // 16-byte loads per operand and step
static_assert(kVecPerThread == 2, "the loaders below assume two vectors per thread");

using SharedTile = bf16[kTile][kPitch];

// One operand of a tile product, seen from the tile's origin: element (m, k) lies at p[m·ld + k]
// (k-major: rows contiguous along k, as X and an nt weight) or at p[k·ld + m] (m-major: along m, as a
// transposed operand); m < m_lim and k < k_lim are in range, the rest reads as 0.
struct Operand {
  const bf16* p;
  int64_t ld;
  int m_lim, k_lim;
};

// This thread's two 16-byte vectors of the (kTile × kStepK) slice at k0. k-major: 4 vectors along k
// per row m; m-major: 8 vectors along m per k. Callers keep k_lim (k-major) or m_lim (m-major) a
// multiple of 8, so a vector is wholly in range or wholly out.
template <bool kKMajor>
__device__ __forceinline__ void load_slice(uint4 (&v)[kVecPerThread], const Operand& op, int k0) {
#pragma unroll
  for (int i = 0; i < kVecPerThread; ++i) {
    const int idx = threadIdx.x + i * kThreads;
    const int m = kKMajor ? idx / 4 : (idx % 8) * 8, k = kKMajor ? (idx % 4) * 8 : idx / 8;
    const bool in = m < op.m_lim && k0 + k < op.k_lim;
    const int64_t at = kKMajor ? m * op.ld + k0 + k : (k0 + k) * op.ld + m;
    v[i] = in ? *reinterpret_cast<const uint4*>(op.p + at) : make_uint4(0, 0, 0, 0);
  }
}

// Stores the vectors as s[m][k] (k contiguous, the layout the MMA fragments read); an m-major
// vector is 8 values of one k, written one by one.
template <bool kKMajor>
__device__ __forceinline__ void store_slice(SharedTile& s, const uint4 (&v)[kVecPerThread]) {
#pragma unroll
  for (int i = 0; i < kVecPerThread; ++i) {
    const int idx = threadIdx.x + i * kThreads;
    if (kKMajor) {
      *reinterpret_cast<uint4*>(&s[idx / 4][(idx % 4) * 8]) = v[i];
    } else {
      const bf16* values = reinterpret_cast<const bf16*>(&v[i]);
      const int m = (idx % 8) * 8, k = idx / 8;
#pragma unroll
      for (int j = 0; j < 8; ++j) s[m + j][k] = values[j];
    }
  }
}

__device__ __forceinline__ uint32_t pair_at(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }

// d += a·b for one m16n8k16 tile (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type").
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Accumulator of a warp's 32×32 quarter: [m16 tile][n8 tile][fragment]; fragment f holds row
// g + 8·(f / 2), column 2q + f % 2 of its 16×8 tile (g = lane / 4, q = lane % 4).
using Acc = float[2][4][4];

// f(r, c, v0, v1) for each pair of adjacent accumulator values this thread holds: row r, columns c and
// c + 1 (c even) of the block's 64×64 tile, warps 2×2 of 32×32 quarters.
template <class F>
__device__ __forceinline__ void for_each_pair(const Acc& acc, F&& f) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, wm = (warp / 2) * 32, wn = (warp % 2) * 32;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int half = 0; half < 2; ++half)
        f(wm + mi * 16 + lane / 4 + 8 * half, wn + ni * 8 + 2 * (lane % 4), acc[mi][ni][2 * half],
          acc[mi][ni][2 * half + 1]);
}

// The warp's MMAs over one shared slice: fragments from s[m][k] pairs (two adjacent k per register).
__device__ __forceinline__ void mma_slice(Acc& acc, const SharedTile& As, const SharedTile& Bs, int wm, int wn) {
  const int lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
#pragma unroll
  for (int ks = 0; ks < kStepK; ks += 16) {
    uint32_t a[2][4], b[4][2];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
      const int r = wm + mi * 16 + g, k = ks + 2 * q;
      a[mi][0] = pair_at(&As[r][k]);
      a[mi][1] = pair_at(&As[r + 8][k]);
      a[mi][2] = pair_at(&As[r][k + 8]);
      a[mi][3] = pair_at(&As[r + 8][k + 8]);
    }
#pragma unroll
    for (int ni = 0; ni < 4; ++ni) {
      const int c = wn + ni * 8 + g, k = ks + 2 * q;
      b[ni][0] = pair_at(&Bs[c][k]);
      b[ni][1] = pair_at(&Bs[c][k + 8]);
    }
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) mma_bf16(acc[mi][ni], a[mi], b[ni]);
  }
}

// acc = A·Bᵀ over k in [0, k_lim) for the block's tile: A (kTile × k), B (kTile × k) as Operands.
// The next slice's global loads are issued before this slice's MMAs.
template <bool kAKMajor, bool kBKMajor>
__device__ __forceinline__ void tile_product(Acc& acc, const Operand& a, const Operand& b, SharedTile& As,
                                             SharedTile& Bs) {
  const int warp = threadIdx.x / 32, wm = (warp / 2) * 32, wn = (warp % 2) * 32;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int f = 0; f < 4; ++f) acc[mi][ni][f] = 0.f;
  uint4 va[kVecPerThread], vb[kVecPerThread];
  load_slice<kAKMajor>(va, a, 0);
  load_slice<kBKMajor>(vb, b, 0);
  for (int k0 = 0; k0 < a.k_lim; k0 += kStepK) {
    store_slice<kAKMajor>(As, va);
    store_slice<kBKMajor>(Bs, vb);
    __syncthreads();
    if (k0 + kStepK < a.k_lim) {
      load_slice<kAKMajor>(va, a, k0 + kStepK);
      load_slice<kBKMajor>(vb, b, k0 + kStepK);
    }
    mma_slice(acc, As, Bs, wm, wn);
    __syncthreads();  // before the next slice overwrites the shared tiles
  }
}

struct RowTile {
  int group;     // -1: past the last group's tiles
  int row0;      // first row of the tile
  int rows;      // rows of the tile in its group (1 .. kTile)
};

// Warp-wide (every lane gets the answer): which group's tile the block's `tile` is. Group e owns
// ceil(M_e / kTile) consecutive tiles, groups in order; lanes take 32 groups at a time and scan their
// tile counts.
__device__ RowTile find_row_tile(const int32_t* offsets, int E, int64_t tile) {
  const int lane = threadIdx.x % 32;
  int64_t before = 0;  // tiles of the groups before this batch of 32
  for (int e0 = 0; e0 < E; e0 += 32) {
    const int e = e0 + lane;
    const int begin = e < E ? offsets[e] : 0, count = e < E ? offsets[e + 1] - begin : 0;
    const int tiles = (count + kTile - 1) / kTile;
    int inclusive = tiles;
    for (int offset = 1; offset < 32; offset *= 2) {
      const int below = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (lane >= offset) inclusive += below;
    }
    const int64_t first = before + inclusive - tiles;
    const unsigned hit = __ballot_sync(0xffffffffu, tile >= first && tile < first + tiles);
    if (hit) {
      const int src = __ffs(int(hit)) - 1;
      const int64_t j = tile - __shfl_sync(0xffffffffu, first, src);
      const int group_begin = __shfl_sync(0xffffffffu, begin, src);
      const int group_count = __shfl_sync(0xffffffffu, count, src);
      return {e0 + src, group_begin + int(j) * kTile, min(kTile, group_count - int(j) * kTile)};
    }
    before += __shfl_sync(0xffffffffu, inclusive, 31);
  }
  return {-1, 0, 0};
}

// nt (kWKMajor) / nn: block (x, y) computes row tile x (of the groups' tiles) × columns y·kTile.
template <bool kWKMajor>
__global__ void __launch_bounds__(kThreads)
    grouped_rows_kernel(bf16* Y, const bf16* X, const bf16* W, int64_t w_stride, const int32_t* offsets, int E, int N,
                        int K, float alpha, bool accumulate) {
  __shared__ RowTile tile;
  __shared__ __align__(16) SharedTile As, Bs;
  if (threadIdx.x < 32) {
    const RowTile found = find_row_tile(offsets, E, blockIdx.x);
    if (threadIdx.x == 0) tile = found;
  }
  __syncthreads();
  if (tile.group < 0) return;  // the whole block: worst-case grid, fewer tiles this time
  const int n0 = blockIdx.y * kTile;
  const bf16* w = W + tile.group * w_stride;
  const Operand a{X + int64_t(tile.row0) * K, K, tile.rows, K};
  // W_e (n, k): nt stores it (N, K), element at n·K + k; nn stores it (K, N), element at k·N + n.
  const Operand b = kWKMajor ? Operand{w + int64_t(n0) * K, K, N - n0, K} : Operand{w + n0, N, N - n0, K};
  Acc acc;
  tile_product<true, kWKMajor>(acc, a, b, As, Bs);
  for_each_pair(acc, [&](int r, int c, float a0, float a1) {
    c += n0;
    if (r >= tile.rows || c >= N) return;  // c even and N a multiple of 8: c + 1 < N too
    __nv_bfloat162* out = reinterpret_cast<__nv_bfloat162*>(Y + int64_t(tile.row0 + r) * N + c);
    float v0 = alpha * a0, v1 = alpha * a1;
    if (accumulate) {
      const float2 old = __bfloat1622float2(*out);
      v0 += old.x;
      v1 += old.y;
    }
    *out = __floats2bfloat162_rn(v0, v1);
  });
}

// tn: block (x, y, e) computes D_e's tile rows y·kTile (n of Y) × columns x·kTile (k of X), summing
// over the group's rows.
__global__ void __launch_bounds__(kThreads)
    grouped_tn_kernel(float* D, int64_t d_stride, const bf16* Y, const bf16* X, const int32_t* offsets, int N, int K,
                      float alpha) {
  __shared__ __align__(16) SharedTile As, Bs;
  const int e = blockIdx.z, row0 = offsets[e], rows = offsets[e + 1] - row0;
  if (rows == 0) return;
  const int n0 = blockIdx.y * kTile, k0 = blockIdx.x * kTile;
  // Both m-major: A (m = n, k = row) at Y[row·N + n], B (m = k, k = row) at X[row·K + k].
  const Operand a{Y + int64_t(row0) * N + n0, N, N - n0, rows};
  const Operand b{X + int64_t(row0) * K + k0, K, K - k0, rows};
  Acc acc;
  tile_product<false, false>(acc, a, b, As, Bs);
  float* d = D + e * d_stride;
  for_each_pair(acc, [&](int r, int c, float a0, float a1) {
    r += n0, c += k0;
    if (r >= N || c >= K) return;
    float2* out = reinterpret_cast<float2*>(d + int64_t(r) * K + c);
    float2 v = *out;
    v.x += alpha * a0;
    v.y += alpha * a1;
    *out = v;
  });
}

void check_shape(const char* what, int E, int N, int K, int64_t stride, std::initializer_list<const void*> pointers) {
  LOOM_CHECK(E >= 1 && E <= 65535 && N >= 8 && K >= 8 && N % 8 == 0 && K % 8 == 0 && stride % 8 == 0, what, ": ", E,
             " groups of (", N, ", ", K, ") matrices ", stride,
             " elements apart (need N, K and the stride multiples of 8, 1 <= E <= 65535)");
  LOOM_CHECK(all_aligned_16(pointers), what, ": every matrix must be 16-byte aligned");
}

template <bool kWKMajor>
void launch_rows(const char* what, bf16* Y, const bf16* X, const bf16* W, int64_t w_stride, const int32_t* offsets,
                 int E, int64_t rows, int N, int K, float alpha, bool accumulate, cudaStream_t stream) {
  check_shape(what, E, N, K, w_stride, {Y, X, W});
  LOOM_CHECK(rows >= 0 && rows <= INT32_MAX, what, ": ", rows, " rows (at most 2^31 - 1)");
  if (rows == 0) return;
  const dim3 grid(unsigned(ceil_div(rows, kTile) + E), unsigned(ceil_div(N, kTile)));
  grouped_rows_kernel<kWKMajor><<<grid, kThreads, 0, stream>>>(Y, X, W, w_stride, offsets, E, N, K, alpha, accumulate);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void grouped_gemm_nt(bf16* Y, const bf16* X, const bf16* W, int64_t w_stride, const int32_t* offsets, int E,
                     int64_t rows, int N, int K, float alpha, bool accumulate, cudaStream_t stream) {
  launch_rows<true>("grouped_gemm_nt", Y, X, W, w_stride, offsets, E, rows, N, K, alpha, accumulate, stream);
}

void grouped_gemm_nn(bf16* Y, const bf16* X, const bf16* W, int64_t w_stride, const int32_t* offsets, int E,
                     int64_t rows, int N, int K, float alpha, bool accumulate, cudaStream_t stream) {
  launch_rows<false>("grouped_gemm_nn", Y, X, W, w_stride, offsets, E, rows, N, K, alpha, accumulate, stream);
}

void grouped_gemm_tn(float* D, int64_t d_stride, const bf16* Y, const bf16* X, const int32_t* offsets, int E, int N,
                     int K, float alpha, cudaStream_t stream) {
  check_shape("grouped_gemm_tn", E, N, K, d_stride, {D, Y, X});
  const dim3 grid(unsigned(ceil_div(K, kTile)), unsigned(ceil_div(N, kTile)), unsigned(E));
  grouped_tn_kernel<<<grid, kThreads, 0, stream>>>(D, d_stride, Y, X, offsets, N, K, alpha);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace loom
