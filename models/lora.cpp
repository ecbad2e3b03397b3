#include "models/lora.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "models/weights.h"
#include "ops/error.h"
#include "ops/files.h"
#include "ops/matmul.h"
#include "ops/random.h"
#include "models/safetensors.h"

namespace loom {

const std::array<const char*, kNumTargets> kLoraTargetNames = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"};

const std::array<const char*, kNumExpertTargets> kExpertTargetNames = {"gate_up_proj", "down_proj"};

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

// The rank_pattern / alpha_pattern key PEFT 0.21.2 writes for the fused gate_up_proj.
constexpr const char* kGateUpPattern = ".*\\.gate_up_proj";

// Mixtral's names of an expert's gate, up and down (its per-expert checkpoints and adapters).
constexpr std::array<const char*, 3> kMixtralExpertNames = {"w1", "w3", "w2"};

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

// PEFT 0.21.2's key of a fused expert adapter (lora.h): gate_up is the inner ParamWrapper
// (".base_layer") when down is adapted too.
std::string fused_expert_key(const LoraLayout& lay, int layer, ExpertTarget t, char ab) {
  const bool inner = t == kExpertGateUp && lay.targeted[kDown];
  return cat("base_model.model.model.layers.", layer, ".mlp.experts.", inner ? "base_layer." : "", "lora_", ab,
             ".weight");
}

// The transformers-4 key of expert e's gate (0), up (1) or down (2) adapter.
std::string per_expert_key(const LoraLayout& lay, int layer, int e, int which, char ab) {
  const bool mixtral = lay.arch == "mixtral";
  return cat("base_model.model.model.layers.", layer, mixtral ? ".block_sparse_moe" : ".mlp", ".experts.", e, ".",
             mixtral ? kMixtralExpertNames[size_t(which)] : kLoraTargetNames[size_t(kGate + which)], ".lora_", ab,
             ".weight");
}

// The MoE rules of lora.h: gate and up together, no dropout on expert adapters.
void check_expert_targets(const LoraLayout& lay) {
  LOOM_CHECK(lay.targeted[kGate] == lay.targeted[kUp], "LoRA targets ", lay.targeted[kGate] ? "gate_proj" : "up_proj",
             " without ", lay.targeted[kGate] ? "up_proj" : "gate_proj", ": on the experts of a mixture-of-experts "
             "model they are one fused weight, adapted together (PEFT 0.21.2 refuses one alone); target both or "
             "neither");
  const bool experts = lay.targeted[kGate] || lay.targeted[kDown];
  LOOM_CHECK(!experts || lay.dropout == 0, "lora.dropout = ", lay.dropout, " with expert targets (gate_proj, up_proj, "
             "down_proj) of a mixture-of-experts model: PEFT 0.21.2's expert adapters (ParamWrapper) do not support "
             "dropout; set lora.dropout: 0 or adapt the attention only");
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
  lay.arch = m.arch;
  lay.scale = lora.rslora ? lora.alpha / std::sqrt(float(lora.r)) : lora.alpha / float(lora.r);
  lay.targeted = targeted_set(lora.targets);
  if (m.is_moe()) check_expert_targets(lay);
  // PEFT's rank_pattern / alpha_pattern on gate_up_proj: rank 2R, alpha 2·alpha.
  const float gate_up_scale = lora.rslora ? 2 * lora.alpha / std::sqrt(2.f * float(lora.r)) : lay.scale;
  auto place = [&](LoraSlot& s, int in, int out, int r, float scale) {
    s.enabled = true;
    s.in = in;
    s.out = out;
    s.r = r;
    s.scale = scale;
    s.a_offset = lay.total;
    lay.total += int64_t(r) * in;
    s.b_offset = lay.total;
    lay.total += int64_t(out) * r;
  };
  lay.layers.resize(m.L);
  lay.experts.resize(m.L);
  for (int l = 0; l < m.L; ++l) {
    for (int t = 0; t < kNumTargets; ++t) {
      // An MoE model's MLP targets are its experts; its dense MLP layers are not adapted (lora.h).
      if (!lay.targeted[t] || (m.is_moe() && t >= kGate)) continue;
      const auto [in, out] = projection_shape(m, LoraTarget(t));
      place(lay.layers[l][t], in, out, lay.R, lay.scale);
    }
    if (!m.is_moe_layer(l)) continue;
    lay.experts[l].resize(size_t(m.num_experts));
    for (auto& e : lay.experts[l]) {
      if (lay.targeted[kGate]) place(e[kExpertGateUp], m.C, 2 * m.expert_F, 2 * lay.R, gate_up_scale);
      if (lay.targeted[kDown]) place(e[kExpertDown], m.expert_F, m.C, lay.R, lay.scale);
    }
  }
  return lay;
}

namespace {

// Every enabled slot of layer l: the dense ones, then the experts'.
template <class F>
void for_each_slot(const LoraLayout& lay, size_t l, F&& f) {
  for (const LoraSlot& s : lay.layers[l])
    if (s.enabled) f(s);
  for (const auto& expert : lay.experts[l])
    for (const LoraSlot& s : expert)
      if (s.enabled) f(s);
}

}  // namespace

std::vector<size_t> lora_layer_bounds(const LoraLayout& lay) {
  std::vector<size_t> b(lay.layers.size() + 1, size_t(lay.total));
  for (size_t l = lay.layers.size(); l-- > 0;) {
    b[l] = b[l + 1];
    for_each_slot(lay, l, [&](const LoraSlot& s) { b[l] = std::min(b[l], size_t(s.a_offset)); });
  }
  return b;
}

std::vector<float> lora_init(const LoraLayout& lay, uint64_t seed) {
  std::vector<float> p(lay.total, 0.f);
  auto init_a = [&](const LoraSlot& s, uint64_t stream) {
    const float bound = 1.f / std::sqrt(float(s.in));
    for (int64_t i = 0; i < int64_t(s.r) * s.in; ++i) p[s.a_offset + i] = bound * random_symmetric(seed, stream, i);
  };
  for (size_t l = 0; l < lay.layers.size(); ++l) {
    for (int t = 0; t < kNumTargets; ++t)
      if (lay.layers[l][t].enabled) init_a(lay.layers[l][t], 1000 + l * kNumTargets + t);
    // Experts: streams of their own above 2^33 (PEFT's A (E·r, in) has fan-in `in` too: the same bound).
    for (size_t e = 0; e < lay.experts[l].size(); ++e)
      for (int t = 0; t < kNumExpertTargets; ++t)
        if (lay.experts[l][e][t].enabled)
          init_a(lay.experts[l][e][t],
                 (uint64_t(1) << 33) + (uint64_t(l) * lay.experts[l].size() + e) * kNumExpertTargets + uint64_t(t));
  }
  return p;
}

namespace {

// PEFT's fused tensors of one layer's expert adapters from the per-expert slots: A (E·r, in)
// expert-major, B (out, r·E) rank-major (lora.h).
std::pair<std::vector<float>, std::vector<float>> fused_expert_tensors(const LoraLayout& lay, int l, ExpertTarget t,
                                                                       const float* params) {
  const auto& experts = lay.experts[size_t(l)];
  const int64_t E = int64_t(experts.size());
  const LoraSlot& s0 = experts[0][t];
  std::vector<float> a(size_t(E * s0.r * s0.in)), b(size_t(int64_t(s0.out) * s0.r * E));
  for (int64_t e = 0; e < E; ++e) {
    const LoraSlot& s = experts[size_t(e)][t];
    std::copy(params + s.a_offset, params + s.a_offset + int64_t(s.r) * s.in, a.begin() + e * s.r * s.in);
    for (int64_t o = 0; o < s.out; ++o)
      for (int64_t j = 0; j < s.r; ++j) b[size_t(o * s.r * E + j * E + e)] = params[s.b_offset + o * s.r + j];
  }
  return {std::move(a), std::move(b)};
}

}  // namespace

void save_peft_adapter(const std::string& dir, const LoraLayout& lay, const std::vector<float>& params,
                       const std::string& base_model) {
  std::filesystem::create_directories(dir);
  // The fused expert tensors, alive until written (a moved vector keeps its buffer, so growing `fused`
  // leaves the pointers in `tensors` valid).
  std::vector<std::vector<float>> fused;
  std::vector<TensorToWrite> tensors;
  for (size_t l = 0; l < lay.layers.size(); ++l) {
    for (int t = 0; t < kNumTargets; ++t) {
      const LoraSlot& s = lay.layers[l][t];
      if (!s.enabled) continue;
      tensors.push_back({peft_key(int(l), LoraTarget(t), 'A'), DType::F32, {lay.R, s.in}, &params[s.a_offset]});
      tensors.push_back({peft_key(int(l), LoraTarget(t), 'B'), DType::F32, {s.out, lay.R}, &params[s.b_offset]});
    }
    if (lay.experts[l].empty()) continue;
    for (int t = 0; t < kNumExpertTargets; ++t) {
      const LoraSlot& s = lay.experts[l][0][t];
      if (!s.enabled) continue;
      const int64_t E = int64_t(lay.experts[l].size());
      auto [a, b] = fused_expert_tensors(lay, int(l), ExpertTarget(t), params.data());
      fused.push_back(std::move(a));
      tensors.push_back({fused_expert_key(lay, int(l), ExpertTarget(t), 'A'), DType::F32, {E * s.r, s.in},
                         fused.back().data()});
      fused.push_back(std::move(b));
      tensors.push_back({fused_expert_key(lay, int(l), ExpertTarget(t), 'B'), DType::F32, {s.out, s.r * E},
                         fused.back().data()});
    }
  }
  write_safetensors(dir + "/adapter_model.safetensors", tensors);

  nlohmann::json targets = nlohmann::json::array(), expert_targets = nlohmann::json::array();
  const bool moe = std::any_of(lay.experts.begin(), lay.experts.end(), [](const auto& e) { return !e.empty(); });
  for (int t = 0; t < kNumTargets; ++t)
    if (lay.targeted[t] && !(moe && t >= kGate)) targets.push_back(kLoraTargetNames[t]);
  // An MoE model's expert adapters as PEFT 0.21.2 writes them (lora.h): target_parameters, sorted as
  // the fixtures' are, and gate_up_proj's doubled rank and alpha.
  nlohmann::json rank_pattern = nlohmann::json::object(), alpha_pattern = nlohmann::json::object();
  if (moe && lay.targeted[kDown]) expert_targets.push_back("down_proj");
  if (moe && lay.targeted[kGate]) {
    expert_targets.push_back("gate_up_proj");
    rank_pattern[kGateUpPattern] = 2 * lay.R;
    alpha_pattern[kGateUpPattern] = 2 * lay.alpha;
  }
  // Keys sorted, as PEFT writes them; unlisted fields take PEFT's defaults on load.
  nlohmann::json cfg = {
      {"alpha_pattern", alpha_pattern},            {"base_model_name_or_path", base_model},
      {"bias", "none"},                            {"exclude_modules", nullptr},
      {"fan_in_fan_out", false},                   {"inference_mode", true},
      {"init_lora_weights", true},                 {"layers_pattern", nullptr},
      {"layers_to_transform", nullptr},            {"lora_alpha", lay.alpha},
      {"lora_bias", false},                        {"lora_dropout", lay.dropout},
      {"modules_to_save", nullptr},                {"peft_type", "LORA"},
      {"r", lay.R},                                {"rank_pattern", rank_pattern},
      {"revision", nullptr},                       {"target_modules", targets.empty() ? nlohmann::json() : targets},
      {"target_parameters", expert_targets.empty() ? nlohmann::json() : expert_targets},
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
  for (const char* key : {"layers_to_transform", "modules_to_save", "exclude_modules"})
    LOOM_CHECK(c.unused(key), c.where(key),
               " is not supported (adapters must cover every layer, with no extra trained modules)");
  const std::string bias = c.get_string("bias", "none");
  LOOM_CHECK(bias == "none", c.where("bias"), " = '", bias, "' is not supported (only \"none\")");
}

// A target_modules entry as a loom target: Mixtral's expert names read as gate_proj / up_proj / down_proj.
std::string loom_target_name(const std::string& name) {
  for (size_t i = 0; i < kMixtralExpertNames.size(); ++i)
    if (name == kMixtralExpertNames[i]) return kLoraTargetNames[kGate + i];
  return name;
}

std::vector<std::string> target_modules(const AdapterConfig& c) {
  if (!c.set("target_modules")) {
    LOOM_CHECK(c.set("target_parameters"), c.where("target_modules"),
               " is missing; list the adapted modules (e.g. [\"q_proj\", \"v_proj\"]) or \"all-linear\"");
    return {};
  }
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
    const std::string loom_name = loom_target_name(name.get<std::string>());
    LOOM_CHECK(std::find(kLoraTargetNames.begin(), kLoraTargetNames.end(), loom_name) != kLoraTargetNames.end() ||
                   loom_name == "all-linear",
               c.where("target_modules"), ": unknown module ", name.dump(),
               " (valid: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj (Mixtral w1 w3 w2), or all-linear)");
    names.push_back(loom_name);
  }
  return names;
}

// PEFT 0.21.2's expert targets (lora.h): target_parameters gate_up_proj -> gate_proj + up_proj,
// down_proj -> down_proj, checked against the rank_pattern / alpha_pattern PEFT writes beside them,
// the only per-module r / alpha loom takes.
std::vector<std::string> target_parameters(const AdapterConfig& c, int r, double alpha) {
  std::vector<std::string> names;
  bool gate_up = false;
  if (c.set("target_parameters")) {
    const nlohmann::json& tp = c.at("target_parameters");
    LOOM_CHECK(tp.is_array(), c.where("target_parameters"), ": expected a list of parameter names, found ", tp.dump());
    for (const nlohmann::json& name : tp) {
      LOOM_CHECK(name == "gate_up_proj" || name == "down_proj", c.where("target_parameters"), ": ", name.dump(),
                 " is not supported (only the experts' gate_up_proj and down_proj, as PEFT 0.21.2 writes them for "
                 "the gate_proj / up_proj / down_proj of a mixture-of-experts model)");
      if (name == "gate_up_proj") {
        gate_up = true;
        names.insert(names.end(), {"gate_proj", "up_proj"});
      } else {
        names.push_back("down_proj");
      }
    }
  }
  const char* const patterns[2] = {"rank_pattern", "alpha_pattern"};
  const double doubled[2] = {2.0 * r, 2 * alpha};
  for (int i = 0; i < 2; ++i) {
    const char* key = patterns[i];
    if (!gate_up) {
      LOOM_CHECK(c.unused(key), c.where(key), " (per-module r/alpha) is not supported; use one r and lora_alpha for "
                 "all modules");
      continue;
    }
    const nlohmann::json p = c.set(key) ? c.at(key) : nlohmann::json();
    LOOM_CHECK(p.is_object() && p.size() == 1 && p.contains(kGateUpPattern) && p[kGateUpPattern].is_number() &&
                   p[kGateUpPattern].get<double>() == doubled[i],
               c.where(key), " must be {\"", kGateUpPattern, "\": ", doubled[i], "} beside target_parameters "
               "gate_up_proj (PEFT 0.21.2 doubles r and lora_alpha on the fused gate and up), found ",
               p.is_null() ? std::string("nothing") : p.dump());
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
  for (const std::string& name : target_parameters(c, s.r, alpha))
    if (std::find(s.targets.begin(), s.targets.end(), name) == s.targets.end()) s.targets.push_back(name);
  return s;
}

namespace {

// Whether any tensor of ck is a transformers-4 per-expert adapter (...experts.<N>.<proj>...).
bool per_expert_form(const Checkpoint& ck) {
  for (const std::string& name : ck.names()) {
    const size_t at = name.find(".experts.");
    if (at != std::string::npos && std::isdigit(static_cast<unsigned char>(name[at + 9]))) return true;
  }
  return false;
}

// Reads layer l's expert adapters from the fused form into p, noting the keys it reads in `used`.
void read_fused_experts(const Checkpoint& ck, const LoraLayout& lay, int l, std::vector<float>& p,
                        std::set<std::string>& used) {
  const auto& experts = lay.experts[size_t(l)];
  const int64_t E = int64_t(experts.size());
  for (int t = 0; t < kNumExpertTargets; ++t) {
    const LoraSlot& s0 = experts[0][t];
    if (!s0.enabled) continue;
    const std::string ka = fused_expert_key(lay, l, ExpertTarget(t), 'A'), kb = fused_expert_key(lay, l, ExpertTarget(t), 'B');
    used.insert({ka, kb});
    const std::vector<float> a = ck.read_f32(ka, {E * s0.r, s0.in}), b = ck.read_f32(kb, {s0.out, s0.r * E});
    for (int64_t e = 0; e < E; ++e) {
      const LoraSlot& s = experts[size_t(e)][t];
      std::copy(a.begin() + e * s.r * s.in, a.begin() + (e + 1) * s.r * s.in, p.begin() + s.a_offset);
      for (int64_t o = 0; o < s.out; ++o)
        for (int64_t j = 0; j < s.r; ++j) p[size_t(s.b_offset + o * s.r + j)] = b[size_t(o * s.r * E + j * E + e)];
    }
  }
}

// Reads layer l's expert adapters from the transformers-4 per-expert form into p, as PEFT 0.21.2
// converts it: gate_up's A = [A_gate; A_up] (2r, C), its B = [B_gate 0; 0 B_up] (2·FE, 2r).
void read_per_expert(const Checkpoint& ck, const LoraLayout& lay, int l, std::vector<float>& p,
                     std::set<std::string>& used) {
  const int64_t r = lay.R;
  for (size_t e = 0; e < lay.experts[size_t(l)].size(); ++e) {
    const auto& slots = lay.experts[size_t(l)][e];
    auto read = [&](int which, char ab, std::vector<int64_t> shape) {
      const std::string key = per_expert_key(lay, l, int(e), which, ab);
      used.insert(key);
      return ck.read_f32(key, shape);
    };
    if (slots[kExpertGateUp].enabled) {
      const LoraSlot& s = slots[kExpertGateUp];
      const int64_t C = s.in, FE = s.out / 2;
      for (int half = 0; half < 2; ++half) {  // gate, then up
        const std::vector<float> a = read(half, 'A', {r, C}), b = read(half, 'B', {FE, r});
        std::copy(a.begin(), a.end(), p.begin() + s.a_offset + half * r * C);
        for (int64_t o = 0; o < FE; ++o)
          for (int64_t j = 0; j < r; ++j) p[size_t(s.b_offset + (half * FE + o) * 2 * r + half * r + j)] = b[size_t(o * r + j)];
      }
    }
    if (slots[kExpertDown].enabled) {
      const LoraSlot& s = slots[kExpertDown];
      const std::vector<float> a = read(2, 'A', {r, s.in}), b = read(2, 'B', {s.out, r});
      std::copy(a.begin(), a.end(), p.begin() + s.a_offset);
      std::copy(b.begin(), b.end(), p.begin() + s.b_offset);
    }
  }
}

// The MLP adapters of a dense layer of an MoE model (PEFT 0.21.2 cannot make them, and drops them on
// load: lora.h): refused, naming the tensor, rather than trained or run without them.
void refuse_dense_mlp_of_moe(const Checkpoint& ck, const LoraLayout& lay, const std::string& file) {
  for (size_t l = 0; l < lay.layers.size(); ++l) {
    if (!lay.experts[l].empty()) continue;
    for (int t = kGate; t <= kDown; ++t)
      for (char ab : {'A', 'B'})
        LOOM_CHECK(!ck.has(peft_key(int(l), LoraTarget(t), ab)), file, ": tensor '", peft_key(int(l), LoraTarget(t), ab),
                   "' adapts the dense MLP of layer ", l, " of a mixture-of-experts model, which PEFT 0.21.2 cannot "
                   "adapt and drops on load; remove the layer's MLP adapters from the file");
  }
}

}  // namespace

std::vector<float> load_peft_adapter(const std::string& dir, const LoraLayout& lay) {
  const std::string cfg_path = dir + "/adapter_config.json";
  LoraOptions s = read_peft_lora_options(dir);
  LOOM_CHECK(s.r == lay.R, cfg_path, ": r = ", s.r, " but the run uses lora.r = ", lay.R);
  LOOM_CHECK(s.alpha == lay.alpha, cfg_path, ": lora_alpha = ", s.alpha, " but the run uses lora.alpha = ", lay.alpha);
  LOOM_CHECK(s.rslora == lay.rslora, cfg_path, ": use_rslora = ", s.rslora, " but the run uses lora.rslora = ", lay.rslora);
  LOOM_CHECK(targeted_set(s.targets) == lay.targeted, cfg_path, ": target_modules differ from lora.targets");

  const std::string file = dir + "/adapter_model.safetensors";
  Checkpoint ck = Checkpoint::open(file);
  const bool moe = std::any_of(lay.experts.begin(), lay.experts.end(), [](const auto& e) { return !e.empty(); });
  if (moe) refuse_dense_mlp_of_moe(ck, lay, file);
  std::vector<float> p(lay.total, 0.f);
  std::set<std::string> used;
  for (size_t l = 0; l < lay.layers.size(); ++l) {
    for (int t = 0; t < kNumTargets; ++t) {
      const LoraSlot& s2 = lay.layers[l][t];
      if (!s2.enabled) continue;
      const std::string ka = peft_key(int(l), LoraTarget(t), 'A'), kb = peft_key(int(l), LoraTarget(t), 'B');
      used.insert({ka, kb});
      auto a = ck.read_f32(ka, {lay.R, s2.in});
      auto b = ck.read_f32(kb, {s2.out, lay.R});
      std::copy(a.begin(), a.end(), p.begin() + s2.a_offset);
      std::copy(b.begin(), b.end(), p.begin() + s2.b_offset);
    }
    if (lay.experts[l].empty()) continue;
    if (per_expert_form(ck))
      read_per_expert(ck, lay, int(l), p, used);
    else
      read_fused_experts(ck, lay, int(l), p, used);
  }
  for (const std::string& name : ck.names())
    LOOM_CHECK(used.count(name), file, ": tensor '", name, "' is not an adapter of this model (", cfg_path,
               " targets ", lay.layers.size(), " layers × its target_modules", moe ? " and target_parameters" : "",
               "); is the adapter for another model?");
  return p;
}

void merge_lora_layer(LayerWeights& w, int l, const LoraLayout& layout, const float* lora) {
  for (int t = 0; t < kNumTargets; ++t) {
    const LoraSlot& s = layout.slot(l, LoraTarget(t));
    if (!s.enabled) continue;
    // W (out, in) += scale · B (out, R) · A (R, in)
    matmul_ref(projection(w, t)->data(), lora + s.b_offset, lora + s.a_offset, s.out, s.in, layout.R, false, false,
               layout.scale, 1.f);
  }
  if (layout.experts.empty()) return;
  for (size_t e = 0; e < layout.experts[size_t(l)].size(); ++e)
    for (int t = 0; t < kNumExpertTargets; ++t) {
      const LoraSlot& s = layout.experts[size_t(l)][e][t];
      if (!s.enabled) continue;
      std::vector<float>& stack = t == kExpertGateUp ? w.experts_gate_up : w.experts_down;
      matmul_ref(&stack[e * size_t(s.out) * size_t(s.in)], lora + s.b_offset, lora + s.a_offset, s.out, s.in, s.r,
                 false, false, s.scale, 1.f);
    }
}

}  // namespace loom
