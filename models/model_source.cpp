#include "models/model_source.h"

#include <filesystem>

#include "ops/error.h"
#include "ops/files.h"

namespace loom {

ModelConfig resolve_model_config(const ModelOptions& m) {
  if (!m.preset.empty()) return preset_model_config(m.preset);
  std::error_code ec;
  LOOM_CHECK(std::filesystem::is_directory(m.path, ec), "model.path: '", shown(m.path),
             "' is not a folder (expected an HF model folder with config.json and *.safetensors)");
  const ModelConfig cfg = load_model_config(m.path);
  audit_checkpoint(m.path, cfg);  // kept for weight_source / resolve_host_weights
  return cfg;
}

WeightSource weight_source(const ModelOptions& m, const ModelConfig& cfg) {
  return m.preset.empty() ? WeightSource::checkpoint(m.path, cfg) : WeightSource::random(cfg, uint64_t(m.init_seed));
}

ModelWeights resolve_host_weights(const ModelOptions& m, const ModelConfig& cfg) {
  ModelWeights w = m.preset.empty() ? load_weights(m.path, cfg) : random_weights(cfg, uint64_t(m.init_seed));
  if (m.quant == Quant::kNf4 && !cfg.bnb_4bit) apply_nf4_roundtrip(w, 64, m.double_quant);
  return w;
}

std::string model_name(const ModelOptions& m) { return m.preset.empty() ? m.path : "preset:" + m.preset; }

}  // namespace loom
