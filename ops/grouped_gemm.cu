// Grouped GEMMs over the experts on the GPU (math and tiling in ops/grouped_gemm.h).
#include "ops/grouped_gemm.h"

#include <cmath>
#include <string>
#include <type_traits>

#include "ops/kernel_util.cuh"
#include "ops/wgmma.cuh"

namespace loom {
namespace {

constexpr int kTile = kGroupedGemmTile;  // output tile rows (m) and columns (n)
constexpr int kStepK = 32;               // k per shared-memory step
constexpr int kPitch = kStepK + 8;       // shared row pitch: 80 bytes, so a warp's fragment loads hit 32 banks
constexpr int kThreads = 128;            // 4 warps, each a 32×32 quarter of the tile
// Y[row][col], Y[row][col + 1] = bf16(alpha · (a0, a1)), plus their old values when accumulating (in fp32,
// rounded once).
__device__ __forceinline__ void store_pair(bf16* Y, int64_t row, int N, int col, float alpha, float a0, float a1,
                                           bool accumulate) {
  __nv_bfloat162* out = reinterpret_cast<__nv_bfloat162*>(Y + row * N + col);
  float v0 = alpha * a0, v1 = alpha * a1;
  if (accumulate) {
    const float2 old = __bfloat1622float2(*out);
    v0 += old.x;
    v1 += old.y;
  }
  *out = __floats2bfloat162_rn(v0, v1);
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

struct RowTile {
  int group;     // -1: past the last group's tiles
  int row0;      // first row of the tile
  int rows;      // rows of the tile in its group (1 .. the tile's rows)
  int col;       // column tile (0 when the grid's y index gives it)
};

// Warp-wide (every lane gets the answer): which group's tile the block's `tile` is. Group e owns
// ceil(M_e / kRows) · cols consecutive tiles, groups in order: its row tiles of kRows rows for column
// tile 0, then for column tile 1, and so on (cols 1: the grid's y index gives the column). Lanes take
// 32 groups at a time and scan their tile counts.
template <int kRows>
__device__ RowTile find_row_tile(const int32_t* offsets, int E, int64_t tile, int cols = 1) {
  const int lane = threadIdx.x % 32;
  int64_t before = 0;  // tiles of the groups before this batch of 32
  for (int e0 = 0; e0 < E; e0 += 32) {
    const int e = e0 + lane;
    const int begin = e < E ? offsets[e] : 0, count = e < E ? offsets[e + 1] - begin : 0;
    const int row_tiles = (count + kRows - 1) / kRows, tiles = row_tiles * cols;
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
      const int group_row_tiles = __shfl_sync(0xffffffffu, row_tiles, src);
      const int row_tile = int(j) % group_row_tiles;
      return {e0 + src, group_begin + row_tile * kRows, min(kRows, group_count - row_tile * kRows),
              int(j) / group_row_tiles};
    }
    before += __shfl_sync(0xffffffffu, inclusive, 31);
  }
  return {-1, 0, 0, 0};
}

// ---------------------------------------------------------------------------------------------
// The mma.sync row kernels (nt / nn): kT×kT output tiles (64: GroupedGemmKernels::kNarrow, every N;
// 128: kWide, N >= kWideMinN), 2 (m) × kT / 32 (n) warps, each a kT / 2 × 32 piece (kT / 32 m16 × 4 n8
// MMA tiles); k steps of kStepK through kStages shared-memory stages that cp.async fills ahead
// (out-of-range vectors zero-filled); fragments by ldmatrix, .trans for nn's W (stored (K, N), n
// contiguous). Both run the MMAs over k in the same order of 16-wide chunks, so an output's bits are
// the same whichever computes it.

constexpr int kWideMinN = 128;  // narrower outputs (LoRA ranks) take the 64×64 kernel

// One k step of both operands: A (rows m, k contiguous); B as W_e lies: nt (n, k contiguous), nn (k, n
// contiguous; rows of kT + 8, so an ldmatrix's 8 row addresses hit distinct banks).
template <int kT, bool kWKMajor>
struct RowsStage {
  bf16 a[kT][kPitch];
  std::conditional_t<kWKMajor, bf16[kT][kPitch], bf16[kStepK][kT + 8]> b;
};

// This thread's copies of one k step (k0) into `st` (two vectors an operand; 2·kT threads): A's rows
// below a_rows; nt: W's rows n below n_lim; nn: W's rows k below K, columns n below n_lim (multiples
// of 8, so a vector is wholly in or out).
template <int kT, bool kWKMajor>
__device__ __forceinline__ void copy_rows_step(RowsStage<kT, kWKMajor>& st, const bf16* x, const bf16* w, int a_rows,
                                               int n_lim, int N, int K, int k0) {
  static_assert(kT == 64 || kT == 128, "2·kT threads copy kT·kStepK / 8 = 4·kT vectors an operand: two each");
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int idx = threadIdx.x + i * 2 * kT;
    const int m = idx / 4, k = (idx % 4) * 8;  // A and nt's W: 4 vectors along k per row
    const bool a_in = m < a_rows && k0 + k < K;
    cp_async_16(smem_addr(&st.a[m][k]), a_in ? x + int64_t(m) * K + k0 + k : x, a_in ? 16 : 0);
    if constexpr (kWKMajor) {
      const bool b_in = m < n_lim && k0 + k < K;
      cp_async_16(smem_addr(&st.b[m][k]), b_in ? w + int64_t(m) * K + k0 + k : w, b_in ? 16 : 0);
    } else {
      const int kk = idx / (kT / 8), n = (idx % (kT / 8)) * 8;  // kT / 8 vectors along n per k
      const bool b_in = k0 + kk < K && n < n_lim;
      cp_async_16(smem_addr(&st.b[kk][n]), b_in ? w + int64_t(k0 + kk) * N + n : w, b_in ? 16 : 0);
    }
  }
}

// The warp's MMAs over one stage: A fragments by ldmatrix.x4 (rows lane % 16, k half lane / 16); B
// fragments two n8 tiles at a time: nt by ldmatrix.x4 of (n, k) rows, nn by ldmatrix.x4.trans of
// (k, n) rows; registers 0..3 are (n8 tile 2p, k 0-7), (2p, k 8-15), (2p+1, k 0-7), (2p+1, k 8-15).
template <int kT, bool kWKMajor>
__device__ __forceinline__ void rows_mma_stage(float (&acc)[kT / 32][4][4], const RowsStage<kT, kWKMajor>& st, int wm,
                                               int wn) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int ks = 0; ks < kStepK; ks += 16) {
    uint32_t a[kT / 32][4], b[4][2];
#pragma unroll
    for (int mi = 0; mi < kT / 32; ++mi)
      ldmatrix_x4(a[mi], smem_addr(&st.a[wm + mi * 16 + lane % 16][ks + (lane / 16) * 8]));
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      uint32_t r[4];
      const int n = wn + p * 16;
      if constexpr (kWKMajor)
        ldmatrix_x4(r, smem_addr(&st.b[n + (lane / 16) * 8 + lane % 8][ks + ((lane / 8) % 2) * 8]));
      else
        ldmatrix_x4_trans(r, smem_addr(&st.b[ks + lane % 16][n + (lane / 16) * 8]));
      b[2 * p][0] = r[0], b[2 * p][1] = r[1], b[2 * p + 1][0] = r[2], b[2 * p + 1][1] = r[3];
    }
#pragma unroll
    for (int mi = 0; mi < kT / 32; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) mma_16816(acc[mi][ni], a[mi], b[ni][0], b[ni][1]);
  }
}

// Runs `steps` k steps through kStages shared-memory stages that cp.async fills kStages - 1 steps
// ahead: copy(stage, s) issues this thread's copies of step s into `stage`, multiply(stage) runs the
// warp's MMAs over one. One commit group per step (possibly empty), so the wait count stays fixed.
template <int kStages, class Stage, class Copy, class Multiply>
__device__ __forceinline__ void cp_async_steps(Stage (&stage)[kStages], int steps, Copy copy, Multiply multiply) {
  constexpr int kAhead = kStages - 1;  // steps in flight while one is multiplied
#pragma unroll
  for (int s = 0; s < kAhead; ++s) {
    if (s < steps) copy(stage[s], s);
    cp_async_commit();
  }
  for (int s = 0; s < steps; ++s) {
    cp_async_wait<kAhead - 1>();  // this thread's copies of step s have landed
    // Everyone's copies of step s are in, and everyone is past step s - 1's MMAs, whose stage the
    // copies below refill.
    __syncthreads();
    if (s + kAhead < steps) copy(stage[(s + kAhead) % kStages], s + kAhead);
    cp_async_commit();
    multiply(stage[s % kStages]);
  }
}

// nt (kWKMajor) / nn: block (x, y) computes kT-row tile x (of the groups' tiles) × columns y·kT.
template <int kT, int kStages, bool kWKMajor>
__global__ void __launch_bounds__(2 * kT)
    grouped_rows_kernel(bf16* Y, const bf16* X, const bf16* W, int64_t w_stride, const int32_t* offsets, int E, int N,
                        int K, float alpha, bool accumulate) {
  __shared__ RowTile tile;
  __shared__ __align__(16) RowsStage<kT, kWKMajor> stage[kStages];
  if (threadIdx.x < 32) {
    const RowTile found = find_row_tile<kT>(offsets, E, blockIdx.x);
    if (threadIdx.x == 0) tile = found;
  }
  __syncthreads();
  if (tile.group < 0) return;  // the whole block: worst-case grid, fewer tiles this time
  const int n0 = blockIdx.y * kT, n_lim = N - n0;
  const bf16* x = X + int64_t(tile.row0) * K;
  // W_e's columns from n0: nt rows n0.. of (N, K); nn columns n0.. of (K, N).
  const bf16* w = W + tile.group * w_stride + (kWKMajor ? int64_t(n0) * K : int64_t(n0));
  constexpr int kWarpsN = kT / 32;
  const int warp = threadIdx.x / 32, wm = (warp / kWarpsN) * (kT / 2), wn = (warp % kWarpsN) * 32;
  float acc[kT / 32][4][4] = {};
  cp_async_steps(
      stage, (K + kStepK - 1) / kStepK,
      [&](RowsStage<kT, kWKMajor>& st, int s) {
        copy_rows_step<kT, kWKMajor>(st, x, w, tile.rows, n_lim, N, K, s * kStepK);
      },
      [&](const RowsStage<kT, kWKMajor>& st) { rows_mma_stage<kT, kWKMajor>(acc, st, wm, wn); });
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int mi = 0; mi < kT / 32; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = wm + mi * 16 + lane / 4 + 8 * half, c = wn + ni * 8 + 2 * (lane % 4);
        if (r >= tile.rows || c >= n_lim) continue;  // c even and N a multiple of 8: c + 1 < n_lim too
        store_pair(Y, tile.row0 + r, N, n0 + c, alpha, acc[mi][ni][2 * half], acc[mi][ni][2 * half + 1], accumulate);
      }
}

// Stages a kernel keeps in flight: the 64×64 kernel's operands are small (10 KB a stage), so four;
// the 128×128 kernel's two (20 KB a stage, 40 KB of static shared memory as before).
constexpr int kNarrowStages = 4, kWideStages = 2;

// ---------------------------------------------------------------------------------------------
// The Hopper kernel (GPU_ARCH=90 builds, GroupedGemmKernels::kHopper): 128×256 output tiles, two
// warpgroups of 64 rows × 256 columns, each k16 of a step two wgmma m64n128k16 with both operands in
// shared memory (ops/wgmma.cuh); k steps of 64 (one 128-byte swizzle row) through kHopperStages stages
// that cp.async fills two steps ahead, the products of one step in flight while the next is issued.
// A and nt's W are K-major tiles, nn's W (stored (K, N)) an MN-major one. The blocks walk the groups
// expert by expert, an expert's row tiles for column tile 0, then for column tile 1 ...: the blocks
// running at once share a few experts' weights and rows in L2 instead of streaming every expert's W
// once per row tile. wgmma sums a k16 chunk in its own order, so an output's bits may differ from
// the mma.sync kernels' by fp32 rounding.

constexpr int kHopperRows = 128, kHopperCols = 256, kHopperStepK = 64, kHopperThreads = 256;
constexpr int kHopperStages = 4;  // two steps of copies in flight, one of products, one being issued
constexpr uint32_t kHopperABytes = kHopperRows * kHopperStepK * sizeof(bf16);   // 16 KB
constexpr uint32_t kHopperBBytes = kHopperCols * kHopperStepK * sizeof(bf16);   // 32 KB
constexpr uint32_t kHopperStageBytes = kHopperABytes + kHopperBBytes;
constexpr size_t kHopperSmemBytes = 1024 + kHopperStages * kHopperStageBytes;  // + alignment slack

// This thread's copies of one k step (k0) into the stage at shared address `stage`: A's rows below
// a_rows (K-major, 8 chunks a row); nt's W rows n below n_lim (K-major); nn's W rows k below K,
// columns below n_lim (MN-major, 32 chunks a row: 4 column blocks of 64). Chunks out of range are
// zero-filled (K, N multiples of 8: a chunk is wholly in or out).
template <bool kWKMajor>
__device__ __forceinline__ void copy_hopper_step(uint32_t stage, const bf16* x, const bf16* w, int a_rows, int n_lim,
                                                 int N, int K, int k0) {
#pragma unroll
  for (int i = 0; i < kHopperRows * 8 / kHopperThreads; ++i) {
    const int idx = threadIdx.x + i * kHopperThreads, m = idx / 8, c = idx % 8;
    const bool in = m < a_rows && k0 + c * 8 < K;
    cp_async_16(stage + wgmma::swizzled_offset(kHopperRows, m, c), in ? x + int64_t(m) * K + k0 + c * 8 : x,
                in ? 16 : 0);
  }
  const uint32_t b = stage + kHopperABytes;
#pragma unroll
  for (int i = 0; i < kHopperCols * 8 / kHopperThreads; ++i) {
    const int idx = threadIdx.x + i * kHopperThreads;
    if constexpr (kWKMajor) {
      const int n = idx / 8, c = idx % 8;
      const bool in = n < n_lim && k0 + c * 8 < K;
      cp_async_16(b + wgmma::swizzled_offset(kHopperCols, n, c), in ? w + int64_t(n) * K + k0 + c * 8 : w,
                  in ? 16 : 0);
    } else {
      const int k = idx / 32, c = idx % 32;
      const bool in = k0 + k < K && c * 8 < n_lim;
      cp_async_16(b + wgmma::swizzled_offset(kHopperStepK, k, c), in ? w + int64_t(k0 + k) * N + c * 8 : w,
                  in ? 16 : 0);
    }
  }
}

#ifdef LOOM_WGMMA
// Issues this warpgroup's products of one stage (not committed): acc[h] (its 64 rows × columns
// 128 h..128 h + 127) += A · W_eᵀ over the step's 64 k.
template <bool kWKMajor>
__device__ __forceinline__ void issue_hopper_step(float (&acc)[2][16][4], uint32_t stage, int wg) {
  const uint32_t a = stage + wg * 64 * 128;  // the warpgroup's rows: 8 swizzle atoms in
  const uint32_t b = stage + kHopperABytes;
#pragma unroll
  for (int kk = 0; kk < kHopperStepK / 16; ++kk)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      // nt: W rows 128 h.. (16 KB in); nn: column blocks 2 h, 2 h + 1 (2 x 8 KB in).
      const uint64_t wd = kWKMajor ? wgmma::kmajor_slice(b + h * 128 * 128, kHopperCols, kk)
                                   : wgmma::mnmajor_slice(b + h * 2 * kHopperStepK * 128, kHopperStepK, kk);
      wgmma::wgmma_m64n128k16_ss<0, kWKMajor ? 0 : 1>(acc[h], wgmma::kmajor_slice(a, kHopperRows, kk), wd, 1);
    }
}

// acc *= f, every accumulator this thread holds.
__device__ __forceinline__ void scale_accumulators(float (&acc)[2][16][4], float f) {
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int n = 0; n < 16; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[h][n][i] *= f;
}
#endif

// nt (kWKMajor) / nn on Hopper: block b computes tile b of the expert-major walk (find_row_tile with
// the column tiles); blocks past the last group's tiles exit. Y = a.alpha·a.X·a.Wᵀ + b.alpha·b.X·b.Wᵀ:
// b's k steps (none when b.K = 0) follow a's into the same accumulators, which are scaled by
// a.alpha / b.alpha between the two (b.alpha != 0), so that one final b.alpha gives the sum.
template <bool kWKMajor>
__global__ void __launch_bounds__(kHopperThreads, 1)
    grouped_rows_hopper_kernel(bf16* Y, GroupedTerm a, GroupedTerm b, const int32_t* offsets, int E, int N,
                               bool accumulate) {
#ifdef LOOM_WGMMA
  extern __shared__ unsigned char smem[];
  __shared__ RowTile tile;
  if (threadIdx.x < 32) {
    const RowTile found = find_row_tile<kHopperRows>(offsets, E, blockIdx.x, (N + kHopperCols - 1) / kHopperCols);
    if (threadIdx.x == 0) tile = found;
  }
  __syncthreads();
  if (tile.group < 0) return;  // the whole block: worst-case grid, fewer tiles this time
  const uint32_t base = smem_addr(smem) + ((1024u - (smem_addr(smem) & 1023u)) & 1023u);  // swizzle alignment
  auto stage = [&](int s) { return base + uint32_t(s % kHopperStages) * kHopperStageBytes; };
  const int n0 = tile.col * kHopperCols, n_lim = N - n0;
  // A term's tile origin: its rows from row0 of X, W_e's columns from n0 (nt rows n0.. of (N, K); nn
  // columns n0.. of (K, N)).
  auto x_of = [&](const GroupedTerm& t) { return t.X + int64_t(tile.row0) * t.K; };
  auto w_of = [&](const GroupedTerm& t) {
    return t.W + tile.group * t.w_stride + (kWKMajor ? int64_t(n0) * t.K : int64_t(n0));
  };
  const bf16 *xa = x_of(a), *wa = w_of(a), *xb = b.K > 0 ? x_of(b) : nullptr, *wb = b.K > 0 ? w_of(b) : nullptr;
  const int wg = threadIdx.x / 128, a_steps = (a.K + kHopperStepK - 1) / kHopperStepK;
  const int steps = a_steps + (b.K + kHopperStepK - 1) / kHopperStepK;
  auto copy_step = [&](int s) {
    if (s < a_steps)
      copy_hopper_step<kWKMajor>(stage(s), xa, wa, tile.rows, n_lim, N, a.K, s * kHopperStepK);
    else
      copy_hopper_step<kWKMajor>(stage(s), xb, wb, tile.rows, n_lim, N, b.K, (s - a_steps) * kHopperStepK);
  };
  constexpr int kAhead = kHopperStages - 2;  // steps whose copies are in flight when a step's products issue
#pragma unroll
  for (int s = 0; s < kAhead; ++s) {
    if (s < steps) copy_step(s);
    cp_async_commit();  // possibly empty: one group per step keeps the wait count fixed
  }
  float acc[2][16][4] = {};
  for (int s = 0; s < steps; ++s) {
    cp_async_wait<kAhead - 1>();  // this thread's copies of step s have landed
    wgmma::fence_async_shared();  // ... and are visible to wgmma
    // Every thread's copies of step s are in; every warpgroup's products of step s - 2 are done
    // (each waited for them in step s - 1), so their stage may be refilled.
    __syncthreads();
    if (s + kAhead < steps) copy_step(s + kAhead);
    cp_async_commit();
    if (s == a_steps) {  // a's sum is complete once its last products are: rescale it for b's
      wgmma::wait<0>();
      wgmma::fence_registers(acc[0]);
      wgmma::fence_registers(acc[1]);
      scale_accumulators(acc, a.alpha / b.alpha);
    }
    wgmma::fence_registers(acc[0]);  // the zeroing (and scaling) above stays before the fence
    wgmma::fence_registers(acc[1]);
    wgmma::fence();
    // Every k16 slice, also a partial last step's zeros: with the count known only at run time ptxas
    // injects warpgroup fences (warning C7519), even behind a uniform branch per count.
    issue_hopper_step<kWKMajor>(acc, stage(s), wg);
    wgmma::commit();
    wgmma::wait<1>();  // step s - 1's products are done
  }
  const float alpha = b.K > 0 ? b.alpha : a.alpha;
  wgmma::wait<0>();
  wgmma::fence_registers(acc[0]);
  wgmma::fence_registers(acc[1]);
  const int warp = (threadIdx.x / 32) % 4, g = (threadIdx.x % 32) / 4, c = threadIdx.x % 4;
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int n = 0; n < 16; ++n)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = wg * 64 + warp * 16 + g + 8 * half, col = h * 128 + n * 8 + 2 * c;
        if (r >= tile.rows || col >= n_lim) continue;  // col even and N a multiple of 8: col + 1 < n_lim too
        store_pair(Y, tile.row0 + r, N, n0 + col, alpha, acc[h][n][2 * half], acc[h][n][2 * half + 1], accumulate);
      }
#else
  __trap();  // launched only from GPU_ARCH=90 builds (launch_rows)
#endif
}

// tn: block (x, y, e) computes D_e's tile rows y·kTile (n of Y) × columns x·kTile (k of X), summing
// over the group's rows in steps of kStepK through kTnStages shared stages that cp.async fills ahead.
// Both operands stay in shared memory as they lie in global memory, rows of the group by n (Y) or k
// (X), and ldmatrix.trans reads them as fragments: A = Yᵀ (n, row) pairs along the rows, B = X the
// same (as the wide kernel's nn W). The MMAs run over the rows in the order the register-staged
// 64×64 kernel ran them (32-row slices, two k16 each), so the sums are the same.
constexpr int kTnStages = 4;
constexpr int kTnPitch = kTile + 8;  // 144-byte rows: the 8 row addresses of an ldmatrix hit distinct banks

struct TnStage {
  bf16 y[kStepK][kTnPitch];  // rows of Y, columns n0..n0 + 63
  bf16 x[kStepK][kTnPitch];  // rows of X, columns k0..k0 + 63
};

// This thread's copies of the 32 rows from `row` (of `rows`): 8 vectors a row and operand.
__device__ __forceinline__ void copy_tn_step(TnStage& st, const bf16* y, const bf16* x, int N, int K, int n_lim,
                                             int k_lim, int row, int rows) {
#pragma unroll
  for (int i = 0; i < kStepK * 8 / kThreads; ++i) {
    const int idx = threadIdx.x + i * kThreads, r = idx / 8, c = (idx % 8) * 8;
    const bool row_in = row + r < rows;
    const bool y_in = row_in && c < n_lim, x_in = row_in && c < k_lim;
    cp_async_16(smem_addr(&st.y[r][c]), y_in ? y + int64_t(row + r) * N + c : y, y_in ? 16 : 0);
    cp_async_16(smem_addr(&st.x[r][c]), x_in ? x + int64_t(row + r) * K + c : x, x_in ? 16 : 0);
  }
}

// The warp's MMAs over one stage (its 32 × 32 quarter at n wm, k wn). A fragments of Yᵀ: matrix i of
// the x4 covers n + 8·(i % 2), rows + 8·(i / 2); B fragments of X as the wide kernel's nn W.
__device__ __forceinline__ void tn_mma_stage(Acc& acc, const TnStage& st, int wm, int wn) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int ks = 0; ks < kStepK; ks += 16) {
    uint32_t a[2][4], b[4][2];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
      ldmatrix_x4_trans(a[mi], smem_addr(&st.y[ks + (lane / 16) * 8 + lane % 8][wm + mi * 16 + ((lane / 8) % 2) * 8]));
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      uint32_t r[4];
      ldmatrix_x4_trans(r, smem_addr(&st.x[ks + lane % 16][wn + p * 16 + (lane / 16) * 8]));
      b[2 * p][0] = r[0], b[2 * p][1] = r[1], b[2 * p + 1][0] = r[2], b[2 * p + 1][1] = r[3];
    }
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) mma_16816(acc[mi][ni], a[mi], b[ni][0], b[ni][1]);
  }
}

__global__ void __launch_bounds__(kThreads)
    grouped_tn_kernel(float* D, int64_t d_stride, const bf16* Y, const bf16* X, const int32_t* offsets, int N, int K,
                      float alpha) {
  __shared__ __align__(16) TnStage stage[kTnStages];
  const int e = blockIdx.z, row0 = offsets[e], rows = offsets[e + 1] - row0;
  if (rows == 0) return;
  const int n0 = blockIdx.y * kTile, k0 = blockIdx.x * kTile;
  const bf16* y = Y + int64_t(row0) * N + n0;
  const bf16* x = X + int64_t(row0) * K + k0;
  const int warp = threadIdx.x / 32, wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  Acc acc = {};
  cp_async_steps(
      stage, (rows + kStepK - 1) / kStepK,
      [&](TnStage& st, int s) { copy_tn_step(st, y, x, N, K, N - n0, K - k0, s * kStepK, rows); },
      [&](const TnStage& st) { tn_mma_stage(acc, st, wm, wn); });
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

// kAuto's kernel for N >= kWideMinN: the fastest of the build on the expert products of
// build/grouped_gemm_bench (H200, 2026-12-07, tools/perf_notes.md): Hopper 312-472 TFLOP/s, the 128×128
// mma.sync kernel 185-293, the 64×64 one 64-136; each passed GroupedGemmGpu against the reference there.
GroupedGemmKernels fastest_wide_kernel() {
  return grouped_gemm_hopper_built() ? GroupedGemmKernels::kHopper : GroupedGemmKernels::kWide;
}

// One term with the 64×64 or the 128×128 mma.sync kernel.
template <bool kWKMajor>
void launch_rows_mma_sync(GroupedGemmKernels kernel, bf16* Y, const GroupedTerm& t, const int32_t* offsets, int E,
                          int64_t rows, int N, bool accumulate, cudaStream_t stream) {
  if (kernel == GroupedGemmKernels::kWide) {
    const dim3 grid(unsigned(ceil_div(rows, 128) + E), unsigned(ceil_div(N, 128)));
    grouped_rows_kernel<128, kWideStages, kWKMajor>
        <<<grid, 256, 0, stream>>>(Y, t.X, t.W, t.w_stride, offsets, E, N, t.K, t.alpha, accumulate);
  } else {
    const dim3 grid(unsigned(ceil_div(rows, kTile) + E), unsigned(ceil_div(N, kTile)));
    grouped_rows_kernel<kTile, kNarrowStages, kWKMajor>
        <<<grid, 2 * kTile, 0, stream>>>(Y, t.X, t.W, t.w_stride, offsets, E, N, t.K, t.alpha, accumulate);
  }
  CUDA_CHECK(cudaGetLastError());
}

// Y = a + b (+ Y): the Hopper kernel takes both terms in one launch (where |a.alpha / b.alpha| is
// within 2^±32); otherwise b is a second launch accumulating onto a's rounded result.
template <bool kWKMajor>
void launch_rows(const char* what, bf16* Y, const GroupedTerm& a, const GroupedTerm& b, const int32_t* offsets,
                 int E, int64_t rows, int N, bool accumulate, cudaStream_t stream, GroupedGemmKernels kernels) {
  check_shape(what, E, N, a.K, a.w_stride, {Y, a.X, a.W});
  const bool has_b = b.X != nullptr;
  if (has_b) check_shape((std::string(what) + "'s second term").c_str(), E, N, b.K, b.w_stride, {b.X, b.W});
  LOOM_CHECK(rows >= 0 && rows <= INT32_MAX, what, ": ", rows, " rows (at most 2^31 - 1)");
  LOOM_CHECK(kernels != GroupedGemmKernels::kHopper || grouped_gemm_hopper_built(), what,
             ": the Hopper kernel needs a GPU_ARCH=90 build");
  if (rows == 0) return;
  const GroupedGemmKernels kernel = N < kWideMinN                         ? GroupedGemmKernels::kNarrow
                                    : kernels == GroupedGemmKernels::kAuto ? fastest_wide_kernel()
                                                                           : kernels;
  if (kernel != GroupedGemmKernels::kHopper) {
    launch_rows_mma_sync<kWKMajor>(kernel, Y, a, offsets, E, rows, N, accumulate, stream);
    if (has_b) launch_rows_mma_sync<kWKMajor>(kernel, Y, b, offsets, E, rows, N, true, stream);
    return;
  }
  // The accumulators are scaled by a.alpha / b.alpha: within 2^±32 neither a's sum nor its scaled
  // value leaves fp32's range or its normal numbers where the two launches' would not.
  const float ratio = has_b ? std::fabs(a.alpha / b.alpha) : 0.f;
  const bool fuse_b = has_b && ratio >= 0x1p-32f && ratio <= 0x1p32f;
  allow_smem<grouped_rows_hopper_kernel<kWKMajor>>(kHopperSmemBytes);
  const int64_t tiles = (ceil_div(rows, kHopperRows) + E) * ceil_div(N, kHopperCols);
  // Also keeps the tile scan's int counts in range.
  LOOM_CHECK(tiles <= INT32_MAX, what, ": ", tiles, " output tiles (at most 2^31 - 1)");
  grouped_rows_hopper_kernel<kWKMajor><<<unsigned(tiles), kHopperThreads, kHopperSmemBytes, stream>>>(
      Y, a, fuse_b ? b : GroupedTerm{}, offsets, E, N, accumulate);
  CUDA_CHECK(cudaGetLastError());
  if (has_b && !fuse_b) {
    grouped_rows_hopper_kernel<kWKMajor><<<unsigned(tiles), kHopperThreads, kHopperSmemBytes, stream>>>(
        Y, b, GroupedTerm{}, offsets, E, N, true);
    CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace

bool grouped_gemm_hopper_built() { return LOOM_GPU_ARCH == 90; }

void grouped_gemm_nt(bf16* Y, const bf16* X, const bf16* W, int64_t w_stride, const int32_t* offsets, int E,
                     int64_t rows, int N, int K, float alpha, bool accumulate, cudaStream_t stream,
                     GroupedGemmKernels kernels) {
  launch_rows<true>("grouped_gemm_nt", Y, {X, W, w_stride, K, alpha}, {}, offsets, E, rows, N, accumulate, stream,
                    kernels);
}

void grouped_gemm_nn(bf16* Y, const bf16* X, const bf16* W, int64_t w_stride, const int32_t* offsets, int E,
                     int64_t rows, int N, int K, float alpha, bool accumulate, cudaStream_t stream,
                     GroupedGemmKernels kernels) {
  launch_rows<false>("grouped_gemm_nn", Y, {X, W, w_stride, K, alpha}, {}, offsets, E, rows, N, accumulate, stream,
                     kernels);
}

void grouped_gemm_nt_sum(bf16* Y, const GroupedTerm& a, const GroupedTerm& b, const int32_t* offsets, int E,
                         int64_t rows, int N, bool accumulate, cudaStream_t stream, GroupedGemmKernels kernels) {
  LOOM_CHECK(b.X != nullptr, "grouped_gemm_nt_sum: the second term has no X");
  launch_rows<true>("grouped_gemm_nt_sum", Y, a, b, offsets, E, rows, N, accumulate, stream, kernels);
}

void grouped_gemm_nn_sum(bf16* Y, const GroupedTerm& a, const GroupedTerm& b, const int32_t* offsets, int E,
                         int64_t rows, int N, bool accumulate, cudaStream_t stream, GroupedGemmKernels kernels) {
  LOOM_CHECK(b.X != nullptr, "grouped_gemm_nn_sum: the second term has no X");
  launch_rows<false>("grouped_gemm_nn_sum", Y, a, b, offsets, E, rows, N, accumulate, stream, kernels);
}

void grouped_gemm_tn(float* D, int64_t d_stride, const bf16* Y, const bf16* X, const int32_t* offsets, int E, int N,
                     int K, float alpha, cudaStream_t stream) {
  check_shape("grouped_gemm_tn", E, N, K, d_stride, {D, Y, X});
  const dim3 grid(unsigned(ceil_div(K, kTile)), unsigned(ceil_div(N, kTile)), unsigned(E));
  grouped_tn_kernel<<<grid, kThreads, 0, stream>>>(D, d_stride, Y, X, offsets, N, K, alpha);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace loom
