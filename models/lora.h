// LoRA adapters (PEFT semantics): for each targeted projection of each layer,
//   A (R, in) and B (out, R), y += scale · (x·Aᵀ)·Bᵀ, scale = alpha/R (rsLoRA: alpha/√R).
// All adapters live in ONE flat fp32 vector (params, grads and both AdamW moments share the
// layout), so the optimizer, grad-norm and the all-reduce each see one contiguous buffer.
// Init as PEFT (init_lora_weights=True): A ~ U(-1/√in, 1/√in) (kaiming_uniform(a=√5)), B = 0.
//
// Mixture-of-experts models (Qwen3-MoE, Mixtral), as PEFT 0.21.2 adapts them: the MLP targets
// gate_proj / up_proj / down_proj (Mixtral's w1 / w3 / w2) mean every expert of every sparse layer.
// Per expert, gate and up are ONE adapter of rank 2R over the fused gate_up weight (2·FE, C), gate rows
// first: PEFT's target_parameters gate_up_proj with rank_pattern 2R and alpha_pattern 2·alpha, so its
// scale is 2·alpha/2R (rsLoRA 2·alpha/√(2R)) and its A is shared by gate and up; down is one adapter
// of rank R. Both or neither of gate and up (PEFT refuses one without the other), and no LoRA dropout
// (PEFT's expert adapters, ParamWrapper, refuse it). The dense MLP of a Qwen3-MoE layer listed in
// mlp_only_layers (or skipped by decoder_sparse_step) is never adapted: PEFT 0.21.2 cannot reach it
// (tests/fixtures/moe/README.md), so loom skips it too and an adapter file holding it is refused.
// The router is frozen: "all-linear" means the attention and the experts (PEFT 0.21.2's all-linear
// also adapts the router, gate.weight; such an adapter is refused for that tensor).
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "models/model_config.h"

namespace loom {

struct LayerWeights;  // models/weights.h

// The config's `lora:` section (engine/config.cpp reads it), or a PEFT adapter's settings.
struct LoraOptions {
  int r = 16;
  float alpha = 16.f;
  float dropout = 0.f;
  bool rslora = false;  // scale alpha/sqrt(r) instead of alpha/r
  std::vector<std::string> targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  // Config only: "" (PEFT's initialisation) or a PEFT adapter folder whose weights the LoRA
  // weights start from (e.g. the SFT adapter a DPO run continues).
  std::string init_from;
};

enum LoraTarget { kQ, kK, kV, kO, kGate, kUp, kDown, kNumTargets };
// PEFT module names, in LoraTarget order.
extern const std::array<const char*, kNumTargets> kLoraTargetNames;
// "self_attn.q_proj", "mlp.down_proj", ...: the module path inside model.layers.{n}.
std::string lora_module_path(LoraTarget t);

struct LoraSlot {
  bool enabled = false;
  int in = 0, out = 0;
  int64_t a_offset = 0;  // A (r, in) at params[a_offset]
  int64_t b_offset = 0;  // B (out, r) at params[b_offset]
  int r = 0;             // the layout's R; 2R for an expert's gate_up
  float scale = 0;       // the layout's scale; an expert's gate_up: see above
};

// An expert's two adapters in a sparse layer: gate_up (C → 2·FE, gate rows first) and down (FE → C).
enum ExpertTarget { kExpertGateUp, kExpertDown, kNumExpertTargets };
extern const std::array<const char*, kNumExpertTargets> kExpertTargetNames;  // PEFT: gate_up_proj, down_proj

struct LoraLayout {
  int R = 0;
  float alpha = 0;
  float scale = 0;
  bool rslora = false;
  float dropout = 0;
  std::string arch;  // the model's family (Mixtral's per-expert adapters name w1 / w3 / w2)
  std::array<bool, kNumTargets> targeted{};
  std::vector<std::array<LoraSlot, kNumTargets>> layers;  // (L); gate/up/down disabled in every layer of an MoE model
  // (L) × (E) of a sparse layer, empty for a dense one. Layer l's adapters are contiguous: its
  // attention slots, then expert 0's gate_up A, B, down A, B, expert 1's, ...
  std::vector<std::vector<std::array<LoraSlot, kNumExpertTargets>>> experts;
  int64_t total = 0;                                       // floats in the flat vector
  const LoraSlot& slot(int layer, LoraTarget t) const { return layers[layer][t]; }
  const LoraSlot& expert_slot(int layer, int e, ExpertTarget t) const { return experts[layer][e][t]; }
};

// The largest LoRA rank loom takes (config lora.r, adapter_config.json r): wider than the hidden
// size of every supported model, so no longer low-rank, while the adapter and its optimizer state
// grow with r. A rank above min(in, out) of a projection is legal (PEFT accepts it: B·A is merely
// rank-deficient), as with r = 256 on Qwen2.5-0.5B's 128-wide k/v projections.
constexpr int kMaxLoraRank = 4096;

// (in, out) of a projection in a model: q (C → H·D), k/v (C → KVH·D), o (H·D → C), gate/up (C → F), down (F → C)
// (the dense MLP; an expert's are C → FE and FE → C).
std::pair<int, int> projection_shape(const ModelConfig& m, LoraTarget t);
// Refuses a rank outside [1, kMaxLoraRank] before anything is sized by it, and on an MoE model gate
// without up (or up without gate) and dropout with expert targets (see above).
LoraLayout make_lora_layout(const ModelConfig& m, const LoraOptions& lora);
// Layer l's adapters occupy [bounds[l], bounds[l+1]) of the flat vector (layer-major), L + 1 values.
std::vector<size_t> lora_layer_bounds(const LoraLayout& layout);
// Layer l's adapters merged into its weights, as PEFT's merge_and_unload: W (out, in) += scale · B · A
// for every adapted projection, and every adapted expert's slice of its stack (at its own rank and
// scale). lora: the layout's flat vector.
void merge_lora_layer(LayerWeights& w, int l, const LoraLayout& layout, const float* lora);
// PEFT default init, deterministic from seed.
std::vector<float> lora_init(const LoraLayout& layout, uint64_t seed);
// The random stream (ops/random.h) of the dropout mask on projection t's LoRA input in layer l: PEFT
// gives every adapted module its own nn.Dropout. Both model paths draw the same masks from it.
inline uint64_t lora_dropout_stream(int layer, LoraTarget t) {
  return (uint64_t(1) << 20) | (uint64_t(layer) * kNumTargets + uint64_t(t));
}

// How one forward runs, on either model path.
struct PassOptions {
  bool adapters = true;       // false: the base model, LoRA switched off (the reference model of preference tuning)
  bool train = false;         // LoRA dropout on (a training pass); off when evaluating or scoring, as PEFT in eval mode
  uint64_t dropout_seed = 0;  // picks the dropout masks of a training pass (ops/dropout.h)
  // With adapters on: the frozen reference adapter (GPU: DeviceAdapters::set_reference) instead of
  // the trained one — the reference model of preference tuning started from an adapter.
  bool reference_adapter = false;
};

// PEFT adapter folder: adapter_config.json + adapter_model.safetensors (fp32). An MoE model's expert
// adapters are written in PEFT 0.21.2's fused form (target_parameters, tests/fixtures/moe/README.md):
// per sparse layer L, ...layers.L.mlp.experts[.base_layer].lora_A.weight (E·r, in), expert-major, and
// lora_B.weight (out, r·E), rank-major (expert e's column j at j·E + e); .base_layer names gate_up when
// down is adapted too (gate_up is PEFT's inner wrapper).
void save_peft_adapter(const std::string& dir, const LoraLayout& layout, const std::vector<float>& params,
                       const std::string& base_model);
// Reads a PEFT adapter into the layout's flat vector: for an MoE model, the fused form above or the
// transformers-4 form (one adapter per expert and projection, ...experts.N.gate_proj.lora_A.weight,
// Mixtral ...block_sparse_moe.experts.N.w1...), converted as PEFT 0.21.2 converts it on load: gate's
// and up's A stacked into the rank-2R A, their B's placed block-diagonally. Errors name the file and the key or tensor:
// r/alpha/targets that differ from the layout, unsupported variants (DoRA, rank_pattern, ...),
// missing, mis-shaped, non-finite or unused (not in the layout) tensors.
std::vector<float> load_peft_adapter(const std::string& dir, const LoraLayout& layout);
// The LoRA config of a PEFT adapter folder as LoraOptions (r, alpha, dropout, rslora, targets);
// every key type- and range-checked, errors naming adapter_config.json and the key. target_parameters
// gate_up_proj / down_proj read as the targets gate_proj + up_proj / down_proj, with the rank_pattern
// and alpha_pattern PEFT writes for them (2r, 2·alpha on gate_up_proj) and no other; Mixtral's w1 / w3
// / w2 in target_modules as gate_proj / up_proj / down_proj.
LoraOptions read_peft_lora_options(const std::string& dir);

}  // namespace loom
