// Dropout forward and backward, elementwise (math in ops/dropout.h):
//   forward:  y = x · f(i)              (written, =)
//   backward: dx = dx + dy · f(i)       (accumulated; fp32 sum, one rounding)
// f(i) comes from the same counter-based generator as the CPU reference, so both paths drop the
// same elements. Memory-bound: one thread owns 8 consecutive elements, 16-byte vectors when every
// pointer is 16-byte aligned; the hash (two 64-bit multiplies per element) hides under the loads.
#include "ops/dropout.h"
#include "ops/kernel_util.cuh"

namespace loom {
namespace {

constexpr int kThreads = 256;

template <bool kVec>
__global__ void dropout_forward_kernel(bf16* y, const bf16* x, int64_t n, uint64_t seed, uint64_t stream, float p,
                                       uint64_t first) {
  const int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * 8;
  if (i >= n) return;
  float v[8];
  load_bf16x8_upto<kVec>(v, x, i, n);
#pragma unroll
  for (int k = 0; k < 8; ++k) v[k] *= dropout_factor(seed, stream, first + uint64_t(i + k), p);
  store_bf16x8_upto<kVec>(y, v, i, n);
}

template <bool kVec>
__global__ void dropout_backward_kernel(bf16* dx, const bf16* dy, int64_t n, uint64_t seed, uint64_t stream,
                                        float p, uint64_t first) {
  const int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * 8;
  if (i >= n) return;
  float acc[8], d[8];
  load_bf16x8_upto<kVec>(acc, dx, i, n);
  load_bf16x8_upto<kVec>(d, dy, i, n);
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const float f = dropout_factor(seed, stream, first + uint64_t(i + k), p);
    acc[k] = __fadd_rn(acc[k], __fmul_rn(d[k], f));
  }
  store_bf16x8_upto<kVec>(dx, acc, i, n);
}

int64_t blocks_for(int64_t n) { return ceil_div(ceil_div(n, 8), kThreads); }

void check_args(const char* op, int64_t n, float p) {
  LOOM_CHECK(n >= 0, op, ": element count must be >= 0 (found ", n, ")");
  LOOM_CHECK(p >= 0.f && p < 1.f, op, ": dropout probability must be in [0, 1) (found ", p, ")");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// kernel launchers

void dropout_forward(bf16* y, const bf16* x, int64_t n, uint64_t seed, uint64_t stream, float p, cudaStream_t cs,
                     uint64_t first) {
  check_args("dropout_forward", n, p);
  if (n == 0) return;
  if (all_aligned_16({y, x}))
    dropout_forward_kernel<true><<<blocks_for(n), kThreads, 0, cs>>>(y, x, n, seed, stream, p, first);
  else
    dropout_forward_kernel<false><<<blocks_for(n), kThreads, 0, cs>>>(y, x, n, seed, stream, p, first);
  CUDA_CHECK(cudaGetLastError());
}

void dropout_backward(bf16* dx, const bf16* dy, int64_t n, uint64_t seed, uint64_t stream, float p,
                      cudaStream_t cs, uint64_t first) {
  check_args("dropout_backward", n, p);
  if (n == 0) return;
  if (all_aligned_16({dx, dy}))
    dropout_backward_kernel<true><<<blocks_for(n), kThreads, 0, cs>>>(dx, dy, n, seed, stream, p, first);
  else
    dropout_backward_kernel<false><<<blocks_for(n), kThreads, 0, cs>>>(dx, dy, n, seed, stream, p, first);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace loom
