// The decoder on the fp32 CPU reference path (ops/*_ref.cpp): Llama, Mistral, Qwen2 and Qwen3.
//   x = embed[ids]
//   per layer:  h = x + o(attn(rope(qknorm(q(rms1(x)))), rope(qknorm(k(rms1(x)))), v(rms1(x))))
//               x = h + down(silu(gate(rms2(h))) ⊙ up(rms2(h)))
//   loss_t = CE(lm_head(rms_final(x))_t, target_t)
// Every projection is a LoRA linear (ops/lora_linear.h); base weights are frozen, so backward
// produces LoRA gradients only (and the activation gradients that carry them).
// Mixture of experts (Qwen3-MoE, Mixtral): the MLP of a sparse layer is
//   z = rms2(h)·Wrᵀ (the router, frozen), top-K softmax routing w, e_1..e_K (ops/moe_router.h)
//   x = h + Σ_k w_k · down_{e_k}(silu(gate_{e_k}(rms2(h))) ⊙ up_{e_k}(rms2(h)))
// each expert's gate and up one LoRA linear over its fused (2·FE, C) weight (models/lora.h); the
// gradient reaches rms2(h) through the experts and through w into the router logits. With
// output_router_logits on in config.json the backward also takes the gradient of
// router_aux_loss_coef · aux, aux the load-balancing loss over the sparse layers of the kept forward's
// micro-batch: transformers adds it to the loss of every forward with labels, so with gradient
// accumulation each micro-batch of a step adds its own coef·aux, divided by nothing (the Trainer
// normalises only the cross-entropy), whatever the token weights of the objective.
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
  // Backward of a kept forward: dlora (the layout of `lora`) += d(Σ_t token_weight[t] · loss_t)/d lora
  // (+ aux_coef() · d aux / d lora for an MoE model, see above).
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

  // The weight of the load-balancing loss in the backward: router_aux_loss_coef when config.json
  // turns output_router_logits on, else 0 (and 0 for a dense model).
  float aux_coef() const { return cfg_.output_router_logits ? float(cfg_.router_aux_loss_coef) : 0.f; }
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
    std::vector<float> gate, up, act;                   // (T, F) ×3: gate, up, silu(gate)·up (a dense MLP)
    // A sparse layer's MLP: the routing, and each expert's activations over the tokens routed to it.
    std::vector<float> router_logits, probs;            // (T, E) z and softmax(z)
    std::vector<int32_t> route_experts;                 // (T, K) e_k
    std::vector<float> route_weights;                   // (T, K) w_k
    struct Expert {
      std::vector<int32_t> tokens, picks;               // (n) the tokens routed here, in order, and which k picked it
      std::vector<float> x;                             // (n, C) their rms2(h)
      std::vector<float> u_gate_up, u_down;             // x·Aᵀ (n, 2R), act·Aᵀ (n, R); empty without adapters
      std::vector<float> gate, up, act;                 // (n, FE) ×3
      std::vector<float> y;                             // (n, C) the expert's output, before w
    };
    std::vector<Expert> experts;                        // (E)
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
  // A sparse layer's MLP: out (T, C) = Σ_k w_k · expert_{e_k}(xn2); backward: dxn2 (T, C) written from dout.
  void moe_forward(int l, Pass& p, LayerActs& a, float* out) const;
  void moe_backward(int l, Pass& p, const LayerActs& a, const float* dout, float* dxn2) const;
  // Expert e's gate_up or down LoRA linear over n tokens (u: x·Aᵀ, written / read when adapted).
  void expert_forward(int l, int e, ExpertTarget t, Pass& p, const float* x, float* y, std::vector<float>& u,
                      int64_t n) const;
  void expert_backward(int l, int e, ExpertTarget t, Pass& p, const float* x, const std::vector<float>& u,
                       const float* dy, float* dx, int64_t n) const;

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
  // An MoE model: the load-balancing loss of the micro-batch's sparse layers (ops/moe_router.h), and
  // aux_coef() · d aux / d p_e, the same for every row of every sparse layer (E); empty when aux_coef() is 0.
  double aux_loss = 0;
  std::vector<float> aux_dprob;
};

}  // namespace loom
