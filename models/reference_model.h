// The decoder on the fp32 CPU reference path (ops/*_ref.cpp): Llama, Mistral, Qwen2 and Qwen3.
//   x = embed[ids]
//   per layer:  h = x + o(attn(rope(qknorm(q(rms1(x)))), rope(qknorm(k(rms1(x)))), v(rms1(x))))
//               x = h + down(silu(gate(rms2(h))) ⊙ up(rms2(h)))
//   loss_t = CE(lm_head(rms_final(x))_t, target_t)
// Every projection is a LoRA linear (ops/lora_linear.h); base weights are frozen, so backward
// produces LoRA gradients only (and the activation gradients that carry them).
#pragma once
#include <cstdint>
#include <vector>

#include "data/batch.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/weights.h"
#include "ops/cross_entropy.h"

namespace loom {

class ReferenceModel {
 public:
  ReferenceModel(const ModelConfig& cfg, ModelWeights weights, const LoraLayout& lora);

  // Forward over one packed micro-batch; with dlora non-null, backward too, accumulating (+=) the
  // gradient of grad_scale · Σ loss_t into dlora (the layout of `lora`). token_loss (T) and
  // logits (T, V) are optional outputs. dropout_seed varies the LoRA dropout masks per step.
  CrossEntropyOut run(const MicroBatch& mb, const float* lora, float* dlora, float grad_scale,
                      float* token_loss = nullptr, std::vector<float>* logits = nullptr,
                      uint64_t dropout_seed = 0) const;

  const ModelConfig& config() const { return cfg_; }
  const LoraLayout& lora_layout() const { return lora_; }
  const ModelWeights& weights() const { return w_; }

 private:
  struct LayerActs;
  struct Pass;
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

}  // namespace loom
