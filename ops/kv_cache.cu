// KV cache writes on the GPU (math in ops/kv_cache.h): one block per row, 16-byte copies.
#include "ops/kv_cache.h"

namespace loom {
namespace {

// Block t copies row t of k and of v (row elements, a multiple of 8) as uint4 (8 bf16).
__global__ void kv_cache_write_kernel(bf16* cache_k, bf16* cache_v, const bf16* k, const bf16* v, const int32_t* slot,
                                      const int32_t* pos, int64_t row, int64_t capacity) {
  const int64_t t = blockIdx.x;
  const int64_t at = (int64_t(slot[t]) * capacity + pos[t]) * row;
  const uint4* ks = reinterpret_cast<const uint4*>(k + t * row);
  const uint4* vs = reinterpret_cast<const uint4*>(v + t * row);
  uint4* kd = reinterpret_cast<uint4*>(cache_k + at);
  uint4* vd = reinterpret_cast<uint4*>(cache_v + at);
  for (int64_t i = threadIdx.x; i < row / 8; i += blockDim.x) {
    kd[i] = ks[i];
    vd[i] = vs[i];
  }
}

// Thread t writes token t.
__global__ void token_cache_write_kernel(int32_t* ids, const int32_t* tokens, const int32_t* slot, const int32_t* pos,
                                         int64_t T, int64_t capacity) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t < T) ids[int64_t(slot[t]) * capacity + pos[t]] = tokens[t];
}

}  // namespace

void token_cache_write(int32_t* ids, const int32_t* tokens, const int32_t* slot, const int32_t* pos, int64_t T,
                       int64_t capacity, cudaStream_t stream) {
  LOOM_CHECK(capacity > 0 && T >= 0, "token cache: capacity ", capacity, ", T ", T);
  if (T == 0) return;
  constexpr int kThreads = 256;
  token_cache_write_kernel<<<unsigned((T + kThreads - 1) / kThreads), kThreads, 0, stream>>>(ids, tokens, slot, pos, T,
                                                                                              capacity);
  CUDA_CHECK(cudaGetLastError());
}

void kv_cache_write(bf16* cache_k, bf16* cache_v, const bf16* k, const bf16* v, const int32_t* slot,
                    const int32_t* pos, int64_t T, int KVH, int D, int64_t capacity, cudaStream_t stream) {
  const int64_t row = int64_t(KVH) * D;
  LOOM_CHECK(row % 8 == 0 && capacity > 0 && T >= 0 && T <= INT32_MAX, "kv cache: rows of ", row,
             " elements (need a multiple of 8), capacity ", capacity, ", T ", T);
  if (T == 0) return;
  kv_cache_write_kernel<<<unsigned(T), 128, 0, stream>>>(cache_k, cache_v, k, v, slot, pos, row, capacity);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace loom
