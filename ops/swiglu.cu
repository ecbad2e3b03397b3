// SwiGLU forward and backward, elementwise (math in ops/swiglu.h):
//   forward:  s = sigmoid(g) ; h = g * s * u                                  (h written, =)
//   backward: dg = dh * u * s * (1 + g * (1 - s)) ; du = dh * g * s          (dg, du written, =)
// fp32 math on bf16 values, each output rounded once (HF rounds silu(g) to bf16 before the product;
// one rounding is closer to the fp32 reference). Nothing is saved: backward recomputes s from g.
// One thread owns 8 consecutive elements: 16-byte vectors when every pointer is 16-byte aligned.
#include <initializer_list>

#include "ops/kernel_util.cuh"
#include "ops/swiglu.h"

namespace loom {
namespace {

constexpr int kThreads = 256;

// ---------------------------------------------------------------------------------------------
// CUDA kernels

__device__ __forceinline__ float sigmoid(float g) { return 1.f / (1.f + expf(-g)); }

// Loads 8 elements at i (fewer past n, the rest 0): one vector when kVec and all 8 are in range.
template <bool kVec>
__device__ __forceinline__ void load8(float (&x)[8], const bf16* p, int64_t i, int64_t n) {
  if (kVec && i + 8 <= n) return load_bf16x8(x, p + i);
#pragma unroll
  for (int k = 0; k < 8; ++k) x[k] = i + k < n ? __bfloat162float(p[i + k]) : 0.f;
}

template <bool kVec>
__device__ __forceinline__ void store8(bf16* p, const float (&x)[8], int64_t i, int64_t n) {
  if (kVec && i + 8 <= n) return store_bf16x8(p + i, x);
#pragma unroll
  for (int k = 0; k < 8; ++k)
    if (i + k < n) p[i + k] = __float2bfloat16_rn(x[k]);
}

template <bool kVec>
__global__ void swiglu_forward_kernel(bf16* h, const bf16* gate, const bf16* up, int64_t n) {
  const int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * 8;
  if (i >= n) return;
  float g[8], u[8], out[8];
  load8<kVec>(g, gate, i, n);
  load8<kVec>(u, up, i, n);
#pragma unroll
  for (int k = 0; k < 8; ++k) out[k] = g[k] * sigmoid(g[k]) * u[k];
  store8<kVec>(h, out, i, n);
}

template <bool kVec>
__global__ void swiglu_backward_kernel(bf16* dgate, bf16* dup, const bf16* dh, const bf16* gate, const bf16* up,
                                       int64_t n) {
  const int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * 8;
  if (i >= n) return;
  float d[8], g[8], u[8], dg[8], du[8];
  load8<kVec>(d, dh, i, n);
  load8<kVec>(g, gate, i, n);
  load8<kVec>(u, up, i, n);
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const float s = sigmoid(g[k]);
    dg[k] = d[k] * u[k] * s * (1.f + g[k] * (1.f - s));
    du[k] = d[k] * g[k] * s;
  }
  store8<kVec>(dgate, dg, i, n);
  store8<kVec>(dup, du, i, n);
}

bool all_aligned(std::initializer_list<const void*> pointers) {
  for (const void* p : pointers)
    if (!is_aligned_16(p)) return false;
  return true;
}

int64_t blocks_for(int64_t n) { return ceil_div(ceil_div(n, 8), kThreads); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// kernel launchers

void swiglu_forward(bf16* h, const bf16* gate, const bf16* up, int64_t n, cudaStream_t stream) {
  LOOM_CHECK(n >= 0, "swiglu_forward: element count must be >= 0 (found ", n, ")");
  if (n == 0) return;
  if (all_aligned({h, gate, up}))
    swiglu_forward_kernel<true><<<blocks_for(n), kThreads, 0, stream>>>(h, gate, up, n);
  else
    swiglu_forward_kernel<false><<<blocks_for(n), kThreads, 0, stream>>>(h, gate, up, n);
  CUDA_CHECK(cudaGetLastError());
}

void swiglu_backward(bf16* dgate, bf16* dup, const bf16* dh, const bf16* gate, const bf16* up, int64_t n,
                     cudaStream_t stream) {
  LOOM_CHECK(n >= 0, "swiglu_backward: element count must be >= 0 (found ", n, ")");
  if (n == 0) return;
  if (all_aligned({dgate, dup, dh, gate, up}))
    swiglu_backward_kernel<true><<<blocks_for(n), kThreads, 0, stream>>>(dgate, dup, dh, gate, up, n);
  else
    swiglu_backward_kernel<false><<<blocks_for(n), kThreads, 0, stream>>>(dgate, dup, dh, gate, up, n);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace loom
