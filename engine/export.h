// The end-of-run export (output.export): "peft" writes <run>/adapter (adapter_config.json +
// adapter_model.safetensors, loadable by peft's PeftModel.from_pretrained); "merged" writes
// <run>/merged, an HF checkpoint with W' = W + scale·B·A folded into the original (unquantized)
// base weights; "none" writes nothing beyond the checkpoints.
#pragma once
#include <vector>

#include "engine/config.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/weights.h"

namespace loom {

void export_run(const TrainConfig& cfg, const ModelConfig& mc, const LoraLayout& layout,
                const std::vector<float>& lora);
// W += scale·B·A for every adapted projection (the merge PEFT's merge_and_unload does).
void merge_lora(ModelWeights& w, const LoraLayout& layout, const std::vector<float>& lora);

}  // namespace loom
