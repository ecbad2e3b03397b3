// Where a run's base model comes from (config `model:` section): an HF folder, or a preset with
// random weights (BENCHMARK.md presets, "tiny" for the demo).
#pragma once
#include <string>

#include "models/compute_options.h"
#include "models/model_config.h"
#include "models/weights.h"

namespace loom {

// The config's `model:` section (engine/config.cpp reads it).
struct ModelOptions {
  std::string path;             // HF folder (config.json + safetensors); empty when preset is set
  std::string preset;           // BENCHMARK.md preset or "tiny": random-initialised weights, no checkpoint
  Quant quant = Quant::kNf4;
  bool double_quant = true;     // NF4 absmax double quantization (bnb_4bit_use_double_quant)
  int init_seed = 0;            // seed of the random weights of a preset
};

// config.json of model.path, or the preset. Errors name the config key ("model.path: ..."). A
// checkpoint's tensors are checked against its config.json here (audit_checkpoint), before a run
// allocates anything sized by it; weight_source / resolve_host_weights then reuse that checkpoint.
ModelConfig resolve_model_config(const ModelOptions& m);
// Host fp32 weights for the reference path. model.quant = nf4 applies the NF4 round trip
// (bitsandbytes blocksize 64, double quantization per model.double_quant), unless the checkpoint
// is already bitsandbytes 4-bit (then its dequantized values are used as they are).
ModelWeights resolve_host_weights(const ModelOptions& m, const ModelConfig& cfg);
// The weights as a stream (GPU loader): checkpoint or preset, unquantized (the loader quantizes).
WeightSource weight_source(const ModelOptions& m, const ModelConfig& cfg);
// A short name for logs and adapter_config.json's base_model_name_or_path.
std::string model_name(const ModelOptions& m);

}  // namespace loom
