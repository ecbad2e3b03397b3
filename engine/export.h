// The end-of-run export (output.export) and build/export's conversions:
//   peft    <run>/adapter: adapter_config.json + adapter_model.safetensors (PeftModel.from_pretrained).
//   merged  <run>/adapter, and <run>/merged: a complete HF model folder with W' = W + scale·B·A folded
//           into the (unquantized) base weights — model.safetensors in the base's dtype (the dtype of
//           its embedding: bf16, fp16 or fp32; bf16 for a preset or a bitsandbytes 4-bit base, whose
//           weights are written dequantized), the base's config.json with only torch_dtype/dtype
//           changed to that dtype and quantization_config dropped, the tokenizer files of the
//           tokenizer the run used, generation_config.json (the base's, or one written from
//           config.json's bos/eos ids). Tied embeddings stay tied (no lm_head.weight).
//   gguf    <run>/adapter, and <run>/model-<type>.gguf: the merged model for llama.cpp
//           (models/gguf_model.h) in output.gguf_type (q8_0 by default, f16, bf16).
//   none    the checkpoints only.
#pragma once
#include <string>
#include <vector>

#include "engine/config.h"
#include "models/gguf.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/weights.h"

namespace loom {

// What an export is made from.
struct ExportSource {
  ModelOptions model;     // the base: an HF folder (model.path) or a preset (model.preset, init_seed)
  std::string tokenizer;  // the tokenizer the adapter was trained with (file or folder), "" for none
};
// data.tokenizer, else model.path (as training tokenizes).
ExportSource export_source(const TrainConfig& cfg);

void export_run(const TrainConfig& cfg, const ModelConfig& mc, const LoraLayout& layout,
                const std::vector<float>& lora);
// W += scale·B·A for every adapted projection (the merge PEFT's merge_and_unload does).
void merge_lora(ModelWeights& w, const LoraLayout& layout, const std::vector<float>& lora);
// The base's fp32 weights (unquantized) with the adapter merged in.
ModelWeights merged_weights(const ExportSource& src, const ModelConfig& mc, const LoraLayout& layout,
                            const std::vector<float>& lora);

// The dtype merged safetensors are written in (see above).
DType merged_dtype(const ExportSource& src);
// Writes `dir` as a complete HF folder (see above), replacing any folder there only once the new
// one is complete. Returns what could not be included (a preset has no tokenizer or
// generation_config of its own), one line each, for the user.
std::vector<std::string> write_merged_folder(const std::string& dir, const ExportSource& src, const ModelConfig& mc,
                                             const ModelWeights& merged);
// Writes the merged model as GGUF (models/gguf_model.h); returns its notes.
std::vector<std::string> write_merged_gguf(const std::string& path, const ExportSource& src, const ModelConfig& mc,
                                           const ModelWeights& merged, GgmlType type);
// "model-q8_0.gguf": the file name output.export: gguf writes in the run folder.
std::string gguf_file_name(const std::string& gguf_type);

}  // namespace loom
