// Device helpers shared by the CUDA kernels in ops/: 16-byte vectors of bf16 and fp32 (the
// widest load a thread can issue, DESIGN.md "Performance principles") and warp/block sums.
// Vector helpers trust their caller for alignment; launchers check it with is_aligned_16.
#pragma once
#include <cstdint>
#include <initializer_list>

#include "ops/cuda_common.h"

namespace loom {

constexpr int kBf16PerVec = 8;  // 16 bytes
constexpr int kF32PerVec = 4;   // 16 bytes

inline bool is_aligned_16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Kernels using more than 48 KB of dynamic shared memory must say so; once per kernel and process
// (the static), as loom drives one GPU per process. Call before each launch.
template <auto kKernel>
void allow_smem(size_t bytes) {
  static const bool allowed = [bytes] {
    CUDA_CHECK(cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
    return true;
  }();
  (void)allowed;
}

// x[0..8) = float(p[0..8)); p 16-byte aligned.
__device__ __forceinline__ void load_bf16x8(float (&x)[8], const bf16* p) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 f = __bfloat1622float2(pairs[k]);
    x[2 * k] = f.x;
    x[2 * k + 1] = f.y;
  }
}

// p[0..8) = bf16_rn(x[0..8)); p 16-byte aligned.
__device__ __forceinline__ void store_bf16x8(bf16* p, const float (&x)[8]) {
  uint4 raw;
  __nv_bfloat162* pairs = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
  for (int k = 0; k < 4; ++k) pairs[k] = __floats2bfloat162_rn(x[2 * k], x[2 * k + 1]);
  *reinterpret_cast<uint4*>(p) = raw;
}

// Elementwise kernels where one thread owns 8 consecutive bf16 at i of n: x[k] = float(p[i + k]),
// 0 past n; one 16-byte vector when kVec (every pointer aligned) and all 8 are in range.
template <bool kVec>
__device__ __forceinline__ void load_bf16x8_upto(float (&x)[8], const bf16* p, int64_t i, int64_t n) {
  if (kVec && i + 8 <= n) return load_bf16x8(x, p + i);
#pragma unroll
  for (int k = 0; k < 8; ++k) x[k] = i + k < n ? __bfloat162float(p[i + k]) : 0.f;
}

// p[i + k] = bf16_rn(x[k]) for i + k < n; one vector when kVec and all 8 are in range.
template <bool kVec>
__device__ __forceinline__ void store_bf16x8_upto(bf16* p, const float (&x)[8], int64_t i, int64_t n) {
  if (kVec && i + 8 <= n) return store_bf16x8(p + i, x);
#pragma unroll
  for (int k = 0; k < 8; ++k)
    if (i + k < n) p[i + k] = __float2bfloat16_rn(x[k]);
}

// Whether the vector path (kVec) may run: every pointer 16-byte aligned.
inline bool all_aligned_16(std::initializer_list<const void*> pointers) {
  for (const void* q : pointers)
    if (!is_aligned_16(q)) return false;
  return true;
}

__device__ __forceinline__ float round_to_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

// Sum over groups of `width` consecutive lanes (a power of two <= 32); every lane gets its group's sum.
template <int width = 32>
__device__ __forceinline__ float group_sum(float x) {
#pragma unroll
  for (int offset = width / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset, width);
  return x;
}

template <int width = 32>
__device__ __forceinline__ float group_max(float x) {
#pragma unroll
  for (int offset = width / 2; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset, width));
  return x;
}

// Sum over the whole block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
// The summation order depends only on blockDim, so the result is deterministic.
__device__ __forceinline__ float block_sum(float x) {
  __shared__ float warp_sums[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  x = group_sum(x);
  __syncthreads();  // warp_sums may still be read by a previous call
  if (lane == 0) warp_sums[warp] = x;
  __syncthreads();
  x = lane < nwarps ? warp_sums[lane] : 0.f;
  return group_sum(x);
}

// Max over the whole block (same contract as block_sum).
__device__ __forceinline__ float block_max(float x) {
  __shared__ float warp_maxes[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  x = group_max(x);
  __syncthreads();
  if (lane == 0) warp_maxes[warp] = x;
  __syncthreads();
  x = lane < nwarps ? warp_maxes[lane] : -INFINITY;
  return group_max(x);
}

// ---------------------------------------------------------------------------------------------
// Tensor cores and asynchronous copies (sm_80 and later): the flash-attention kernels
// (ops/attention_kernels.cuh) and the grouped GEMMs (ops/grouped_gemm.cu). ldmatrix.x4 lets lanes
// 8i..8i+7 name the 8 rows of 8×8 matrix i; without .trans lane t receives row t/4, columns 2(t%4)
// and 2(t%4)+1 of each matrix, with .trans column t/4, rows 2(t%4) and 2(t%4)+1.

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy global -> shared; src_bytes 0 zero-fills the destination and reads nothing.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
// Waits until at most kPending of this thread's committed copy groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Programmatic dependent launch (Hopper; no-ops before sm_90 and in a grid launched without it): a
// grid calls allow_dependent_launch to let the next kernel on its stream, launched with
// cudaLaunchAttributeProgrammaticStreamSerialization, start before it ends; that kernel calls
// wait_for_prior_grids before it reads what this one writes (it returns once the grid before has
// finished and its writes are visible).
__device__ __forceinline__ void allow_dependent_launch() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::);
#endif
}
__device__ __forceinline__ void wait_for_prior_grids() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// d += a * b, bf16 operands, fp32 accumulators.
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

}  // namespace loom
