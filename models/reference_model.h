// The decoder on the fp32 CPU reference path (ops/*_ref.cpp): Llama, Mistral, Qwen2 and Qwen3.
//   x = embed[ids]
//   per layer:  h = x + o(attn(rope(qknorm(q(rms1(x)))), rope(qknorm(k(rms1(x)))), v(rms1(x))))
//               x = h + down(silu(gate(rms2(h))) ⊙ up(rms2(h)))
//   loss_t = CE(lm_head(rms_final(x))_t, target_t)
// Every projection is a LoRA linear (ops/lora_linear.h); base weights are frozen, so backward
// produces LoRA gradients only (and the activation gradients that carry them).
// The model knows no objective: a forward gives per-token losses loss_t = -log p(target_t), and the
// backward takes per-token weights w_t from outside (SFT: 1 / target tokens of the global batch;
// preference objectives: per-sequence weights) and produces the gradient of Σ_t w_t · loss_t.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "data/batch.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/weights.h"
#include "ops/cross_entropy.h"

namespace loom {

struct ReferencePass;

// Generation's memory of one sequence: every layer's keys (after RoPE and the q/k norm) and values
// of every token so far, so a new token attends to them without recomputing the prefix.
struct KvCache {
  int64_t length = 0;                    // tokens held
  std::vector<std::vector<float>> k, v;  // per layer: (length, KVH, D)
};

class ReferenceModel {
 public:
  ReferenceModel(const ModelConfig& cfg, ModelWeights weights, const LoraLayout& lora);

  // Forward over one packed micro-batch with the adapters in `lora` (the layout's flat vector; may be
  // null when pass.adapters is false: the base model). token_loss (T) and logits (T, V) are optional
  // outputs. With `keep` non-null, everything backward needs is kept there (the reference path keeps
  // every activation: it does not recompute).
  CrossEntropyOut forward(const MicroBatch& mb, const float* lora, const PassOptions& pass = {},
                          float* token_loss = nullptr, std::vector<float>* logits = nullptr,
                          ReferencePass* keep = nullptr) const;
  // Backward of a kept forward: dlora (the layout of `lora`) += d(Σ_t token_weight[t] · loss_t)/d lora.
  // token_weight (T) comes from the objective (engine/objective.h); the logits are recomputed.
  void backward(const ReferencePass& kept, const float* token_weight, float* dlora) const;
  // forward (adapters on, pass.train) then backward in one call, the logits computed once; Σ loss_t
  // of the forward returned. The same bits as forward then backward.
  CrossEntropyOut forward_backward(const MicroBatch& mb, const float* lora, float* dlora, const float* token_weight,
                                   const PassOptions& pass = {true, true, 0}, float* token_loss = nullptr) const;

  // Generation: appends `tokens` (one sequence, positions cache.length onwards) to the cache and
  // writes logits (n, V) of the new tokens, under the adapters in `lora` when adapters is true. The
  // logits are those a forward over the whole sequence gives at those positions, bit for bit (the
  // same row-wise arithmetic; ops/attention.h attention_cached_ref).
  void extend(KvCache& cache, const std::vector<int32_t>& tokens, const float* lora, bool adapters,
              std::vector<float>& logits) const;

  const ModelConfig& config() const { return cfg_; }
  const LoraLayout& lora_layout() const { return lora_; }
  const ModelWeights& weights() const { return w_; }

  // Everything a layer's backward needs from its forward (kept whole: the reference path does not recompute).
  struct LayerActs {
    std::vector<float> x;                               // (T, C) layer input
    std::vector<float> xn1, rstd1;                      // rms1(x) (T, C), (T)
    std::array<std::vector<float>, kNumTargets> xl;     // dropout(input) per projection, empty when dropout = 0
    std::array<std::vector<float>, kNumTargets> u;      // x·Aᵀ (T, R) per projection
    std::vector<float> q_pre, k_pre, rstd_q, rstd_k;    // Qwen3: q/k before their norms, rstd per head
    std::vector<float> q, k, v;                         // after norm + RoPE: (T, H, D), (T, KVH, D) ×2
    std::vector<float> attn, lse;                       // (T, H, D), (T, H)
    std::vector<float> h, xn2, rstd2;                   // residual after attention, rms2(h)
    std::vector<float> gate, up, act;                   // (T, F) ×3: gate, up, silu(gate)·up
  };

 private:
  struct Pass;
  // Embedding, layers and final norm into kept (the residual stream in kept.x ends as the final one).
  // With a cache, attention also sees (and appends to) the cache's earlier tokens.
  void run_layers(const MicroBatch& mb, const float* lora, const PassOptions& pass, ReferencePass& kept,
                  KvCache* cache = nullptr) const;
  CrossEntropyOut head_and_backward(const ReferencePass& kept, const float* token_weight, float* token_loss,
                                    float* dlora) const;
  void layer_forward(int l, Pass& p, LayerActs& a, std::vector<float>& x) const;
  void layer_backward(int l, Pass& p, const LayerActs& a, std::vector<float>& dx) const;
  void linear_forward(int l, int target, Pass& p, LayerActs& a, const float* x, float* y) const;
  void linear_backward(int l, int target, Pass& p, const LayerActs& a, const float* x, const float* dy,
                       float* dx) const;

  ModelConfig cfg_;
  ModelWeights w_;
  LoraLayout lora_;
  std::vector<float> inv_freq_;  // (D/2)
};

// A forward kept for its backward: the micro-batch and adapters it ran with, every layer's
// activations, the final residual and its norm.
struct ReferencePass {
  MicroBatch mb;
  const float* lora = nullptr;
  PassOptions options;
  std::vector<ReferenceModel::LayerActs> acts;  // (L)
  std::vector<float> x, xf, rstdf;  // final residual (T, C), its norm (T, C), rstd (T)
};

}  // namespace loom
