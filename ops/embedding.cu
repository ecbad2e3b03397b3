// Embedding lookup (frozen table, no backward): out[t, :] = table[ids[t], :]   (out written, =)
// out (T, C), ids (T) int32, table (V, C), all bf16 except ids. A pure copy: one thread moves one
// 16-byte vector, consecutive threads the consecutive vectors of a row (coalesced on both sides).
#include "ops/embedding.h"
#include "ops/kernel_util.cuh"

namespace loom {
namespace {

constexpr int kThreads = 256;

// ---------------------------------------------------------------------------------------------
// CUDA kernels

__global__ void embedding_forward_kernel(bf16* out, const int32_t* ids, const bf16* table, int64_t T, int C) {
  const int vecs_per_row = C / kBf16PerVec;
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= T * vecs_per_row) return;
  const int64_t t = idx / vecs_per_row;
  const int c = int(idx % vecs_per_row) * kBf16PerVec;
  // int64: ids[t] * C passes INT_MAX for large vocabularies times wide rows (152k x 16k).
  const int64_t src = int64_t(ids[t]) * C + c;
  *reinterpret_cast<uint4*>(out + t * C + c) = *reinterpret_cast<const uint4*>(table + src);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// kernel launchers

void embedding_forward(bf16* out, const int32_t* ids, const bf16* table, int64_t T, int C, cudaStream_t stream) {
  LOOM_CHECK(T >= 0 && C > 0 && C % kBf16PerVec == 0,
             "embedding_forward: needs T >= 0 and C a positive multiple of 8 (16-byte rows); found T ", T, ", C ", C);
  LOOM_CHECK(is_aligned_16(out) && is_aligned_16(table),
             "embedding_forward: out and table must be 16-byte aligned (carve buffers at 16-byte offsets)");
  if (T == 0) return;
  const int64_t vecs = T * (C / kBf16PerVec);
  embedding_forward_kernel<<<ceil_div(vecs, kThreads), kThreads, 0, stream>>>(out, ids, table, T, C);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace loom
