// Greedy token choice on the GPU (math in ops/sampling.h): one block per row of logits.
#include <cfloat>
#include <climits>

#include "ops/error.h"
#include "ops/sampling.h"

namespace loom {
namespace {

constexpr int kGreedyThreads = 1024;

// The better of two candidates: the larger logit, the lower index on equal logits.
__device__ inline void keep_better(float& best, int& index, float other, int other_index) {
  if (other > best || (other == best && other_index < index)) {
    best = other;
    index = other_index;
  }
}

// Each thread scans a strided slice (indices ascending, so `>` keeps the first of equal maxima), then
// the block reduces (best, index) and the lowest non-finite index through warp shuffles and shared
// memory. A row of -inf leaves index INT_MAX, a NaN or +inf logit sets `bad`.
__global__ void greedy_kernel(int32_t* codes, const float* logits, int V) {
  const float* x = logits + int64_t(blockIdx.x) * V;
  float best = -INFINITY;
  int index = INT_MAX, bad = INT_MAX;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    const float v = x[i];
    if (isnan(v) || v == INFINITY) bad = min(bad, i);
    else if (v > best) best = v, index = i;
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    keep_better(best, index, __shfl_down_sync(0xffffffffu, best, offset), __shfl_down_sync(0xffffffffu, index, offset));
    bad = min(bad, __shfl_down_sync(0xffffffffu, bad, offset));
  }
  __shared__ float warp_best[kGreedyThreads / 32];
  __shared__ int warp_index[kGreedyThreads / 32], warp_bad[kGreedyThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_best[warp] = best, warp_index[warp] = index, warp_bad[warp] = bad;
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int w = 1; w < int(blockDim.x / 32); ++w) {
    keep_better(best, index, warp_best[w], warp_index[w]);
    bad = min(bad, warp_bad[w]);
  }
  codes[blockIdx.x] = bad != INT_MAX ? -2 - bad : index == INT_MAX ? -1 : index;
}

}  // namespace

void greedy_tokens(int32_t* codes, const float* logits, int rows, int V, cudaStream_t stream) {
  LOOM_CHECK(rows >= 0 && V >= 1 && V <= kSamplingMaxVocab, "greedy_tokens: ", rows, " rows of ", V, " logits");
  if (rows == 0) return;
  greedy_kernel<<<unsigned(rows), kGreedyThreads, 0, stream>>>(codes, logits, V);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace loom
