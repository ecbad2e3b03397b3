// Mixture-of-experts token permutation on the GPU (math and plan in ops/moe_permute.h).
#include "ops/kernel_util.cuh"
#include "ops/moe_permute.h"

namespace loom {
namespace {

constexpr int kRowWarps = 8;  // rows per block of the data kernels (one warp each)

// Block b counts the experts of slots [b·chunk, (b + 1)·chunk) into chunk_counts (chunks, E).
__global__ void __launch_bounds__(kMoePermuteChunk)
    moe_count_kernel(int32_t* chunk_counts, const int32_t* experts, int64_t n, int E) {
  extern __shared__ int32_t hist[];
  for (int e = threadIdx.x; e < E; e += blockDim.x) hist[e] = 0;
  __syncthreads();
  const int64_t s = int64_t(blockIdx.x) * kMoePermuteChunk + threadIdx.x;
  if (s < n) atomicAdd(&hist[experts[s]], 1);  // integers: the order does not change the result
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) chunk_counts[int64_t(blockIdx.x) * E + e] = hist[e];
}

// One block, thread e per expert (blockDim >= E): chunk_base (chunks, E) = the first row of expert e
// in each chunk, counts, offsets (E + 1). The scan over the experts is Hillis–Steele in shared memory.
__global__ void __launch_bounds__(kMoeMaxExperts)
    moe_scan_kernel(int32_t* counts, int32_t* offsets, int32_t* chunk_base, const int32_t* chunk_counts, int chunks,
                    int E) {
  __shared__ int32_t scan[kMoeMaxExperts];
  const int e = threadIdx.x;
  int32_t total = 0;
  if (e < E)
    for (int b = 0; b < chunks; ++b) {
      chunk_base[int64_t(b) * E + e] = total;
      total += chunk_counts[int64_t(b) * E + e];
    }
  scan[e] = total;
  __syncthreads();
  for (int step = 1; step < blockDim.x; step *= 2) {
    const int32_t add = e >= step ? scan[e - step] : 0;
    __syncthreads();
    scan[e] += add;
    __syncthreads();
  }
  if (e >= E) return;
  const int32_t first = scan[e] - total;  // exclusive
  counts[e] = total;
  offsets[e] = first;
  if (e == E - 1) offsets[E] = scan[e];
  for (int b = 0; b < chunks; ++b) chunk_base[int64_t(b) * E + e] += first;
}

// Block b ranks its slots: a slot's row is its expert's base in the chunk plus the number of earlier
// slots of the chunk with the same expert (stable).
__global__ void __launch_bounds__(kMoePermuteChunk)
    moe_rank_kernel(int32_t* row_of, int32_t* slot_of, const int32_t* chunk_base, const int32_t* experts, int64_t n,
                    int E) {
  __shared__ int32_t chunk_experts[kMoePermuteChunk];
  const int64_t s = int64_t(blockIdx.x) * kMoePermuteChunk + threadIdx.x;
  const int32_t x = s < n ? experts[s] : -1;
  chunk_experts[threadIdx.x] = x;
  __syncthreads();
  if (s >= n) return;
  int32_t rank = 0;
  for (int j = 0; j < int(threadIdx.x); ++j) rank += chunk_experts[j] == x;
  const int32_t row = chunk_base[int64_t(blockIdx.x) * E + x] + rank;
  row_of[s] = row;
  slot_of[row] = int32_t(s);
}

// Warp r % kRowWarps of block r / kRowWarps copies token slot_of[r] / K's row into xs[r].
__global__ void moe_gather_kernel(bf16* xs, const bf16* x, const int32_t* slot_of, int64_t rows, int K, int C) {
  const int64_t r = int64_t(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  if (r >= rows) return;
  const int64_t t = slot_of[r] / K;
  const uint4* src = reinterpret_cast<const uint4*>(x + t * C);
  uint4* dst = reinterpret_cast<uint4*>(xs + r * C);
  for (int v = threadIdx.x % 32; v < C / kBf16PerVec; v += 32) dst[v] = src[v];
}

// Warp t: y[t] = Σ_k w[t,k] · ys[row_of[t,k]], fma in k order; with weights null the weights are 1
// and the sum is a plain one (the gather's backward), as the references compute them.
__global__ void moe_combine_kernel(bf16* y, const bf16* ys, const float* weights, const int32_t* row_of, int64_t T,
                                   int K, int C) {
  const int64_t t = int64_t(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  if (t >= T) return;
  for (int c = (threadIdx.x % 32) * kBf16PerVec; c < C; c += 32 * kBf16PerVec) {
    float acc[8] = {}, v[8];
    for (int k = 0; k < K; ++k) {
      load_bf16x8(v, ys + int64_t(row_of[t * K + k]) * C + c);
      if (weights) {
        const float w = weights[t * K + k];
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[i] = fmaf(w, v[i], acc[i]);
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[i] = __fadd_rn(acc[i], v[i]);
      }
    }
    store_bf16x8(y + t * C + c, acc);
  }
}

// Warp r: dys[r] = w[s] · dy[t] and dweights[s] = dy[t] · ys[r] (s = slot_of[r], t = s / K); each
// lane sums its elements in order, then the warp adds its lanes in a fixed tree.
__global__ void moe_combine_backward_kernel(bf16* dys, float* dweights, const bf16* dy, const bf16* ys,
                                            const float* weights, const int32_t* slot_of, int64_t rows, int K, int C) {
  const int64_t r = int64_t(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  if (r >= rows) return;
  const int64_t s = slot_of[r], t = s / K;
  const float w = weights[s];
  float dot = 0;
  for (int c = (threadIdx.x % 32) * kBf16PerVec; c < C; c += 32 * kBf16PerVec) {
    float g[8], out[8], scaled[8];
    load_bf16x8(g, dy + t * C + c);
    load_bf16x8(out, ys + r * C + c);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      scaled[i] = __fmul_rn(w, g[i]);
      dot = fmaf(g[i], out[i], dot);
    }
    store_bf16x8(dys + r * C + c, scaled);
  }
  dot = group_sum(dot);
  if (threadIdx.x % 32 == 0) dweights[s] = dot;
}

void check_rows(const char* what, int64_t T, int K, int C, std::initializer_list<const void*> pointers) {
  LOOM_CHECK(T >= 0 && K >= 1 && K <= kMoeMaxTopK && T * K <= INT32_MAX && C >= 8 && C % 8 == 0, what, ": T ", T,
             ", top ", K, ", rows of ", C, " (need C a multiple of 8, 1 <= K <= ", kMoeMaxTopK,
             ", T·K within int32)");
  LOOM_CHECK(all_aligned_16(pointers), what, ": every bf16 buffer must be 16-byte aligned");
}

unsigned row_blocks(int64_t rows) { return unsigned(ceil_div(rows, kRowWarps)); }

int64_t chunks_of(int64_t T, int K) { return ceil_div(T * K, kMoePermuteChunk); }

}  // namespace

size_t moe_permute_workspace_bytes(int64_t T, int E, int K) {
  return size_t(2) * size_t(chunks_of(T, K)) * size_t(E) * sizeof(int32_t);
}

void moe_permute_plan(int32_t* counts, int32_t* offsets, int32_t* row_of, int32_t* slot_of, void* workspace,
                      const int32_t* experts, int64_t T, int E, int K, cudaStream_t stream) {
  LOOM_CHECK(T >= 0 && E >= 1 && E <= kMoeMaxExperts && K >= 1 && K <= E && T * K <= INT32_MAX,
             "moe_permute_plan: T ", T, ", ", E, " experts, top ", K, " (need 1 <= K <= E <= ", kMoeMaxExperts,
             ", T·K within int32)");
  const int64_t n = T * K, chunks = chunks_of(T, K);
  int32_t* chunk_counts = static_cast<int32_t*>(workspace);
  int32_t* chunk_base = chunk_counts + chunks * E;
  if (chunks > 0) {
    moe_count_kernel<<<unsigned(chunks), kMoePermuteChunk, size_t(E) * sizeof(int32_t), stream>>>(chunk_counts,
                                                                                                  experts, n, E);
    CUDA_CHECK(cudaGetLastError());
  }
  // Still run with no slots: counts and offsets become 0.
  moe_scan_kernel<<<1, unsigned(ceil_div(E, 32) * 32), 0, stream>>>(counts, offsets, chunk_base, chunk_counts,
                                                                     int(chunks), E);
  CUDA_CHECK(cudaGetLastError());
  if (chunks == 0) return;
  moe_rank_kernel<<<unsigned(chunks), kMoePermuteChunk, 0, stream>>>(row_of, slot_of, chunk_base, experts, n, E);
  CUDA_CHECK(cudaGetLastError());
}

void moe_gather(bf16* xs, const bf16* x, const int32_t* slot_of, int64_t T, int K, int C, cudaStream_t stream) {
  check_rows("moe_gather", T, K, C, {xs, x});
  if (T == 0) return;
  moe_gather_kernel<<<row_blocks(T * K), kRowWarps * 32, 0, stream>>>(xs, x, slot_of, T * K, K, C);
  CUDA_CHECK(cudaGetLastError());
}

void moe_combine(bf16* y, const bf16* ys, const float* weights, const int32_t* row_of, int64_t T, int K, int C,
                 cudaStream_t stream) {
  LOOM_CHECK(weights != nullptr, "moe_combine: the routing weights are missing");
  check_rows("moe_combine", T, K, C, {y, ys});
  if (T == 0) return;
  moe_combine_kernel<<<row_blocks(T), kRowWarps * 32, 0, stream>>>(y, ys, weights, row_of, T, K, C);
  CUDA_CHECK(cudaGetLastError());
}

void moe_combine_backward(bf16* dys, float* dweights, const bf16* dy, const bf16* ys, const float* weights,
                          const int32_t* slot_of, int64_t T, int K, int C, cudaStream_t stream) {
  check_rows("moe_combine_backward", T, K, C, {dys, dy, ys});
  if (T == 0) return;
  moe_combine_backward_kernel<<<row_blocks(T * K), kRowWarps * 32, 0, stream>>>(dys, dweights, dy, ys, weights,
                                                                                slot_of, T * K, K, C);
  CUDA_CHECK(cudaGetLastError());
}

void moe_gather_backward(bf16* dx, const bf16* dxs, const int32_t* row_of, int64_t T, int K, int C,
                         cudaStream_t stream) {
  check_rows("moe_gather_backward", T, K, C, {dx, dxs});
  if (T == 0) return;
  moe_combine_kernel<<<row_blocks(T), kRowWarps * 32, 0, stream>>>(dx, dxs, nullptr, row_of, T, K, C);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace loom
