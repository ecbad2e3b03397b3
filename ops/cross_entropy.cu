// LM head fused with cross-entropy, chunked over tokens (math in ops/cross_entropy.h).
// Per chunk of `rows` tokens:
//   z (rows, V) = x_chunk·Wᵀ                                   cuBLASLt, into the logits scratch
//   per row: m = max z ; lse = m + log sum exp(z - m)          one read (online max and sum)
//            loss_t = lse - z[y]                               (token_loss, =; 0 when y = -100)
//            dz = (exp(z - lse) - onehot(y)) * w_t             second read; written over z as bf16
//   dx_chunk (rows, C) = dz·W                                  cuBLASLt (dx, =)
// then loss_sum += sum of token_loss, by one block in a fixed order (no float atomics).
// With fp32 logits, dz is narrowed in place: row r's bf16 dz takes the first half of the bytes of
// row r's fp32 logits, so the second GEMM reads it with a row stride of 2V bf16. The bf16 value of
// element e lands in the bytes of fp32 element e/2 <= e; the row is swept in waves with a barrier
// between a wave's loads and its stores, so every fp32 value is read before any store covers it.
#include <algorithm>

#include "ops/cross_entropy.h"
#include "ops/kernel_util.cuh"

namespace loom {
namespace {

constexpr int kRowThreads = 512;
constexpr int kSumThreads = 1024;

// ---------------------------------------------------------------------------------------------
// CUDA kernels

template <int kVec>
__device__ __forceinline__ void load_logits(float (&v)[kVec], const bf16* p) {
  if constexpr (kVec == 8) {
    load_bf16x8(v, p);
  } else {
    static_assert(kVec == 1, "bf16 logits are read 8 at a time or one at a time");
    v[0] = __bfloat162float(*p);
  }
}

template <int kVec>
__device__ __forceinline__ void load_logits(float (&v)[kVec], const float* p) {
  if constexpr (kVec == 4) {
    const float4 f = *reinterpret_cast<const float4*>(p);
    v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
  } else {
    static_assert(kVec == 1, "fp32 logits are read 4 at a time or one at a time");
    v[0] = *p;
  }
}

template <int kVec>
__device__ __forceinline__ void store_dlogits(bf16* p, const float (&d)[kVec]) {
  if constexpr (kVec == 8) {
    store_bf16x8(p, d);
  } else if constexpr (kVec == 4) {
    uint2 raw;
    __nv_bfloat162* pairs = reinterpret_cast<__nv_bfloat162*>(&raw);
    pairs[0] = __floats2bfloat162_rn(d[0], d[1]);
    pairs[1] = __floats2bfloat162_rn(d[2], d[3]);
    *reinterpret_cast<uint2*>(p) = raw;
  } else {
    p[0] = __float2bfloat16_rn(d[0]);
  }
}

// One block per token of the chunk. Logit: bf16 or float; kVec logits per 16-byte load (or 1).
// token_weight (w_t of the chunk's rows) is read only when write_grad (it may be null otherwise).
template <class Logit, int kVec>
__global__ void cross_entropy_rows_kernel(Logit* logits, float* token_loss, const int32_t* targets,
                                          const float* token_weight, int V, bool write_grad) {
  // Narrowing fp32 to bf16 in place needs the wave barrier (see the top of this file).
  constexpr bool kNarrowing = sizeof(Logit) == 4;
  const int64_t row = blockIdx.x;
  const Logit* z = logits + row * V;  // int64: rows * V passes INT_MAX at 14k tokens of a 152k vocabulary
  bf16* dz = reinterpret_cast<bf16*>(logits + row * V);
  const int32_t y = targets[row];
  if (y == kIgnoreIndex) {  // the whole block takes this branch
    if (threadIdx.x == 0) token_loss[row] = 0.f;
    for (int i = threadIdx.x; write_grad && i < V; i += blockDim.x) dz[i] = __float2bfloat16_rn(0.f);
    return;
  }
  // Read before the first barrier below, so before any thread of the block narrows the row.
  const float z_y = threadIdx.x == 0 ? float(z[y]) : 0.f;

  float m = -INFINITY, s = 0.f;  // running max and sum of exp(z - m) over this thread's logits
  for (int i = threadIdx.x * kVec; i < V; i += blockDim.x * kVec) {
    float v[kVec];
    load_logits<kVec>(v, z + i);
    float v_max = v[0];
#pragma unroll
    for (int k = 1; k < kVec; ++k) v_max = fmaxf(v_max, v[k]);
    if (v_max > m) {
      s *= expf(m - v_max);
      m = v_max;
    }
#pragma unroll
    for (int k = 0; k < kVec; ++k) s += expf(v[k] - m);
  }
  const float row_max = block_max(m);
  const float row_sum = block_sum(m == -INFINITY ? 0.f : s * expf(m - row_max));
  const float lse = row_max + logf(row_sum);
  if (threadIdx.x == 0) token_loss[row] = lse - z_y;
  if (!write_grad) return;

  const float w = token_weight[row];
  const int per_wave = blockDim.x * kVec;
  const int waves = (V + per_wave - 1) / per_wave;
  for (int wave = 0; wave < waves; ++wave) {
    const int i = (wave * blockDim.x + threadIdx.x) * kVec;
    float v[kVec];
    if (i < V) load_logits<kVec>(v, z + i);
    if (kNarrowing) __syncthreads();
    if (i >= V) continue;
#pragma unroll
    for (int k = 0; k < kVec; ++k) v[k] = (expf(v[k] - lse) - (i + k == y ? 1.f : 0.f)) * w;
    store_dlogits<kVec>(dz + i, v);
  }
}

// loss_sum += sum(token_loss[0..T)), one block: the order depends only on T.
__global__ void add_sum_kernel(float* loss_sum, const float* token_loss, int64_t T) {
  float partial = 0.f;
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x) partial += token_loss[t];
  const float total = block_sum(partial);
  if (threadIdx.x == 0) *loss_sum += total;
}

template <class Logit>
void launch_rows(void* logits, float* token_loss, const int32_t* targets, const float* token_weight, int64_t rows,
                 int V, bool write_grad, cudaStream_t stream) {
  constexpr int kVecWidth = 16 / sizeof(Logit);
  auto* z = static_cast<Logit*>(logits);
  if (V % kVecWidth == 0)
    cross_entropy_rows_kernel<Logit, kVecWidth>
        <<<unsigned(rows), kRowThreads, 0, stream>>>(z, token_loss, targets, token_weight, V, write_grad);
  else
    cross_entropy_rows_kernel<Logit, 1>
        <<<unsigned(rows), kRowThreads, 0, stream>>>(z, token_loss, targets, token_weight, V, write_grad);
  CUDA_CHECK(cudaGetLastError());
}

void check_args(const void* logits, const float* token_loss, const bf16* dx, const float* token_weight, int64_t T,
                int C, int V, int chunk) {
  LOOM_CHECK(T >= 0 && C > 0 && V > 0 && chunk > 0, "lm_head_cross_entropy: needs T >= 0 and C, V, chunk > 0; found T ",
             T, ", C ", C, ", V ", V, ", chunk ", chunk);
  LOOM_CHECK(token_loss != nullptr, "lm_head_cross_entropy: token_loss (T floats on the device) is required");
  LOOM_CHECK(dx == nullptr || token_weight != nullptr,
             "lm_head_cross_entropy: dx needs token_weight (T floats on the device: the objective's per-token "
             "gradient weights)");
  LOOM_CHECK(is_aligned_16(logits), "lm_head_cross_entropy: the logits scratch must be 16-byte aligned");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// kernel launchers

size_t lm_head_logits_bytes(int chunk, int V, GemmOut logits_type) {
  return size_t(chunk) * size_t(V) * (logits_type == GemmOut::kFp32 ? sizeof(float) : sizeof(bf16));
}

void lm_head_cross_entropy(GemmContext& ctx, bf16* dx, float* token_loss, float* loss_sum, void* logits,
                           GemmOut logits_type, const bf16* x, const bf16* W, const int32_t* targets,
                           const float* token_weight, int64_t T, int C, int V, int chunk, cudaStream_t stream) {
  check_args(logits, token_loss, dx, token_weight, T, C, V, chunk);
  const bool fp32 = logits_type == GemmOut::kFp32;
  const GemmLd dz_ld{fp32 ? 2 * int64_t(V) : int64_t(V), 0, 0};  // bf16 dz rows inside the logits rows
  for (int64_t t0 = 0; t0 < T; t0 += chunk) {
    const int64_t rows = std::min<int64_t>(chunk, T - t0);
    gemm(ctx, logits, x + t0 * C, W, rows, V, C, false, true, 1.f, 0.f, logits_type, stream);
    // Forward only: token_weight may be null, so no offset is taken from it.
    const float* weight = dx != nullptr ? token_weight + t0 : nullptr;
    if (fp32)
      launch_rows<float>(logits, token_loss + t0, targets + t0, weight, rows, V, dx != nullptr, stream);
    else
      launch_rows<bf16>(logits, token_loss + t0, targets + t0, weight, rows, V, dx != nullptr, stream);
    if (dx != nullptr)
      gemm(ctx, dx + t0 * C, static_cast<const bf16*>(logits), W, rows, C, V, false, false, 1.f, 0.f,
           GemmOut::kBf16, stream, dz_ld);
  }
  if (loss_sum != nullptr && T > 0) {
    add_sum_kernel<<<1, kSumThreads, 0, stream>>>(loss_sum, token_loss, T);
    CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace loom
