// SwiGLU forward and backward, elementwise (math in ops/swiglu.h):
//   forward:  s = sigmoid(g) ; h = g * s * u                                  (h written, =)
//   backward: dg = dh * u * s * (1 + g * (1 - s)) ; du = dh * g * s          (dg, du written, =)
// fp32 math on bf16 values, each output rounded once (HF rounds silu(g) to bf16 before the product;
// one rounding is closer to the fp32 reference). Nothing is saved: backward recomputes s from g.
// One thread owns 8 consecutive elements: 16-byte vectors when every pointer is 16-byte aligned. The
// fused form (kFused) reads gate and up from the rows of one [gate | up] buffer: element i of (rows,
// width) is gate_up[i + ⌊i / width⌋·width] and up that + width.
#include "ops/kernel_util.cuh"
#include "ops/swiglu.h"

namespace loom {
namespace {

constexpr int kThreads = 256;

// ---------------------------------------------------------------------------------------------
// CUDA kernels

__device__ __forceinline__ float sigmoid(float g) { return 1.f / (1.f + expf(-g)); }

// Where element i's gate is: i itself, or in the fused [gate | up] rows (up is then width further).
template <bool kFused>
__device__ __forceinline__ int64_t gate_index(int64_t i, int width) {
  if constexpr (kFused) return i + i / width * width;
  return i;
}

template <bool kVec, bool kFused>
__global__ void swiglu_forward_kernel(bf16* h, const bf16* gate, const bf16* up, int64_t n, int width) {
  const int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * 8;
  if (i >= n) return;
  const int64_t shift = gate_index<kFused>(i, width) - i;  // 0 unless fused
  float g[8], u[8], out[8];
  load_bf16x8_upto<kVec>(g, gate + shift, i, n);
  load_bf16x8_upto<kVec>(u, up + shift, i, n);
#pragma unroll
  for (int k = 0; k < 8; ++k) out[k] = g[k] * sigmoid(g[k]) * u[k];
  store_bf16x8_upto<kVec>(h, out, i, n);
}

template <bool kVec, bool kFused>
__global__ void swiglu_backward_kernel(bf16* dgate, bf16* dup, const bf16* dh, const bf16* gate, const bf16* up,
                                       int64_t n, int width) {
  const int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * 8;
  if (i >= n) return;
  const int64_t shift = gate_index<kFused>(i, width) - i;  // 0 unless fused
  float d[8], g[8], u[8], dg[8], du[8];
  load_bf16x8_upto<kVec>(d, dh, i, n);
  load_bf16x8_upto<kVec>(g, gate + shift, i, n);
  load_bf16x8_upto<kVec>(u, up + shift, i, n);
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const float s = sigmoid(g[k]);
    dg[k] = d[k] * u[k] * s * (1.f + g[k] * (1.f - s));
    du[k] = d[k] * g[k] * s;
  }
  store_bf16x8_upto<kVec>(dgate + shift, dg, i, n);
  store_bf16x8_upto<kVec>(dup + shift, du, i, n);
}

int64_t blocks_for(int64_t n) { return ceil_div(ceil_div(n, 8), kThreads); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// kernel launchers

void swiglu_forward(bf16* h, const bf16* gate, const bf16* up, int64_t n, cudaStream_t stream) {
  LOOM_CHECK(n >= 0, "swiglu_forward: element count must be >= 0 (found ", n, ")");
  if (n == 0) return;
  if (all_aligned_16({h, gate, up}))
    swiglu_forward_kernel<true, false><<<blocks_for(n), kThreads, 0, stream>>>(h, gate, up, n, 0);
  else
    swiglu_forward_kernel<false, false><<<blocks_for(n), kThreads, 0, stream>>>(h, gate, up, n, 0);
  CUDA_CHECK(cudaGetLastError());
}

void swiglu_backward(bf16* dgate, bf16* dup, const bf16* dh, const bf16* gate, const bf16* up, int64_t n,
                     cudaStream_t stream) {
  LOOM_CHECK(n >= 0, "swiglu_backward: element count must be >= 0 (found ", n, ")");
  if (n == 0) return;
  if (all_aligned_16({dgate, dup, dh, gate, up}))
    swiglu_backward_kernel<true, false><<<blocks_for(n), kThreads, 0, stream>>>(dgate, dup, dh, gate, up, n, 0);
  else
    swiglu_backward_kernel<false, false><<<blocks_for(n), kThreads, 0, stream>>>(dgate, dup, dh, gate, up, n, 0);
  CUDA_CHECK(cudaGetLastError());
}

namespace {
void check_fused(const char* op, int64_t rows, int width, std::initializer_list<const void*> pointers) {
  LOOM_CHECK(rows >= 0 && width > 0 && width % 8 == 0 && all_aligned_16(pointers), op, ": needs rows >= 0, a width ",
             "that is a positive multiple of 8 and 16-byte aligned buffers; found rows ", rows, ", width ", width);
}
}  // namespace

void swiglu_forward_fused(bf16* h, const bf16* gate_up, int64_t rows, int width, cudaStream_t stream) {
  check_fused("swiglu_forward_fused", rows, width, {h, gate_up});
  const int64_t n = rows * width;
  if (n == 0) return;
  swiglu_forward_kernel<true, true><<<blocks_for(n), kThreads, 0, stream>>>(h, gate_up, gate_up + width, n, width);
  CUDA_CHECK(cudaGetLastError());
}

void swiglu_backward_fused(bf16* dgate_up, const bf16* dh, const bf16* gate_up, int64_t rows, int width,
                           cudaStream_t stream) {
  check_fused("swiglu_backward_fused", rows, width, {dgate_up, dh, gate_up});
  const int64_t n = rows * width;
  if (n == 0) return;
  swiglu_backward_kernel<true, true><<<blocks_for(n), kThreads, 0, stream>>>(dgate_up, dgate_up + width, dh, gate_up,
                                                                             gate_up + width, n, width);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace loom
