// LoRA adapters (PEFT semantics): for each targeted projection of each layer,
//   A (R, in) and B (out, R), y += scale · (x·Aᵀ)·Bᵀ, scale = alpha/R (rsLoRA: alpha/√R).
// All adapters live in ONE flat fp32 vector (params, grads and both AdamW moments share the
// layout), so the optimizer, grad-norm and the all-reduce each see one contiguous buffer.
// Init as PEFT (init_lora_weights=True): A ~ U(-1/√in, 1/√in) (kaiming_uniform(a=√5)), B = 0.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "models/model_config.h"

namespace loom {

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
  int64_t a_offset = 0;  // A (R, in) at params[a_offset]
  int64_t b_offset = 0;  // B (out, R) at params[b_offset]
};

struct LoraLayout {
  int R = 0;
  float alpha = 0;
  float scale = 0;
  bool rslora = false;
  float dropout = 0;
  std::array<bool, kNumTargets> targeted{};
  std::vector<std::array<LoraSlot, kNumTargets>> layers;  // (L)
  int64_t total = 0;                                       // floats in the flat vector
  const LoraSlot& slot(int layer, LoraTarget t) const { return layers[layer][t]; }
};

// The largest LoRA rank loom takes (config lora.r, adapter_config.json r): wider than the hidden
// size of every supported model, so no longer low-rank, while the adapter and its optimizer state
// grow with r. A rank above min(in, out) of a projection is legal (PEFT accepts it: B·A is merely
// rank-deficient), as with r = 256 on Qwen2.5-0.5B's 128-wide k/v projections.
constexpr int kMaxLoraRank = 4096;

// (in, out) of a projection in a model: q (C → H·D), k/v (C → KVH·D), o (H·D → C), gate/up (C → F), down (F → C).
std::pair<int, int> projection_shape(const ModelConfig& m, LoraTarget t);
// Refuses a rank outside [1, kMaxLoraRank] before anything is sized by it.
LoraLayout make_lora_layout(const ModelConfig& m, const LoraOptions& lora);
// Layer l's adapters occupy [bounds[l], bounds[l+1]) of the flat vector (layer-major), L + 1 values.
std::vector<size_t> lora_layer_bounds(const LoraLayout& layout);
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

// PEFT adapter folder: adapter_config.json + adapter_model.safetensors (fp32).
void save_peft_adapter(const std::string& dir, const LoraLayout& layout, const std::vector<float>& params,
                       const std::string& base_model);
// Reads a PEFT adapter into the layout's flat vector. Errors name the file and the key or tensor:
// r/alpha/targets that differ from the layout, unsupported variants (DoRA, rank_pattern, ...),
// missing, mis-shaped, non-finite or unused (not in the layout) tensors.
std::vector<float> load_peft_adapter(const std::string& dir, const LoraLayout& layout);
// The LoRA config of a PEFT adapter folder as LoraOptions (r, alpha, dropout, rslora, targets);
// every key type- and range-checked, errors naming adapter_config.json and the key.
LoraOptions read_peft_lora_options(const std::string& dir);

}  // namespace loom
