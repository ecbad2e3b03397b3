#include "models/lora.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "ops/error.h"
#include "ops/files.h"
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

LoraLayout make_lora_layout(const ModelConfig& m, const LoraOptions& lora) {
  // Checked here too for layouts not built from a config file: everything below is sized by r.
  LOOM_CHECK(lora.r >= 1 && lora.r <= kMaxLoraRank, "lora.r must be in [1, ", kMaxLoraRank, "], found ", lora.r);
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

// Typed keys of adapter_config.json; errors name the file and the key. A missing or null key takes
// PEFT's LoraConfig default.
class AdapterConfig {
 public:
  explicit AdapterConfig(const std::string& dir)
      : path_(dir + "/adapter_config.json"), j_(read_json_file(path_, "PEFT adapter config")) {
    LOOM_CHECK(j_.is_object(), path_, ": expected a JSON object, found ", j_.type_name());
  }
  bool set(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }
  const nlohmann::json& at(const char* key) const { return j_[key]; }
  std::string where(const char* key) const { return cat(path_, ": ", key); }

  int get_int(const char* key, int fallback) const {
    if (!set(key)) return fallback;
    const nlohmann::json& v = j_[key];
    LOOM_CHECK(v.is_number_integer() && std::fabs(v.get<double>()) <= INT32_MAX, where(key),
               ": expected an integer, found ", v.dump());
    return v.get<int>();
  }
  double get_number(const char* key, double fallback) const {
    if (!set(key)) return fallback;
    const nlohmann::json& v = j_[key];
    LOOM_CHECK(v.is_number(), where(key), ": expected a number, found ", v.dump());
    return v.get<double>();
  }
  bool get_bool(const char* key, bool fallback) const {
    if (!set(key)) return fallback;
    const nlohmann::json& v = j_[key];
    LOOM_CHECK(v.is_boolean(), where(key), ": expected true or false, found ", v.dump());
    return v.get<bool>();
  }
  std::string get_string(const char* key, const std::string& fallback) const {
    if (!set(key)) return fallback;
    const nlohmann::json& v = j_[key];
    LOOM_CHECK(v.is_string(), where(key), ": expected a string, found ", v.dump());
    return v.get<std::string>();
  }
  // Absent, null or empty ({} / []): PEFT features loom does not implement must be unused.
  bool unused(const char* key) const {
    return !set(key) || ((j_[key].is_object() || j_[key].is_array()) && j_[key].empty());
  }

 private:
  std::string path_;
  nlohmann::json j_;
};

// Refuses PEFT variants whose weights would mean something else than plain LoRA.
void check_plain_lora(const AdapterConfig& c) {
  const std::string type = c.get_string("peft_type", "LORA");
  LOOM_CHECK(type == "LORA", c.where("peft_type"), ": '", type, "', only LORA adapters are supported");
  for (const char* key : {"use_dora", "fan_in_fan_out"})
    LOOM_CHECK(!c.get_bool(key, false), c.where(key), " = true is not supported");
  for (const char* key : {"rank_pattern", "alpha_pattern"})
    LOOM_CHECK(c.unused(key), c.where(key), " (per-module r/alpha) is not supported; use one r and lora_alpha for all "
               "modules");
  for (const char* key : {"layers_to_transform", "modules_to_save", "exclude_modules"})
    LOOM_CHECK(c.unused(key), c.where(key),
               " is not supported (adapters must cover every layer, with no extra trained modules)");
  const std::string bias = c.get_string("bias", "none");
  LOOM_CHECK(bias == "none", c.where("bias"), " = '", bias, "' is not supported (only \"none\")");
}

std::vector<std::string> target_modules(const AdapterConfig& c) {
  LOOM_CHECK(c.set("target_modules"), c.where("target_modules"),
             " is missing; list the adapted modules (e.g. [\"q_proj\", \"v_proj\"]) or \"all-linear\"");
  const nlohmann::json& tm = c.at("target_modules");
  if (tm.is_string()) {
    LOOM_CHECK(tm.get<std::string>() == "all-linear", c.where("target_modules"), ": the regex '",
               tm.get<std::string>(), "' is not supported; give a list of module names or \"all-linear\"");
    return {"all-linear"};
  }
  LOOM_CHECK(tm.is_array() && !tm.empty(), c.where("target_modules"),
             ": expected a list of module names or \"all-linear\", found ", tm.dump());
  std::vector<std::string> names;
  for (const nlohmann::json& name : tm) {
    LOOM_CHECK(name.is_string(), c.where("target_modules"), ": expected module names, found ", name.dump());
    LOOM_CHECK(std::find(kLoraTargetNames.begin(), kLoraTargetNames.end(), name.get<std::string>()) !=
                       kLoraTargetNames.end() || name == "all-linear",
               c.where("target_modules"), ": unknown module ", name.dump(),
               " (valid: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj, or all-linear)");
    names.push_back(name.get<std::string>());
  }
  return names;
}

}  // namespace

LoraOptions read_peft_lora_options(const std::string& dir) {
  const AdapterConfig c(dir);
  check_plain_lora(c);
  LoraOptions s;
  // PEFT LoraConfig defaults: r 8, lora_alpha 8, lora_dropout 0, use_rslora false.
  s.r = c.get_int("r", 8);
  LOOM_CHECK(s.r >= 1 && s.r <= kMaxLoraRank, c.where("r"), " must be in [1, ", kMaxLoraRank, "], found ", s.r);
  const double alpha = c.get_number("lora_alpha", 8);
  LOOM_CHECK(alpha > 0 && std::isfinite(float(alpha)), c.where("lora_alpha"), " must be a positive number, found ",
             alpha);
  s.alpha = float(alpha);
  const double dropout = c.get_number("lora_dropout", 0);
  LOOM_CHECK(dropout >= 0 && dropout < 1, c.where("lora_dropout"), " must be in [0, 1), found ", dropout);
  s.dropout = float(dropout);
  s.rslora = c.get_bool("use_rslora", false);
  s.targets = target_modules(c);
  return s;
}

std::vector<float> load_peft_adapter(const std::string& dir, const LoraLayout& lay) {
  const std::string cfg_path = dir + "/adapter_config.json";
  LoraOptions s = read_peft_lora_options(dir);
  LOOM_CHECK(s.r == lay.R, cfg_path, ": r = ", s.r, " but the run uses lora.r = ", lay.R);
  LOOM_CHECK(s.alpha == lay.alpha, cfg_path, ": lora_alpha = ", s.alpha, " but the run uses lora.alpha = ", lay.alpha);
  LOOM_CHECK(s.rslora == lay.rslora, cfg_path, ": use_rslora = ", s.rslora, " but the run uses lora.rslora = ", lay.rslora);
  LOOM_CHECK(targeted_set(s.targets) == lay.targeted, cfg_path, ": target_modules differ from lora.targets");

  const std::string file = dir + "/adapter_model.safetensors";
  Checkpoint ck = Checkpoint::open(file);
  std::set<std::string> used;
  for (size_t l = 0; l < lay.layers.size(); ++l)
    for (int t = 0; t < kNumTargets; ++t)
      if (lay.layers[l][t].enabled)
        for (char ab : {'A', 'B'}) used.insert(peft_key(int(l), LoraTarget(t), ab));
  for (const std::string& name : ck.names())
    LOOM_CHECK(used.count(name), file, ": tensor '", name, "' is not an adapter of this model (", cfg_path,
               " targets ", lay.layers.size(), " layers × its target_modules); is the adapter for another model?");
  std::vector<float> p(lay.total, 0.f);
  for (size_t l = 0; l < lay.layers.size(); ++l)
    for (int t = 0; t < kNumTargets; ++t) {
      const LoraSlot& s2 = lay.layers[l][t];
      if (!s2.enabled) continue;
      auto a = ck.read_f32(peft_key(int(l), LoraTarget(t), 'A'), {lay.R, s2.in});
      auto b = ck.read_f32(peft_key(int(l), LoraTarget(t), 'B'), {s2.out, lay.R});
      std::copy(a.begin(), a.end(), p.begin() + s2.a_offset);
      std::copy(b.begin(), b.end(), p.begin() + s2.b_offset);
    }
  return p;
}

}  // namespace loom
