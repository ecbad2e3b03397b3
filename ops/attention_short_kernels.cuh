// Attention kernels for short documents (ops/attention_kernels.cuh has what the two families
// share; ops/attention.cu picks one per call): 64-token tiles.
//
// Forward, one block per (64-query tile, query head), 4 warps of 16 query rows each:
//   for each 32-key block, nearest the diagonal first:
//     S = Q K^T (mma.sync m16n8k16, fp32) ; online softmax in log2 units (m, l per row)
//     O = O * exp2(m_old - m_new) + P V    (P rounded to bf16 for the tensor cores)
//   out = O / l ; lse = ln 2 * (m + log2 l)
// K and V blocks are double-buffered in shared memory with cp.async. 32-key blocks: finer skipping
// of what a warp cannot see; with ~240-token documents this forward computes ~1.25x the visible pairs.
//
// Backward, one block per (64-key tile, kv head), 8 warps: warp (wm, wn) computes S^T and dP^T for
// keys 16*wm.. and queries 32*wn..; P^T and dS^T go through shared memory so that each warp then
// owns keys 16*wm.. and head dims (D/2)*wn.. of dK and dV, and queries 16*wm.. and head dims
// (D/2)*wn.. of dQ. The next query block's Q and dO tiles load while dS K and its atomics run.
// ~1.15x the visible pairs on ~240-token documents.
#pragma once
#include "ops/attention_kernels.cuh"

namespace loom::attn::short_docs {

constexpr int kTileTokens = 64;  // queries and keys per tile, forward and backward

// acc (16 x KEYS) += A (16 x D, fragments in registers) * B^T, B (KEYS x D) rows in shared memory at
// b_rows (row stride D + 8): the scores of a warp's 16 query rows against a block of keys.
template <int D, int KEYS>
__device__ __forceinline__ void mma_a_regs_bt_smem(float (&acc)[KEYS / 8][4], const uint32_t (&a)[D / 16][4],
                                                   const bf16* b_rows, int lane) {
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int np = 0; np < KEYS / 16; ++np) {
      uint32_t b[4];
      const bf16* src = b_rows + (np * 16 + (lane & 7) + (lane >> 4) * 8) * (D + 8) + kk * 16 + ((lane >> 3) & 1) * 8;
      ldmatrix_x4(b, smem_addr(src));
      mma_16816(acc[2 * np], a[kk], b[0], b[1]);
      mma_16816(acc[2 * np + 1], a[kk], b[2], b[3]);
    }
  }
}

// acc (16 x 8*NT) += A (16 x K) * B^T with both in shared memory: A rows at a_rows (stride a_ld),
// B (8*NT x K) rows at b_rows (stride b_ld). K a multiple of 16, NT even. Only the 16-row groups
// of B in the mask are computed.
template <int K, int NT, unsigned MASK>
__device__ __forceinline__ void mma_a_smem_bt_smem(float (&acc)[NT][4], const bf16* a_rows, int a_ld,
                                                   const bf16* b_rows, int b_ld, int lane, unsigned groups) {
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    uint32_t a[4];
    ldmatrix_x4(a, smem_addr(a_rows + (lane & 15) * a_ld + kk * 16 + (lane >> 4) * 8));
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      if (!in_mask<MASK>(groups, np)) continue;
      uint32_t b[4];
      const bf16* src = b_rows + (np * 16 + (lane & 7) + (lane >> 4) * 8) * b_ld + kk * 16 + ((lane >> 3) & 1) * 8;
      ldmatrix_x4(b, smem_addr(src));
      mma_16816(acc[2 * np], a, b[0], b[1]);
      mma_16816(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// acc (16 x 8*NT) += A (16 x K) * B, B (K x 8*NT) row-major in shared memory at b (stride b_ld):
// the "P V" shape. A_TRANS: A is stored transposed (K x 16, rows at a, stride a_ld). Only the
// 16-wide steps of K in the mask are computed (the others are known to be zero in A).
template <int K, int NT, bool A_TRANS, unsigned MASK>
__device__ __forceinline__ void mma_a_smem_b_smem(float (&acc)[NT][4], const bf16* a, int a_ld, const bf16* b,
                                                  int b_ld, int lane, unsigned ksteps) {
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    if (!in_mask<MASK>(ksteps, kk)) continue;
    uint32_t af[4];
    if (A_TRANS)
      ldmatrix_x4_trans(af, smem_addr(a + (kk * 16 + (lane & 7) + (lane >> 4) * 8) * a_ld + ((lane >> 3) & 1) * 8));
    else
      ldmatrix_x4(af, smem_addr(a + (lane & 15) * a_ld + kk * 16 + (lane >> 4) * 8));
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t bf[4];
      const bf16* src = b + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * b_ld + np * 16 + (lane >> 4) * 8;
      ldmatrix_x4_trans(bf, smem_addr(src));
      mma_16816(acc[2 * np], af, bf[0], bf[1]);
      mma_16816(acc[2 * np + 1], af, bf[2], bf[3]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Forward

template <int D>
struct FwdTile {
  static constexpr int kThreads = 128;  // 4 warps x 16 query rows
  // Keys per step. 32 rather than 64: finer skipping of the blocks a warp cannot see (short
  // documents), fewer registers (167 for D = 128) and less shared memory, so 3 blocks fit on an SM.
  // Measured on an H200, T = 16384 of ~240-token documents, H = 32, D = 128: 0.352 ms against
  // 0.389 ms with 64 keys (64 keys win on 2048-token documents, 1.98 ms against 2.11 ms).
  static constexpr int kKeys = 32;
  static constexpr int kStride = D + 8;  // padded row: the 8 rows of an ldmatrix hit distinct banks
  static constexpr int kQElems = kTileTokens * kStride;
  static constexpr int kKvElems = kKeys * kStride;
  static constexpr size_t kSmemBytes = (kQElems + 4 * kKvElems) * sizeof(bf16);  // Q, 2 x K, 2 x V
};

// o (16 x D) += P (16 x KEYS, the softmax fragments s, rounded to bf16) V, V (KEYS x D) in shared memory.
template <int D, int KEYS>
__device__ __forceinline__ void mma_p_v(float (&o)[D / 8][4], const float (&s)[KEYS / 8][4], const bf16* v_rows,
                                        int lane) {
#pragma unroll
  for (int kk = 0; kk < KEYS / 16; ++kk) {
    const uint32_t a[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                           pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                           pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t b[4];
      const bf16* src = v_rows + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * (D + 8) + dp * 16 + (lane >> 4) * 8;
      ldmatrix_x4_trans(b, smem_addr(src));
      mma_16816(o[2 * dp], a, b[0], b[1]);
      mma_16816(o[2 * dp + 1], a, b[2], b[3]);
    }
  }
}

template <int D>
__global__ void __launch_bounds__(FwdTile<D>::kThreads) attention_forward_kernel(const FwdParams p) {
  using Tile = FwdTile<D>;
  constexpr int kKeys = Tile::kKeys;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sK = sQ + Tile::kQElems;         // 2 buffers
  bf16* sV = sK + 2 * Tile::kKvElems;    // 2 buffers

  const int h = blockIdx.y;
  const int kvh = h / (p.H / p.KVH);
  const int i0 = blockIdx.x * kTileTokens;
  const int i1 = min(i0 + kTileTokens, p.T);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  const bf16* q_head = p.q + static_cast<int64_t>(h) * D;
  const bf16* k_head = p.k + static_cast<int64_t>(kvh) * D;
  const bf16* v_head = p.v + static_cast<int64_t>(kvh) * D;

  // Key blocks end at i1 so that the first ones hold the causal diagonal and every later one lies
  // wholly below it; the document lookups below overlap these loads.
  load_tile_async<D, Tile::kThreads, kTileTokens>(sQ, q_head, p.q_row_stride, i0, p.T);
  load_tile_async<D, Tile::kThreads, kKeys>(sK, k_head, p.k_row_stride, i1 - kKeys, p.T);
  load_tile_async<D, Tile::kThreads, kKeys>(sV, v_head, p.v_row_stride, i1 - kKeys, p.T);
  cp_async_commit();

  // Keys [key_lo, i1) hold everything any row of the tile sees.
  const int key_lo = lowest_visible_key(p, i0);
  const int max_row_lo = lowest_visible_key(p, i1 - 1);
  const int nblocks = (i1 - key_lo + kKeys - 1) / kKeys;

  // This thread's two query rows (fragment rows g and g + 8 of its warp's 16).
  int row[2], row_lo[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row[r] = i0 + warp * 16 + g + 8 * r;
    row_lo[r] = lowest_visible_key(p, min(row[r], p.T - 1));
  }
  // The warp's rows see keys in [warp_lo, warp_hi] only (lane 0 holds its first row); it skips
  // the blocks outside, while its block-mates may still need them.
  const int warp_lo = __shfl_sync(0xffffffffu, row_lo[0], 0);
  const int warp_hi = i0 + warp * 16 + 15;

  cp_async_wait_all();
  __syncthreads();
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
    ldmatrix_x4(qf[kk], smem_addr(sQ + (warp * 16 + (lane & 15)) * Tile::kStride + kk * 16 + (lane >> 4) * 8));

  float o[D / 8][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  for (int n = 0; n < nblocks; ++n) {
    const int j0 = i1 - (n + 1) * kKeys;
    const bf16* cK = sK + (n & 1) * Tile::kKvElems;
    const bf16* cV = sV + (n & 1) * Tile::kKvElems;
    if (n + 1 < nblocks) {
      load_tile_async<D, Tile::kThreads, kKeys>(sK + ((n + 1) & 1) * Tile::kKvElems, k_head, p.k_row_stride,
                                                j0 - kKeys, p.T);
      load_tile_async<D, Tile::kThreads, kKeys>(sV + ((n + 1) & 1) * Tile::kKvElems, v_head, p.v_row_stride,
                                                j0 - kKeys, p.T);
    }
    cp_async_commit();

    if (j0 <= warp_hi && j0 + kKeys - 1 >= warp_lo) {
      float s[kKeys / 8][4] = {};
      mma_a_regs_bt_smem<D, kKeys>(s, qf, cK, lane);
      // Masking is needed where the block crosses the causal diagonal or a row's lowest key.
      const bool need_mask = j0 + kKeys - 1 > i0 || j0 < max_row_lo;
      scale_and_mask<kKeys>(s, p.scale_log2, need_mask, j0, row[0], row_lo, lane);
      online_softmax<D, kKeys>(s, o, m, l);
      mma_p_v<D, kKeys>(o, s, cV, lane);
    }
    cp_async_wait_all();
    __syncthreads();
  }

  // Epilogue: normalise, stage this warp's 16 rows in its own rows of sQ, store 16 bytes a lane.
  bf16* sO = sQ + warp * 16 * Tile::kStride;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] = quad_sum(l[r]);
    float inv = 1.f / l[r];
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
      *reinterpret_cast<uint32_t*>(sO + (g + 8 * r) * Tile::kStride + dt * 8 + 2 * c) =
          pack_bf16(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
    if (c == 0 && row[r] < p.T)
      p.lse[static_cast<int64_t>(row[r]) * p.H + h] = kLn2 * (m[r] + __log2f(l[r]));
  }
  __syncwarp();
  constexpr int kChunksPerRow = D / 8;
#pragma unroll
  for (int it = 0; it < 16 * kChunksPerRow / 32; ++it) {
    int chunk = it * 32 + lane;
    int r = chunk / kChunksPerRow, col = (chunk % kChunksPerRow) * 8;
    int t = i0 + warp * 16 + r;
    if (t < p.T)
      *reinterpret_cast<uint4*>(p.out + static_cast<int64_t>(t) * p.out_row_stride + static_cast<int64_t>(h) * D + col) =
          *reinterpret_cast<const uint4*>(sO + r * Tile::kStride + col);
  }
}

// ---------------------------------------------------------------------------------------------
// Backward

template <int D>
struct BwdTile {
  static constexpr int kThreads = 256;   // 8 warps: 4 key slices x 2 query (or head-dim) halves
  // 2 blocks (16 warps) per SM caps registers at 128 (D = 128 spills 64 bytes); 1 block with 197
  // registers ran 6% slower on the target workload.
  static constexpr int kMinBlocks = 2;
  static constexpr int kStride = D + 8;  // padded rows, as in the forward
  static constexpr int kPStride = kTileTokens + 8;
  static constexpr int kTileElems = kTileTokens * kStride;
  static constexpr int kPElems = kTileTokens * kPStride;
  static constexpr int kHalfD = D / 2;
  // K, V, Q, dO tiles; P^T and dS^T (keys x queries); lse*log2e, delta and row_lo per query row.
  static constexpr size_t kSmemBytes =
      (4 * kTileElems + 2 * kPElems) * sizeof(bf16) + kTileTokens * (2 * sizeof(float) + sizeof(int));
};

// S^T and dP^T of a warp: keys (16 rows at k_rows, v_rows) x queries (32 rows at q_rows,
// do_rows), over the 16-query groups in MASK (1, 2 or 3). Row strides D + 8.
template <int D, unsigned MASK>
__device__ __forceinline__ void scores_transposed(float (&st)[4][4], float (&dpt)[4][4], const bf16* k_rows,
                                                  const bf16* v_rows, const bf16* q_rows, const bf16* do_rows,
                                                  int lane) {
  mma_a_smem_bt_smem<D, 4, MASK>(st, k_rows, D + 8, q_rows, D + 8, lane, MASK);
  mma_a_smem_bt_smem<D, 4, MASK>(dpt, v_rows, D + 8, do_rows, D + 8, lane, MASK);
}

template <int D>
__global__ void __launch_bounds__(BwdTile<D>::kThreads, BwdTile<D>::kMinBlocks) attention_backward_kernel(const BwdParams p) {
  using Tile = BwdTile<D>;
  constexpr int kDTiles = Tile::kHalfD / 8;  // n-tiles of a warp's half of the head dim
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sK = reinterpret_cast<bf16*>(smem);
  bf16* sV = sK + Tile::kTileElems;
  bf16* sQ = sV + Tile::kTileElems;
  bf16* sdO = sQ + Tile::kTileElems;
  bf16* sP = sdO + Tile::kTileElems;  // P^T  (keys x queries)
  bf16* sdS = sP + Tile::kPElems;     // dS^T (keys x queries)
  float* sLse = reinterpret_cast<float*>(sdS + Tile::kPElems);  // lse * log2(e)
  float* sDelta = sLse + kTileTokens;
  int* sRowLo = reinterpret_cast<int*>(sDelta + kTileTokens);

  const int kvh = blockIdx.y;
  const int group = p.H / p.KVH;
  const int j0 = blockIdx.x * kTileTokens;
  const int j_last = min(j0 + kTileTokens, p.T) - 1;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  const int wm = warp & 3, wn = warp >> 2;
  const int key_row0 = wm * 16;  // this warp's keys within the tile, for S^T, dP^T, dK, dV
  const int q_col0 = wn * 32;    // its queries within the block, for S^T and dP^T
  const int d_col0 = wn * Tile::kHalfD;
  // Queries [j0, q_end) see some key of the tile; query blocks start at j0, so the first is the
  // causal diagonal and every later one lies wholly above it. Iteration `it` takes query block
  // it / group of head kvh * group + it % group: the heads of a block share its row data.
  const int iters = group * ((query_end_for_key(p, j_last) - j0 + kTileTokens - 1) / kTileTokens);
  auto block_start = [&](int it) { return j0 + (it / group) * kTileTokens; };
  auto head_of = [&](int it) { return kvh * group + it % group; };
  auto load_query_tiles = [&](int it) {
    const int64_t head = static_cast<int64_t>(head_of(it)) * D;
    load_tile_async<D, Tile::kThreads, kTileTokens>(sQ, p.q + head, p.q_row_stride, block_start(it), p.T);
    load_tile_async<D, Tile::kThreads, kTileTokens>(sdO, p.dout + head, p.dout_row_stride, block_start(it), p.T);
  };
  // Per-row data of thread t < 64's query row. Rows past T: lse = +inf makes P = 0, delta = 0
  // keeps dS = 0.
  auto row_lse = [&](int it) {
    const int i = block_start(it) + threadIdx.x;
    return i < p.T ? p.lse[static_cast<int64_t>(i) * p.H + head_of(it)] * kLog2e : INFINITY;
  };
  auto row_delta = [&](int it) {
    const int i = block_start(it) + threadIdx.x;
    return i < p.T ? p.delta[static_cast<int64_t>(i) * p.H + head_of(it)] : 0.f;
  };
  auto row_lo = [&](int it) {  // found once per token by the prep kernel
    const int i = block_start(it) + threadIdx.x;
    return i < p.T ? p.row_lo[i] : 0;
  };

  load_tile_async<D, Tile::kThreads, kTileTokens>(sK, p.k + static_cast<int64_t>(kvh) * D, p.k_row_stride, j0, p.T);
  load_tile_async<D, Tile::kThreads, kTileTokens>(sV, p.v + static_cast<int64_t>(kvh) * D, p.v_row_stride, j0, p.T);
  load_query_tiles(0);
  cp_async_commit();
  if (threadIdx.x < kTileTokens) {
    sLse[threadIdx.x] = row_lse(0);
    sDelta[threadIdx.x] = row_delta(0);
    sRowLo[threadIdx.x] = row_lo(0);
  }

  float dk[kDTiles][4], dv[kDTiles][4];
  zero(dk);
  zero(dv);
  for (int it = 0; it < iters; ++it) {
    const int i0 = block_start(it), h = head_of(it);
    cp_async_wait_all();
    __syncthreads();

    // 16-key group kg and 16-query group qg share a visible pair (or may: the test is exact unless
    // a document starts inside the query group). Pairs of groups that share none are all zero.
    auto visible = [&](int kg, int qg) {
      const int ka = j0 + 16 * kg, qa = i0 + 16 * qg;
      return qa < p.T && qa + 15 >= ka && sRowLo[16 * qg] <= ka + 15;
    };
    unsigned query_groups = 0, key_groups = 0;  // seen by this warp's keys; seeing its queries
#pragma unroll
    for (int q4 = 0; q4 < 4; ++q4) {
      query_groups |= unsigned(visible(wm, q4)) << q4;
      key_groups |= unsigned(visible(q4, wm)) << q4;
    }

    // Stage 1: S^T and dP^T for keys key_row0.. x queries q_col0.. (query groups 2 wn, 2 wn + 1);
    // P^T and dS^T to shared memory.
    const unsigned my_groups = (query_groups >> (2 * wn)) & 3u;
    float st[4][4], dpt[4][4];
    zero(st);
    zero(dpt);
    const bf16 *k_rows = sK + key_row0 * Tile::kStride, *v_rows = sV + key_row0 * Tile::kStride;
    const bf16 *q_rows = sQ + q_col0 * Tile::kStride, *do_rows = sdO + q_col0 * Tile::kStride;
    if (my_groups == 3u)
      scores_transposed<D, 3u>(st, dpt, k_rows, v_rows, q_rows, do_rows, lane);
    else if (my_groups == 1u)
      scores_transposed<D, 1u>(st, dpt, k_rows, v_rows, q_rows, do_rows, lane);
    else if (my_groups == 2u)
      scores_transposed<D, 2u>(st, dpt, k_rows, v_rows, q_rows, do_rows, lane);
    const bool need_mask = i0 == j0 || sRowLo[min(kTileTokens, p.T - i0) - 1] > j0;
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float pr[2] = {0.f, 0.f}, ds[2] = {0.f, 0.f};
        if (in_mask<0>(my_groups, nt / 2)) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int qi = q_col0 + nt * 8 + 2 * c + e;
            float x = st[nt][2 * r + e] * p.scale_log2;
            if (need_mask) {
              const int j = j0 + key_row0 + g + 8 * r;
              if (j < sRowLo[qi] || j > i0 + qi) x = -INFINITY;
            }
            pr[e] = fast_exp2(x - sLse[qi]);
            ds[e] = pr[e] * (dpt[nt][2 * r + e] - sDelta[qi]);
          }
        }
        const int off = (key_row0 + g + 8 * r) * Tile::kPStride + q_col0 + nt * 8 + 2 * c;
        *reinterpret_cast<uint32_t*>(sP + off) = pack_bf16(pr[0], pr[1]);
        *reinterpret_cast<uint32_t*>(sdS + off) = pack_bf16(ds[0], ds[1]);
      }
    __syncthreads();

    // Stage 2: dV += P^T dO and dK += dS^T Q for keys key_row0.. x head dims d_col0.., over the
    // query groups these keys see.
    const bf16 *p_rows = sP + key_row0 * Tile::kPStride, *ds_rows = sdS + key_row0 * Tile::kPStride;
    if (query_groups == 0xFu) {
      mma_a_smem_b_smem<kTileTokens, kDTiles, false, 0xFu>(dv, p_rows, Tile::kPStride, sdO + d_col0, Tile::kStride,
                                                            lane, query_groups);
      mma_a_smem_b_smem<kTileTokens, kDTiles, false, 0xFu>(dk, ds_rows, Tile::kPStride, sQ + d_col0, Tile::kStride,
                                                            lane, query_groups);
    } else if (query_groups != 0) {
      mma_a_smem_b_smem<kTileTokens, kDTiles, false, 0>(dv, p_rows, Tile::kPStride, sdO + d_col0, Tile::kStride,
                                                         lane, query_groups);
      mma_a_smem_b_smem<kTileTokens, kDTiles, false, 0>(dk, ds_rows, Tile::kPStride, sQ + d_col0, Tile::kStride,
                                                         lane, query_groups);
    }
    __syncthreads();  // sQ, sdO and the row data are free for the next query block

    // Fetch the next query block while stage 3 runs: tiles by cp.async, row data into registers
    // now and into shared memory after stage 3.
    const bool has_next = it + 1 < iters;
    float next_lse = INFINITY, next_delta = 0.f;
    if (has_next) {
      load_query_tiles(it + 1);
      cp_async_commit();
      if (threadIdx.x < kTileTokens) {
        next_lse = row_lse(it + 1);
        next_delta = row_delta(it + 1);
      }
    }

    // Stage 3: dQ partial = dS K for queries 16 wm.. x head dims d_col0.., over the key groups
    // that see them; added into dq_accum.
    if (key_groups != 0) {
      float dq[kDTiles][4];
      zero(dq);
      if (key_groups == 0xFu)
        mma_a_smem_b_smem<kTileTokens, kDTiles, true, 0xFu>(dq, sdS + wm * 16, Tile::kPStride, sK + d_col0,
                                                             Tile::kStride, lane, key_groups);
      else
        mma_a_smem_b_smem<kTileTokens, kDTiles, true, 0>(dq, sdS + wm * 16, Tile::kPStride, sK + d_col0,
                                                          Tile::kStride, lane, key_groups);
      add_dq<kDTiles, D>(p, dq, i0 + wm * 16, h, d_col0, lane);
    }

    if (has_next && threadIdx.x < kTileTokens) {
      sLse[threadIdx.x] = next_lse;
      sDelta[threadIdx.x] = next_delta;
      if ((it + 1) % group == 0) sRowLo[threadIdx.x] = row_lo(it + 1);
    }
  }

  store_rows_bf16<kDTiles, D>(p.dk, p.dk_row_stride, kvh, j0 + key_row0, d_col0, dk, p.scale, p.T, lane);
  store_rows_bf16<kDTiles, D>(p.dv, p.dv_row_stride, kvh, j0 + key_row0, d_col0, dv, 1.f, p.T, lane);
}

}  // namespace loom::attn::short_docs
