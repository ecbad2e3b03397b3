// Attention kernels for long documents on Hopper (sm_90a builds; AttentionKernels::kLongDocsHopper):
// the long-document family's algorithms (ops/attention_long_kernels.cuh) with warpgroup MMAs
// (ops/wgmma.cuh) in place of mma.sync, as FlashAttention-3 does. Tiles live in shared memory in the
// 128-byte swizzle wgmma reads, loaded with cp.async by all threads (no TMA or producer warp yet).
//
// Forward, one block per (128-query tile, query head), 2 warpgroups of 64 query rows each:
//   for each 128-key step, nearest the diagonal first:
//     S = Q K^T            wgmma m64n128k16, Q and K read from shared memory (K-major)
//     online softmax on S in registers (log2 units)
//     O = O * alpha + P V  wgmma m64nDk16, P from registers (bf16), V from shared memory (MN-major)
//   out = O / l ; lse = ln 2 * (m + log2 l)
// Step n's S and step n - 1's P V are issued together, so the softmax of S_n runs while P V_{n-1}
// is on the tensor cores. Heavier tiles (later in a document: more keys) are scheduled first.
// Backward: below, before its kernel.
#pragma once
#include "ops/attention_kernels.cuh"
#include "ops/wgmma.cuh"

namespace loom::attn::hopper {

template <int D>
struct FwdTile {
  static constexpr int kThreads = 256;  // 2 warpgroups x 64 query rows
  static constexpr int kQueries = 128;  // queries per block
  static constexpr int kKeys = 128;     // keys per step
  static constexpr uint32_t kQBytes = kQueries * D * sizeof(bf16);
  static constexpr uint32_t kKvBytes = kKeys * D * sizeof(bf16);
  // Q, 2 x K, 2 x V, and up to 1,023 bytes to reach the 1,024-byte alignment the swizzle needs.
  static constexpr size_t kSmemBytes = 1024 + kQBytes + 4 * kKvBytes;
  // The epilogue stages the output (row stride D + 8) where the K tiles were.
  static_assert(kQueries * (D + 8) * sizeof(bf16) <= 2 * kKvBytes, "output staging must fit the K buffers");
};

// Copies tokens [row0, row0 + ROWS) of one head into a swizzled ROWS x D tile at shared address
// `tile` (1,024-byte aligned). Tokens outside [0, T) are zero-filled.
template <int D, int THREADS, int ROWS>
__device__ __forceinline__ void load_swizzled_async(uint32_t tile, const bf16* head, int64_t row_stride, int row0,
                                                    int T) {
  constexpr int kChunksPerRow = D / 8;
  constexpr int kChunks = ROWS * kChunksPerRow;
  static_assert(kChunks % THREADS == 0, "tile chunks must divide evenly among the threads");
#pragma unroll
  for (int it = 0; it < kChunks / THREADS; ++it) {
    const int chunk = it * THREADS + threadIdx.x;
    const int r = chunk / kChunksPerRow, c = chunk % kChunksPerRow;
    const int t = row0 + r;
    const bool inside = t >= 0 && t < T;
    const bf16* src = inside ? head + static_cast<int64_t>(t) * row_stride + c * 8 : head;
    cp_async_16(tile + wgmma::swizzled_offset(ROWS, r, c), src, inside ? 16 : 0);
  }
}

#ifdef LOOM_WGMMA
// What a block and its threads know about their tile: shared-memory tiles, heads, the rows this
// warpgroup and this thread own and the keys they see.
template <int D>
struct FwdBlock {
  using Tile = FwdTile<D>;
  static constexpr int kKeys = Tile::kKeys;
  unsigned char* aligned;  // shared memory from the first 1,024-byte boundary
  uint32_t sQ, sK, sV;     // shared addresses: Q, 2 K buffers, 2 V buffers
  int h, i0, i1, wg, warp, g, c;
  const bf16 *k_head, *v_head;
  int nsteps;                // 128-key steps from the diagonal down to the tile's lowest visible key
  int wg_row0, wg_lo, wg_max_lo;
  bool wg_live;
  int row0;                  // this thread's rows: row0 and row0 + 8
  int row_lo[2];

  __device__ FwdBlock(const FwdParams& p, unsigned char* smem) {
    aligned = smem + ((1024u - (smem_addr(smem) & 1023u)) & 1023u);
    sQ = smem_addr(aligned);
    sK = sQ + Tile::kQBytes;
    sV = sK + 2 * Tile::kKvBytes;
    h = blockIdx.y;
    const int kvh = h / (p.H / p.KVH);
    i0 = (gridDim.x - 1 - blockIdx.x) * Tile::kQueries;  // heavier tiles (more keys) first
    i1 = min(i0 + Tile::kQueries, p.T);
    wg = threadIdx.x >> 7;
    warp = (threadIdx.x >> 5) & 3;
    g = (threadIdx.x & 31) >> 2;
    c = threadIdx.x & 3;
    k_head = p.k + static_cast<int64_t>(kvh) * D;
    v_head = p.v + static_cast<int64_t>(kvh) * D;
    load_swizzled_async<D, Tile::kThreads, Tile::kQueries>(sQ, p.q + static_cast<int64_t>(h) * D, p.q_row_stride, i0,
                                                           p.T);
    // Keys [key_lo, i1) hold everything any row of the tile sees.
    nsteps = (i1 - lowest_visible_key(p, i0) + kKeys - 1) / kKeys;
    // This warpgroup's rows [wg_row0, wg_row0 + 64) see keys in [wg_lo, wg_row0 + 63] (row_lo never
    // decreases along the rows); a step outside is skipped by the whole warpgroup, as wgmma needs.
    wg_row0 = i0 + wg * 64;
    wg_live = wg_row0 < p.T;
    wg_lo = wg_live ? lowest_visible_key(p, wg_row0) : 0;
    wg_max_lo = wg_live ? lowest_visible_key(p, min(wg_row0 + 63, p.T - 1)) : 0;
    row0 = wg_row0 + warp * 16 + g;
#pragma unroll
    for (int r = 0; r < 2; ++r) row_lo[r] = lowest_visible_key(p, min(row0 + 8 * r, p.T - 1));
  }

  // The first key of step n (keys j0..j0 + 127), and whether this warpgroup sees any of it.
  __device__ int step_key0(int n) const { return i1 - (n + 1) * kKeys; }
  __device__ bool sees(int n) const {
    const int j0 = step_key0(n);
    return n >= 0 && n < nsteps && wg_live && j0 <= wg_row0 + 63 && j0 + kKeys - 1 >= wg_lo;
  }
  __device__ void load_k(const FwdParams& p, int n) const {
    load_swizzled_async<D, Tile::kThreads, kKeys>(sK + (n & 1) * Tile::kKvBytes, k_head, p.k_row_stride,
                                                  step_key0(n), p.T);
  }
  __device__ void load_v(const FwdParams& p, int n) const {
    load_swizzled_async<D, Tile::kThreads, kKeys>(sV + (n & 1) * Tile::kKvBytes, v_head, p.v_row_stride,
                                                  step_key0(n), p.T);
  }

  // Issues s = Q K_n^T for this warpgroup's 64 rows (not committed).
  __device__ void issue_scores(float (&s)[kKeys / 8][4], int n) const {
    const uint32_t q_rows = sQ + wg * 64 * 128, k_tile = sK + (n & 1) * Tile::kKvBytes;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      wgmma::wgmma_m64n128k16_ss<0, 0>(s, wgmma::kmajor_slice(q_rows, Tile::kQueries, kk),
                                       wgmma::kmajor_slice(k_tile, kKeys, kk), kk > 0);
  }
  // Issues o += P V_n, P in the A fragments a (not committed).
  __device__ void issue_p_v(float (&o)[D / 8][4], const uint32_t (&a)[kKeys / 16][4], int n) const {
    const uint32_t v_tile = sV + (n & 1) * Tile::kKvBytes;
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      if constexpr (D == 128)
        wgmma::wgmma_m64n128k16_rs(o, a[kk], wgmma::mnmajor_slice(v_tile, kKeys, kk));
      else
        wgmma::wgmma_m64n64k16_rs(o, a[kk], wgmma::mnmajor_slice(v_tile, kKeys, kk));
    }
  }

  // Scores of step n to log2 units, keys this thread's rows cannot see at -inf. Masking is needed
  // only where the step crosses the causal diagonal or a row's lowest key.
  __device__ void scale_and_mask_step(float (&s)[kKeys / 8][4], const FwdParams& p, int n) const {
    const int j0 = step_key0(n);
    const bool need_mask = j0 + kKeys - 1 > wg_row0 || j0 < wg_max_lo;
    attn::scale_and_mask<kKeys>(s, p.scale_log2, need_mask, j0, row0, row_lo, threadIdx.x & 31);
  }

  // Epilogue: normalise, stage the tile's rows (row stride D + 8) where the K buffers were, once both
  // warpgroups are done with them, store 16 bytes a thread; lse per row.
  __device__ void store(const FwdParams& p, const float (&o)[D / 8][4], const float (&m)[2], const float (&l)[2]) {
    cp_async_wait_all();
    __syncthreads();
    bf16* sO = reinterpret_cast<bf16*>(aligned + Tile::kQBytes);
    constexpr int kStride = D + 8;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float sum = quad_sum(l[r]);
      const float inv = 1.f / sum;
      const int local = wg * 64 + warp * 16 + g + 8 * r;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt)
        *reinterpret_cast<uint32_t*>(sO + local * kStride + dt * 8 + 2 * c) =
            pack_bf16(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
      if (c == 0 && row0 + 8 * r < p.T)
        p.lse[static_cast<int64_t>(row0 + 8 * r) * p.H + h] = kLn2 * (m[r] + __log2f(sum));
    }
    __syncthreads();
    constexpr int kChunksPerRow = D / 8;
#pragma unroll
    for (int it = 0; it < Tile::kQueries * kChunksPerRow / Tile::kThreads; ++it) {
      const int chunk = it * Tile::kThreads + threadIdx.x;
      const int r = chunk / kChunksPerRow, col = (chunk % kChunksPerRow) * 8;
      const int t = i0 + r;
      if (t < p.T)
        *reinterpret_cast<uint4*>(p.out + static_cast<int64_t>(t) * p.out_row_stride + static_cast<int64_t>(h) * D +
                                  col) = *reinterpret_cast<const uint4*>(sO + r * kStride + col);
    }
  }
};

// P (the softmax of a 64 x 128 score block) as bf16 A fragments, 16 keys each.
template <int KEYS>
__device__ __forceinline__ void pack_p(uint32_t (&a)[KEYS / 16][4], const float (&s)[KEYS / 8][4]) {
#pragma unroll
  for (int kk = 0; kk < KEYS / 16; ++kk) {
    a[kk][0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
    a[kk][1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
    a[kk][2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    a[kk][3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
  }
}
#endif  // LOOM_WGMMA

// Overlapped: step n's S = Q K_n^T and step n - 1's P V are issued together, and the softmax of S_n
// runs while P V_{n-1} is on the tensor cores (FlashAttention-3's intra-warpgroup pipelining). V_n
// loads one step later than K_n, so each V buffer is free when its next tile arrives. Both products
// are issued on every pass a warpgroup takes part in (branches around wgmma make the compiler
// serialize them): where there is no previous P, P = 0 adds exactly nothing (V buffer 1 starts
// zeroed, so even the first pass multiplies finite values); where step n is not seen, its S is
// computed and dropped.
template <int D>
__global__ void __launch_bounds__(FwdTile<D>::kThreads, 1) attention_forward_kernel(const FwdParams p) {
#ifdef LOOM_WGMMA
  using Tile = FwdTile<D>;
  constexpr int kKeys = Tile::kKeys;
  extern __shared__ unsigned char smem[];
  FwdBlock<D> b(p, smem);
  b.load_k(p, 0);
  cp_async_commit();
  for (uint32_t i = threadIdx.x; i < Tile::kKvBytes / 16; i += Tile::kThreads)
    reinterpret_cast<uint4*>(b.aligned + (b.sV - b.sQ) + Tile::kKvBytes)[i] = make_uint4(0, 0, 0, 0);
  float o[D / 8][4] = {};
  float s[kKeys / 8][4] = {};
  uint32_t a[kKeys / 16][4];
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {}, alpha[2];
  for (int n = 0; n <= b.nsteps; ++n) {  // the last pass only finishes the last step's P V
    // K_n and V_{n-1} have landed; the barrier frees K buffer n + 1 (read by S_{n-1}) and V buffer n
    // (read by P V_{n-2}).
    cp_async_wait_all();
    wgmma::fence_async_shared();
    __syncthreads();
    if (n + 1 < b.nsteps) b.load_k(p, n + 1);
    if (n < b.nsteps) b.load_v(p, n);
    cp_async_commit();
    const bool sees = b.sees(n), p_pending = b.sees(n - 1);
    if (!sees && !p_pending) continue;
    if (!p_pending) {
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) a[kk][0] = a[kk][1] = a[kk][2] = a[kk][3] = 0u;
    }

    wgmma::fence_registers(s);
    wgmma::fence_registers(o);
    wgmma::fence_registers(a);
    wgmma::fence();
    b.issue_scores(s, n);
    wgmma::commit();
    b.issue_p_v(o, a, n - 1);
    wgmma::commit();
    wgmma::wait<1>();
    wgmma::fence_registers(s);
    if (sees) {
      b.scale_and_mask_step(s, p, n);
      softmax_step<kKeys>(s, m, l, alpha);
    }
    wgmma::wait<0>();
    wgmma::fence_registers(o);
    wgmma::fence_registers(a);
    if (sees) {
      scale_rows<D>(o, alpha);
      pack_p<kKeys>(a, s);
    }
  }
  b.store(p, o, m, l);
#else
  __trap();  // launched only from sm_90a builds (ops/attention.cu)
#endif
}

// ---------------------------------------------------------------------------------------------
// Backward, one block per (128-key tile, kv head), 2 warpgroups of 64 keys each, 64-query steps over
// every query step and GQA head that can see the tile (the long backward's order, which keeps dK and
// dV in registers):
//   S^T = K Q^T, dP^T = V dO^T   wgmma m64n64k16 from shared memory (K-major)
//   P^T = exp2(S^T scale log2 e - lse log2 e), dS^T = P^T (dP^T - delta)   in registers
//   dV += P^T dO, dK += dS^T Q   wgmma m64nDk16, P^T / dS^T from registers, dO / Q MN-major
//   dQ = dS K                    dS^T through shared memory; warpgroup w takes head dims w D/2..,
//                                wgmma m64n(D/2)k16 with both operands MN-major; fp32 atomics
// Masked pairs are computed and zeroed (P = 0), never skipped: wgmma runs per warpgroup, and the
// pairs a long document's tile wastes this way are its diagonal step's.

template <int D>
struct BwdTile {
  static constexpr int kThreads = 256;  // 2 warpgroups x 64 keys
  static constexpr int kKeys = 128;
  static constexpr int kQueries = 64;   // queries per step
  static constexpr uint32_t kKvBytes = kKeys * D * sizeof(bf16);
  static constexpr uint32_t kQBytes = kQueries * D * sizeof(bf16);
  static constexpr uint32_t kDsBytes = kKeys * kQueries * sizeof(bf16);  // dS^T: keys x queries
  // K, V, 2 x Q, 2 x dO, dS^T; then lse log2 e, delta and row_lo of each step's queries, twice.
  static constexpr size_t kSmemBytes =
      1024 + 2 * kKvBytes + 4 * kQBytes + kDsBytes + 2 * kQueries * (2 * sizeof(float) + sizeof(int));
};

template <int D>
__global__ void __launch_bounds__(BwdTile<D>::kThreads, 1) attention_backward_kernel(const BwdParams p) {
#ifdef LOOM_WGMMA
  using Tile = BwdTile<D>;
  constexpr int kKeys = Tile::kKeys, kQ = Tile::kQueries;
  extern __shared__ unsigned char smem[];
  unsigned char* aligned = smem + ((1024u - (smem_addr(smem) & 1023u)) & 1023u);
  const uint32_t sK = smem_addr(aligned);
  const uint32_t sV = sK + Tile::kKvBytes;
  const uint32_t sQ = sV + Tile::kKvBytes;      // 2 buffers
  const uint32_t sdO = sQ + 2 * Tile::kQBytes;  // 2 buffers
  const uint32_t sdS = sdO + 2 * Tile::kQBytes;
  unsigned char* dS_tile = aligned + (sdS - sK);
  float* sLse = reinterpret_cast<float*>(dS_tile + Tile::kDsBytes);  // lse * log2(e), 2 slots
  float* sDelta = sLse + 2 * kQ;                                     // 2 slots
  int* sRowLo = reinterpret_cast<int*>(sDelta + 2 * kQ);             // 2 slots

  const int kvh = blockIdx.x % p.KVH;
  const int j0 = (blockIdx.x / p.KVH) * kKeys;
  const int j_last = min(j0 + kKeys, p.T) - 1;
  const int group = p.H / p.KVH;
  const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  // Queries [j0, q_end) see some key of the tile; iteration `it` takes query step it / group of head
  // kvh * group + it % group (the heads of a step share its row data).
  const int iters = group * ((query_end_for_key(p, j_last) - j0 + kQ - 1) / kQ);
  auto block_start = [&](int it) { return j0 + (it / group) * kQ; };
  auto head_of = [&](int it) { return kvh * group + it % group; };
  auto load_query_tiles = [&](int it, int buf) {
    const int64_t head = static_cast<int64_t>(head_of(it)) * D;
    load_swizzled_async<D, Tile::kThreads, kQ>(sQ + buf * Tile::kQBytes, p.q + head, p.q_row_stride, block_start(it),
                                               p.T);
    load_swizzled_async<D, Tile::kThreads, kQ>(sdO + buf * Tile::kQBytes, p.dout + head, p.dout_row_stride,
                                               block_start(it), p.T);
  };
  // Row data of thread t < kQ's query of iteration it.
  auto fetch_row = [&](int it) { return bwd_row_data(p, block_start(it) + threadIdx.x, head_of(it)); };
  auto store_row = [&](const BwdRowData& r, int slot) {
    sLse[slot * kQ + threadIdx.x] = r.lse;
    sDelta[slot * kQ + threadIdx.x] = r.delta;
    sRowLo[slot * kQ + threadIdx.x] = r.row_lo;
  };

  load_swizzled_async<D, Tile::kThreads, kKeys>(sK, p.k + static_cast<int64_t>(kvh) * D, p.k_row_stride, j0, p.T);
  load_swizzled_async<D, Tile::kThreads, kKeys>(sV, p.v + static_cast<int64_t>(kvh) * D, p.v_row_stride, j0, p.T);
  load_query_tiles(0, 0);
  cp_async_commit();
  if (threadIdx.x < kQ) store_row(fetch_row(0), 0);

  float dk[D / 8][4] = {}, dv[D / 8][4] = {};
  float st[kQ / 8][4] = {}, dpt[kQ / 8][4] = {}, dq[D / 16][4] = {};
  uint32_t pt_a[kQ / 16][4], ds_a[kQ / 16][4];
  const int key_local = wg * 64 + warp * 16 + g;  // this thread's keys: key_local and key_local + 8
  for (int it = 0; it < iters; ++it) {
    const int buf = it & 1, i0 = block_start(it), h = head_of(it);
    const float* lse = sLse + buf * kQ;
    const float* delta = sDelta + buf * kQ;
    const int* row_lo = sRowLo + buf * kQ;
    const uint32_t q_tile = sQ + buf * Tile::kQBytes, do_tile = sdO + buf * Tile::kQBytes;
    cp_async_wait_all();
    wgmma::fence_async_shared();
    __syncthreads();  // this step's tiles and row data are in; the last step's MMAs are all done

    const bool has_next = it + 1 < iters;
    BwdRowData next{};
    if (has_next) {
      load_query_tiles(it + 1, buf ^ 1);
      cp_async_commit();
      if (threadIdx.x < kQ) next = fetch_row(it + 1);
    }

    // S^T and dP^T for this warpgroup's 64 keys x the step's 64 queries.
    const uint32_t k_rows = sK + wg * 64 * 128, v_rows = sV + wg * 64 * 128;
    wgmma::fence_registers(st);
    wgmma::fence_registers(dpt);
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      wgmma::wgmma_m64n64k16_ss<0, 0>(st, wgmma::kmajor_slice(k_rows, kKeys, kk), wgmma::kmajor_slice(q_tile, kQ, kk),
                                      kk > 0);
      wgmma::wgmma_m64n64k16_ss<0, 0>(dpt, wgmma::kmajor_slice(v_rows, kKeys, kk),
                                      wgmma::kmajor_slice(do_tile, kQ, kk), kk > 0);
    }
    wgmma::commit();
    wgmma::wait<0>();
    wgmma::fence_registers(st);
    wgmma::fence_registers(dpt);

    // P^T and dS^T in place; dS^T also to shared memory (bf16, swizzled) for dQ.
    const bool need_mask = i0 < j0 + kKeys || row_lo[min(kQ, p.T - i0) - 1] > j0;
#pragma unroll
    for (int nt = 0; nt < kQ / 8; ++nt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int key = j0 + key_local + 8 * r;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int qi = nt * 8 + 2 * c + e;
          float x = st[nt][2 * r + e] * p.scale_log2;
          if (need_mask && (key < row_lo[qi] || key > i0 + qi)) x = -INFINITY;
          const float pr = fast_exp2(x - lse[qi]);
          st[nt][2 * r + e] = pr;
          dpt[nt][2 * r + e] = pr * (dpt[nt][2 * r + e] - delta[qi]);
        }
        *reinterpret_cast<uint32_t*>(dS_tile + wgmma::swizzled_offset(kKeys, key_local + 8 * r, nt) + 4 * c) =
            pack_bf16(dpt[nt][2 * r], dpt[nt][2 * r + 1]);
      }
    pack_p<kQ>(pt_a, st);
    pack_p<kQ>(ds_a, dpt);

    // dV += P^T dO and dK += dS^T Q over the step's 4 query slices.
    wgmma::fence_registers(dv);
    wgmma::fence_registers(dk);
    wgmma::fence_registers(pt_a);
    wgmma::fence_registers(ds_a);
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < kQ / 16; ++kk) {
      if constexpr (D == 128) {
        wgmma::wgmma_m64n128k16_rs(dv, pt_a[kk], wgmma::mnmajor_slice(do_tile, kQ, kk));
        wgmma::wgmma_m64n128k16_rs(dk, ds_a[kk], wgmma::mnmajor_slice(q_tile, kQ, kk));
      } else {
        wgmma::wgmma_m64n64k16_rs(dv, pt_a[kk], wgmma::mnmajor_slice(do_tile, kQ, kk));
        wgmma::wgmma_m64n64k16_rs(dk, ds_a[kk], wgmma::mnmajor_slice(q_tile, kQ, kk));
      }
    }
    wgmma::commit();

    // Both warpgroups' dS^T halves are in shared memory; dQ (the step's 64 queries x this warpgroup's
    // D/2 head dims) = dS K over all 128 keys.
    wgmma::fence_async_shared();
    __syncthreads();
    wgmma::fence_registers(dq);
    wgmma::fence();
    const uint32_t k_cols = sK + (D == 128 ? wg * kKeys * 128 : wg * 64);  // head dims wg D/2..
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      if constexpr (D == 128)
        wgmma::wgmma_m64n64k16_ss<1, 1>(dq, wgmma::mnmajor_slice(sdS, kKeys, kk),
                                        wgmma::mnmajor_slice(k_cols, kKeys, kk), kk > 0);
      else
        wgmma::wgmma_m64n32k16_ss<1, 1>(dq, wgmma::mnmajor_slice(sdS, kKeys, kk),
                                        wgmma::mnmajor_slice(k_cols, kKeys, kk), kk > 0);
    }
    wgmma::commit();
    wgmma::wait<0>();
    wgmma::fence_registers(dv);
    wgmma::fence_registers(dk);
    wgmma::fence_registers(pt_a);
    wgmma::fence_registers(ds_a);
    wgmma::fence_registers(dq);
    add_dq<D / 16, D>(p, dq, i0 + warp * 16, h, wg * (D / 2), lane);

    if (has_next && threadIdx.x < kQ) store_row(next, buf ^ 1);
  }

  const int row0 = j0 + wg * 64 + warp * 16;
  store_rows_bf16<D / 8, D>(p.dk, p.dk_row_stride, kvh, row0, 0, dk, p.scale, p.T, lane);
  store_rows_bf16<D / 8, D>(p.dv, p.dv_row_stride, kvh, row0, 0, dv, 1.f, p.T, lane);
#else
  __trap();  // launched only from sm_90a builds (ops/attention.cu)
#endif
}

}  // namespace loom::attn::hopper
