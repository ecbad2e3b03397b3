// Mixture-of-experts routing on the GPU (math in ops/moe_router.h, GPU notes in ops/moe_route.h).
#include "ops/kernel_util.cuh"
#include "ops/moe_route.h"

namespace loom {
namespace {

constexpr int kRouteWarps = 4;  // tokens per block
constexpr int kAuxRowLanes = 8;  // threads along the rows of one expert in a slice

// Whether candidate (p, e) beats the best so far (best_p, best_e): larger p, then the lower expert.
// e == none (no candidate yet) loses to everything, so a NaN probability still yields a valid expert.
__device__ __forceinline__ bool beats(float p, int e, float best_p, int best_e, int none) {
  if (e == none) return false;
  if (best_e == none) return true;
  return p > best_p || (p == best_p && e < best_e);
}

// Warp w of block b routes token b·kRouteWarps + w; p: kRouteWarps rows of E floats of shared memory.
// A lane owns experts lane, lane + 32, ...: entry i of a lane is expert lane + 32·i (taken: bit i).
__global__ void __launch_bounds__(kRouteWarps * 32)
    moe_route_kernel(int32_t* experts, float* weights, float* probs, const float* logits, int64_t T, int E, int K,
                     bool normalize) {
  extern __shared__ float route_smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t t = int64_t(blockIdx.x) * kRouteWarps + warp;
  if (t >= T) return;  // the whole warp; no block-wide barrier follows
  float* p = route_smem + warp * E;
  const float* z = logits + t * E;
  float zmax = -INFINITY;
  for (int e = lane; e < E; e += 32) zmax = fmaxf(zmax, z[e]);
  zmax = group_max(zmax);
  float sum = 0;
  for (int e = lane; e < E; e += 32) sum += p[e] = expf(z[e] - zmax);
  sum = group_sum(sum);
  for (int e = lane; e < E; e += 32) probs[t * E + e] = p[e] = p[e] / sum;
  uint32_t taken = 0;
  float chosen = 0, mine_p = 0;  // lane k keeps the k-th pick
  int mine_e = 0;
  for (int k = 0; k < K; ++k) {
    float best_p = 0;
    int best_e = E;
    for (int i = 0, e = lane; e < E; ++i, e += 32)
      if (!(taken >> i & 1u) && beats(p[e], e, best_p, best_e, E)) best_p = p[e], best_e = e;
    for (int offset = 16; offset > 0; offset /= 2) {
      const float other_p = __shfl_xor_sync(0xffffffffu, best_p, offset);
      const int other_e = __shfl_xor_sync(0xffffffffu, best_e, offset);
      if (beats(other_p, other_e, best_p, best_e, E)) best_p = other_p, best_e = other_e;
    }
    chosen += best_p;  // in k order, as the reference sums them
    if (best_e % 32 == lane) taken |= 1u << (best_e / 32);
    if (lane == k) mine_p = best_p, mine_e = best_e;
  }
  if (lane < K) {
    experts[t * K + lane] = mine_e;
    weights[t * K + lane] = normalize ? mine_p / chosen : mine_p;
  }
}

// Warp w of block b: token b·kRouteWarps + w; dp: kRouteWarps rows of E floats of shared memory.
// The sums over k run in k order with explicit roundings (no fused multiply-add), as the reference's;
// only Σ_e p·dp takes the warp's tree order.
__global__ void __launch_bounds__(kRouteWarps * 32)
    moe_route_backward_kernel(float* dlogits, const float* dweights, const float* dprob_row, const float* probs,
                              const int32_t* experts, const float* weights, int64_t T, int E, int K, bool normalize) {
  extern __shared__ float route_smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t t = int64_t(blockIdx.x) * kRouteWarps + warp;
  if (t >= T) return;
  float* dp = route_smem + warp * E;
  const float* p = probs + t * E;
  for (int e = lane; e < E; e += 32) dp[e] = dprob_row ? dprob_row[e] : 0.f;
  float wdw = 0, chosen = 0;
  for (int k = 0; k < K; ++k) {
    wdw = __fadd_rn(wdw, __fmul_rn(weights[t * K + k], dweights[t * K + k]));
    chosen = __fadd_rn(chosen, p[experts[t * K + k]]);
  }
  __syncwarp();
  for (int k = 0; k < K; ++k) {
    const int e = experts[t * K + k];
    const float dw = dweights[t * K + k];
    if (e % 32 == lane) dp[e] += normalize ? (dw - wdw) / chosen : dw;
  }
  __syncwarp();
  float pdp = 0;
  for (int e = lane; e < E; e += 32) pdp = fmaf(p[e], dp[e], pdp);
  pdp = group_sum(pdp);
  for (int e = lane; e < E; e += 32) dlogits[t * E + e] = p[e] * (dp[e] - pdp);
}

// Block (x, s): experts 32x .. 32x + 31 (threadIdx.x) over row slice s; kAuxRowLanes threads
// (threadIdx.y) take every kAuxRowLanes-th row of the slice, then thread y = 0 adds the lanes in order.
// partial: counts (kMoeAuxSlices, E) then prob sums (kMoeAuxSlices, E).
__global__ void moe_aux_partial_kernel(double* partial, const int32_t* experts, const float* probs, int64_t T, int E,
                                       int K) {
  __shared__ double count_lane[kAuxRowLanes][32], prob_lane[kAuxRowLanes][32];
  const int e = blockIdx.x * 32 + threadIdx.x, s = blockIdx.y;
  const int64_t begin = T * s / kMoeAuxSlices, end = T * (s + 1) / kMoeAuxSlices;
  int count = 0;
  double prob = 0;
  if (e < E)
    for (int64_t t = begin + threadIdx.y; t < end; t += kAuxRowLanes) {
      for (int k = 0; k < K; ++k) count += experts[t * K + k] == e;
      prob += probs[t * E + e];
    }
  count_lane[threadIdx.y][threadIdx.x] = count;
  prob_lane[threadIdx.y][threadIdx.x] = prob;
  __syncthreads();
  if (threadIdx.y != 0 || e >= E) return;
  double c = 0, q = 0;
  for (int y = 0; y < kAuxRowLanes; ++y) c += count_lane[y][threadIdx.x], q += prob_lane[y][threadIdx.x];
  partial[int64_t(s) * E + e] = c;
  partial[int64_t(kMoeAuxSlices + s) * E + e] = q;
}

// Thread e adds the slices' partials in slice order to the accumulators.
__global__ void moe_aux_reduce_kernel(double* counts, double* prob_sum, const double* partial, int E) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= E) return;
  double c = 0, q = 0;
  for (int s = 0; s < kMoeAuxSlices; ++s) {
    c += partial[int64_t(s) * E + e];
    q += partial[int64_t(kMoeAuxSlices + s) * E + e];
  }
  counts[e] += c;
  prob_sum[e] += q;
}

// One warp: dprob as moe_aux_dprob_ref rounds it (double, then float), times scale; loss in double.
__global__ void moe_aux_loss_kernel(double* loss, float* dprob, const double* counts, const double* prob_sum, int E,
                                    int64_t rows, float scale) {
  const double n = double(rows);
  double aux = 0;
  for (int e = threadIdx.x; e < E; e += 32) {
    if (rows) aux += (counts[e] / n) * (prob_sum[e] / n);
    if (dprob) dprob[e] = rows ? float(double(E) * counts[e] / (n * n)) * scale : 0.f;
  }
  for (int offset = 16; offset > 0; offset /= 2) aux += __shfl_xor_sync(0xffffffffu, aux, offset);
  if (loss && threadIdx.x == 0) *loss = double(E) * aux;
}

void check_route_shape(const char* what, int64_t T, int E, int K) {
  LOOM_CHECK(T >= 0 && E >= 1 && E <= kMoeMaxExperts && K >= 1 && K <= E && K <= kMoeMaxTopK, what, ": T ", T,
             ", ", E, " experts, top ", K, " (need 1 <= K <= E <= ", kMoeMaxExperts, ", K <= ", kMoeMaxTopK, ")");
}

unsigned route_blocks(int64_t T) { return unsigned(ceil_div(T, kRouteWarps)); }
size_t route_smem_bytes(int E) { return size_t(kRouteWarps) * size_t(E) * sizeof(float); }

}  // namespace

void moe_route(int32_t* experts, float* weights, float* probs, const float* logits, int64_t T, int E, int K,
               bool normalize, cudaStream_t stream) {
  check_route_shape("moe_route", T, E, K);
  if (T == 0) return;
  moe_route_kernel<<<route_blocks(T), kRouteWarps * 32, route_smem_bytes(E), stream>>>(experts, weights, probs, logits,
                                                                                        T, E, K, normalize);
  CUDA_CHECK(cudaGetLastError());
}

void moe_route_backward(float* dlogits, const float* dweights, const float* dprob_row, const float* probs,
                        const int32_t* experts, const float* weights, int64_t T, int E, int K, bool normalize,
                        cudaStream_t stream) {
  check_route_shape("moe_route_backward", T, E, K);
  if (T == 0) return;
  moe_route_backward_kernel<<<route_blocks(T), kRouteWarps * 32, route_smem_bytes(E), stream>>>(
      dlogits, dweights, dprob_row, probs, experts, weights, T, E, K, normalize);
  CUDA_CHECK(cudaGetLastError());
}

size_t moe_aux_workspace_bytes(int E) { return size_t(2) * kMoeAuxSlices * size_t(E) * sizeof(double); }

void moe_aux_accumulate(double* counts, double* prob_sum, void* workspace, const int32_t* experts, const float* probs,
                        int64_t T, int E, int K, cudaStream_t stream) {
  check_route_shape("moe_aux_accumulate", T, E, K);
  double* partial = static_cast<double*>(workspace);
  const dim3 grid(unsigned(ceil_div(E, 32)), kMoeAuxSlices), block(32, kAuxRowLanes);
  moe_aux_partial_kernel<<<grid, block, 0, stream>>>(partial, experts, probs, T, E, K);
  CUDA_CHECK(cudaGetLastError());
  moe_aux_reduce_kernel<<<unsigned(ceil_div(E, 256)), 256, 0, stream>>>(counts, prob_sum, partial, E);
  CUDA_CHECK(cudaGetLastError());
}

void moe_aux_loss(double* loss, float* dprob, const double* counts, const double* prob_sum, int E, int64_t rows,
                  float scale, cudaStream_t stream) {
  LOOM_CHECK(E >= 1 && E <= kMoeMaxExperts && rows >= 0, "moe_aux_loss: ", E, " experts, ", rows, " rows");
  moe_aux_loss_kernel<<<1, 32, 0, stream>>>(loss, dprob, counts, prob_sum, E, rows, scale);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace loom
