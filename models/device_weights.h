// The frozen weights of a model on the GPU: embeddings, norms, the LM head, and every projection in
// bf16 or NF4 (QLoRA: codes + absmax, double-quantized or not, as bitsandbytes stores them); of a
// mixture-of-experts model the attention and its dense layers' MLPs (the routers and experts are
// models/moe_layer.h's). Listed in the run's MemoryPlan by plan(), filled by load() after the plan
// is allocated; nothing here changes during training. A projection is read through projection():
// the bf16 weight itself, or the NF4 weight dequantized into the caller's scratch just before its GEMM.
#pragma once
#include <array>
#include <functional>
#include <vector>

#include "models/compute_options.h"
#include "models/device_buffers.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/weights.h"
#include "ops/nf4.h"

namespace loom {

class DeviceWeights {
 public:
  DeviceWeights(const ModelConfig& cfg, Quant quant, bool double_quant);
  // Every buffer, in group "weights".
  void plan(MemoryPlan& plan);
  // Uploads from src (quantizing to NF4 as bitsandbytes does, from the bf16 weight); after allocation.
  // also: given every layer's weights as they are read (an MoE model's sparse layers, models/moe_layer.h).
  using LayerHook = std::function<void(int layer, const LayerWeights& weights)>;
  void load(const WeightSource& src, const LayerHook& also = nullptr);

  // Projection t of layer l as a bf16 (out, in) matrix: the weight, or NF4 dequantized into scratch
  // (largest_projection() elements) on stream.
  const bf16* projection(int l, LoraTarget t, bf16* scratch, cudaStream_t stream) const;
  // Projection t of layer l as stored when nf4() (codes and scales on the device).
  const Nf4Device& nf4_projection(int l, LoraTarget t) const { return nf4_[l][t]; }
  const bf16* bias(int l, LoraTarget t) const { return bias_[t].base ? bias_[t].at(l) : nullptr; }
  size_t largest_projection() const;
  bool nf4() const { return quant_ == Quant::kNf4; }

  const bf16* embed() const { return embed_; }
  const bf16* head() const { return lm_head_ ? lm_head_ : embed_; }  // tied embeddings share the matrix
  const bf16* final_norm() const { return final_norm_; }
  const bf16* ln1(int l) const { return ln1_.at(l); }
  const bf16* ln2(int l) const { return ln2_.at(l); }
  const bf16* q_norm(int l) const { return q_norm_.at(l); }
  const bf16* k_norm(int l) const { return k_norm_.at(l); }
  const float* inv_freq() const { return inv_freq_; }

 private:
  void plan_projection(MemoryPlan& plan, LoraTarget t);
  void upload_projection(int l, LoraTarget t, std::vector<float>& w);
  void upload_layer(int l, LayerWeights lw);
  // Whether projection t exists in some layer: the MLP's only where a layer is dense.
  bool planned(LoraTarget t) const;

  ModelConfig cfg_;
  Quant quant_;
  bool double_quant_;
  bf16 *embed_ = nullptr, *lm_head_ = nullptr, *final_norm_ = nullptr;
  LayerBuf<bf16> ln1_, ln2_, q_norm_, k_norm_;
  LayerBuf<bf16> bias_[kNumTargets], w_[kNumTargets];
  LayerBuf<uint8_t> codes_[kNumTargets], absmax_q_[kNumTargets];
  LayerBuf<float> absmax_[kNumTargets], nested_absmax_[kNumTargets];
  std::vector<std::array<Nf4Device, kNumTargets>> nf4_;  // (L)
  float *nf4_table_ = nullptr, *nested_map_ = nullptr, *inv_freq_ = nullptr;
};

}  // namespace loom
