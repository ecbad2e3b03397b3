// Decode attention (math and layout in ops/attention_decode.h): a split kernel over the cache
// length, then a merge kernel. Scores are kept in the log2 domain (q pre-scaled by scale · log2 e),
// so each probability is one exp2f, as the flash-attention kernels of ops/attention_kernels.cuh do.
#include <algorithm>
#include <cmath>

#include "ops/attention_decode.h"
#include "ops/kernel_util.cuh"

namespace loom {
namespace {

constexpr int kDecodeWarps = 4;     // warps of a split block, each a key at a time
constexpr int kMaxGroup = 8;        // query heads per kv head (H / KVH) the kernel holds in registers
// Fewest keys a split is given. 16 (from 64): at batch 1 and a few hundred cached keys, 64-key splits
// left ~64 blocks on 132 SMs, each warp walking 16 keys one after another (tools/perf_notes.md).
constexpr int kMinChunk = 16;
constexpr int kKeysInFlight = 4;    // keys a warp loads before it computes with them
constexpr float kLog2e = 1.4426950408889634f;

// E = D / 32 consecutive bf16 of a row into fp32, lane by lane (8 bytes for D 128, 4 for D 64).
template <int E>
__device__ __forceinline__ void load_row(float (&x)[E], const bf16* row) {
  static_assert(E == 2 || E == 4, "head dims 64 and 128");
  if constexpr (E == 4) {
    const uint2 raw = *reinterpret_cast<const uint2*>(row);
    const __nv_bfloat162 a = *reinterpret_cast<const __nv_bfloat162*>(&raw.x);
    const __nv_bfloat162 b = *reinterpret_cast<const __nv_bfloat162*>(&raw.y);
    x[0] = __low2float(a), x[1] = __high2float(a), x[2] = __low2float(b), x[3] = __high2float(b);
  } else {
    const __nv_bfloat162 a = *reinterpret_cast<const __nv_bfloat162*>(row);
    x[0] = __low2float(a), x[1] = __high2float(a);
  }
}

struct SplitParams {
  const bf16* q;
  DecodeCache cache;
  const int32_t* lengths;
  float* scratch;
  int H, KVH, window, chunk, splits;
  float scale_log2;
};

// Block (split, kv head g, sequence b): the split's keys for the G query heads of kv head g.
template <int D>
__global__ void __launch_bounds__(kDecodeWarps * 32) decode_split_kernel(SplitParams p) {
  constexpr int E = D / 32;
  const int split = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
  const int G = p.H / p.KVH;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int len = p.lengths[b];
  const int first = p.window > 0 ? max(0, len - p.window) : 0;
  const int j0 = max(first, split * p.chunk), j1 = min(len, (split + 1) * p.chunk);

  float q[kMaxGroup][E], acc[kMaxGroup][E], m[kMaxGroup], l[kMaxGroup];
#pragma unroll
  for (int i = 0; i < kMaxGroup; ++i) {
    m[i] = -INFINITY, l[i] = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) acc[i][e] = 0.f, q[i][e] = 0.f;
    if (i < G) {
      load_row<E>(q[i], p.q + (int64_t(b) * p.H + g * G + i) * D + lane * E);
#pragma unroll
      for (int e = 0; e < E; ++e) q[i][e] *= p.scale_log2;
    }
  }
  // kKeysInFlight keys per warp and step, their rows loaded before any is used: one key at a time
  // left each warp waiting on one load at a time (1.0 TB/s at B = 64 on an H100).
  for (int j = j0 + warp * kKeysInFlight; j < j1; j += kDecodeWarps * kKeysInFlight) {
    float k[kKeysInFlight][E], v[kKeysInFlight][E];
#pragma unroll
    for (int u = 0; u < kKeysInFlight; ++u) {
      const int64_t row = ((int64_t(b) * p.cache.capacity + min(j + u, j1 - 1)) * p.KVH + g) * D + lane * E;
      load_row<E>(k[u], p.cache.k + row);
      load_row<E>(v[u], p.cache.v + row);
    }
#pragma unroll
    for (int u = 0; u < kKeysInFlight; ++u) {
      if (j + u >= j1) break;
#pragma unroll
      for (int i = 0; i < kMaxGroup; ++i) {
        if (i >= G) break;
        float s = 0.f;
#pragma unroll
        for (int e = 0; e < E; ++e) s = fmaf(q[i][e], k[u][e], s);
        s = group_sum<32>(s);
        const float m_new = fmaxf(m[i], s);
        const float keep = exp2f(m[i] - m_new), pj = exp2f(s - m_new);
        l[i] = l[i] * keep + pj;
#pragma unroll
        for (int e = 0; e < E; ++e) acc[i][e] = fmaf(pj, v[u][e], acc[i][e] * keep);
        m[i] = m_new;
      }
    }
  }

  // The warps' partial softmaxes, merged through shared memory into the split's one.
  __shared__ float sm_m[kDecodeWarps][kMaxGroup], sm_l[kDecodeWarps][kMaxGroup];
  __shared__ float sm_acc[kDecodeWarps][kMaxGroup][D];
#pragma unroll
  for (int i = 0; i < kMaxGroup; ++i) {
    if (i >= G) break;
    if (lane == 0) sm_m[warp][i] = m[i], sm_l[warp][i] = l[i];
#pragma unroll
    for (int e = 0; e < E; ++e) sm_acc[warp][i][lane * E + e] = acc[i][e];
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < G * D; idx += blockDim.x) {
    const int i = idx / D, d = idx % D;
    float mx = -INFINITY;
    for (int w = 0; w < kDecodeWarps; ++w) mx = fmaxf(mx, sm_m[w][i]);
    float sum = 0.f, a = 0.f;
    if (mx != -INFINITY)  // else no key of this split: l = 0, acc = 0
      for (int w = 0; w < kDecodeWarps; ++w) {
        const float c = exp2f(sm_m[w][i] - mx);
        sum += sm_l[w][i] * c;
        a += sm_acc[w][i][d] * c;
      }
    float* out = p.scratch + ((int64_t(b) * p.H + g * G + i) * p.splits + split) * (D + 2);
    out[d] = a;
    if (d == 0) out[D] = mx, out[D + 1] = sum;
  }
}

// Block (b, h): the splits of query head h of sequence b, merged and normalised.
template <int D>
__global__ void decode_merge_kernel(bf16* out, const float* scratch, int splits) {
  const int64_t bh = blockIdx.x;
  const int d = threadIdx.x;
  const float* part = scratch + bh * splits * (D + 2);
  float mx = -INFINITY;
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, part[s * (D + 2) + D]);
  float sum = 0.f, a = 0.f;
  for (int s = 0; s < splits; ++s) {
    const float ms = part[s * (D + 2) + D];
    if (ms == -INFINITY) continue;
    const float c = exp2f(ms - mx);
    sum += part[s * (D + 2) + D + 1] * c;
    a += part[s * (D + 2) + d] * c;
  }
  out[bh * D + d] = __float2bfloat16_rn(a / sum);
}

bool aligned_16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

int attention_decode_splits(int B, int KVH, int64_t max_len, int multiprocessors, int blocks_per_sm) {
  const int64_t wanted = ceil_div(int64_t(blocks_per_sm) * multiprocessors, int64_t(B) * KVH);
  const int64_t most = std::max<int64_t>(1, ceil_div(max_len, kMinChunk));
  return int(std::clamp<int64_t>(wanted, 1, most));
}

int attention_decode_max_splits(int B, int KVH, int64_t max_len) {
  return attention_decode_splits(B, KVH, max_len, kPlanMultiprocessors);
}

int64_t attention_decode_scratch_floats(int B, int H, int D, int splits) {
  return int64_t(B) * H * splits * (D + 2);
}

void attention_decode(bf16* out, const bf16* q, const DecodeCache& cache, const int32_t* lengths, int B,
                      int64_t max_len, const AttentionShape& s, int splits, float* scratch, cudaStream_t stream) {
  LOOM_CHECK(s.D == 64 || s.D == 128, "attention_decode: head_dim ", s.D, " is not supported (64, 128)");
  LOOM_CHECK(s.H > 0 && s.KVH > 0 && s.H % s.KVH == 0 && s.H / s.KVH <= kMaxGroup, "attention_decode: ", s.H,
             " query heads over ", s.KVH, " kv heads; the kernel takes up to ", kMaxGroup, " query heads per kv head");
  LOOM_CHECK(B >= 1 && max_len >= 1 && max_len <= cache.capacity && max_len <= INT32_MAX,
             "attention_decode: B ", B, ", max_len ", max_len, " and cache capacity ", cache.capacity,
             " must satisfy B >= 1, 1 <= max_len <= capacity");
  LOOM_CHECK(splits >= 1 && s.window >= 0 && std::isfinite(s.scale) && s.scale > 0,
             "attention_decode: splits ", splits, ", window ", s.window, ", scale ", s.scale);
  LOOM_CHECK(aligned_16(out) && aligned_16(q) && aligned_16(cache.k) && aligned_16(cache.v) && aligned_16(scratch),
             "attention_decode: out, q, the cache and the scratch must be 16-byte aligned");
  SplitParams p{q, cache, lengths, scratch, s.H, s.KVH, s.window, int(ceil_div(max_len, splits)), splits,
                s.scale * kLog2e};
  const dim3 grid(unsigned(splits), unsigned(s.KVH), unsigned(B));
  if (s.D == 128) {
    decode_split_kernel<128><<<grid, kDecodeWarps * 32, 0, stream>>>(p);
    decode_merge_kernel<128><<<unsigned(B * s.H), 128, 0, stream>>>(out, scratch, splits);
  } else {
    decode_split_kernel<64><<<grid, kDecodeWarps * 32, 0, stream>>>(p);
    decode_merge_kernel<64><<<unsigned(B * s.H), 64, 0, stream>>>(out, scratch, splits);
  }
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace loom
