#include "models/lora.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "ops/error.h"
#include "ops/random.h"
#include "models/safetensors.h"

namespace loom {

const std::array<const char*, kNumTargets> kLoraTargetNames = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"};

std::string lora_module_path(LoraTarget t) {
  return cat(t <= kO ? "self_attn." : "mlp.", kLoraTargetNames[t]);
}

std::pair<int, int> projection_shape(const ModelConfig& m, LoraTarget t) {
  switch (t) {
    case kQ: return {m.C, m.H * m.D};
    case kK:
    case kV: return {m.C, m.KVH * m.D};
    case kO: return {m.H * m.D, m.C};
    case kGate:
    case kUp: return {m.C, m.F};
    case kDown: return {m.F, m.C};
    default: die("projection_shape: bad target");
  }
}

namespace {

std::array<bool, kNumTargets> targeted_set(const std::vector<std::string>& names) {
  std::array<bool, kNumTargets> on{};
  for (const auto& n : names) {
    if (n == "all-linear") {
      on.fill(true);
      continue;
    }
    auto it = std::find(kLoraTargetNames.begin(), kLoraTargetNames.end(), n);
    LOOM_CHECK(it != kLoraTargetNames.end(), "unknown LoRA target '", n,
               "' (valid: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj, or all-linear)");
    on[it - kLoraTargetNames.begin()] = true;
  }
  return on;
}

std::string peft_key(int layer, LoraTarget t, char ab) {
  return cat("base_model.model.model.layers.", layer, ".", lora_module_path(t), ".lora_", ab, ".weight");
}

}  // namespace

LoraLayout make_lora_layout(const ModelConfig& m, const LoraSection& lora) {
  LoraLayout lay;
  lay.R = lora.r;
  lay.alpha = lora.alpha;
  lay.rslora = lora.rslora;
  lay.dropout = lora.dropout;
  lay.scale = lora.rslora ? lora.alpha / std::sqrt(float(lora.r)) : lora.alpha / float(lora.r);
  lay.targeted = targeted_set(lora.targets);
  lay.layers.resize(m.L);
  for (int l = 0; l < m.L; ++l) {
    for (int t = 0; t < kNumTargets; ++t) {
      if (!lay.targeted[t]) continue;
      LoraSlot& s = lay.layers[l][t];
      std::tie(s.in, s.out) = projection_shape(m, LoraTarget(t));
      s.enabled = true;
      s.a_offset = lay.total;
      lay.total += int64_t(lay.R) * s.in;
      s.b_offset = lay.total;
      lay.total += int64_t(s.out) * lay.R;
    }
  }
  return lay;
}

std::vector<size_t> lora_layer_bounds(const LoraLayout& lay) {
  std::vector<size_t> b(lay.layers.size() + 1, size_t(lay.total));
  for (size_t l = lay.layers.size(); l-- > 0;) {
    b[l] = b[l + 1];
    for (const LoraSlot& s : lay.layers[l])
      if (s.enabled) b[l] = std::min(b[l], size_t(s.a_offset));
  }
  return b;
}

std::vector<float> lora_init(const LoraLayout& lay, uint64_t seed) {
  std::vector<float> p(lay.total, 0.f);
  for (size_t l = 0; l < lay.layers.size(); ++l)
    for (int t = 0; t < kNumTargets; ++t) {
      const LoraSlot& s = lay.layers[l][t];
      if (!s.enabled) continue;
      const float bound = 1.f / std::sqrt(float(s.in));
      const uint64_t stream = 1000 + l * kNumTargets + t;
      for (int64_t i = 0; i < int64_t(lay.R) * s.in; ++i) p[s.a_offset + i] = bound * random_symmetric(seed, stream, i);
    }
  return p;
}

void save_peft_adapter(const std::string& dir, const LoraLayout& lay, const std::vector<float>& params,
                       const std::string& base_model) {
  std::filesystem::create_directories(dir);
  std::vector<std::string> names;
  std::vector<TensorToWrite> tensors;
  for (size_t l = 0; l < lay.layers.size(); ++l)
    for (int t = 0; t < kNumTargets; ++t) {
      const LoraSlot& s = lay.layers[l][t];
      if (!s.enabled) continue;
      tensors.push_back({peft_key(int(l), LoraTarget(t), 'A'), DType::F32, {lay.R, s.in}, &params[s.a_offset]});
      tensors.push_back({peft_key(int(l), LoraTarget(t), 'B'), DType::F32, {s.out, lay.R}, &params[s.b_offset]});
    }
  write_safetensors(dir + "/adapter_model.safetensors", tensors);

  nlohmann::ordered_json targets = nlohmann::ordered_json::array();
  for (int t = 0; t < kNumTargets; ++t)
    if (lay.targeted[t]) targets.push_back(kLoraTargetNames[t]);
  // Keys sorted, as PEFT writes them; unlisted fields take PEFT's defaults on load.
  nlohmann::json cfg = {
      {"alpha_pattern", nlohmann::json::object()}, {"base_model_name_or_path", base_model},
      {"bias", "none"},                            {"exclude_modules", nullptr},
      {"fan_in_fan_out", false},                   {"inference_mode", true},
      {"init_lora_weights", true},                 {"layers_pattern", nullptr},
      {"layers_to_transform", nullptr},            {"lora_alpha", lay.alpha},
      {"lora_bias", false},                        {"lora_dropout", lay.dropout},
      {"modules_to_save", nullptr},                {"peft_type", "LORA"},
      {"r", lay.R},                                {"rank_pattern", nlohmann::json::object()},
      {"revision", nullptr},                       {"target_modules", targets},
      {"task_type", "CAUSAL_LM"},                  {"use_dora", false},
      {"use_rslora", lay.rslora},
  };
  const std::string path = dir + "/adapter_config.json";
  std::ofstream f(path + ".tmp");
  f << cfg.dump(2) << "\n";
  f.close();
  LOOM_CHECK(f, "cannot write ", path);
  std::filesystem::rename(path + ".tmp", path);
}

namespace {

nlohmann::json read_adapter_config(const std::string& dir) {
  const std::string path = dir + "/adapter_config.json";
  std::ifstream f(path);
  LOOM_CHECK(f, "cannot open ", path, " (is ", dir, " a PEFT adapter folder?)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    fail(path, ": invalid JSON: ", e.what());
  }
  LOOM_CHECK(j.value("peft_type", "LORA") == "LORA", path, ": peft_type is '", j.value("peft_type", ""),
             "', only LORA adapters are supported");
  for (const char* key : {"use_dora", "fan_in_fan_out"})
    LOOM_CHECK(!j.value(key, false), path, ": ", key, " = true is not supported");
  for (const char* key : {"rank_pattern", "alpha_pattern"})
    LOOM_CHECK(!j.contains(key) || j[key].is_null() || j[key].empty(), path, ": ", key,
               " (per-module r/alpha) is not supported; use one r and lora_alpha for all modules");
  for (const char* key : {"layers_to_transform", "modules_to_save", "exclude_modules"})
    LOOM_CHECK(!j.contains(key) || j[key].is_null() || j[key].empty(), path, ": ", key,
               " is not supported (adapters must cover every layer, with no extra trained modules)");
  LOOM_CHECK(j.value("bias", std::string("none")) == "none", path, ": bias = '", j.value("bias", ""),
             "' is not supported (only \"none\")");
  return j;
}

}  // namespace

LoraSection read_peft_lora_section(const std::string& dir) {
  nlohmann::json j = read_adapter_config(dir);
  const std::string path = dir + "/adapter_config.json";
  LoraSection s;
  s.r = j.value("r", 8);
  s.alpha = j.value("lora_alpha", 8.f);
  s.dropout = j.value("lora_dropout", 0.f);
  s.rslora = j.value("use_rslora", false);
  const auto& tm = j.at("target_modules");
  if (tm.is_string()) {
    LOOM_CHECK(tm.get<std::string>() == "all-linear", path, ": target_modules is the regex '", tm.get<std::string>(),
               "'; only a list of module names or \"all-linear\" is supported");
    s.targets = {"all-linear"};
  } else {
    s.targets = tm.get<std::vector<std::string>>();
  }
  return s;
}

std::vector<float> load_peft_adapter(const std::string& dir, const LoraLayout& lay) {
  const std::string cfg_path = dir + "/adapter_config.json";
  LoraSection s = read_peft_lora_section(dir);
  LOOM_CHECK(s.r == lay.R, cfg_path, ": r = ", s.r, " but the run uses lora.r = ", lay.R);
  LOOM_CHECK(s.alpha == lay.alpha, cfg_path, ": lora_alpha = ", s.alpha, " but the run uses lora.alpha = ", lay.alpha);
  LOOM_CHECK(s.rslora == lay.rslora, cfg_path, ": use_rslora = ", s.rslora, " but the run uses lora.rslora = ", lay.rslora);
  LOOM_CHECK(targeted_set(s.targets) == lay.targeted, cfg_path, ": target_modules differ from lora.targets");

  Checkpoint ck = Checkpoint::open(dir + "/adapter_model.safetensors");
  std::vector<float> p(lay.total, 0.f);
  size_t expected = 0;
  for (size_t l = 0; l < lay.layers.size(); ++l)
    for (int t = 0; t < kNumTargets; ++t) {
      const LoraSlot& s2 = lay.layers[l][t];
      if (!s2.enabled) continue;
      auto a = ck.read_f32(peft_key(int(l), LoraTarget(t), 'A'), {lay.R, s2.in});
      auto b = ck.read_f32(peft_key(int(l), LoraTarget(t), 'B'), {s2.out, lay.R});
      std::copy(a.begin(), a.end(), p.begin() + s2.a_offset);
      std::copy(b.begin(), b.end(), p.begin() + s2.b_offset);
      expected += 2;
    }
  LOOM_CHECK(ck.names().size() == expected, dir, "/adapter_model.safetensors: holds ", ck.names().size(),
             " tensors, expected ", expected, " (2 per targeted module per layer)");
  return p;
}

}  // namespace loom
