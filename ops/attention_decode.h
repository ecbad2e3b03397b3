// Decode attention: one new query per sequence against that sequence's KV cache (generation's step
// after the prompt). The math is ops/attention.h's with n = 1: sequence b's query (at position
// len_b - 1, its key and value already appended to the cache) sees keys j in
// [max(0, len_b - window), len_b) (all len_b without a window):
//   s_j = scale · q · k_j ;  out = Σ_j softmax(s)_j v_j
// Reference: attention_cached_ref (ops/attention_ref.cpp) with n = 1, past = len_b - 1, per sequence.
//
// CUDA (ops/attention_decode.cu): the cache is read once, which is all a decode step's attention
// costs, so the work is split over the cache length (flash-decoding): block (split, kv head, b)
// takes keys [split·chunk, (split + 1)·chunk) for the H / KVH query heads that share the kv head,
// each warp four keys at a time (a lane holds D / 32 elements of the query, keys and accumulator), with
// an online softmax in fp32; the block leaves (max, Σ e^(s - max), Σ e^(s - max) v) per query head in
// fp32 scratch, and a second kernel merges the splits:
//   m = max_s m_s ;  l = Σ_s l_s e^(m_s - m) ;  out = Σ_s acc_s e^(m_s - m) / l   (rounded to bf16)
// A split past a sequence's keys leaves m = -inf, l = 0 and adds nothing.
#pragma once
#include <cstdint>

#include "ops/attention.h"
#include "ops/cuda_common.h"

namespace loom {

// The cache of one layer: sequence b's key row j, kv head g at k + ((b · capacity + j) · KVH + g) · D
// (the same for v): (B, capacity, KVH, D) bf16.
struct DecodeCache {
  const bf16* k;
  const bf16* v;
  int64_t capacity;  // rows per sequence
};

// Splits of the cache length for B sequences of at most max_len keys: about blocks_per_sm blocks per
// multiprocessor (each a few warps waiting on loads, so the GPU wants many), no chunk under 16 keys.
// Never more for a shorter max_len, so the value at the longest one sizes the scratch.
constexpr int kDecodeBlocksPerSm = 8;  // measured best of 2, 8, 16, 32 (tools/perf_notes.md)
int attention_decode_splits(int B, int KVH, int64_t max_len, int multiprocessors,
                            int blocks_per_sm = kDecodeBlocksPerSm);
// The most attention_decode_splits gives for max_len on any device of up to kPlanMultiprocessors SMs,
// known without a device (a memory plan sizes the scratch before one is touched). A device with more
// SMs runs this many, fewer than it could.
constexpr int kPlanMultiprocessors = 160;  // H100 and H200 132, B200 148
int attention_decode_max_splits(int B, int KVH, int64_t max_len);
// fp32 scratch of attention_decode: (B, H, splits) × (D + 2).
int64_t attention_decode_scratch_floats(int B, int H, int D, int splits);

// out (B, H, D) bf16 written; q (B, H, D) bf16; lengths (B) int32 on the device, each in
// [1, capacity]; max_len >= every length (it sizes the splits); s.cu_seqlens and s.ndoc unused;
// head dims 64 and 128.
void attention_decode(bf16* out, const bf16* q, const DecodeCache& cache, const int32_t* lengths, int B,
                      int64_t max_len, const AttentionShape& s, int splits, float* scratch, cudaStream_t stream);

}  // namespace loom
