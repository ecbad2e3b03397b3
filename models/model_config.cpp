// HF config.json -> ModelConfig for LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
// Qwen3ForCausalLM and the mixture-of-experts Qwen3MoeForCausalLM and MixtralForCausalLM (FORMATS.md
// §2; transformers models/*/configuration_*.py, modeling_rope_utils.py). Values come from the file; a
// missing key takes the transformers class default of its family:
//
//   key (missing)            llama   mistral  qwen2   qwen3   qwen3_moe  mixtral   (null)
//   head_dim                 C/H     C/H      C/H     128     C/H        C/H       as missing; qwen3_moe: refused
//   num_key_value_heads      H       8        32      32      4          8         H; MoE: refused
//   max_position_embeddings  2048    131072   32768   32768   32768      131072
//   bos / eos                1 / 2   1 / 2    none    none    none       1 / 2     none
//   sliding_window           -       4096     4096    4096    4096       none      no window
//   rms_norm_eps             1e-6    1e-6     1e-6    1e-6    1e-6       1e-5
//   rope_theta               10000   10000    10000   10000   10000      1e6
//   tie_word_embeddings false, hidden_act silu: all six.
// The MoE nulls: transformers 5's strict config classes refuse a null num_key_value_heads, and
// Qwen3MoeAttention takes a null head_dim as it is (getattr(config, "head_dim", C/H)) and fails.
//
// Biases: Qwen2 always has q/k/v biases; Llama, Qwen3 and Qwen3-MoE `attention_bias` adds q/k/v/o
// biases; Llama `mlp_bias` adds gate/up/down biases. Qwen3 and Qwen3-MoE always have q_norm/k_norm.
// Sliding window per layer: Mistral and Mixtral use `sliding_window` on every layer when it is
// non-null; Qwen2/3 only when `use_sliding_window`, on layers whose `layer_types` entry is
// "sliding_attention", or (no layer_types) on layers with index >= max_window_layers (default 28);
// Qwen3-MoE on every layer when `use_sliding_window` (Qwen3MoeConfig has neither layer_types nor
// max_window_layers: Qwen3MoeAttention passes config.sliding_window to every layer).
//
// Experts (Qwen3MoeConfig / MixtralConfig; modeling_qwen3_moe.py / modeling_mixtral.py):
//   key (missing)            qwen3_moe  mixtral
//   num_experts              128        8        both classes read num_experts and num_local_experts
//                                                (attribute_map; num_local_experts wins), and transformers 5
//                                                writes num_local_experts; Mixtral's published key
//   num_experts_per_tok      8          2
//   moe_intermediate_size    768        -        Mixtral's experts are intermediate_size wide
//   norm_topk_prob           false      -        MixtralTopKRouter renormalises the top K always
//   decoder_sparse_step      1          -        layer l is sparse when (l + 1) % step == 0 ...
//   mlp_only_layers          []         -        ... and l is not listed; Mixtral: every layer
//   router_aux_loss_coef     0.001      0.001
//   output_router_logits     false      false
//   router_jitter_noise      -          0        > 0 refused (random noise on the router input in training)
// RoPE: transformers v5 resolves `rope_scaling` when present (legacy form; type key `rope_type` or
// `type`), else `rope_parameters`; `rope_theta` inside the dict wins over the top-level one.
#include "models/model_config.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "ops/error.h"
#include "ops/files.h"

namespace loom {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr double kDefaultRopeTheta = 10000.0;  // RotaryEmbeddingConfigMixin.default_theta

struct Family {
  const char* arch;        // ModelConfig::arch
  const char* class_name;  // architectures[0]
  int V, C, F, L, H;
  int KVH;  // when the key is missing; 0 = H (null means H too, except in the MoE families: refused)
  int D;    // when head_dim is missing or null; 0 = C / H
  int max_position;
  int bos;               // -1 = none
  std::vector<int> eos;  // empty = none
  double rms_eps = 1e-6;
  double rope_theta = kDefaultRopeTheta;
  bool moe = false;  // a mixture of experts (read_experts)
};

// Class defaults of transformers' configuration_{llama,mistral,qwen2,qwen3,qwen3_moe,mixtral}.py.
const Family kFamilies[] = {
    {"llama", "LlamaForCausalLM", 32000, 4096, 11008, 32, 32, 0, 0, 2048, 1, {2}},
    {"mistral", "MistralForCausalLM", 32000, 4096, 14336, 32, 32, 8, 0, 4096 * 32, 1, {2}},
    {"qwen2", "Qwen2ForCausalLM", 151936, 4096, 22016, 32, 32, 32, 0, 32768, -1, {}},
    {"qwen3", "Qwen3ForCausalLM", 151936, 4096, 22016, 32, 32, 32, 128, 32768, -1, {}},
    {"qwen3_moe", "Qwen3MoeForCausalLM", 151936, 2048, 6144, 24, 32, 4, 0, 32768, -1, {}, 1e-6, kDefaultRopeTheta,
     true},
    {"mixtral", "MixtralForCausalLM", 32000, 4096, 14336, 32, 32, 8, 0, 4096 * 32, 1, {2}, 1e-5, 1e6, true},
};
constexpr int kDefaultSlidingWindow = 4096;   // MistralConfig / Qwen2Config / Qwen3Config / Qwen3MoeConfig
constexpr int kDefaultMaxWindowLayers = 28;   // Qwen2Config / Qwen3Config

const char* kSupported =
    "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM, "
    "MixtralForCausalLM";
const char* kModelTypes = "llama, mistral, qwen2, qwen3, qwen3_moe or mixtral";

// Typed access to one JSON object, with errors naming the file and the key.
class Keys {
 public:
  Keys(const json& obj, std::string file, std::string prefix = "")
      : obj_(obj), file_(std::move(file)), prefix_(std::move(prefix)) {}

  bool has(const char* key) const { return obj_.contains(key); }
  // Present with a non-null value.
  bool set(const char* key) const { return has(key) && !obj_.at(key).is_null(); }
  const json& at(const char* key) const { return obj_.at(key); }
  std::string where(const char* key) const { return cat(file_, ": ", prefix_, key); }

  std::optional<int> opt_int(const char* key) const {
    if (!set(key)) return std::nullopt;
    const json& v = obj_.at(key);
    bool integral = v.is_number_integer() || (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>());
    LOOM_CHECK(integral, where(key), ": expected an integer, found ", v.dump());
    double d = v.get<double>();
    LOOM_CHECK(std::fabs(d) < 2147483648.0, where(key), ": ", v.dump(), " is out of range");
    return int(d);
  }
  int get_int(const char* key, int fallback) const { return opt_int(key).value_or(fallback); }

  std::optional<double> opt_double(const char* key) const {
    if (!set(key)) return std::nullopt;
    const json& v = obj_.at(key);
    LOOM_CHECK(v.is_number(), where(key), ": expected a number, found ", v.dump());
    return v.get<double>();
  }
  double get_double(const char* key, double fallback) const { return opt_double(key).value_or(fallback); }
  double need_double(const char* key, const std::string& why) const {
    std::optional<double> v = opt_double(key);
    LOOM_CHECK(v, where(key), " is missing (", why, ")");
    return *v;
  }

  // A number that must be positive and finite also as a float (the kernels' precision).
  double positive(const char* key, double value) const {
    LOOM_CHECK(std::isfinite(value) && value > 0 && std::isfinite(float(value)) && float(value) > 0, where(key),
               " must be a positive finite number, found ", value);
    return value;
  }

  bool get_bool(const char* key, bool fallback) const {
    if (!set(key)) return fallback;
    const json& v = obj_.at(key);
    LOOM_CHECK(v.is_boolean(), where(key), ": expected true or false, found ", v.dump());
    return v.get<bool>();
  }

  std::optional<std::string> opt_string(const char* key) const {
    if (!set(key)) return std::nullopt;
    const json& v = obj_.at(key);
    LOOM_CHECK(v.is_string(), where(key), ": expected a string, found ", v.dump());
    return v.get<std::string>();
  }

  const std::string& file() const { return file_; }

 private:
  const json& obj_;
  std::string file_, prefix_;
};

const Family& find_family(const Keys& k) {
  if (k.set("architectures")) {
    const json& a = k.at("architectures");
    LOOM_CHECK(a.is_array() && !a.empty() && a[0].is_string(), k.where("architectures"),
               ": expected a list of class names, found ", a.dump());
    const std::string name = a[0].get<std::string>();
    for (const Family& f : kFamilies)
      if (name == f.class_name) return f;
    fail(k.where("architectures"), ": \"", name, "\" is not supported; loom trains ", kSupported);
  }
  std::optional<std::string> type = k.opt_string("model_type");
  LOOM_CHECK(type, k.file(), ": neither architectures nor model_type is set; expected one of ", kSupported);
  for (const Family& f : kFamilies)
    if (*type == f.arch) return f;
  fail(k.where("model_type"), ": \"", *type, "\" is not supported; expected ", kModelTypes);
}

// The RoPE dict transformers would resolve, or nullptr for plain default RoPE.
const json* rope_dict(const Keys& k, std::string* name) {
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!k.set(key)) continue;
    const json& d = k.at(key);
    LOOM_CHECK(d.is_object(), k.where(key), ": expected an object, found ", d.dump());
    if (d.empty()) continue;
    *name = key;
    return &d;
  }
  return nullptr;
}

RopeParams resolve_rope(const Keys& k, int max_position, double default_theta) {
  RopeParams r;
  std::string name;
  const json* dict = rope_dict(k, &name);
  if (!dict || !Keys(*dict, k.file()).set("rope_theta"))
    r.theta = k.positive("rope_theta", k.get_double("rope_theta", default_theta));
  if (!dict) return r;
  Keys d(*dict, k.file(), name + ".");
  for (const char* layer_type : {"full_attention", "sliding_attention"})
    LOOM_CHECK(!d.has(layer_type), d.where(layer_type), ": per-layer-type RoPE parameters are not supported");
  if (d.set("rope_theta")) r.theta = d.positive("rope_theta", d.get_double("rope_theta", 0));
  const char* type_key = d.set("rope_type") ? "rope_type" : "type";
  r.type = d.opt_string(type_key).value_or("default");
  LOOM_CHECK(d.get_double("partial_rotary_factor", 1.0) == 1.0, d.where("partial_rotary_factor"),
             ": partial rotary embeddings are not supported (Llama, Mistral and Qwen rotate all of head_dim)");
  if (r.type == "default") return r;
  if (r.type == "linear") {
    r.factor = d.positive("factor", d.need_double("factor", "linear RoPE divides inv_freq by it"));
    return r;
  }
  LOOM_CHECK(r.type == "llama3", d.where(type_key), ": RoPE type \"", r.type,
             "\" is not supported; loom implements default, llama3 and linear (yarn, dynamic and longrope "
             "change attention scaling and are not implemented)");
  const std::string why = "required by llama3 RoPE";
  r.factor = d.positive("factor", d.need_double("factor", why));
  r.low_freq_factor = d.positive("low_freq_factor", d.need_double("low_freq_factor", why));
  r.high_freq_factor = d.positive("high_freq_factor", d.need_double("high_freq_factor", why));
  r.original_max_position = d.get_int("original_max_position_embeddings", max_position);
  LOOM_CHECK(r.original_max_position > 0, d.where("original_max_position_embeddings"), " must be positive, found ",
             r.original_max_position);
  LOOM_CHECK(r.high_freq_factor > r.low_freq_factor, d.where("high_freq_factor"), " (", r.high_freq_factor,
             ") must exceed low_freq_factor (", r.low_freq_factor, ")");
  return r;
}

int token_id(const Keys& k, const char* key, const json& id) {
  LOOM_CHECK(id.is_number_integer() && id.get<double>() >= 0 && id.get<double>() <= INT32_MAX, k.where(key),
             ": expected token ids (integers >= 0), found ", id.dump());
  return id.get<int>();
}

std::vector<int> token_ids(const Keys& k, const char* key, const std::vector<int>& fallback) {
  if (!k.has(key)) return fallback;
  const json& v = k.at(key);
  if (v.is_null()) return {};
  if (!v.is_array()) return {token_id(k, key, v)};
  std::vector<int> ids;
  for (const json& id : v) ids.push_back(token_id(k, key, id));
  return ids;
}

// Which layers of a Qwen2/3 model slide (use_sliding_window is true): those whose layer_types entry
// is "sliding_attention", or (no layer_types) those with index >= max_window_layers.
std::vector<bool> qwen_sliding_layers(const Keys& k, int L) {
  std::vector<bool> slides(size_t(L), false);
  if (k.set("layer_types")) {
    const json& types = k.at("layer_types");
    LOOM_CHECK(types.is_array() && int(types.size()) == L, k.where("layer_types"), ": expected a list of ", L,
               " entries (num_hidden_layers), found ", types.dump());
    for (int i = 0; i < L; ++i) {
      const json& t = types[size_t(i)];
      LOOM_CHECK(t == "sliding_attention" || t == "full_attention", k.where("layer_types"), "[", i,
                 "]: expected \"sliding_attention\" or \"full_attention\", found ", t.dump());
      slides[size_t(i)] = t == "sliding_attention";
    }
    return slides;
  }
  const int first = k.get_int("max_window_layers", kDefaultMaxWindowLayers);
  for (int i = std::max(first, 0); i < L; ++i) slides[size_t(i)] = true;
  return slides;
}

// Window per layer (0 = full causal attention). Keys are read only where transformers uses them:
// Qwen2Config/Qwen3Config/Qwen3MoeConfig set sliding_window to None when use_sliding_window is
// false, so any value there (0 included) loads, and max_window_layers matters only when the window
// is on. A null sliding_window means full causal attention; 0 or a negative W on a layer that slides
// would build the mask kv_idx > q_idx - W (masking_utils.sliding_window_overlay), which with
// causality leaves no key visible to any query: refused. LlamaConfig has no sliding_window: llama
// ignores the key, as transformers does. MixtralConfig's sliding_window defaults to None.
std::vector<int> resolve_windows(const Keys& k, const Family& fam, int L) {
  std::vector<int> window(size_t(L), 0);
  const std::string arch = fam.arch;
  if (arch == "llama") return window;
  if (arch == "mixtral" && !k.has("sliding_window")) return window;
  const bool use_flag = arch == "qwen2" || arch == "qwen3" || arch == "qwen3_moe";
  if (use_flag && !k.get_bool("use_sliding_window", false)) return window;
  if (k.has("sliding_window") && !k.set("sliding_window")) return window;  // explicit null: no window
  const bool per_layer = arch == "qwen2" || arch == "qwen3";
  const std::vector<bool> slides = per_layer ? qwen_sliding_layers(k, L) : std::vector<bool>(size_t(L), true);
  if (std::find(slides.begin(), slides.end(), true) == slides.end()) return window;
  const int W = k.get_int("sliding_window", kDefaultSlidingWindow);
  LOOM_CHECK(W > 0, k.where("sliding_window"), " must be a positive number of tokens or null (no window), found ",
             W);
  for (int i = 0; i < L; ++i)
    if (slides[size_t(i)]) window[size_t(i)] = W;
  return window;
}

// bitsandbytes 4-bit NF4 is the one pre-quantized format loom reads.
void read_quantization(const Keys& k, ModelConfig& c) {
  if (!k.set("quantization_config")) return;
  const json& q = k.at("quantization_config");
  LOOM_CHECK(q.is_object(), k.where("quantization_config"), ": expected an object, found ", q.dump());
  Keys b(q, k.file(), "quantization_config.");
  const std::string method = b.opt_string("quant_method").value_or("bitsandbytes");
  LOOM_CHECK(method == "bitsandbytes", b.where("quant_method"), ": \"", method,
             "\" is not supported; loom loads bf16/fp16/fp32 weights or bitsandbytes 4-bit NF4 checkpoints");
  LOOM_CHECK(!b.get_bool("load_in_8bit", false) && !b.get_bool("_load_in_8bit", false), b.where("load_in_8bit"),
             ": 8-bit (LLM.int8) checkpoints are not supported; use the bf16 checkpoint with quantization: nf4");
  LOOM_CHECK(b.get_bool("load_in_4bit", false) || b.get_bool("_load_in_4bit", false), b.where("load_in_4bit"),
             ": expected true (loom reads only 4-bit bitsandbytes checkpoints)");
  // BitsAndBytesConfig's default quant type is fp4.
  c.bnb_quant_type = b.opt_string("bnb_4bit_quant_type").value_or("fp4");
  LOOM_CHECK(c.bnb_quant_type == "nf4", b.where("bnb_4bit_quant_type"), ": \"", c.bnb_quant_type,
             "\" is not supported; loom reads NF4 only (quantize the bf16 checkpoint with quantization: nf4)");
  c.bnb_4bit = true;
  c.bnb_double_quant = b.get_bool("bnb_4bit_use_double_quant", false);
}

// Layers are bookkeeping loom sizes from the config alone (windows, LoRA slots, weight groups)
// before any checkpoint is compared with it. The deepest published decoders have ~126 layers.
constexpr int kMaxLayers = 1 << 16;

// Every size positive and consistent, checked before anything is allocated from it.
void check_sizes(const ModelConfig& c, const Keys& k) {
  const std::pair<const char*, int> sizes[] = {{"vocab_size", c.V},          {"hidden_size", c.C},
                                               {"intermediate_size", c.F},   {"num_hidden_layers", c.L},
                                               {"num_attention_heads", c.H}, {"num_key_value_heads", c.KVH},
                                               {"head_dim", c.D},            {"max_position_embeddings", c.max_position}};
  for (const auto& [key, v] : sizes) LOOM_CHECK(v > 0, k.where(key), " must be positive, found ", v);
  LOOM_CHECK(c.L <= kMaxLayers, k.where("num_hidden_layers"), " = ", c.L, " is more than the ", kMaxLayers,
             " layers loom supports; is it the model's own config.json?");
  LOOM_CHECK(c.H % c.KVH == 0, k.where("num_key_value_heads"), " (", c.KVH, ") must divide num_attention_heads (",
             c.H, ")");
  LOOM_CHECK(c.D % 2 == 0, k.where("head_dim"), " (", c.D, ") must be even for rotary embeddings");
  // Projection widths H·D and KVH·D are ints throughout (projection_shape, kernel arguments).
  LOOM_CHECK(int64_t(c.H) * c.D <= INT32_MAX, k.where("num_attention_heads"), " × head_dim (", c.H, " × ", c.D,
             ") overflows 32 bits; is it the model's own config.json?");
}

// An integer key of an MoE config class: transformers 5's strict dataclasses refuse a null there.
int moe_int(const Keys& k, const char* key, int fallback) {
  LOOM_CHECK(!k.has(key) || k.set(key), k.where(key), ": expected an integer, found null");
  return k.get_int(key, fallback);
}

// Which layers of a Qwen3-MoE model are sparse (Qwen3MoeDecoderLayer): those with (l + 1) a
// multiple of decoder_sparse_step that mlp_only_layers does not list. transformers divides by the
// step (0 raises ZeroDivisionError) and ignores list entries that name no layer: so does loom.
std::vector<bool> qwen_moe_layers(const Keys& k, int L) {
  const int step = moe_int(k, "decoder_sparse_step", 1);
  LOOM_CHECK(step >= 1, k.where("decoder_sparse_step"),
             " must be >= 1 (layer l is sparse when l + 1 is a multiple of it), found ", step);
  std::vector<bool> sparse(static_cast<size_t>(L));
  for (int l = 0; l < L; ++l) sparse[size_t(l)] = (l + 1) % step == 0;
  if (!k.set("mlp_only_layers")) return sparse;
  const json& dense = k.at("mlp_only_layers");
  LOOM_CHECK(dense.is_array(), k.where("mlp_only_layers"), ": expected a list of layer indices, found ", dense.dump());
  for (size_t i = 0; i < dense.size(); ++i) {
    LOOM_CHECK(dense[i].is_number_integer(), k.where("mlp_only_layers"), "[", i, "]: expected a layer index, found ",
               dense[i].dump());
    const double l = dense[i].get<double>();
    if (l >= 0 && l < L) sparse[size_t(l)] = false;
  }
  return sparse;
}

// Experts one model may have: bookkeeping (router widths, per-expert LoRA slots) is sized by it before
// a checkpoint is compared with the config; published MoE decoders have up to 512.
constexpr int kMaxExperts = 1 << 16;

// The expert keys of Qwen3MoeConfig / MixtralConfig (the table above).
void read_experts(const Keys& k, const Family& fam, ModelConfig& c) {
  const bool qwen = std::string(fam.arch) == "qwen3_moe";
  const char* experts_key = k.has("num_local_experts") ? "num_local_experts" : "num_experts";
  c.num_experts = moe_int(k, experts_key, qwen ? 128 : 8);
  c.experts_per_token = moe_int(k, "num_experts_per_tok", qwen ? 8 : 2);
  c.expert_F = qwen ? moe_int(k, "moe_intermediate_size", 768) : c.F;
  LOOM_CHECK(c.num_experts > 0, k.where(experts_key), " must be positive, found ", c.num_experts,
             qwen ? " (a Qwen3-MoE model without experts is a dense Qwen3: use Qwen3ForCausalLM)" : "");
  LOOM_CHECK(c.num_experts <= kMaxExperts, k.where(experts_key), " = ", c.num_experts, " is more than the ", kMaxExperts,
             " experts loom supports; is it the model's own config.json?");
  LOOM_CHECK(c.experts_per_token >= 1 && c.experts_per_token <= c.num_experts, k.where("num_experts_per_tok"), " (",
             c.experts_per_token, ") must be between 1 and the number of experts (", c.num_experts, ")");
  LOOM_CHECK(c.expert_F > 0, k.where("moe_intermediate_size"), " must be positive, found ", c.expert_F);
  c.norm_topk_prob = !qwen || k.get_bool("norm_topk_prob", false);
  c.router_aux_loss_coef = k.get_double("router_aux_loss_coef", 0.001);
  LOOM_CHECK(std::isfinite(c.router_aux_loss_coef) && c.router_aux_loss_coef >= 0, k.where("router_aux_loss_coef"),
             " must be a finite number >= 0, found ", c.router_aux_loss_coef);
  c.output_router_logits = k.get_bool("output_router_logits", false);
  c.moe_layers = qwen ? qwen_moe_layers(k, c.L) : std::vector<bool>(size_t(c.L), true);
  // MixtralSparseMoeBlock multiplies the router's input by uniform noise in [1 - j, 1 + j] in
  // training mode when j > 0; a run would then depend on random numbers loom does not draw.
  if (qwen) return;
  const double jitter = k.get_double("router_jitter_noise", 0.0);
  LOOM_CHECK(!(jitter > 0), k.where("router_jitter_noise"), " = ", jitter,
             ": transformers multiplies the router's input by random noise in training when it is > 0, which loom "
             "does not implement; set it to 0 (the published Mixtral models do not set it)");
}

ModelConfig parse_config(const json& j, const std::string& file) {
  LOOM_CHECK(j.is_object(), file, ": expected a JSON object, found ", j.type_name());
  Keys k(j, file);
  const Family& fam = find_family(k);
  ModelConfig c;
  c.arch = fam.arch;
  c.V = k.get_int("vocab_size", fam.V);
  c.C = k.get_int("hidden_size", fam.C);
  c.F = k.get_int("intermediate_size", fam.F);
  c.L = k.get_int("num_hidden_layers", fam.L);
  c.H = k.get_int("num_attention_heads", fam.H);
  LOOM_CHECK(!fam.moe || !k.has("num_key_value_heads") || k.set("num_key_value_heads"), k.where("num_key_value_heads"),
             ": expected an integer, found null (transformers 5 refuses a null here for ", fam.class_name, ")");
  LOOM_CHECK(std::string(fam.arch) != "qwen3_moe" || !k.has("head_dim") || k.set("head_dim"), k.where("head_dim"),
             ": expected an integer, found null (Qwen3MoeAttention takes it as it is and fails; remove the key for "
             "hidden_size / num_attention_heads)");
  c.KVH = k.has("num_key_value_heads") ? k.get_int("num_key_value_heads", c.H) : (fam.KVH ? fam.KVH : c.H);
  if (k.set("head_dim")) {
    c.D = k.get_int("head_dim", 0);
  } else if (fam.D) {
    c.D = fam.D;
  } else {
    LOOM_CHECK(c.H > 0 && c.C % c.H == 0, k.where("num_attention_heads"), " (", c.H, ") must divide hidden_size (",
               c.C, ") when head_dim is absent");
    c.D = c.C / c.H;
  }
  c.max_position = k.get_int("max_position_embeddings", fam.max_position);
  check_sizes(c, k);
  c.initializer_range = k.get_double("initializer_range", 0.02);
  LOOM_CHECK(c.initializer_range >= 0, k.where("initializer_range"), " must be >= 0, found ", c.initializer_range);
  c.rms_eps = float(k.positive("rms_norm_eps", k.get_double("rms_norm_eps", fam.rms_eps)));
  c.tie_embeddings = k.get_bool("tie_word_embeddings", false);
  const std::string act = k.opt_string("hidden_act").value_or("silu");
  LOOM_CHECK(act == "silu", k.where("hidden_act"), ": \"", act, "\" is not supported; loom's MLP is SwiGLU (silu)");

  const std::string arch = fam.arch;
  const bool attention_bias =
      (arch == "llama" || arch == "qwen3" || arch == "qwen3_moe") && k.get_bool("attention_bias", false);
  c.qkv_bias = arch == "qwen2" || attention_bias;
  c.o_bias = attention_bias;
  c.mlp_bias = arch == "llama" && k.get_bool("mlp_bias", false);
  c.qk_norm = arch == "qwen3" || arch == "qwen3_moe";
  if (fam.moe) read_experts(k, fam, c);

  c.window = resolve_windows(k, fam, c.L);
  c.rope = resolve_rope(k, c.max_position, fam.rope_theta);
  c.torch_dtype = k.opt_string("dtype").value_or(k.opt_string("torch_dtype").value_or(""));
  c.eos_ids = token_ids(k, "eos_token_id", fam.eos);
  std::vector<int> bos = token_ids(k, "bos_token_id", fam.bos >= 0 ? std::vector<int>{fam.bos} : std::vector<int>{});
  LOOM_CHECK(bos.size() <= 1, k.where("bos_token_id"), ": expected one id, found ", bos.size());
  c.bos_id = bos.empty() ? -1 : bos[0];
  read_quantization(k, c);
  return c;
}

const Family& family_of(const std::string& arch) {
  for (const Family& f : kFamilies)
    if (arch == f.arch) return f;
  fail("unknown architecture \"", arch, "\"; expected ", kModelTypes);
}

// The shortest decimal that reads back as the same float, so 1e-5f is written as 1e-05 and not
// as its exact double expansion 9.999999747378752e-06.
double shortest_double(float x) {
  char buf[32];
  for (int digits = 1; digits <= 9; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, double(x));
    if (std::strtof(buf, nullptr) == x) break;
  }
  return std::strtod(buf, nullptr);
}

json rope_json(const RopeParams& r) {
  if (r.type == "default") return nullptr;
  json d = {{"rope_type", r.type}, {"factor", r.factor}};
  if (r.type == "llama3") {
    d["low_freq_factor"] = r.low_freq_factor;
    d["high_freq_factor"] = r.high_freq_factor;
    d["original_max_position_embeddings"] = r.original_max_position;
  }
  return d;
}

json token_json(const std::vector<int>& ids) {
  if (ids.empty()) return nullptr;
  if (ids.size() == 1) return ids[0];
  return ids;
}

// Sliding-window keys of cfg.window in the family's own vocabulary.
void window_json(const ModelConfig& c, json& j) {
  int W = 0;
  for (int w : c.window) {
    LOOM_CHECK(w == 0 || W == 0 || w == W, "save_model_config: layers use different sliding windows (", W, " and ",
               w, "); config.json can express only one");
    if (w) W = w;
  }
  if (c.arch == "llama") {
    LOOM_CHECK(W == 0, "save_model_config: llama has no sliding window attention (window ", W, ")");
    return;
  }
  if (c.arch == "mistral" || c.arch == "mixtral" || c.arch == "qwen3_moe") {
    for (int w : c.window)
      LOOM_CHECK(w == W, "save_model_config: ", c.arch, " applies its sliding window to every layer or to none");
    if (c.arch == "qwen3_moe") j["use_sliding_window"] = W != 0;
    j["sliding_window"] = W ? json(W) : json(nullptr);
    return;
  }
  j["use_sliding_window"] = W != 0;
  j["sliding_window"] = W ? json(W) : json(nullptr);
  int first = c.L;
  json types = json::array();
  for (int i = c.L - 1; i >= 0; --i)
    if (c.window[size_t(i)]) first = i;
  for (int w : c.window) types.push_back(w ? "sliding_attention" : "full_attention");
  j["max_window_layers"] = first;
  if (W) j["layer_types"] = types;
}

void bias_json(const ModelConfig& c, json& j) {
  if (c.arch == "qwen2") {
    LOOM_CHECK(c.qkv_bias && !c.o_bias && !c.mlp_bias, "save_model_config: qwen2 always has q/k/v biases and no "
               "others (qkv_bias ", c.qkv_bias, ", o_bias ", c.o_bias, ", mlp_bias ", c.mlp_bias, ")");
    return;
  }
  if (c.arch == "mistral" || c.arch == "mixtral") {
    LOOM_CHECK(!c.qkv_bias && !c.o_bias && !c.mlp_bias, "save_model_config: ", c.arch, " has no biases");
    return;
  }
  LOOM_CHECK(c.qkv_bias == c.o_bias, "save_model_config: ", c.arch,
             " attention_bias adds q, k, v and o biases together (qkv_bias ", c.qkv_bias, ", o_bias ", c.o_bias, ")");
  j["attention_bias"] = c.qkv_bias;
  if (c.arch == "llama")
    j["mlp_bias"] = c.mlp_bias;
  else
    LOOM_CHECK(!c.mlp_bias, "save_model_config: ", c.arch, " has no MLP biases");
}

// The expert keys in the family's own vocabulary: any pattern of sparse layers is
// decoder_sparse_step 1 with the dense ones in mlp_only_layers.
void experts_json(const ModelConfig& c, const Family& fam, json& j) {
  LOOM_CHECK(c.is_moe() == fam.moe, "save_model_config: ", c.arch, fam.moe ? " needs" : " has no", " experts (",
             c.num_experts, ")");
  if (!fam.moe) return;
  LOOM_CHECK(int(c.moe_layers.size()) == c.L, "save_model_config: moe_layers has ", c.moe_layers.size(),
             " entries for ", c.L, " layers");
  j["num_experts_per_tok"] = c.experts_per_token;
  j["router_aux_loss_coef"] = c.router_aux_loss_coef;
  j["output_router_logits"] = c.output_router_logits;
  if (c.arch == "mixtral") {
    LOOM_CHECK(c.expert_F == c.F && c.norm_topk_prob &&
                   std::find(c.moe_layers.begin(), c.moe_layers.end(), false) == c.moe_layers.end(),
               "save_model_config: Mixtral's experts are intermediate_size wide, every layer is sparse and the "
               "router renormalises its top K");
    j["num_local_experts"] = c.num_experts;
    return;
  }
  j["num_experts"] = c.num_experts;
  j["moe_intermediate_size"] = c.expert_F;
  j["norm_topk_prob"] = c.norm_topk_prob;
  j["decoder_sparse_step"] = 1;
  json dense = json::array();
  for (int l = 0; l < c.L; ++l)
    if (!c.is_moe_layer(l)) dense.push_back(l);
  j["mlp_only_layers"] = dense;
}

json config_json(const ModelConfig& c) {
  const Family& fam = family_of(c.arch);
  LOOM_CHECK(c.qk_norm == (c.arch == "qwen3" || c.arch == "qwen3_moe"),
             "save_model_config: q/k norms exist in qwen3 and qwen3_moe and only there (arch ", c.arch, ", qk_norm ",
             c.qk_norm, ")");
  LOOM_CHECK(int(c.window.size()) == c.L, "save_model_config: window has ", c.window.size(), " entries for ", c.L,
             " layers");
  json j = {{"architectures", json::array({fam.class_name})},
            {"model_type", fam.arch},
            {"vocab_size", c.V},
            {"hidden_size", c.C},
            {"intermediate_size", c.F},
            {"num_hidden_layers", c.L},
            {"num_attention_heads", c.H},
            {"num_key_value_heads", c.KVH},
            {"head_dim", c.D},
            {"hidden_act", "silu"},
            {"max_position_embeddings", c.max_position},
            {"initializer_range", c.initializer_range},
            {"rms_norm_eps", shortest_double(c.rms_eps)},
            {"tie_word_embeddings", c.tie_embeddings},
            {"rope_theta", c.rope.theta},
            {"rope_scaling", rope_json(c.rope)},
            {"bos_token_id", c.bos_id >= 0 ? json(c.bos_id) : json(nullptr)},
            {"eos_token_id", token_json(c.eos_ids)}};
  if (!c.torch_dtype.empty()) j["torch_dtype"] = c.torch_dtype;
  bias_json(c, j);
  window_json(c, j);
  experts_json(c, fam, j);
  if (c.bnb_4bit)
    j["quantization_config"] = {{"quant_method", "bitsandbytes"},
                                {"load_in_4bit", true},
                                {"load_in_8bit", false},
                                {"bnb_4bit_quant_type", c.bnb_quant_type},
                                {"bnb_4bit_use_double_quant", c.bnb_double_quant},
                                {"bnb_4bit_compute_dtype", "bfloat16"},
                                {"bnb_4bit_quant_storage", "uint8"}};
  return j;
}

std::string config_file(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path, ec) ? (fs::path(path) / "config.json").string() : path;
}

ModelConfig make_preset(const std::string& arch, int V, int C, int F, int L, int H, int KVH, int D, bool tied,
                        float rms_eps, RopeParams rope, int max_position, int bos, std::vector<int> eos) {
  ModelConfig c;
  c.arch = arch;
  c.V = V, c.C = C, c.F = F, c.L = L, c.H = H, c.KVH = KVH, c.D = D;
  c.tie_embeddings = tied;
  c.rms_eps = rms_eps;
  c.qkv_bias = arch == "qwen2";
  c.qk_norm = arch == "qwen3" || arch == "qwen3_moe";
  c.window.assign(size_t(L), 0);
  c.rope = rope;
  c.max_position = max_position;
  c.torch_dtype = "bfloat16";
  c.bos_id = bos;
  c.eos_ids = std::move(eos);
  return c;
}

RopeParams plain_rope(double theta) {
  RopeParams r;
  r.theta = theta;
  return r;
}

// Llama 3.1 / 3.2 published rope_scaling: theta 500000, low 1, high 4, original context 8192.
RopeParams llama3_rope(double factor) {
  RopeParams r;
  r.type = "llama3";
  r.theta = 500000.0;
  r.factor = factor;
  r.low_freq_factor = 1.0;
  r.high_freq_factor = 4.0;
  r.original_max_position = 8192;
  return r;
}

// c with the experts of its published config.json, every layer sparse.
ModelConfig make_moe_preset(ModelConfig c, int E, int K, int FE, bool norm_topk_prob, double aux_loss_coef) {
  c.num_experts = E;
  c.experts_per_token = K;
  c.expert_F = FE;
  c.norm_topk_prob = norm_topk_prob;
  c.moe_layers.assign(size_t(c.L), true);
  c.router_aux_loss_coef = aux_loss_coef;
  return c;
}

// Matmul parameters of the layers, with `experts` of each sparse layer's experts counted.
double layer_matmul_params(const ModelConfig& m, double experts) {
  const double attention = double(m.C) * m.H * m.D      // q_proj
                           + 2.0 * m.C * m.KVH * m.D    // k_proj, v_proj
                           + double(m.H) * m.D * m.C;   // o_proj
  const double dense_mlp = 3.0 * m.C * m.F;             // gate, up, down
  const double sparse_mlp = experts * 3.0 * m.C * m.expert_F + double(m.num_experts) * m.C;  // + router
  double sum = 0;
  for (int l = 0; l < m.L; ++l) sum += attention + (m.is_moe_layer(l) ? sparse_mlp : dense_mlp);
  return sum;
}

}  // namespace

double ModelConfig::matmul_params() const {
  return layer_matmul_params(*this, num_experts) + double(V) * C;  // + lm_head (a matmul even when tied)
}

double ModelConfig::active_matmul_params() const {
  return layer_matmul_params(*this, experts_per_token) + double(V) * C;
}

double ModelConfig::total_params() const {
  const double per_layer = 2.0 * C                                      // input / post-attention norms
                           + (qkv_bias ? double(H + 2 * KVH) * D : 0)  // q/k/v biases
                           + (o_bias ? C : 0) + (mlp_bias ? 2.0 * F + C : 0) + (qk_norm ? 2.0 * D : 0);
  return matmul_params() + L * per_layer + (tie_embeddings ? 0 : double(V) * C) + C;  // + embedding, final norm
}

GenerationDefaults load_generation_defaults(const std::string& dir, const ModelConfig& cfg) {
  GenerationDefaults g;
  g.eos_ids = cfg.eos_ids;
  const std::string file = (fs::path(dir) / "generation_config.json").string();
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) return g;
  const json j = read_json_file(file, "generation config");
  LOOM_CHECK(j.is_object(), file, ": expected a JSON object, found ", j.type_name());
  const Keys k(j, file);
  if (k.has("eos_token_id")) g.eos_ids = token_ids(k, "eos_token_id", {});
  g.do_sample = k.get_bool("do_sample", g.do_sample);
  g.temperature = k.opt_double("temperature").value_or(g.temperature);
  g.top_p = k.opt_double("top_p").value_or(g.top_p);
  g.min_p = k.opt_double("min_p").value_or(g.min_p);
  g.repetition_penalty = k.opt_double("repetition_penalty").value_or(g.repetition_penalty);
  g.top_k = k.get_int("top_k", g.top_k);
  return g;
}

ModelConfig load_model_config(const std::string& path) {
  const std::string file = config_file(path);
  return parse_config(read_json_file(file, "model config"), file);
}

std::vector<std::string> preset_names() {
  return {"qwen3-0.6b", "llama-3.2-1b", "mistral-7b", "llama-3.1-8b", "qwen3-8b", "qwen3-30b-a3b", "mixtral-8x7b",
          "tiny"};
}

// BENCHMARK.md's preset table; the token ids and context lengths are those of the published models.
ModelConfig preset_model_config(const std::string& name) {
  if (name == "qwen3-0.6b")
    return make_preset("qwen3", 151936, 1024, 3072, 28, 16, 8, 128, true, 1e-6f, plain_rope(1e6), 40960, 151643,
                       {151645});
  if (name == "llama-3.2-1b")
    return make_preset("llama", 128256, 2048, 8192, 16, 32, 8, 64, true, 1e-5f, llama3_rope(32), 131072, 128000,
                       {128001});
  if (name == "mistral-7b")
    return make_preset("mistral", 32768, 4096, 14336, 32, 32, 8, 128, false, 1e-5f, plain_rope(1e6), 32768, 1, {2});  // v0.3
  if (name == "llama-3.1-8b")
    return make_preset("llama", 128256, 4096, 14336, 32, 32, 8, 128, false, 1e-5f, llama3_rope(8), 131072, 128000,
                       {128001});
  if (name == "qwen3-8b")
    return make_preset("qwen3", 151936, 4096, 12288, 36, 32, 8, 128, false, 1e-6f, plain_rope(1e6), 40960, 151643,
                       {151645});
  // Qwen/Qwen3-30B-A3B config.json: hidden 2048, intermediate 6144 (no dense layer uses it),
  // moe_intermediate 768, 48 layers, 32 heads, 4 kv heads, head_dim 128, 128 experts, 8 per token,
  // norm_topk_prob true, decoder_sparse_step 1, mlp_only_layers [], router_aux_loss_coef 0.001,
  // rope_theta 1e6, rms_norm_eps 1e-6, 40960 positions, bos 151643, eos 151645, untied; copied in
  // tests/model_config_moe_test.cpp. 30,532,122,624 parameters, 3,353,032,704 active per token.
  if (name == "qwen3-30b-a3b")
    return make_moe_preset(make_preset("qwen3_moe", 151936, 2048, 6144, 48, 32, 4, 128, false, 1e-6f, plain_rope(1e6),
                                       40960, 151643, {151645}),
                           128, 8, 768, true, 0.001);
  // mistralai/Mixtral-8x7B-v0.1 config.json: hidden 4096, intermediate 14336 (each expert), 32 layers,
  // 32 heads, 8 kv heads (head_dim 128 = 4096 / 32), 8 local experts, 2 per token,
  // router_aux_loss_coef 0.02, rope_theta 1e6, rms_norm_eps 1e-5, 32768 positions, sliding_window
  // null, bos 1, eos 2, untied; copied in tests/model_config_moe_test.cpp. 46,702,792,704
  // parameters (Mistral AI's "46.7B"), 12,879,925,248 active per token ("12.9B").
  if (name == "mixtral-8x7b")
    return make_moe_preset(make_preset("mixtral", 32000, 4096, 14336, 32, 32, 8, 128, false, 1e-5f, plain_rope(1e6),
                                       32768, 1, {2}),
                           8, 2, 14336, true, 0.02);
  // The demo model: vocabulary of data/demo/tokenizer.model (<s> 1, </s> 2); head_dim 64, the
  // smallest the GPU attention kernels take.
  // initializer_range 0.1 (≈ 1/√C) instead of HF's 0.02: with 0.02 the tied LM head of so small a
  // model cannot produce logits far from uniform, and the demo could not show learning.
  if (name == "tiny") {
    ModelConfig c = make_preset("llama", 512, 128, 352, 4, 2, 1, 64, true, 1e-5f, plain_rope(1e4), 2048, 1, {2});
    c.initializer_range = 0.1;
    return c;
  }
  std::string valid;
  for (const std::string& n : preset_names()) valid += (valid.empty() ? "" : ", ") + n;
  fail("unknown model preset \"", name, "\"; valid presets: ", valid);
}

void save_model_config(const ModelConfig& cfg, const std::string& path) {
  const std::string file = config_file(path);
  const std::string text = config_json(cfg).dump(2) + "\n";
  const std::string tmp = file + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    out << text;
    LOOM_CHECK(out.flush(), "cannot write ", tmp, " (is the folder writable?)");
  }
  LOOM_CHECK(std::rename(tmp.c_str(), file.c_str()) == 0, "cannot move ", tmp, " to ", file);
}

}  // namespace loom
