// LM head fused with cross-entropy, chunked over tokens so that the (T, V) logits never exist
// whole. For token t with target y_t (already shifted: the id of token t+1, or -100 = ignored):
//   z = x_t·Wᵀ (V) ; lse = log sum exp z ; loss_t = lse - z[y_t]
//   dz = (softmax(z) - onehot(y_t)) * w_t ; dx_t = dz·W              (ignored tokens: dx_t = 0)
// so dx is the gradient of sum_t w_t · loss_t. The per-token weight w_t = token_weight[t] comes from
// the objective outside the model: SFT gives every token 1 / (target tokens in the whole global
// batch), so summing over micro-batches and ranks gives the gradient of the global token mean
// (never a mean of means); preference objectives weight each sequence's tokens, negatively on the
// rejected side. W is frozen.
#pragma once
#include <cstdint>

namespace loom {

constexpr int32_t kIgnoreIndex = -100;

struct CrossEntropyOut {
  double loss_sum = 0;  // sum of loss_t over non-ignored tokens
  int64_t n_targets = 0;
};

// x (T, C), W (V, C), targets (T). dx (T, C) written (=) if non-null (else forward only).
// token_weight (T): w_t, read only with dx (may be null without). token_loss (T), if non-null, gets
// loss_t (0 for ignored tokens). chunk: tokens per chunk.
CrossEntropyOut lm_head_cross_entropy_ref(float* dx, float* token_loss, const float* x, const float* W,
                                          const int32_t* targets, const float* token_weight, int64_t T, int C, int V,
                                          int chunk = 256);

}  // namespace loom

// CUDA path (ops/cross_entropy.cu): the same computation on bf16 x and W, chunk by chunk:
//   logits (rows, V) = x_chunk·Wᵀ (cuBLASLt) ; per row: lse, loss_t, and dz written over the logits
//   in place as bf16 ; dx_chunk = dz·W (cuBLASLt). No host sync; deterministic.
#include "ops/gemm.h"

namespace loom {

// Bytes of the logits scratch for chunks of `chunk` tokens. kBf16 logits are what HF computes (the
// lm_head runs in bf16); kFp32 logits keep the GEMM's fp32 sums, a more exact lse, for twice the memory.
size_t lm_head_logits_bytes(int chunk, int V, GemmOut logits_type);

// x (T, C), W (V, C), targets (T) int32 (kIgnoreIndex or in [0, V), as the reference checks).
// dx (T, C) bf16 written (=), or nullptr for the loss alone. token_weight (T) fp32 on the device: w_t,
// read only with dx (may be null without). token_loss (T) written: loss_t, 0 when ignored.
// loss_sum (one float on the device) += sum of token_loss, summed in a fixed order; may be null.
// logits: lm_head_logits_bytes(chunk, V, logits_type) bytes of scratch, 16-byte aligned.
void lm_head_cross_entropy(GemmContext& ctx, bf16* dx, float* token_loss, float* loss_sum, void* logits,
                           GemmOut logits_type, const bf16* x, const bf16* W, const int32_t* targets,
                           const float* token_weight, int64_t T, int C, int V, int chunk, cudaStream_t stream);

}  // namespace loom
