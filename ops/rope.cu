// Rotary position embedding in place on bf16, HF half-rotation (math in ops/rope.h):
//   angle = float(pos[t]) * inv_freq[i]     (fp32 product, as HF's fp32 matmul of positions and inv_freq)
//   x'[i]       = x[i] * cos - x[i + D/2] * sin        (=, in place)
//   x'[i + D/2] = x[i + D/2] * cos + x[i] * sin
// Backward is the same rotation with sin negated. Nothing is saved: cos/sin are recomputed.
// sincosf, not __sincosf: angles reach 1e5 rad at long positions, and the fast intrinsic's error is
// bounded only on [-pi, pi] (CUDA Programming Guide, intrinsic functions); sincosf stays within 2 ulp.
// One thread owns 8 consecutive pairs (a 16-byte vector in each half of the head) of one token,
// computes their 8 sin/cos once and applies them to kHeadsPerThread heads.
#include "ops/kernel_util.cuh"
#include "ops/rope.h"

namespace loom {
namespace {

constexpr int kThreads = 256;
constexpr int kHeadsPerThread = 4;
constexpr int kPairsPerVec = kBf16PerVec;

// ---------------------------------------------------------------------------------------------
// CUDA kernels

// cos and sin of the 8 angles p · inv_freq[i], i = 0..7 (sin negated for the inverse rotation).
template <bool kInverse>
__device__ __forceinline__ void rope_angles(float (&cos_a)[8], float (&sin_a)[8], float p, const float* inv_freq) {
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    sincosf(p * inv_freq[k], &sin_a[k], &cos_a[k]);
    if (kInverse) sin_a[k] = -sin_a[k];
  }
}

// 8 pairs (lo[k], hi[k]) of one head rotated from src into dst (dst may be src).
__device__ __forceinline__ void rope_rotate(bf16* dst_lo, bf16* dst_hi, const bf16* src_lo, const bf16* src_hi,
                                            const float (&cos_a)[8], const float (&sin_a)[8]) {
  float a[8], b[8], a_rot[8], b_rot[8];
  load_bf16x8(a, src_lo);
  load_bf16x8(b, src_hi);
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    a_rot[k] = a[k] * cos_a[k] - b[k] * sin_a[k];
    b_rot[k] = b[k] * cos_a[k] + a[k] * sin_a[k];
  }
  store_bf16x8(dst_lo, a_rot);
  store_bf16x8(dst_hi, b_rot);
}

template <bool kInverse>
__global__ void rope_kernel(bf16* x, const int32_t* pos, const float* inv_freq, int64_t T, int NH, int D,
                            int64_t stride) {
  const int half = D / 2;
  const int vecs = half / kPairsPerVec;
  const int head_groups = (NH + kHeadsPerThread - 1) / kHeadsPerThread;
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= T * head_groups * vecs) return;
  const int i0 = int(idx % vecs) * kPairsPerVec;
  const int64_t token_group = idx / vecs;
  const int h0 = int(token_group % head_groups) * kHeadsPerThread;
  const int64_t t = token_group / head_groups;

  float cos_a[8], sin_a[8];
  rope_angles<kInverse>(cos_a, sin_a, float(pos[t]), inv_freq + i0);
  const int h_end = min(NH, h0 + kHeadsPerThread);
  for (int h = h0; h < h_end; ++h) {
    bf16* lo = x + t * stride + int64_t(h) * D + i0;
    rope_rotate(lo, lo + half, lo, lo + half, cos_a, sin_a);
  }
}

// Thread (t, head h of q's H then k's KVH, 8-pair vector i0): q's head rotated in place, or k's head
// rotated into the cache row of (slot[t], pos[t]) with the same 8 pairs of v copied beside it.
__global__ void rope_into_cache_kernel(bf16* q, const bf16* k, const bf16* v, bf16* cache_k, bf16* cache_v,
                                       const int32_t* slot, const int32_t* pos, const float* inv_freq, int64_t T,
                                       int H, int KVH, int D, int64_t capacity) {
  const int half = D / 2, vecs = half / kPairsPerVec;
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= T * (H + KVH) * vecs) return;
  const int i0 = int(idx % vecs) * kPairsPerVec;
  const int h = int(idx / vecs % (H + KVH));
  const int64_t t = idx / vecs / (H + KVH);
  float cos_a[8], sin_a[8];
  rope_angles<false>(cos_a, sin_a, float(pos[t]), inv_freq + i0);
  if (h < H) {
    bf16* lo = q + (t * H + h) * D + i0;
    rope_rotate(lo, lo + half, lo, lo + half, cos_a, sin_a);
    return;
  }
  const int64_t row = (int64_t(slot[t]) * capacity + pos[t]) * KVH + (h - H);  // the cache's (slot, pos, head)
  const bf16* k_lo = k + (t * KVH + (h - H)) * D + i0;
  bf16* c_lo = cache_k + row * D + i0;
  rope_rotate(c_lo, c_lo + half, k_lo, k_lo + half, cos_a, sin_a);
  const bf16* v_lo = v + (t * KVH + (h - H)) * D + i0;
  bf16* cv_lo = cache_v + row * D + i0;
  *reinterpret_cast<uint4*>(cv_lo) = *reinterpret_cast<const uint4*>(v_lo);
  *reinterpret_cast<uint4*>(cv_lo + half) = *reinterpret_cast<const uint4*>(v_lo + half);
}

template <bool kInverse>
void launch_rope(bf16* x, const int32_t* pos, const float* inv_freq, int64_t T, int NH, int D, int64_t stride,
                 cudaStream_t stream) {
  LOOM_CHECK(T >= 0 && NH > 0 && D > 0 && D % (2 * kPairsPerVec) == 0,
             "rope: needs T >= 0, NH > 0 and head_dim D a multiple of 16 (8-pair vectors in each half); found T ", T,
             ", NH ", NH, ", D ", D);
  LOOM_CHECK(stride >= int64_t(NH) * D && stride % kBf16PerVec == 0, "rope: token stride must be >= NH * D = ",
             int64_t(NH) * D, " and a multiple of 8; found ", stride);
  LOOM_CHECK(is_aligned_16(x), "rope: x must be 16-byte aligned (the q or k part of a fused buffer must start at a "
                               "multiple of 8 elements)");
  if (T == 0) return;
  const int64_t threads = T * ceil_div(NH, kHeadsPerThread) * (D / (2 * kPairsPerVec));
  rope_kernel<kInverse>
      <<<ceil_div(threads, kThreads), kThreads, 0, stream>>>(x, pos, inv_freq, T, NH, D, stride);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// kernel launchers

void rope_forward(bf16* x, const int32_t* pos, const float* inv_freq, int64_t T, int NH, int D, int64_t stride,
                  cudaStream_t stream) {
  launch_rope<false>(x, pos, inv_freq, T, NH, D, stride, stream);
}

void rope_backward(bf16* dx, const int32_t* pos, const float* inv_freq, int64_t T, int NH, int D, int64_t stride,
                   cudaStream_t stream) {
  launch_rope<true>(dx, pos, inv_freq, T, NH, D, stride, stream);
}

void rope_forward_into_cache(bf16* q, const bf16* k, const bf16* v, bf16* cache_k, bf16* cache_v, const int32_t* slot,
                             const int32_t* pos, const float* inv_freq, int64_t T, int H, int KVH, int D,
                             int64_t capacity, cudaStream_t stream) {
  LOOM_CHECK(T >= 0 && H > 0 && KVH > 0 && D > 0 && D % (2 * kPairsPerVec) == 0 && capacity > 0,
             "rope into cache: needs T >= 0, heads > 0, head_dim D a multiple of 16 and a capacity > 0; found T ", T,
             ", H ", H, ", KVH ", KVH, ", D ", D, ", capacity ", capacity);
  LOOM_CHECK(is_aligned_16(q) && is_aligned_16(k) && is_aligned_16(v) && is_aligned_16(cache_k) &&
                 is_aligned_16(cache_v),
             "rope into cache: q, k, v and the caches must be 16-byte aligned");
  if (T == 0) return;
  const int64_t threads = T * (H + KVH) * (D / (2 * kPairsPerVec));
  rope_into_cache_kernel<<<ceil_div(threads, kThreads), kThreads, 0, stream>>>(q, k, v, cache_k, cache_v, slot, pos,
                                                                                 inv_freq, T, H, KVH, D, capacity);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace loom
