// Rotary position embedding, HF convention (rotate_half: pairs (i, i + D/2)).
//   angle[t, i] = float(pos[t]) * inv_freq[i]      (fp32 product, as HF's fp32 matmul)
//   x'[i]       = x[i] * cos - x[i + D/2] * sin
//   x'[i + D/2] = x[i + D/2] * cos + x[i] * sin
// Backward is the inverse rotation (sin negated). Positions restart at 0 for each packed document.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace loom {

// Resolved rope parameters of a model (from config.json: rope_parameters, or rope_theta + rope_scaling).
struct RopeParams {
  std::string type = "default";  // "default" | "llama3" | "linear"
  double theta = 10000.0;
  double factor = 1.0;            // llama3 / linear
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int original_max_position = 8192;  // llama3
};

// inv_freq (D/2) exactly as transformers computes it: fp32 theta^(-2i/D), then the llama3 or
// linear rescaling in fp32 (modeling_rope_utils.py).
std::vector<float> rope_inv_freq(int D, const RopeParams& p);

// x (T, NH, D) rotated in place; pos (T); inv_freq (D/2).
void rope_forward_ref(float* x, const int32_t* pos, const float* inv_freq, int64_t T, int NH, int D);
// dx (T, NH, D) rotated back in place.
void rope_backward_ref(float* dx, const int32_t* pos, const float* inv_freq, int64_t T, int NH, int D);

}  // namespace loom

// CUDA path (ops/rope.cu): bf16 in place, angle and rotation in fp32, one rounding per element
// (HF rounds cos/sin to bf16 first; rounding once is closer to the fp32 reference).
#include "ops/cuda_common.h"

namespace loom {
// x (T, NH, D) rotated in place; token t's heads start at x + t * stride (stride >= NH * D: with a
// fused qkv buffer (T, (H + 2 KVH) * D), x points at the q or k part and stride = (H + 2 KVH) * D).
// pos (T) int32, inv_freq (D/2) fp32 on the device. D % 16 == 0, stride % 8 == 0, x 16-byte aligned.
void rope_forward(bf16* x, const int32_t* pos, const float* inv_freq, int64_t T, int NH, int D, int64_t stride,
                  cudaStream_t stream);
// dx, laid out as x, rotated back in place (the inverse rotation: sin negated).
void rope_backward(bf16* dx, const int32_t* pos, const float* inv_freq, int64_t T, int NH, int D, int64_t stride,
                   cudaStream_t stream);

// A decode step's rotary embedding and cache write in one launch: q (T, H·D) rotated in place as
// rope_forward does; k (T, KVH·D) rotated into cache_k and v copied into cache_v at each row's
// (slot, pos) as ops/kv_cache.h kv_cache_write lays them out (k itself is left as it was). The same
// bits as rope_forward(q), rope_forward(k), kv_cache_write(k, v); one launch instead of three.
void rope_forward_into_cache(bf16* q, const bf16* k, const bf16* v, bf16* cache_k, bf16* cache_v, const int32_t* slot,
                             const int32_t* pos, const float* inv_freq, int64_t T, int H, int KVH, int D,
                             int64_t capacity, cudaStream_t stream);
}  // namespace loom
