// Attention kernels for long documents (ops/attention_kernels.cuh has what the two families
// share; ops/attention.cu picks one per call): 128-token tiles, 32 rows a warp.
//
// Forward, one block per (128-query tile, query head), 4 warps of 32 query rows (two m-tiles) each:
//   for each 64-key step, nearest the diagonal first:
//     S = Q K^T (mma.sync m16n8k16, fp32) ; online softmax in log2 units (m, l per row)
//     O = O * exp2(m_old - m_new) + P V    (P rounded to bf16 for the tensor cores)
//   out = O / l ; lse = ln 2 * (m + log2 l)
// K and V steps are double-buffered in shared memory with cp.async; each K and V fragment read from
// shared memory feeds both m-tiles of its warp.
//
// Backward, one block per (128-key tile, kv head), 8 warps, 64-query steps. The next step's Q and
// dO tiles load (double-buffered) while this step computes. Each warp's tiles are 32 x 32 (S^T,
// dP^T), 32 x D/2 (dK, dV) and 32 x D/4 (dQ): every fragment loaded from shared memory feeds at
// least two tensor-core instructions. P^T and dS^T go through shared memory between the partitions.
#pragma once
#include "ops/attention_kernels.cuh"

namespace loom::attn::long_docs {

// ---------------------------------------------------------------------------------------------
// Forward

template <int D>
struct FwdTile {
  static constexpr int kThreads = 128;   // 4 warps x 32 query rows (two 16-row m-tiles each)
  static constexpr int kQueries = 128;   // queries per block
  static constexpr int kKeys = 64;       // keys per step
  static constexpr int kStride = D + 8;  // padded row: the 8 rows of an ldmatrix hit distinct banks
  static constexpr int kQElems = kQueries * kStride;
  static constexpr int kKvElems = kKeys * kStride;
  static constexpr size_t kSmemBytes = (kQElems + 4 * kKvElems) * sizeof(bf16);  // Q, 2 x K, 2 x V
};

// s (two 16 x KEYS m-tiles) = Q K^T: Q rows at q_rows (32 of them), K rows at k_rows (KEYS), both of
// row stride D + 8. m-tiles not in the 2-bit mask are skipped.
template <int D, int KEYS, unsigned MASK>
__device__ __forceinline__ void scores(float (&s)[2][KEYS / 8][4], const bf16* q_rows, const bf16* k_rows, int lane,
                                       unsigned mask) {
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a[2][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
      if (in_mask<MASK>(mask, mt))
        ldmatrix_x4(a[mt], smem_addr(q_rows + (mt * 16 + (lane & 15)) * (D + 8) + kk * 16 + (lane >> 4) * 8));
#pragma unroll
    for (int np = 0; np < KEYS / 16; ++np) {
      uint32_t b[4];
      ldmatrix_x4(b, smem_addr(k_rows + (np * 16 + (lane & 7) + (lane >> 4) * 8) * (D + 8) + kk * 16 +
                               ((lane >> 3) & 1) * 8));
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        if (!in_mask<MASK>(mask, mt)) continue;
        mma_16816(s[mt][2 * np], a[mt], b[0], b[1]);
        mma_16816(s[mt][2 * np + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

// o (two 16 x D m-tiles) += P V: P the softmax fragments s rounded to bf16, V (KEYS x D) rows in
// shared memory at v_rows. m-tiles not in the 2-bit mask are skipped.
template <int D, int KEYS, unsigned MASK>
__device__ __forceinline__ void mma_p_v(float (&o)[2][D / 8][4], const float (&s)[2][KEYS / 8][4], const bf16* v_rows,
                                        int lane, unsigned mask) {
#pragma unroll
  for (int kk = 0; kk < KEYS / 16; ++kk) {
    uint32_t a[2][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      a[mt][0] = pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
      a[mt][1] = pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
      a[mt][2] = pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
      a[mt][3] = pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
    }
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t b[4];
      const bf16* src = v_rows + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * (D + 8) + dp * 16 + (lane >> 4) * 8;
      ldmatrix_x4_trans(b, smem_addr(src));
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        if (!in_mask<MASK>(mask, mt)) continue;
        mma_16816(o[mt][2 * dp], a[mt], b[0], b[1]);
        mma_16816(o[mt][2 * dp + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

// One block per (128-query tile, query head), 4 warps; warp w owns query rows 32 w.. of the tile
// as two 16-row m-tiles, so each K and V fragment read from shared memory feeds both.
template <int D>
__global__ void __launch_bounds__(FwdTile<D>::kThreads, 2) attention_forward_kernel(const FwdParams p) {
  using Tile = FwdTile<D>;
  constexpr int kKeys = Tile::kKeys;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sK = sQ + Tile::kQElems;         // 2 buffers
  bf16* sV = sK + 2 * Tile::kKvElems;    // 2 buffers

  const int h = blockIdx.y;
  const int kvh = h / (p.H / p.KVH);
  const int i0 = blockIdx.x * Tile::kQueries;
  const int i1 = min(i0 + Tile::kQueries, p.T);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  const bf16* q_head = p.q + static_cast<int64_t>(h) * D;
  const bf16* k_head = p.k + static_cast<int64_t>(kvh) * D;
  const bf16* v_head = p.v + static_cast<int64_t>(kvh) * D;

  // Key steps end at i1 so that the first ones hold the causal diagonal and every later one lies
  // wholly below it; the document lookups below overlap these loads.
  load_tile_async<D, Tile::kThreads, Tile::kQueries>(sQ, q_head, p.q_row_stride, i0, p.T);
  load_tile_async<D, Tile::kThreads, kKeys>(sK, k_head, p.k_row_stride, i1 - kKeys, p.T);
  load_tile_async<D, Tile::kThreads, kKeys>(sV, v_head, p.v_row_stride, i1 - kKeys, p.T);
  cp_async_commit();

  // Keys [key_lo, i1) hold everything any row of the tile sees.
  const int key_lo = lowest_visible_key(p, i0);
  const int max_row_lo = lowest_visible_key(p, i1 - 1);
  const int nsteps = (i1 - key_lo + kKeys - 1) / kKeys;

  // This thread's four query rows: fragment rows g and g + 8 of each of its warp's m-tiles (computed
  // where used, to spare registers), and their lowest visible keys.
  const int warp_row0 = i0 + warp * 32;
  auto row = [&](int mt, int r) { return warp_row0 + mt * 16 + g + 8 * r; };
  int row_lo[2][2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) row_lo[mt][r] = lowest_visible_key(p, min(row(mt, r), p.T - 1));
  // m-tile mt's rows see keys in [tile_lo[mt], its last row] only (lane 0 holds each first row); a
  // step outside skips that m-tile, while the rest of the block may still need it. m-tiles wholly
  // past T take no step.
  int tile_lo[2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) tile_lo[mt] = __shfl_sync(0xffffffffu, row_lo[mt][0], 0);
  auto tile_sees = [&](int mt, int j0) {
    const int first = warp_row0 + mt * 16;
    return first < p.T && j0 <= first + 15 && j0 + kKeys - 1 >= tile_lo[mt];
  };

  float o[2][D / 8][4] = {};
  float m[2][2] = {{-INFINITY, -INFINITY}, {-INFINITY, -INFINITY}}, l[2][2] = {};
  const bf16* q_rows = sQ + warp * 32 * Tile::kStride;
  cp_async_wait_all();
  __syncthreads();
  for (int n = 0; n < nsteps; ++n) {
    const int j0 = i1 - (n + 1) * kKeys;
    const bf16* cK = sK + (n & 1) * Tile::kKvElems;
    const bf16* cV = sV + (n & 1) * Tile::kKvElems;
    if (n + 1 < nsteps) {
      load_tile_async<D, Tile::kThreads, kKeys>(sK + ((n + 1) & 1) * Tile::kKvElems, k_head, p.k_row_stride,
                                                j0 - kKeys, p.T);
      load_tile_async<D, Tile::kThreads, kKeys>(sV + ((n + 1) & 1) * Tile::kKvElems, v_head, p.v_row_stride,
                                                j0 - kKeys, p.T);
    }
    cp_async_commit();

    unsigned mask = 0;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) mask |= unsigned(tile_sees(mt, j0)) << mt;
    if (mask != 0) {
      float s[2][kKeys / 8][4] = {};
      if (mask == 3u)
        scores<D, kKeys, 3u>(s, q_rows, cK, lane, mask);
      else
        scores<D, kKeys, 0>(s, q_rows, cK, lane, mask);
      // Masking is needed where the step crosses the causal diagonal or a row's lowest key.
      const bool need_mask = j0 + kKeys - 1 > i0 || j0 < max_row_lo;
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        if (!in_mask<0>(mask, mt)) continue;
        scale_and_mask<kKeys>(s[mt], p.scale_log2, need_mask, j0, row(mt, 0), row_lo[mt], lane);
        online_softmax<D, kKeys>(s[mt], o[mt], m[mt], l[mt]);
      }
      if (mask == 3u)
        mma_p_v<D, kKeys, 3u>(o, s, cV, lane, mask);
      else
        mma_p_v<D, kKeys, 0>(o, s, cV, lane, mask);
    }
    cp_async_wait_all();
    __syncthreads();
  }

  // Epilogue: normalise, stage this warp's 32 rows in its own rows of sQ, store 16 bytes a lane.
  bf16* sO = sQ + warp * 32 * Tile::kStride;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float sum = quad_sum(l[mt][r]);
      const float inv = 1.f / sum;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt)
        *reinterpret_cast<uint32_t*>(sO + (mt * 16 + g + 8 * r) * Tile::kStride + dt * 8 + 2 * c) =
            pack_bf16(o[mt][dt][2 * r] * inv, o[mt][dt][2 * r + 1] * inv);
      if (c == 0 && row(mt, r) < p.T)
        p.lse[static_cast<int64_t>(row(mt, r)) * p.H + h] = kLn2 * (m[mt][r] + __log2f(sum));
    }
  __syncwarp();
  constexpr int kChunksPerRow = D / 8;
#pragma unroll
  for (int it = 0; it < 32 * kChunksPerRow / 32; ++it) {
    int chunk = it * 32 + lane;
    int r = chunk / kChunksPerRow, col = (chunk % kChunksPerRow) * 8;
    int t = warp_row0 + r;
    if (t < p.T)
      *reinterpret_cast<uint4*>(p.out + static_cast<int64_t>(t) * p.out_row_stride + static_cast<int64_t>(h) * D + col) =
          *reinterpret_cast<const uint4*>(sO + r * Tile::kStride + col);
  }
}

// ---------------------------------------------------------------------------------------------
// Backward

template <int D>
struct BwdTile {
  static constexpr int kThreads = 256;  // 8 warps
  static constexpr int kKeys = 128;     // keys per block: their dK and dV stay in registers
  static constexpr int kQueries = 64;   // queries per step
  static constexpr int kStride = D + 8;  // padded rows, as in the forward
  static constexpr int kPStride = kQueries + 8;
  static constexpr int kKvElems = kKeys * kStride;
  static constexpr int kQElems = kQueries * kStride;
  static constexpr int kPElems = kKeys * kPStride;
  // K, V; Q and dO twice (the next step's load overlaps this one); P^T and dS^T (keys x queries);
  // lse*log2e, delta and row_lo per query row, twice.
  static constexpr size_t kSmemBytes = (2 * kKvElems + 4 * kQElems + 2 * kPElems) * sizeof(bf16) +
                                       2 * kQueries * (2 * sizeof(float) + sizeof(int));
};

// acc (32 x 32) += A (32 x D) * B^T, A rows at a_rows and B (32 x D) rows at b_rows, row stride D + 8:
// a warp's S^T = K Q^T or dP^T = V dO^T tile. Bit 2 mt + nq of the mask: rows 16 mt.. and columns
// 16 nq.. share a visible pair; the others are skipped.
template <int D, unsigned MASK>
__device__ __forceinline__ void mma_32x32_bt(float (&acc)[2][4][4], const bf16* a_rows, const bf16* b_rows, int lane,
                                             unsigned mask) {
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t b[2][4];
#pragma unroll
    for (int nq = 0; nq < 2; ++nq)
      if (in_mask<MASK>(mask, nq) || in_mask<MASK>(mask, 2 + nq))
        ldmatrix_x4(b[nq], smem_addr(b_rows + (nq * 16 + (lane & 7) + (lane >> 4) * 8) * (D + 8) + kk * 16 +
                                     ((lane >> 3) & 1) * 8));
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      if (!in_mask<MASK>(mask, 2 * mt) && !in_mask<MASK>(mask, 2 * mt + 1)) continue;
      uint32_t a[4];
      ldmatrix_x4(a, smem_addr(a_rows + (mt * 16 + (lane & 15)) * (D + 8) + kk * 16 + (lane >> 4) * 8));
#pragma unroll
      for (int nq = 0; nq < 2; ++nq) {
        if (!in_mask<MASK>(mask, 2 * mt + nq)) continue;
        mma_16816(acc[mt][2 * nq], a, b[nq][0], b[nq][1]);
        mma_16816(acc[mt][2 * nq + 1], a, b[nq][2], b[nq][3]);
      }
    }
  }
}

// acc (32 x 8*NT) += A (32 x 16*KSTEPS) * B (16*KSTEPS x 8*NT), B row-major in shared memory at b
// (stride b_ld): the "P V" shape for two 16-row m-tiles. A_TRANS: A is stored transposed (its
// columns are rows at a, stride a_ld), else row-major at a. Bit KSTEPS * mt + kk of the mask: m-tile
// mt has work in k-step kk (16-wide); the others are known to be zero in A and skipped.
template <int KSTEPS, int NT, bool A_TRANS, unsigned MASK>
__device__ __forceinline__ void mma_32_a_b(float (&acc)[2][NT][4], const bf16* a, int a_ld, const bf16* b, int b_ld,
                                           int lane, unsigned mask) {
#pragma unroll
  for (int kk = 0; kk < KSTEPS; ++kk) {
    const bool use[2] = {in_mask<MASK>(mask, kk), in_mask<MASK>(mask, KSTEPS + kk)};
    if (!use[0] && !use[1]) continue;
    uint32_t af[2][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      if (!use[mt]) continue;
      if (A_TRANS)
        ldmatrix_x4_trans(af[mt], smem_addr(a + (kk * 16 + (lane & 7) + (lane >> 4) * 8) * a_ld + mt * 16 +
                                            ((lane >> 3) & 1) * 8));
      else
        ldmatrix_x4(af[mt], smem_addr(a + (mt * 16 + (lane & 15)) * a_ld + kk * 16 + (lane >> 4) * 8));
    }
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t bf[4];
      ldmatrix_x4_trans(bf, smem_addr(b + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * b_ld + np * 16 +
                                      (lane >> 4) * 8));
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        if (!use[mt]) continue;
        mma_16816(acc[mt][2 * np], af[mt], bf[0], bf[1]);
        mma_16816(acc[mt][2 * np + 1], af[mt], bf[2], bf[3]);
      }
    }
  }
}

// One block per (128-key tile, kv head), 8 warps. Warp w computes S^T and dP^T, and accumulates dK
// and dV, for keys 32 (w % 4).. (two 16-row m-tiles) against queries 32 (w / 4).. of the step
// (stage 1), then head dims (D/2) (w / 4).. of dK and dV (stage 2); for dQ (stage 3) it owns queries
// 32 (w % 2).. and head dims (D/4) (w / 2)... Blocks are numbered key tile major, so the tiles that
// see the most queries (a causal document's first) start first.
template <int D>
__global__ void __launch_bounds__(BwdTile<D>::kThreads, 1) attention_backward_kernel(const BwdParams p) {
  using Tile = BwdTile<D>;
  constexpr int kQ = Tile::kQueries, kKeys = Tile::kKeys;
  constexpr int kNtKV = D / 16;  // n-tiles of a warp's half of the head dim (dK, dV)
  constexpr int kNtQ = D / 32;   // n-tiles of a warp's quarter (dQ)
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sK = reinterpret_cast<bf16*>(smem);
  bf16* sV = sK + Tile::kKvElems;
  bf16* sQ = sV + Tile::kKvElems;      // 2 buffers
  bf16* sdO = sQ + 2 * Tile::kQElems;  // 2 buffers
  bf16* sP = sdO + 2 * Tile::kQElems;  // P^T  (keys x queries)
  bf16* sdS = sP + Tile::kPElems;      // dS^T (keys x queries)
  float* sLse = reinterpret_cast<float*>(sdS + Tile::kPElems);  // lse * log2(e), 2 slots
  float* sDelta = sLse + 2 * kQ;                                 // 2 slots
  int* sRowLo = reinterpret_cast<int*>(sDelta + 2 * kQ);         // 2 slots

  const int kvh = blockIdx.x % p.KVH;
  const int j0 = (blockIdx.x / p.KVH) * kKeys;
  const int j_last = min(j0 + kKeys, p.T) - 1;
  const int group = p.H / p.KVH;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  const int wk = warp & 3, wq = warp >> 2;     // stages 1 and 2
  const int wq3 = warp & 1, wd3 = warp >> 1;   // stage 3
  // Queries [j0, q_end) see some key of the tile; query steps start at j0, so the first two cross
  // the causal diagonal and every later one lies wholly above it. Iteration `it` takes query step
  // it / group of head kvh * group + it % group: the heads of a step share its row data.
  const int iters = group * ((query_end_for_key(p, j_last) - j0 + kQ - 1) / kQ);
  auto block_start = [&](int it) { return j0 + (it / group) * kQ; };
  auto head_of = [&](int it) { return kvh * group + it % group; };
  auto load_query_tiles = [&](int it, int buf) {
    const int64_t head = static_cast<int64_t>(head_of(it)) * D;
    load_tile_async<D, Tile::kThreads, kQ>(sQ + buf * Tile::kQElems, p.q + head, p.q_row_stride, block_start(it), p.T);
    load_tile_async<D, Tile::kThreads, kQ>(sdO + buf * Tile::kQElems, p.dout + head, p.dout_row_stride,
                                           block_start(it), p.T);
  };
  // Row data of thread t < kQ's query of iteration it.
  auto fetch_row = [&](int it) { return bwd_row_data(p, block_start(it) + threadIdx.x, head_of(it)); };
  auto store_row = [&](const BwdRowData& r, int slot) {
    sLse[slot * kQ + threadIdx.x] = r.lse;
    sDelta[slot * kQ + threadIdx.x] = r.delta;
    sRowLo[slot * kQ + threadIdx.x] = r.row_lo;
  };

  load_tile_async<D, Tile::kThreads, kKeys>(sK, p.k + static_cast<int64_t>(kvh) * D, p.k_row_stride, j0, p.T);
  load_tile_async<D, Tile::kThreads, kKeys>(sV, p.v + static_cast<int64_t>(kvh) * D, p.v_row_stride, j0, p.T);
  load_query_tiles(0, 0);
  cp_async_commit();
  if (threadIdx.x < kQ) store_row(fetch_row(0), 0);

  float dk[2][kNtKV][4], dv[2][kNtKV][4];
  zero(dk);
  zero(dv);
  for (int it = 0; it < iters; ++it) {
    const int buf = it & 1, i0 = block_start(it), h = head_of(it);
    const float* lse = sLse + buf * kQ;
    const float* delta = sDelta + buf * kQ;
    const int* row_lo = sRowLo + buf * kQ;
    const bf16* q_tile = sQ + buf * Tile::kQElems;
    const bf16* do_tile = sdO + buf * Tile::kQElems;
    cp_async_wait_all();
    __syncthreads();  // this step's tiles and row data are in; the last step no longer reads P^T, dS^T

    // The next step's tiles load into the other buffers while this one computes; its row data
    // waits in registers until this step no longer reads the other slot.
    const bool has_next = it + 1 < iters;
    BwdRowData next{};
    if (has_next) {
      load_query_tiles(it + 1, buf ^ 1);
      cp_async_commit();
      if (threadIdx.x < kQ) next = fetch_row(it + 1);
    }

    // 16-key group kg and 16-query group qg share a visible pair (or may: the test is exact unless
    // a document starts inside the query group). Pairs of groups that share none are all zero.
    auto visible = [&](int kg, int qg) {
      const int ka = j0 + 16 * kg, qa = i0 + 16 * qg;
      return qa < p.T && qa + 15 >= ka && row_lo[16 * qg] <= ka + 15;
    };
    unsigned mask1 = 0, mask2 = 0, mask3 = 0;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int nq = 0; nq < 2; ++nq) mask1 |= unsigned(visible(2 * wk + mt, 2 * wq + nq)) << (2 * mt + nq);
#pragma unroll
      for (int kk = 0; kk < kQ / 16; ++kk) mask2 |= unsigned(visible(2 * wk + mt, kk)) << (kQ / 16 * mt + kk);
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) mask3 |= unsigned(visible(kk, 2 * wq3 + mt)) << (kKeys / 16 * mt + kk);
    }

    // Stage 1: S^T and dP^T for keys 32 wk.. x queries 32 wq..; P^T and dS^T to shared memory.
    float st[2][4][4], dpt[2][4][4];
    zero(st);
    zero(dpt);
    const bf16 *k_rows = sK + 32 * wk * Tile::kStride, *v_rows = sV + 32 * wk * Tile::kStride;
    const bf16 *q_rows = q_tile + 32 * wq * Tile::kStride, *do_rows = do_tile + 32 * wq * Tile::kStride;
    if (mask1 == 0xFu) {
      mma_32x32_bt<D, 0xFu>(st, k_rows, q_rows, lane, mask1);
      mma_32x32_bt<D, 0xFu>(dpt, v_rows, do_rows, lane, mask1);
    } else if (mask1 != 0) {
      mma_32x32_bt<D, 0>(st, k_rows, q_rows, lane, mask1);
      mma_32x32_bt<D, 0>(dpt, v_rows, do_rows, lane, mask1);
    }
    // Masking is needed where the step crosses the causal diagonal or a row's lowest key.
    const bool need_mask = i0 < j0 + kKeys || row_lo[min(kQ, p.T - i0) - 1] > j0;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int key = 32 * wk + 16 * mt + g + 8 * r;  // within the tile
          float pr[2] = {0.f, 0.f}, ds[2] = {0.f, 0.f};
          if (in_mask<0>(mask1, 2 * mt + nt / 2)) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int qi = 32 * wq + nt * 8 + 2 * c + e;
              float x = st[mt][nt][2 * r + e] * p.scale_log2;
              if (need_mask && (j0 + key < row_lo[qi] || j0 + key > i0 + qi)) x = -INFINITY;
              pr[e] = fast_exp2(x - lse[qi]);
              ds[e] = pr[e] * (dpt[mt][nt][2 * r + e] - delta[qi]);
            }
          }
          const int off = key * Tile::kPStride + 32 * wq + nt * 8 + 2 * c;
          *reinterpret_cast<uint32_t*>(sP + off) = pack_bf16(pr[0], pr[1]);
          *reinterpret_cast<uint32_t*>(sdS + off) = pack_bf16(ds[0], ds[1]);
        }
    __syncthreads();

    // Stage 2: dV += P^T dO and dK += dS^T Q for keys 32 wk.. x head dims (D/2) wq.., over the query
    // groups these keys see.
    const int d_half = wq * (D / 2);
    const bf16 *p_rows = sP + 32 * wk * Tile::kPStride, *ds_rows = sdS + 32 * wk * Tile::kPStride;
    if (mask2 == 0xFFu) {
      mma_32_a_b<kQ / 16, kNtKV, false, 0xFFu>(dv, p_rows, Tile::kPStride, do_tile + d_half, Tile::kStride, lane, mask2);
      mma_32_a_b<kQ / 16, kNtKV, false, 0xFFu>(dk, ds_rows, Tile::kPStride, q_tile + d_half, Tile::kStride, lane, mask2);
    } else if (mask2 != 0) {
      mma_32_a_b<kQ / 16, kNtKV, false, 0>(dv, p_rows, Tile::kPStride, do_tile + d_half, Tile::kStride, lane, mask2);
      mma_32_a_b<kQ / 16, kNtKV, false, 0>(dk, ds_rows, Tile::kPStride, q_tile + d_half, Tile::kStride, lane, mask2);
    }

    // Stage 3: dQ partial = dS K for queries 32 wq3.. x head dims (D/4) wd3.., over the key groups
    // that see them; added into dq_accum.
    if (mask3 != 0) {
      float dq[2][kNtQ][4];
      zero(dq);
      const int d_quarter = wd3 * (D / 4);
      if (mask3 == 0xFFFFu)
        mma_32_a_b<kKeys / 16, kNtQ, true, 0xFFFFu>(dq, sdS + 32 * wq3, Tile::kPStride, sK + d_quarter, Tile::kStride,
                                                    lane, mask3);
      else
        mma_32_a_b<kKeys / 16, kNtQ, true, 0>(dq, sdS + 32 * wq3, Tile::kPStride, sK + d_quarter, Tile::kStride, lane,
                                              mask3);
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
        if (mask3 >> (kKeys / 16 * mt) & 0xFFu) add_dq<kNtQ, D>(p, dq[mt], i0 + 32 * wq3 + 16 * mt, h, d_quarter, lane);
    }

    if (has_next && threadIdx.x < kQ) store_row(next, buf ^ 1);
  }

#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
    const int row0 = j0 + 32 * wk + 16 * mt;
    store_rows_bf16<kNtKV, D>(p.dk, p.dk_row_stride, kvh, row0, wq * (D / 2), dk[mt], p.scale, p.T, lane);
    store_rows_bf16<kNtKV, D>(p.dv, p.dv_row_stride, kvh, row0, wq * (D / 2), dv[mt], 1.f, p.T, lane);
  }
}

}  // namespace loom::attn::long_docs
