// SwiGLU forward and backward, elementwise (math in ops/swiglu.h):
//   forward:  s = sigmoid(g) ; h = g * s * u                                  (h written, =)
//   backward: dg = dh * u * s * (1 + g * (1 - s)) ; du = dh * g * s          (dg, du written, =)
// fp32 math on bf16 values, each output rounded once (HF rounds silu(g) to bf16 before the product;
// one rounding is closer to the fp32 reference). Nothing is saved: backward recomputes s from g.
// One thread owns 8 consecutive elements: 16-byte vectors when every pointer is 16-byte aligned.
#include "ops/kernel_util.cuh"
#include "ops/swiglu.h"

namespace loom {
namespace {

constexpr int kThreads = 256;

// ---------------------------------------------------------------------------------------------
// CUDA kernels

__device__ __forceinline__ float sigmoid(float g) { return 1.f / (1.f + expf(-g)); }

template <bool kVec>
__global__ void swiglu_forward_kernel(bf16* h, const bf16* gate, const bf16* up, int64_t n) {
  const int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * 8;
  if (i >= n) return;
  float g[8], u[8], out[8];
  load_bf16x8_upto<kVec>(g, gate, i, n);
  load_bf16x8_upto<kVec>(u, up, i, n);
#pragma unroll
  for (int k = 0; k < 8; ++k) out[k] = g[k] * sigmoid(g[k]) * u[k];
  store_bf16x8_upto<kVec>(h, out, i, n);
}

template <bool kVec>
__global__ void swiglu_backward_kernel(bf16* dgate, bf16* dup, const bf16* dh, const bf16* gate, const bf16* up,
                                       int64_t n) {
  const int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * 8;
  if (i >= n) return;
  float d[8], g[8], u[8], dg[8], du[8];
  load_bf16x8_upto<kVec>(d, dh, i, n);
  load_bf16x8_upto<kVec>(g, gate, i, n);
  load_bf16x8_upto<kVec>(u, up, i, n);
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const float s = sigmoid(g[k]);
    dg[k] = d[k] * u[k] * s * (1.f + g[k] * (1.f - s));
    du[k] = d[k] * g[k] * s;
  }
  store_bf16x8_upto<kVec>(dgate, dg, i, n);
  store_bf16x8_upto<kVec>(dup, du, i, n);
}

int64_t blocks_for(int64_t n) { return ceil_div(ceil_div(n, 8), kThreads); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// kernel launchers

void swiglu_forward(bf16* h, const bf16* gate, const bf16* up, int64_t n, cudaStream_t stream) {
  LOOM_CHECK(n >= 0, "swiglu_forward: element count must be >= 0 (found ", n, ")");
  if (n == 0) return;
  if (all_aligned_16({h, gate, up}))
    swiglu_forward_kernel<true><<<blocks_for(n), kThreads, 0, stream>>>(h, gate, up, n);
  else
    swiglu_forward_kernel<false><<<blocks_for(n), kThreads, 0, stream>>>(h, gate, up, n);
  CUDA_CHECK(cudaGetLastError());
}

void swiglu_backward(bf16* dgate, bf16* dup, const bf16* dh, const bf16* gate, const bf16* up, int64_t n,
                     cudaStream_t stream) {
  LOOM_CHECK(n >= 0, "swiglu_backward: element count must be >= 0 (found ", n, ")");
  if (n == 0) return;
  if (all_aligned_16({dgate, dup, dh, gate, up}))
    swiglu_backward_kernel<true><<<blocks_for(n), kThreads, 0, stream>>>(dgate, dup, dh, gate, up, n);
  else
    swiglu_backward_kernel<false><<<blocks_for(n), kThreads, 0, stream>>>(dgate, dup, dh, gate, up, n);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace loom
