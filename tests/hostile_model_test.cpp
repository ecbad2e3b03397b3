// Hostile model folders (issue #9): config.json, safetensors files, sharded indexes and PEFT
// adapters, each mutated in one way by code from the tiny HF fixtures (tests/fixtures/hf). Every
// case states its exact outcome: a loom::Error naming the file and the key or tensor, or
// acceptance for valid near-misses (unknown HF keys, null where transformers allows null, an
// adapter of all-linear, a tied head stored twice, ...). Cases call the library as build/score and
// build/train do; HostileModelCli runs the binaries themselves for the end-to-end path.
#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "models/lora.h"
#include "models/model_config.h"
#include "models/model_source.h"
#include "models/safetensors.h"
#include "models/weights.h"
#include "tests/hostile.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;
using nlohmann::ordered_json;

namespace loom::test {
namespace {

using Expect = std::vector<std::string>;
const Expect kAccepted;

// ---------------------------------------------------------------------------------------------
// Fixture folders and file surgery

std::string hf_fixture(const std::string& arch) { return fixtures_dir() + "/hf/" + arch; }

// Copies tests/fixtures/hf/<arch>/<part> (model or adapter) into dir/<part>; returns that path.
std::string copy_fixture(const std::string& arch, const std::string& part, const std::string& dir) {
  fs::copy(hf_fixture(arch) + "/" + part, dir + "/" + part, fs::copy_options::recursive);
  return dir + "/" + part;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

// Applies edit to the JSON file at path (keys keep their order).
void edit_json(const std::string& path, const std::function<void(ordered_json&)>& edit) {
  ordered_json j = ordered_json::parse(read_bytes(path));
  edit(j);
  write_bytes(path, j.dump(2));
}

// Replaces a file by something that is not a regular file (or by a FIFO: make_fifo).
void make_folder(const std::string& path) {
  fs::remove_all(path);
  fs::create_directories(path);
}
void make_dev_zero_link(const std::string& path) {
  fs::remove_all(path);
  fs::create_symlink("/dev/zero", path);
}

// A safetensors file as its header (order kept) and data buffer, for edits of single fields.
struct RawSafetensors {
  ordered_json header;
  std::string data;

  static RawSafetensors read(const std::string& path) {
    const std::string bytes = read_bytes(path);
    uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    return {ordered_json::parse(bytes.substr(8, n)), bytes.substr(8 + n)};
  }
  void write(const std::string& path, const std::string& header_text) const {
    uint64_t n = header_text.size();
    std::string bytes(8, '\0');
    std::memcpy(bytes.data(), &n, 8);
    write_bytes(path, bytes + header_text + data);
  }
  void write(const std::string& path) const { write(path, header.dump()); }

  // Overwrites element `index` (row-major) of tensor `name` with the bits of `value` in its dtype.
  void poke(const std::string& name, int64_t index, double value) {
    const ordered_json& t = header.at(name);
    const std::string dtype = t.at("dtype");
    const size_t at = t.at("data_offsets")[0].get<size_t>();
    const float f = float(value);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    if (dtype == "F32") {
      std::memcpy(&data[at + size_t(index) * 4], &bits, 4);
    } else if (dtype == "BF16") {
      const uint16_t b = uint16_t(bits >> 16);  // NaN and ±inf survive the truncation
      std::memcpy(&data[at + size_t(index) * 2], &b, 2);
    } else {
      throw std::runtime_error("poke: dtype " + dtype);
    }
  }
};

// Rewrites a safetensors file through write_safetensors after `edit` changes its tensor list.
struct StoredCopy {
  std::string name, dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};
void rewrite_tensors(const std::string& path, const std::function<void(std::vector<StoredCopy>&)>& edit) {
  std::vector<StoredCopy> tensors;
  {
    const Checkpoint ck = Checkpoint::open(path);
    for (const std::string& n : ck.names()) {
      const TensorView& v = ck.get(n);
      tensors.push_back({n, v.dtype_str, v.shape, std::string(reinterpret_cast<const char*>(v.data), v.nbytes)});
    }
  }
  edit(tensors);
  const std::pair<const char*, DType> dtypes[] = {
      {"F32", DType::F32}, {"BF16", DType::BF16}, {"F16", DType::F16}, {"U8", DType::U8}, {"I32", DType::I32}};
  std::vector<TensorToWrite> out;
  for (const StoredCopy& t : tensors) {
    DType d = DType::OTHER;
    for (const auto& [name, type] : dtypes)
      if (t.dtype == name) d = type;
    out.push_back({t.name, d, t.shape, t.bytes.data()});
  }
  write_safetensors(path, out);
}

StoredCopy& find_tensor(std::vector<StoredCopy>& tensors, const std::string& name) {
  for (StoredCopy& t : tensors)
    if (t.name == name) return t;
  throw std::runtime_error("test setup: no tensor " + name);
}

// What build/score and build/train do with a model folder before computing: the config, the
// checkpoint checked against it, every weight converted (and checked finite).
void load_model(const std::string& model_dir) {
  ModelOptions section;
  section.path = model_dir;
  const ModelConfig cfg = resolve_model_config(section);
  load_weights(model_dir, cfg);
}

// ---------------------------------------------------------------------------------------------
// config.json: every numeric key × the same eight values, then types, flags and whole-file damage

enum Mutation { kZero, kMinusOne, kIntMax, kHuge, kFraction, kString, kNull, kMissing, kNumMutations };
const char* const kMutationNames[kNumMutations] = {"zero",     "minus_one", "int_max", "huge",
                                                   "fraction", "string",    "null",    "missing"};

// The value a mutation writes; `huge` is past int32 for an integer key and past float for a float key.
std::optional<ordered_json> mutation_value(Mutation m, bool integer) {
  switch (m) {
    case kZero:
      return ordered_json(0);
    case kMinusOne:
      return ordered_json(-1);
    case kIntMax:
      return ordered_json(2147483647);
    case kHuge:
      return integer ? ordered_json(int64_t(1000000000000)) : ordered_json(1e300);
    case kFraction:
      return ordered_json(7.5);
    case kString:
      return ordered_json("64");
    case kNull:
      return ordered_json(nullptr);
    default:
      return std::nullopt;  // kMissing: the key is removed
  }
}

struct NumericKey {
  const char* arch;
  const char* pointer;  // JSON pointer into config.json, e.g. "/rope_parameters/factor"
  bool integer;
  std::array<Expect, kNumMutations> outcome;
  // Keys set before the mutation, so that the mutated key is read (e.g. use_sliding_window: true),
  // and the name the variant adds to the case names.
  ordered_json base = ordered_json::object();
  const char* variant = "";
};

// The key as loom's messages name it: "rope_parameters.factor".
std::string dotted(const std::string& pointer) {
  std::string k = pointer.substr(1);
  for (char& c : k)
    if (c == '/') c = '.';
  return k;
}

// Expected messages, each with the file and the key.
Expect positive(const std::string& key, const std::string& v) {
  return {cat("config.json: ", key, " must be positive, found ", v)};
}
Expect positive_number(const std::string& key, const std::string& v) {
  return {cat("config.json: ", key, " must be a positive finite number, found ", v)};
}
Expect not_integer(const std::string& key, const std::string& found) {
  return {cat("config.json: ", key, ": expected an integer, found ", found)};
}
Expect out_of_range(const std::string& key) { return {cat("config.json: ", key, ": 1000000000000 is out of range")}; }
Expect not_number(const std::string& key) { return {cat("config.json: ", key, ": expected a number, found \"64\"")}; }
Expect not_token(const std::string& key, const std::string& found) {
  return {cat("config.json: ", key, ": expected token ids (integers >= 0), found ", found)};
}
Expect missing(const std::string& key) { return {cat("config.json: ", key, " is missing")}; }
// A config that parses but describes other tensors than the checkpoint holds.
Expect mismatch(const std::string& tensor, const std::string& keys, const std::string& shape) {
  return {cat("tensor '", tensor, "'"), "model.safetensors", cat("config.json (", keys, ") makes it ", shape),
          "parameters"};
}

// An integer size of the llama fixture (C 64, F 96, L 2, H 4, KVH 2, D 64, V 64): zero and -1 are
// refused, 2^31-1 and null/missing give `big` and `by_default`, the rest are type or range errors.
NumericKey size_key(const char* pointer, Expect big, Expect by_default) {
  const std::string k = dotted(pointer);
  return {"llama",
          pointer,
          true,
          {positive(k, "0"), positive(k, "-1"), big, out_of_range(k), not_integer(k, "7.5"), not_integer(k, "\"64\""),
           by_default, by_default}};
}

std::vector<NumericKey> numeric_keys() {
  const char* embed = "model.embed_tokens.weight";
  const char* q = "model.layers.0.self_attn.q_proj.weight";
  const char* qkeys = "hidden_size, num_attention_heads, head_dim";
  std::vector<NumericKey> keys = {
      size_key("/vocab_size", mismatch(embed, "vocab_size, hidden_size", "[2147483647, 64]"),
               mismatch(embed, "vocab_size, hidden_size", "[32000, 64]")),
      size_key("/hidden_size", mismatch(embed, "vocab_size, hidden_size", "[64, 2147483647]"),
               mismatch(embed, "vocab_size, hidden_size", "[64, 4096]")),
      size_key("/intermediate_size",
               mismatch("model.layers.0.mlp.gate_proj.weight", "hidden_size, intermediate_size", "[2147483647, 64]"),
               mismatch("model.layers.0.mlp.gate_proj.weight", "hidden_size, intermediate_size", "[11008, 64]")),
      size_key("/num_hidden_layers", {"config.json: num_hidden_layers = 2147483647 is more than the 65536 layers"},
               {"tensor 'model.layers.2.input_layernorm.weight' not found",
                "num_hidden_layers is 32 but the checkpoint has 2 layers"}),
      size_key("/num_attention_heads",
               {"config.json: num_key_value_heads (2) must divide num_attention_heads (2147483647)"},
               mismatch(q, qkeys, "[2048, 64]")),
      size_key("/num_key_value_heads",
               {"config.json: num_key_value_heads (2147483647) must divide num_attention_heads (4)"},
               mismatch("model.layers.0.self_attn.k_proj.weight", "hidden_size, num_key_value_heads, head_dim",
                        "[256, 64]")),
      size_key("/head_dim", {"config.json: head_dim (2147483647) must be even"}, mismatch(q, qkeys, "[64, 64]")),
      size_key("/max_position_embeddings", kAccepted, kAccepted),
  };
  const std::string eps = "rms_norm_eps", init = "initializer_range", theta = "rope_parameters.rope_theta",
                    factor = "rope_parameters.factor", low = "rope_parameters.low_freq_factor",
                    high = "rope_parameters.high_freq_factor",
                    original = "rope_parameters.original_max_position_embeddings";
  const Expect below_high = {"config.json: rope_parameters.high_freq_factor (4) must exceed low_freq_factor"};
  keys.push_back({"llama",
                  "/rms_norm_eps",
                  false,
                  {positive_number(eps, "0"), positive_number(eps, "-1"), kAccepted, positive_number(eps, "1e+300"),
                   kAccepted, not_number(eps), kAccepted, kAccepted}});
  keys.push_back({"llama",
                  "/initializer_range",
                  false,
                  {kAccepted,
                   {"config.json: initializer_range must be >= 0, found -1"},
                   kAccepted,
                   kAccepted,
                   kAccepted,
                   not_number(init),
                   kAccepted,
                   kAccepted}});
  keys.push_back({"llama",
                  "/rope_parameters/rope_theta",
                  false,
                  {positive_number(theta, "0"), positive_number(theta, "-1"), kAccepted,
                   positive_number(theta, "1e+300"), kAccepted, not_number(theta), kAccepted, kAccepted}});
  keys.push_back(
      {"llama",
       "/rope_parameters/factor",
       false,
       {positive_number(factor, "0"), positive_number(factor, "-1"), kAccepted, positive_number(factor, "1e+300"),
        kAccepted, not_number(factor), missing(factor), missing(factor)}});
  keys.push_back({"llama",
                  "/rope_parameters/low_freq_factor",
                  false,
                  {positive_number(low, "0"), positive_number(low, "-1"), below_high, positive_number(low, "1e+300"),
                   below_high, not_number(low), missing(low), missing(low)}});
  keys.push_back({"llama",
                  "/rope_parameters/high_freq_factor",
                  false,
                  {positive_number(high, "0"), positive_number(high, "-1"), kAccepted, positive_number(high, "1e+300"),
                   kAccepted, not_number(high), missing(high), missing(high)}});
  keys.push_back({"llama",
                  "/rope_parameters/original_max_position_embeddings",
                  true,
                  {positive(original, "0"), positive(original, "-1"), kAccepted, out_of_range(original),
                   not_integer(original, "7.5"), not_integer(original, "\"64\""), kAccepted, kAccepted}});
  for (const char* id : {"/bos_token_id", "/eos_token_id"}) {
    const std::string k = dotted(id);
    keys.push_back({"llama",
                    id,
                    true,
                    {kAccepted, not_token(k, "-1"), kAccepted, not_token(k, "1000000000000"), not_token(k, "7.5"),
                     not_token(k, "\"64\""), kAccepted, kAccepted}});
  }
  const Expect window_zero = {
      "config.json: sliding_window must be a positive number of tokens or null (no window), "
      "found 0"};
  const Expect window_negative = {"config.json: sliding_window must be a positive number of tokens or null"};
  const std::array<Expect, kNumMutations> window = {
      window_zero, window_negative, kAccepted, out_of_range("sliding_window"), not_integer("sliding_window", "7.5"),
      not_integer("sliding_window", "\"64\""), kAccepted, kAccepted};
  const std::array<Expect, kNumMutations> all_accepted = {kAccepted, kAccepted, kAccepted, kAccepted,
                                                          kAccepted, kAccepted, kAccepted, kAccepted};
  // Mistral slides every layer by sliding_window. Qwen2 reads sliding_window and max_window_layers
  // only with use_sliding_window: true (the fixture's is false, and Qwen2Config then sets
  // sliding_window to None): anything loads there, as in transformers. With the window on, on every
  // layer from max_window_layers (layer_types removed), both are read and checked.
  keys.push_back({"mistral", "/sliding_window", true, window});
  keys.push_back({"qwen2", "/sliding_window", true, all_accepted});
  keys.push_back({"qwen2", "/max_window_layers", true, all_accepted});
  const ordered_json sliding = {{"use_sliding_window", true}, {"layer_types", nullptr}, {"max_window_layers", 0}};
  keys.push_back({"qwen2", "/sliding_window", true, window, sliding, "sliding_on"});
  keys.push_back({"qwen2",
                  "/max_window_layers",
                  true,
                  {kAccepted, kAccepted, kAccepted, out_of_range("max_window_layers"),
                   not_integer("max_window_layers", "7.5"), not_integer("max_window_layers", "\"64\""), kAccepted,
                   kAccepted},
                  {{"use_sliding_window", true}, {"layer_types", nullptr}, {"sliding_window", 16}},
                  "sliding_on"});
  // The window on, but no layer slides (layer_types all full_attention): the window is unused.
  keys.push_back({"qwen2", "/sliding_window", true, all_accepted, {{"use_sliding_window", true}}, "no_sliding_layer"});
  return keys;
}

// A gtest-safe name: "rope_parameters.factor" -> "rope_parameters_factor".
std::string safe(std::string s) {
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return s;
}

// Runs load_model on a copy of the fixture whose config.json went through `edit`.
std::function<void(const std::string&)> with_config(const std::string& arch, std::function<void(ordered_json&)> edit) {
  return [arch, edit](const std::string& dir) {
    const std::string model = copy_fixture(arch, "model", dir);
    edit_json(model + "/config.json", edit);
    load_model(model);
  };
}

// Runs load_model after `damage` replaced or rewrote the copied config.json.
std::function<void(const std::string&)> with_config_file(const std::string& arch,
                                                         std::function<void(const std::string&)> damage) {
  return [arch, damage](const std::string& dir) {
    const std::string model = copy_fixture(arch, "model", dir);
    damage(model + "/config.json");
    load_model(model);
  };
}

std::function<void(ordered_json&)> set_key(const std::string& pointer, std::optional<ordered_json> value) {
  return [pointer, value](ordered_json& j) {
    const ordered_json::json_pointer p(pointer);
    if (value)
      j[p] = *value;
    else
      j[p.parent_pointer()].erase(p.back());
  };
}

std::vector<HostileCase> config_cases() {
  std::vector<HostileCase> cases;
  for (const NumericKey& k : numeric_keys())
    for (int m = 0; m < kNumMutations; ++m) {
      const std::function<void(ordered_json&)> mutate = set_key(k.pointer, mutation_value(Mutation(m), k.integer));
      cases.push_back({cat(k.arch, *k.variant ? "_" : "", k.variant, "_", safe(dotted(k.pointer)), "_", kMutationNames[m]),
                       with_config(k.arch,
                                   [base = k.base, mutate](ordered_json& j) {
                                     for (const auto& [key, value] : base.items()) j[key] = value;
                                     mutate(j);
                                   }),
                       k.outcome[size_t(m)]});
    }

  // Defaults of other families, and sizes whose product overflows.
  cases.push_back({"mistral_num_key_value_heads_missing_takes_class_default_8",
                   with_config("mistral", set_key("/num_key_value_heads", std::nullopt)),
                   {"config.json: num_key_value_heads (8) must divide num_attention_heads (2)"}});
  cases.push_back(
      {"qwen3_head_dim_missing_takes_class_default_128", with_config("qwen3", set_key("/head_dim", std::nullopt)),
       mismatch("model.layers.0.self_attn.q_proj.weight", "hidden_size, num_attention_heads, head_dim", "[512, 64]")});
  cases.push_back({"llama_heads_times_head_dim_overflows_int32",
                   with_config("llama", set_key("/head_dim", 1 << 30)),
                   {"config.json: num_attention_heads × head_dim (4 × 1073741824) overflows 32 bits"}});
  cases.push_back({"llama_head_dim_odd",
                   with_config("llama", set_key("/head_dim", 63)),
                   {"config.json: head_dim (63) must be even"}});

  // Flags: wrong types, and values that disagree with the checkpoint.
  for (const char* flag : {"tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window"}) {
    const std::string arch = flag == std::string("use_sliding_window") ? "qwen2" : "llama";
    cases.push_back({cat(arch, "_", flag, "_string"),
                     with_config(arch, set_key(cat("/", flag), "yes")),
                     {cat("config.json: ", flag, ": expected true or false, found \"yes\"")}});
    cases.push_back({cat(arch, "_", flag, "_number"),
                     with_config(arch, set_key(cat("/", flag), 1)),
                     {cat("config.json: ", flag, ": expected true or false, found 1")}});
  }
  const Expect no_biases = {"holds 8 tensors the model does not use", "'model.layers.0.self_attn.k_proj.bias'",
                            "attention_bias"};
  cases.push_back({"llama_attention_bias_false_leaves_biases_unused",
                   with_config("llama", set_key("/attention_bias", false)), no_biases});
  cases.push_back({"llama_attention_bias_null_leaves_biases_unused",
                   with_config("llama", set_key("/attention_bias", nullptr)), no_biases});
  cases.push_back({"llama_mlp_bias_true_needs_biases",
                   with_config("llama", set_key("/mlp_bias", true)),
                   {"tensor 'model.layers.0.mlp.gate_proj.bias' not found", "mlp_bias"}});
  cases.push_back({"llama_tie_word_embeddings_true_with_own_head",
                   with_config("llama", set_key("/tie_word_embeddings", true)),
                   {"config.json sets tie_word_embeddings: true", "lm_head.weight different from"}});
  cases.push_back({"llama_tie_word_embeddings_null_is_false",
                   with_config("llama", set_key("/tie_word_embeddings", nullptr)), kAccepted});
  cases.push_back({"qwen3_tie_word_embeddings_false_needs_head",
                   with_config("qwen3", set_key("/tie_word_embeddings", false)),
                   {"tensor 'lm_head.weight' not found"}});
  cases.push_back({"llama_fewer_layers_than_checkpoint",
                   with_config("llama", set_key("/num_hidden_layers", 1)),
                   {"tensors the model does not use", "'model.layers.1.",
                    "num_hidden_layers is 1 but the checkpoint "
                    "has 2 layers"}});
  cases.push_back({"qwen2_use_sliding_window_true_with_null_window",
                   with_config("qwen2", set_key("/use_sliding_window", true)), kAccepted});

  // Other keys: architecture, activation, RoPE type, quantization, token id lists.
  cases.push_back({"llama_architecture_unknown",
                   with_config("llama", set_key("/architectures", ordered_json::array({"GPT2LMHeadModel"}))),
                   {"config.json: architectures", "\"GPT2LMHeadModel\" is not supported"}});
  cases.push_back({"llama_architectures_not_a_list",
                   with_config("llama", set_key("/architectures", 5)),
                   {"config.json: architectures: expected a list of class names, found 5"}});
  cases.push_back({"llama_hidden_act_gelu",
                   with_config("llama", set_key("/hidden_act", "gelu")),
                   {"config.json: hidden_act", "\"gelu\" is not supported"}});
  cases.push_back({"llama_rope_type_yarn",
                   with_config("llama", set_key("/rope_parameters/rope_type", "yarn")),
                   {"config.json: rope_parameters.rope_type", "\"yarn\" is not supported"}});
  cases.push_back({"llama_rope_parameters_not_an_object",
                   with_config("llama", set_key("/rope_parameters", "llama3")),
                   {"config.json: rope_parameters: expected an object"}});
  cases.push_back({"llama_quantization_gptq",
                   with_config("llama", set_key("/quantization_config", ordered_json{{"quant_method", "gptq"}})),
                   {"config.json: quantization_config.quant_method", "\"gptq\" is not supported"}});
  cases.push_back(
      {"llama_eos_list", with_config("llama", set_key("/eos_token_id", ordered_json::array({2, 3}))), kAccepted});
  cases.push_back({"llama_eos_list_with_string",
                   with_config("llama", set_key("/eos_token_id", ordered_json::array({2, "x"}))),
                   not_token("eos_token_id", "\"x\"")});
  cases.push_back({"llama_unknown_hf_keys",
                   with_config("llama",
                               [](ordered_json& j) {
                                 j["torchscript"] = false;
                                 j["some_future_key"] = {{"nested", {1, 2, {{"x", nullptr}}}}};
                                 j["pad_token_id"] = 0;
                               }),
                   kAccepted});
  cases.push_back({"llama_model_type_without_architectures",
                   with_config("llama", set_key("/architectures", std::nullopt)), kAccepted});

  // The file itself.
  cases.push_back({"config_json_is_a_folder",
                   with_config_file("llama", make_folder),
                   {"config.json", "is a folder; give a regular file"}});
  cases.push_back({"config_json_is_a_fifo", with_config_file("llama", make_fifo), {"config.json", "FIFO"}});
  cases.push_back(
      {"config_json_is_dev_zero", with_config_file("llama", make_dev_zero_link), {"config.json", "character device"}});
  cases.push_back({"config_json_missing",
                   with_config_file("llama", [](const std::string& p) { fs::remove(p); }),
                   {"config.json", "no such file"}});
  cases.push_back({"config_json_empty",
                   with_config_file("llama", [](const std::string& p) { write_bytes(p, ""); }),
                   {"config.json: invalid JSON"}});
  cases.push_back({"config_json_deep_arrays",
                   with_config_file("llama", [](const std::string& p) { write_bytes(p, nested_arrays(200000)); }),
                   {"config.json: JSON nested deeper than 64 levels"}});
  cases.push_back({"config_json_deep_value",
                   with_config("llama",
                               [](ordered_json& j) {
                                 // The top-level object and 64 arrays: 65 levels, one past the limit, in an
                                 // unknown key.
                                 ordered_json deep = ordered_json::array();
                                 for (int i = 0; i < 63; ++i) deep = ordered_json::array({deep});
                                 j["deep"] = deep;
                               }),
                   {"config.json: JSON nested deeper than 64 levels"}});
  cases.push_back({"config_json_deep_value_at_limit",
                   with_config("llama",
                               [](ordered_json& j) {
                                 // The top-level object and 63 arrays: 64 levels, the limit.
                                 ordered_json deep = ordered_json::array();
                                 for (int i = 0; i < 62; ++i) deep = ordered_json::array({deep});
                                 j["deep"] = deep;
                               }),
                   kAccepted});
  cases.push_back({"config_json_garbage_bytes",
                   with_config_file(
                       "llama", [](const std::string& p) { write_bytes(p, std::string("\x89PNG\r\n\x1a\n\0\0", 10)); }),
                   {"config.json: invalid JSON"}});
  cases.push_back({"config_json_truncated",
                   with_config_file("llama",
                                    [](const std::string& p) {
                                      const std::string text = read_bytes(p);
                                      write_bytes(p, text.substr(0, text.size() / 2));
                                    }),
                   {"config.json: invalid JSON"}});
  cases.push_back({"config_json_two_documents",
                   with_config_file("llama", [](const std::string& p) { write_bytes(p, read_bytes(p) + "\n{}"); }),
                   {"config.json: invalid JSON"}});
  cases.push_back({"config_json_number_past_double",
                   with_config_file("llama",
                                    [](const std::string& p) {
                                      std::string text = read_bytes(p);
                                      const size_t at = text.find("\"initializer_range\": 0.02");
                                      text.replace(at, 25, "\"initializer_range\": 1e400");
                                      write_bytes(p, text);
                                    }),
                   {"config.json: invalid JSON", "number overflow"}});
  cases.push_back({"config_json_is_an_array",
                   with_config_file("llama", [](const std::string& p) { write_bytes(p, "[1, 2]"); }),
                   {"config.json: expected a JSON object, found array"}});
  return cases;
}

// ---------------------------------------------------------------------------------------------
// model.safetensors of the llama fixture

const char* const kQ1 = "model.layers.1.self_attn.q_proj.weight";

// Runs load_model after `damage` changed the copied model.safetensors (path given).
std::function<void(const std::string&)> with_weights(const std::string& arch,
                                                     std::function<void(const std::string&)> damage) {
  return [arch, damage](const std::string& dir) {
    const std::string model = copy_fixture(arch, "model", dir);
    damage(model + "/model.safetensors");
    load_model(model);
  };
}

std::function<void(const std::string&)> edit_header(std::function<void(ordered_json&)> edit) {
  return [edit](const std::string& path) {
    RawSafetensors f = RawSafetensors::read(path);
    edit(f.header);
    f.write(path);
  };
}

// Sets the 8-byte header length N of a file to f(N, file size).
std::function<void(const std::string&)> set_header_length(std::function<uint64_t(uint64_t, uint64_t)> f) {
  return [f](const std::string& path) {
    std::string bytes = read_bytes(path);
    uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    n = f(n, bytes.size());
    std::memcpy(bytes.data(), &n, 8);
    write_bytes(path, bytes);
  };
}

// Keeps the first `keep(N, size)` bytes of the file.
std::function<void(const std::string&)> truncate_to(std::function<uint64_t(uint64_t, uint64_t)> keep) {
  return [keep](const std::string& path) {
    const std::string bytes = read_bytes(path);
    uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    write_bytes(path, bytes.substr(0, keep(n, bytes.size())));
  };
}

std::vector<HostileCase> safetensors_cases() {
  std::vector<HostileCase> cases;
  auto expect_file = [](std::vector<std::string> parts) {
    parts.insert(parts.begin(), "model.safetensors");
    return parts;
  };
  // The 8-byte header length. The fixture's header is padded with one space, so N - 1 still
  // parses and leaves one stray byte; N + 1 takes in a data byte that is not JSON.
  cases.push_back({"header_length_zero", with_weights("llama", set_header_length([](uint64_t, uint64_t) { return 0; })),
                   expect_file({"header: not valid JSON"})});
  cases.push_back({"header_length_minus_one",
                   with_weights("llama", set_header_length([](uint64_t n, uint64_t) { return n - 1; })),
                   expect_file({"1 stray bytes after the last tensor"})});
  cases.push_back({"header_length_plus_one",
                   with_weights("llama", set_header_length([](uint64_t n, uint64_t) { return n + 1; })),
                   expect_file({"header: not valid JSON"})});
  cases.push_back({"header_length_file_size",
                   with_weights("llama", set_header_length([](uint64_t, uint64_t size) { return size; })),
                   expect_file({"runs past the end of the file"})});
  cases.push_back({"header_length_past_limit",
                   with_weights("llama", set_header_length([](uint64_t, uint64_t) { return 100000001; })),
                   expect_file({"exceeds the 100,000,000-byte limit"})});
  cases.push_back({"header_length_2_pow_63",
                   with_weights("llama", set_header_length([](uint64_t, uint64_t) { return uint64_t(1) << 63; })),
                   expect_file({"exceeds the 100,000,000-byte limit"})});

  // The file cut short at several places, or grown.
  const std::pair<const char*, std::function<uint64_t(uint64_t, uint64_t)>> cuts[] = {
      {"empty", [](uint64_t, uint64_t) { return 0; }},
      {"inside_length", [](uint64_t, uint64_t) { return 5; }},
      {"after_length", [](uint64_t, uint64_t) { return 8; }},
      {"mid_header", [](uint64_t n, uint64_t) { return 8 + n / 2; }},
      {"after_header", [](uint64_t n, uint64_t) { return 8 + n; }},
      {"mid_data", [](uint64_t n, uint64_t size) { return (8 + n + size) / 2; }},
      {"last_byte", [](uint64_t, uint64_t size) { return size - 1; }},
  };
  for (const auto& [where, keep] : cuts) {
    const std::string name = where;
    const Expect e = name == "empty" || name == "inside_length" ? expect_file({"is too small for a safetensors file"})
                     : name == "after_length" || name == "mid_header" ? expect_file({"runs past the end of the file"})
                                                                      : expect_file({"truncated: header says"});
    cases.push_back({"truncated_" + name, with_weights("llama", truncate_to(keep)), e});
  }
  cases.push_back(
      {"appended_bytes",
       with_weights("llama", [](const std::string& p) { write_bytes(p, read_bytes(p) + std::string(4096, 'x')); }),
       expect_file({"4096 stray bytes after the last tensor"})});

  // data_offsets.
  const std::string ln1 = "model.layers.0.input_layernorm.weight",
                    ln2 = "model.layers.0.post_attention_layernorm.weight";
  cases.push_back(
      {"offsets_overlap",
       with_weights("llama", edit_header([=](ordered_json& h) { h[ln2]["data_offsets"] = h[ln1]["data_offsets"]; })),
       expect_file({"overlaps tensor"})});
  cases.push_back({"offsets_shifted", with_weights("llama", edit_header([=](ordered_json& h) {
                                                     auto& o = h[kQ1]["data_offsets"];
                                                     o = {o[0].get<uint64_t>() + 2, o[1].get<uint64_t>() + 2};
                                                   })),
                   expect_file({"hole before tensor '" + std::string(kQ1) + "'"})});
  cases.push_back({"offsets_end_short", with_weights("llama", edit_header([=](ordered_json& h) {
                                                       auto& o = h[kQ1]["data_offsets"];
                                                       o[1] = o[1].get<uint64_t>() - 2;
                                                     })),
                   expect_file({"tensor '" + std::string(kQ1) + "'", "needs 32768 bytes but data_offsets"})});
  cases.push_back({"offsets_far_past_file",
                   with_weights("llama", edit_header([=](ordered_json& h) {
                                  h[kQ1]["data_offsets"] = {uint64_t(1) << 40, (uint64_t(1) << 40) + 32768};
                                })),
                   expect_file({"hole before tensor"})});
  cases.push_back({"offsets_reversed", with_weights("llama", edit_header([=](ordered_json& h) {
                                                      h[kQ1]["data_offsets"] = {100, 10};
                                                    })),
                   expect_file({"tensor '" + std::string(kQ1) + "'", "end before they begin"})});
  cases.push_back({"offsets_negative",
                   with_weights("llama", edit_header([=](ordered_json& h) { h[kQ1]["data_offsets"][0] = -8; })),
                   expect_file({"data_offsets must hold non-negative integers, found -8"})});
  cases.push_back({"offsets_one_number",
                   with_weights("llama", edit_header([=](ordered_json& h) { h[kQ1]["data_offsets"] = {0}; })),
                   expect_file({"data_offsets must be [begin, end], found [0]"})});
  cases.push_back({"offsets_fraction",
                   with_weights("llama", edit_header([=](ordered_json& h) { h[kQ1]["data_offsets"][1] = 1.5; })),
                   expect_file({"data_offsets must hold non-negative integers, found 1.5"})});
  cases.push_back({"offsets_missing",
                   with_weights("llama", edit_header([=](ordered_json& h) { h[kQ1].erase("data_offsets"); })),
                   expect_file({"tensor '" + std::string(kQ1) + "' has no \"data_offsets\""})});

  // dtype and shape.
  cases.push_back({"dtype_unknown",
                   with_weights("llama", edit_header([=](ordered_json& h) { h[kQ1]["dtype"] = "Q4_K"; })),
                   expect_file({"unknown dtype \"Q4_K\""})});
  cases.push_back({"dtype_number", with_weights("llama", edit_header([=](ordered_json& h) { h[kQ1]["dtype"] = 16; })),
                   expect_file({"dtype must be a string, found 16"})});
  cases.push_back({"dtype_integer_same_width",
                   with_weights("llama", edit_header([=](ordered_json& h) { h[kQ1]["dtype"] = "U16"; })),
                   expect_file({"tensor '" + std::string(kQ1) + "'", "has dtype U16; expected F32, F16 or BF16"})});
  cases.push_back({"dtype_wider", with_weights("llama", edit_header([=](ordered_json& h) { h[kQ1]["dtype"] = "F32"; })),
                   expect_file({"needs 65536 bytes but data_offsets"})});
  cases.push_back({"shape_transposed", with_weights("llama", edit_header([](ordered_json& h) {
                                                      h["model.layers.0.mlp.gate_proj.weight"]["shape"] = {64, 96};
                                                    })),
                   mismatch("model.layers.0.mlp.gate_proj.weight", "hidden_size, intermediate_size", "[96, 64]")});
  cases.push_back({"shape_overflows", with_weights("llama", edit_header([=](ordered_json& h) {
                                                     h[kQ1]["shape"] = {uint64_t(1) << 62, uint64_t(1) << 62};
                                                   })),
                   expect_file({"overflows 64 bits"})});
  cases.push_back({"shape_negative", with_weights("llama", edit_header([=](ordered_json& h) {
                                                    h[kQ1]["shape"] = {-256, -64};
                                                  })),
                   expect_file({"shape must hold non-negative integers"})});
  cases.push_back({"shape_not_a_list",
                   with_weights("llama", edit_header([=](ordered_json& h) { h[kQ1]["shape"] = "256x64"; })),
                   expect_file({"shape must be an array"})});
  cases.push_back({"shape_wrong_size",
                   with_weights("llama", edit_header([=](ordered_json& h) { h[kQ1]["shape"] = {256}; })),
                   expect_file({"needs 512 bytes but data_offsets"})});

  // The header as JSON.
  cases.push_back({"header_duplicate_tensor",
                   with_weights("llama",
                                [](const std::string& p) {
                                  RawSafetensors f = RawSafetensors::read(p);
                                  std::string text = f.header.dump();
                                  const std::string entry =
                                      "\"model.norm.weight\":" + f.header["model.norm.weight"].dump();
                                  text.insert(text.size() - 1, "," + entry);
                                  f.write(p, text);
                                }),
                   expect_file({"header lists tensor 'model.norm.weight' twice"})});
  cases.push_back({"header_deep",
                   with_weights("llama",
                                [](const std::string& p) {
                                  RawSafetensors f = RawSafetensors::read(p);
                                  f.write(p, nested_arrays(300000));
                                }),
                   expect_file({"header: JSON nested deeper than 64 levels"})});
  cases.push_back({"header_deep_metadata", with_weights("llama", edit_header([](ordered_json& h) {
                                                          ordered_json deep = ordered_json::array();
                                                          for (int i = 0; i < 100; ++i)
                                                            deep = ordered_json::array({deep});
                                                          h["__metadata__"]["x"] = deep;
                                                        })),
                   expect_file({"header: JSON nested deeper than 64 levels"})});
  cases.push_back({"header_array",
                   with_weights("llama", [](const std::string& p) { RawSafetensors::read(p).write(p, "[1, 2, 3]"); }),
                   expect_file({"header must be a JSON object, found array"})});
  cases.push_back({"header_number_past_double",
                   with_weights("llama",
                                [](const std::string& p) {
                                  RawSafetensors f = RawSafetensors::read(p);
                                  std::string text = f.header.dump();
                                  text.insert(1, "\"x\":1e400,");
                                  f.write(p, text);
                                }),
                   expect_file({"header: not valid JSON", "number overflow"})});
  cases.push_back({"metadata_not_strings",
                   with_weights("llama", edit_header([](ordered_json& h) { h["__metadata__"]["format"] = 1; })),
                   expect_file({"__metadata__[\"format\"] must be a string"})});
  cases.push_back({"entry_not_an_object", with_weights("llama", edit_header([=](ordered_json& h) { h[kQ1] = 5; })),
                   expect_file({"tensor '" + std::string(kQ1) + "' must be described by an object"})});
  cases.push_back({"metadata_extra_keys_and_reordered_header",
                   with_weights("llama",
                                [](const std::string& p) {
                                  RawSafetensors f = RawSafetensors::read(p);
                                  ordered_json reversed = ordered_json::object();
                                  for (auto it = f.header.rbegin(); it != f.header.rend(); ++it)
                                    reversed[it.key()] = it.value();
                                  reversed["__metadata__"]["total_size"] = "292616";
                                  f.write(p, "  \n" + reversed.dump(1) + "\n   ");
                                }),
                   kAccepted});

  // Non-finite values: every dtype path, several tensors, the first bad element named.
  struct Poke {
    const char* arch;
    const char* tensor;
    int64_t index;
    const char* at;  // the index as the message shows it
  };
  const Poke pokes[] = {
      {"llama", "model.embed_tokens.weight", 3 * 64 + 5, "[3, 5]"},
      {"llama", "model.norm.weight", 7, "[7]"},
      {"llama", "lm_head.weight", 64 * 64 - 1, "[63, 63]"},
      {"llama", kQ1, 10 * 64 + 20, "[10, 20]"},
      {"llama", "model.layers.0.mlp.down_proj.weight", 0, "[0, 0]"},
      {"llama", "model.layers.1.self_attn.q_proj.bias", 5, "[5]"},
      {"llama", "model.layers.0.input_layernorm.weight", 63, "[63]"},
      {"qwen3", "model.layers.1.self_attn.k_norm.weight", 1, "[1]"},
  };
  const std::pair<const char*, double> bad_values[] = {{"nan", std::nan("")}, {"inf", HUGE_VAL}, {"-inf", -HUGE_VAL}};
  for (const Poke& poke : pokes)
    for (const auto& [shown, value] : bad_values) {
      const std::string tensor = poke.tensor;
      const int64_t index = poke.index;
      const double v = value;
      cases.push_back(
          {cat(poke.arch, "_", safe(tensor), "_", shown[0] == '-' ? "minus_inf" : shown),
           with_weights(poke.arch,
                        [tensor, index, v](const std::string& p) {
                          RawSafetensors f = RawSafetensors::read(p);
                          f.poke(tensor, index, v);
                          f.write(p);
                        }),
           {cat("tensor '", tensor, "'"), "model.safetensors", cat("holds ", shown, " at index ", poke.at)}});
    }
  cases.push_back({"nan_after_a_first_one_names_the_first",
                   with_weights("llama",
                                [](const std::string& p) {
                                  RawSafetensors f = RawSafetensors::read(p);
                                  f.poke(kQ1, 900, HUGE_VAL);
                                  f.poke(kQ1, 70, std::nan(""));
                                  f.write(p);
                                }),
                   {"holds nan at index [1, 6]"}});

  // The tensor list against config.json.
  cases.push_back({"tensor_missing",
                   with_weights("llama",
                                [](const std::string& p) {
                                  rewrite_tensors(p, [](std::vector<StoredCopy>& t) {
                                    t.erase(std::find_if(t.begin(), t.end(), [](const StoredCopy& s) {
                                      return s.name == "model.layers.1.mlp.up_proj.weight";
                                    }));
                                  });
                                }),
                   {"tensor 'model.layers.1.mlp.up_proj.weight' not found", "config.json"}});
  cases.push_back({"tensor_extra",
                   with_weights("llama",
                                [](const std::string& p) {
                                  rewrite_tensors(p, [](std::vector<StoredCopy>& t) {
                                    StoredCopy extra = find_tensor(t, "model.norm.weight");
                                    extra.name = "model.layers.0.mlp.extra_norm.weight";
                                    t.push_back(extra);
                                  });
                                }),
                   {"holds 1 tensor the model does not use: 'model.layers.0.mlp.extra_norm.weight'"}});
  cases.push_back(
      {"tensor_third_layer",
       with_weights("llama",
                    [](const std::string& p) {
                      rewrite_tensors(p, [](std::vector<StoredCopy>& t) {
                        StoredCopy extra = find_tensor(t, "model.layers.1.input_layernorm.weight");
                        extra.name = "model.layers.2.input_layernorm.weight";
                        t.push_back(extra);
                      });
                    }),
       {"'model.layers.2.input_layernorm.weight'", "num_hidden_layers is 2 but the checkpoint has 3 layers"}});
  cases.push_back({"tensor_nf4_part_on_a_plain_weight",
                   with_weights("llama",
                                [](const std::string& p) {
                                  rewrite_tensors(p, [](std::vector<StoredCopy>& t) {
                                    StoredCopy extra = find_tensor(t, "model.norm.weight");
                                    extra.name = std::string(kQ1) + ".absmax";
                                    t.push_back(extra);
                                  });
                                }),
                   {"the model does not use: '" + std::string(kQ1) + ".absmax'"}});
  cases.push_back({"rotary_inv_freq_buffers_of_older_checkpoints",
                   with_weights("llama",
                                [](const std::string& p) {
                                  rewrite_tensors(p, [](std::vector<StoredCopy>& t) {
                                    for (int l = 0; l < 2; ++l) {
                                      StoredCopy inv = find_tensor(t, "model.norm.weight");
                                      inv.name = cat("model.layers.", l, ".self_attn.rotary_emb.inv_freq");
                                      t.push_back(inv);
                                    }
                                  });
                                }),
                   kAccepted});
  cases.push_back({"qwen3_tied_head_stored_as_a_copy",
                   with_weights("qwen3",
                                [](const std::string& p) {
                                  rewrite_tensors(p, [](std::vector<StoredCopy>& t) {
                                    StoredCopy head = find_tensor(t, "model.embed_tokens.weight");
                                    head.name = "lm_head.weight";
                                    t.push_back(head);
                                  });
                                }),
                   kAccepted});
  cases.push_back({"qwen3_tied_head_stored_different",
                   with_weights("qwen3",
                                [](const std::string& p) {
                                  rewrite_tensors(p, [](std::vector<StoredCopy>& t) {
                                    StoredCopy head = find_tensor(t, "model.embed_tokens.weight");
                                    head.name = "lm_head.weight";
                                    head.bytes[0] ^= 1;
                                    t.push_back(head);
                                  });
                                }),
                   {"tie_word_embeddings: true", "lm_head.weight different from model.embed_tokens.weight"}});
  cases.push_back({"rewritten_in_another_order",
                   with_weights("llama",
                                [](const std::string& p) {
                                  rewrite_tensors(p,
                                                  [](std::vector<StoredCopy>& t) { std::reverse(t.begin(), t.end()); });
                                }),
                   kAccepted});

  // model.safetensors that is not a regular file.
  cases.push_back({"file_is_a_fifo", with_weights("llama", make_fifo), expect_file({"FIFO"})});
  cases.push_back({"file_is_a_folder", with_weights("llama", make_folder), expect_file({"is a folder"})});
  cases.push_back({"file_is_dev_zero", with_weights("llama", make_dev_zero_link), expect_file({"character device"})});
  cases.push_back({"file_missing",
                   with_weights("llama", [](const std::string& p) { fs::remove(p); }),
                   {"no model.safetensors or model.safetensors.index.json"}});
  return cases;
}

// ---------------------------------------------------------------------------------------------
// Pre-quantized bitsandbytes NF4 checkpoints (tests/fixtures/nf4/bnb_llama_tiny{,_plain})

std::function<void(const std::string&)> with_nf4(const std::string& fixture,
                                                 std::function<void(const std::string&)> damage) {
  return [fixture, damage](const std::string& dir) {
    fs::copy(fixtures_dir() + "/nf4/" + fixture, dir + "/model", fs::copy_options::recursive);
    damage(dir + "/model/model.safetensors");
    load_model(dir + "/model");
  };
}

std::function<void(const std::string&)> poke_tensor(const std::string& name, int64_t index, double value) {
  return [=](const std::string& p) {
    RawSafetensors f = RawSafetensors::read(p);
    f.poke(name, index, value);
    f.write(p);
  };
}

// Replaces the quant_state JSON of q_proj.
std::function<void(const std::string&)> quant_state(std::function<std::string(const std::string&)> edit) {
  return [edit](const std::string& p) {
    rewrite_tensors(p, [&](std::vector<StoredCopy>& t) {
      StoredCopy& s = find_tensor(t, "model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4");
      s.bytes = edit(s.bytes);
      s.shape = {int64_t(s.bytes.size())};
    });
  };
}

std::vector<HostileCase> nf4_cases() {
  const std::string q = "model.layers.0.self_attn.q_proj.weight";
  std::vector<HostileCase> cases;
  for (const char* fixture : {"bnb_llama_tiny", "bnb_llama_tiny_plain"})
    cases.push_back({cat(fixture, "_as_saved"), with_nf4(fixture, [](const std::string&) {}), kAccepted});
  cases.push_back({"plain_absmax_nan",
                   with_nf4("bnb_llama_tiny_plain", poke_tensor(q + ".absmax", 3, std::nan(""))),
                   {cat("tensor '", q, ".absmax'"), "holds nan at index [3]"}});
  cases.push_back({"plain_absmax_inf",
                   with_nf4("bnb_llama_tiny_plain", poke_tensor(q + ".absmax", 0, HUGE_VAL)),
                   {cat("tensor '", q, ".absmax'"), "holds inf at index [0]"}});
  cases.push_back({"nested_absmax_inf",
                   with_nf4("bnb_llama_tiny", poke_tensor(q + ".nested_absmax", 0, -HUGE_VAL)),
                   {cat("tensor '", q, ".nested_absmax'"), "holds -inf at index [0]"}});
  cases.push_back({"nested_quant_map_nan",
                   with_nf4("bnb_llama_tiny", poke_tensor(q + ".nested_quant_map", 200, std::nan(""))),
                   {cat("tensor '", q, ".nested_quant_map'"), "holds nan at index [200]"}});
  cases.push_back({"nested_offset_past_float",
                   with_nf4("bnb_llama_tiny", quant_state([](const std::string& s) {
                              json j = json::parse(s);
                              j["nested_offset"] = 1e300;
                              return j.dump();
                            })),
                   {cat("tensor '", q, "'"), "nested_offset must be a finite float, found 1e+300"}});
  cases.push_back({"quant_state_deep",
                   with_nf4("bnb_llama_tiny", quant_state([](const std::string&) { return nested_arrays(100000); })),
                   {cat(q, ".quant_state.bitsandbytes__nf4"), "JSON nested deeper than 64 levels"}});
  cases.push_back({"quant_state_blocksize_huge",
                   with_nf4("bnb_llama_tiny", quant_state([](const std::string& s) {
                              json j = json::parse(s);
                              j["blocksize"] = int64_t(1) << 40;
                              return j.dump();
                            })),
                   {cat("tensor '", q, "'"), "quant_state \"blocksize\" must be an integer, found 1099511627776"}});
  cases.push_back({"packed_codes_short",
                   with_nf4("bnb_llama_tiny",
                            [q](const std::string& p) {
                              rewrite_tensors(p, [&](std::vector<StoredCopy>& t) {
                                StoredCopy& codes = find_tensor(t, q);
                                codes.bytes.resize(codes.bytes.size() - 2);
                                codes.shape = {int64_t(codes.bytes.size()), 1};
                              });
                            }),
                   {cat("tensor '", q, "'"), "holds 2046 bytes of NF4 codes", "[64, 64], 2048 bytes"}});
  return cases;
}

// ---------------------------------------------------------------------------------------------
// Sharded checkpoints: model.safetensors.index.json + two shards made from the llama fixture

const char* const kShard1 = "model-00001-of-00002.safetensors";
const char* const kShard2 = "model-00002-of-00002.safetensors";

// Splits the copied model.safetensors into two shards (layer 1 in the second) and writes the index.
void shard(const std::string& model) {
  const std::string single = model + "/model.safetensors";
  ordered_json weight_map = ordered_json::object();
  for (const char* shard_name : {kShard1, kShard2}) {
    const bool second = shard_name == std::string(kShard2);
    fs::copy_file(single, model + "/" + shard_name);
    rewrite_tensors(model + "/" + shard_name, [&](std::vector<StoredCopy>& t) {
      t.erase(std::remove_if(t.begin(), t.end(),
                             [&](const StoredCopy& s) { return (s.name.rfind("model.layers.1.", 0) == 0) != second; }),
              t.end());
      for (const StoredCopy& s : t) weight_map[s.name] = shard_name;
    });
  }
  fs::remove(single);
  write_bytes(model + "/model.safetensors.index.json",
              ordered_json{{"metadata", {{"total_size", 289664}}}, {"weight_map", weight_map}}.dump(2));
}

std::function<void(const std::string&)> with_shards(std::function<void(const std::string& model)> damage) {
  return [damage](const std::string& dir) {
    const std::string model = copy_fixture("llama", "model", dir);
    shard(model);
    damage(model);
    load_model(model);
  };
}

std::function<void(const std::string&)> edit_index(std::function<void(ordered_json&)> edit) {
  return [edit](const std::string& model) { edit_json(model + "/model.safetensors.index.json", edit); };
}

std::vector<HostileCase> shard_cases() {
  const std::string index = "model.safetensors.index.json";
  const std::string up1 = "model.layers.1.mlp.up_proj.weight";
  std::vector<HostileCase> cases;
  cases.push_back({"sharded_as_saved", with_shards([](const std::string&) {}), kAccepted});
  cases.push_back({"index_extra_metadata", with_shards(edit_index([](ordered_json& j) {
                     j["metadata"]["format"] = "pt";
                     j["metadata"]["nested"] = {{"a", {1, 2}}};
                   })),
                   kAccepted});
  cases.push_back({"shard_missing",
                   with_shards([](const std::string& m) { fs::remove(m + "/" + kShard2); }),
                   {index, cat("lists shard ", kShard2), "missing"}});
  cases.push_back(
      {"shard_is_a_fifo", with_shards([](const std::string& m) { make_fifo(m + "/" + kShard2); }), {kShard2, "FIFO"}});
  cases.push_back({"shard_is_a_folder",
                   with_shards([](const std::string& m) { make_folder(m + "/" + kShard1); }),
                   {kShard1, "is a folder"}});
  for (const char* name : {"../model-00002-of-00002.safetensors", "/etc/passwd", "", ".", "sub/x.safetensors"})
    cases.push_back(
        {cat("shard_name_", safe(name).empty() ? "empty" : safe(name)),
         with_shards(edit_index([=](ordered_json& j) { j["weight_map"][up1] = name; })),
         {index, cat("weight_map[\"", up1, "\"] = \"", name, "\" is not a file name in the checkpoint folder")}});
  cases.push_back({"shard_name_number",
                   with_shards(edit_index([=](ordered_json& j) { j["weight_map"][up1] = 2; })),
                   {index, cat("weight_map[\"", up1, "\"] must be a file name, found 2")}});
  cases.push_back({"weight_map_missing",
                   with_shards(edit_index([](ordered_json& j) { j.erase("weight_map"); })),
                   {index, "expected an object with a \"weight_map\" object"}});
  cases.push_back({"weight_map_empty",
                   with_shards(edit_index([](ordered_json& j) { j["weight_map"] = ordered_json::object(); })),
                   {index, "weight_map lists no tensors"}});
  cases.push_back({"weight_map_a_list",
                   with_shards(edit_index([](ordered_json& j) {
                     j["weight_map"] = {1, 2};
                   })),
                   {index, "expected an object with a \"weight_map\" object"}});
  cases.push_back({"weight_map_duplicate_tensor",
                   with_shards([=](const std::string& m) {
                     std::string text = read_bytes(m + "/" + index);
                     const size_t at = text.find("\"weight_map\": {") + 15;
                     text.insert(at, cat("\"", up1, "\": \"", kShard1, "\","));
                     write_bytes(m + "/" + index, text);
                   }),
                   {index, cat("weight_map lists tensor '", up1, "' twice")}});
  cases.push_back({"tensor_in_wrong_shard",
                   with_shards(edit_index([=](ordered_json& j) { j["weight_map"][up1] = kShard1; })),
                   {cat("tensor '", up1, "'"), "the index does not match the shards"}});
  // A tensor a shard holds but weight_map leaves out is loaded (transformers loads every tensor of
  // the shards it opens); one the model does not use is named like any unused tensor.
  cases.push_back({"tensor_not_listed_is_still_loaded",
                   with_shards(edit_index([=](ordered_json& j) { j["weight_map"].erase(up1); })), kAccepted});
  cases.push_back({"tensor_not_listed_and_unused",
                   with_shards([](const std::string& m) {
                     rewrite_tensors(m + "/" + kShard2, [](std::vector<StoredCopy>& t) {
                       StoredCopy extra = find_tensor(t, "model.layers.1.input_layernorm.weight");
                       extra.name = "model.layers.1.extra_norm.weight";
                       t.push_back(extra);
                     });
                   }),
                   {"holds 1 tensor the model does not use: 'model.layers.1.extra_norm.weight'"}});
  // A shard file no weight_map entry names is not opened, as in transformers.
  cases.push_back({"shard_not_in_the_index_is_ignored",
                   with_shards([](const std::string& m) { write_bytes(m + "/model-00003-of-00002.safetensors", "x"); }),
                   kAccepted});
  cases.push_back(
      {"tensor_listed_nowhere",
       with_shards(edit_index([](ordered_json& j) { j["weight_map"]["model.layers.9.mlp.up_proj.weight"] = kShard2; })),
       {"tensor 'model.layers.9.mlp.up_proj.weight' not found", cat("listed in ", index)}});
  cases.push_back({"tensor_in_both_shards",
                   with_shards([](const std::string& m) {
                     rewrite_tensors(m + "/" + kShard2, [](std::vector<StoredCopy>& t) {
                       StoredCopy copy = t.front();
                       copy.name = "model.norm.weight";
                       t.push_back(copy);
                     });
                   }),
                   {"tensor 'model.norm.weight' is stored twice", kShard1, kShard2}});
  cases.push_back({"index_deep",
                   with_shards([=](const std::string& m) { write_bytes(m + "/" + index, nested_arrays(100000)); }),
                   {index, "nested deeper than 64 levels"}});
  cases.push_back({"index_garbage",
                   with_shards([=](const std::string& m) { write_bytes(m + "/" + index, "weight_map"); }),
                   {index, "not valid JSON"}});
  cases.push_back({"index_is_a_folder",
                   with_shards([=](const std::string& m) { make_folder(m + "/" + index); }),
                   {index, "is a folder"}});
  cases.push_back(
      {"index_is_a_fifo", with_shards([=](const std::string& m) { make_fifo(m + "/" + index); }), {index, "FIFO"}});
  return cases;
}

// ---------------------------------------------------------------------------------------------
// PEFT adapters (build/score --adapter, and resume): adapter_config.json and its tensors

// What build/score --adapter does: the LoRA section from adapter_config.json, then the tensors.
std::function<void(const std::string&)> with_adapter(std::function<void(const std::string& adapter)> damage) {
  return [damage](const std::string& dir) {
    const std::string adapter = copy_fixture("llama", "adapter", dir);
    damage(adapter);
    const ModelConfig cfg = load_model_config(hf_fixture("llama") + "/model");
    load_peft_adapter(adapter, make_lora_layout(cfg, read_peft_lora_options(adapter)));
  };
}

std::function<void(const std::string&)> adapter_key(const std::string& key, std::optional<ordered_json> value) {
  return [key, value](const std::string& adapter) {
    edit_json(adapter + "/adapter_config.json", set_key("/" + key, value));
  };
}

std::vector<HostileCase> adapter_cases() {
  const std::string cfg = "adapter_config.json: ";
  const std::string qa = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
  const Expect rank_mismatch = {cat("tensor '", qa, "'"), "adapter_model.safetensors",
                                "has shape [4, 64], expected [8, 64]"};
  struct Case {
    const char* name;
    const char* key;
    std::optional<ordered_json> value;
    Expect expect;
  };
  const std::vector<Case> keys = {
      {"r_zero", "r", 0, {cfg + "r must be in [1, 4096], found 0"}},
      {"r_minus_one", "r", -1, {cfg + "r must be in [1, 4096], found -1"}},
      {"r_string", "r", "4", {cfg + "r: expected an integer, found \"4\""}},
      {"r_fraction", "r", 4.5, {cfg + "r: expected an integer, found 4.5"}},
      {"r_huge", "r", int64_t(1) << 40, {cfg + "r: expected an integer, found 1099511627776"}},
      {"r_int_max", "r", 2147483647, {cfg + "r must be in [1, 4096], found 2147483647"}},
      {"r_past_max", "r", 4097, {cfg + "r must be in [1, 4096], found 4097"}},
      // The largest rank is read; the rank-4 tensors then do not fit it.
      {"r_max_for_rank_4_tensors", "r", 4096, {cat("tensor '", qa, "'"), "has shape [4, 64], expected [4096, 64]"}},
      {"r_null_takes_peft_default_8", "r", nullptr, rank_mismatch},
      {"r_missing_takes_peft_default_8", "r", std::nullopt, rank_mismatch},
      {"r_8_for_rank_4_tensors", "r", 8, rank_mismatch},
      {"lora_alpha_zero", "lora_alpha", 0, {cfg + "lora_alpha must be a positive number, found 0"}},
      {"lora_alpha_negative", "lora_alpha", -16, {cfg + "lora_alpha must be a positive number, found -16"}},
      {"lora_alpha_past_float", "lora_alpha", 1e300, {cfg + "lora_alpha must be a positive number, found 1e+300"}},
      {"lora_alpha_string", "lora_alpha", "8", {cfg + "lora_alpha: expected a number, found \"8\""}},
      {"lora_alpha_null", "lora_alpha", nullptr, kAccepted},
      {"lora_alpha_fraction", "lora_alpha", 12.5, kAccepted},
      {"lora_dropout_negative", "lora_dropout", -0.1, {cfg + "lora_dropout must be in [0, 1), found -0.1"}},
      {"lora_dropout_one", "lora_dropout", 1, {cfg + "lora_dropout must be in [0, 1), found 1"}},
      {"lora_dropout_string", "lora_dropout", "0", {cfg + "lora_dropout: expected a number, found \"0\""}},
      {"lora_dropout_half", "lora_dropout", 0.5, kAccepted},
      {"use_rslora_string", "use_rslora", "yes", {cfg + "use_rslora: expected true or false, found \"yes\""}},
      {"use_rslora_true", "use_rslora", true, kAccepted},
      {"target_modules_missing", "target_modules", std::nullopt, {cfg + "target_modules is missing"}},
      {"target_modules_null", "target_modules", nullptr, {cfg + "target_modules is missing"}},
      {"target_modules_regex",
       "target_modules",
       ".*proj",
       {cfg + "target_modules: the regex '.*proj' is not supported"}},
      {"target_modules_empty",
       "target_modules",
       ordered_json::array(),
       {cfg + "target_modules: expected a list of module names"}},
      {"target_modules_number",
       "target_modules",
       42,
       {cfg + "target_modules: expected a list of module names or \"all-linear\", found 42"}},
      {"target_modules_list_of_numbers",
       "target_modules",
       ordered_json::array({5}),
       {cfg + "target_modules: expected module names, found 5"}},
      {"target_modules_unknown",
       "target_modules",
       ordered_json::array({"q_proj", "lm_head"}),
       {cfg + "target_modules: unknown module \"lm_head\""}},
      {"target_modules_fewer_than_stored",
       "target_modules",
       ordered_json::array({"q_proj"}),
       {"adapter_model.safetensors: tensor 'base_model.model.model.layers.0.mlp.down_proj.lora_A.weight' is not an "
        "adapter of this model"}},
      {"target_modules_all_linear", "target_modules", "all-linear", kAccepted},
      {"peft_type_prompt", "peft_type", "PROMPT_TUNING", {cfg + "peft_type: 'PROMPT_TUNING', only LORA"}},
      {"peft_type_number", "peft_type", 5, {cfg + "peft_type: expected a string, found 5"}},
      {"peft_type_null", "peft_type", nullptr, kAccepted},
      {"use_dora_true", "use_dora", true, {cfg + "use_dora = true is not supported"}},
      {"use_dora_string", "use_dora", "no", {cfg + "use_dora: expected true or false, found \"no\""}},
      {"fan_in_fan_out_true", "fan_in_fan_out", true, {cfg + "fan_in_fan_out = true is not supported"}},
      {"bias_all", "bias", "all", {cfg + "bias = 'all' is not supported"}},
      {"bias_number", "bias", 0, {cfg + "bias: expected a string, found 0"}},
      {"rank_pattern_set",
       "rank_pattern",
       ordered_json{{"q_proj", 8}},
       {cfg + "rank_pattern (per-module r/alpha) is not supported"}},
      {"alpha_pattern_string", "alpha_pattern", "x", {cfg + "alpha_pattern (per-module r/alpha) is not supported"}},
      {"layers_to_transform_set",
       "layers_to_transform",
       ordered_json::array({0}),
       {cfg + "layers_to_transform is not supported"}},
      {"modules_to_save_set",
       "modules_to_save",
       ordered_json::array({"lm_head"}),
       {cfg + "modules_to_save is not supported"}},
      {"unknown_future_key", "some_future_peft_option", ordered_json{{"nested", {1, 2}}}, kAccepted},
  };
  std::vector<HostileCase> cases;
  for (const Case& c : keys) cases.push_back({c.name, with_adapter(adapter_key(c.key, c.value)), c.expect});

  auto config_file = [](std::function<void(const std::string&)> damage) {
    return with_adapter([damage](const std::string& a) { damage(a + "/adapter_config.json"); });
  };
  cases.push_back({"config_deep",
                   config_file([](const std::string& p) { write_bytes(p, nested_arrays(100000)); }),
                   {"adapter_config.json: JSON nested deeper than 64 levels"}});
  cases.push_back({"config_garbage",
                   config_file([](const std::string& p) { write_bytes(p, "r: 4\n"); }),
                   {"adapter_config.json: invalid JSON"}});
  cases.push_back({"config_array",
                   config_file([](const std::string& p) { write_bytes(p, "[]"); }),
                   {"adapter_config.json: expected a JSON object, found array"}});
  cases.push_back({"config_is_a_folder", config_file(make_folder), {"adapter_config.json", "is a folder"}});
  cases.push_back({"config_is_a_fifo", config_file(make_fifo), {"adapter_config.json", "FIFO"}});
  cases.push_back({"config_missing",
                   config_file([](const std::string& p) { fs::remove(p); }),
                   {"adapter_config.json", "no such file"}});

  auto weights = [](std::function<void(const std::string&)> damage) {
    return with_adapter([damage](const std::string& a) { damage(a + "/adapter_model.safetensors"); });
  };
  const std::string kb = "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight";
  cases.push_back({"adapter_as_saved", weights([](const std::string&) {}), kAccepted});
  cases.push_back({"lora_A_nan",
                   weights(poke_tensor(qa, 2 * 64 + 10, std::nan(""))),
                   {cat("tensor '", qa, "'"), "adapter_model.safetensors", "holds nan at index [2, 10]"}});
  cases.push_back({"lora_B_inf",
                   weights(poke_tensor(kb, 127 * 4 + 3, HUGE_VAL)),
                   {cat("tensor '", kb, "'"), "holds inf at index [127, 3]"}});
  cases.push_back(
      {"tensor_extra_dora_magnitude",
       weights([](const std::string& p) {
         rewrite_tensors(p, [](std::vector<StoredCopy>& t) {
           StoredCopy m = t.front();
           m.name = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector";
           t.push_back(m);
         });
       }),
       {"tensor 'base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector' is not an adapter"}});
  cases.push_back({"tensor_missing",
                   weights([kb](const std::string& p) {
                     rewrite_tensors(p, [kb](std::vector<StoredCopy>& t) {
                       t.erase(std::find_if(t.begin(), t.end(), [kb](const StoredCopy& s) { return s.name == kb; }));
                     });
                   }),
                   {cat("tensor '", kb, "' not found"), "adapter_model.safetensors"}});
  cases.push_back({"tensor_reshaped",
                   weights([qa](const std::string& p) {
                     rewrite_tensors(p, [qa](std::vector<StoredCopy>& t) { find_tensor(t, qa).shape = {2, 128}; });
                   }),
                   {cat("tensor '", qa, "'"), "has shape [2, 128], expected [4, 64]"}});
  cases.push_back({"tensor_integer_dtype",
                   weights([qa](const std::string& p) {
                     rewrite_tensors(p, [qa](std::vector<StoredCopy>& t) { find_tensor(t, qa).dtype = "I32"; });
                   }),
                   {cat("tensor '", qa, "'"), "has dtype I32; expected F32, F16 or BF16"}});
  cases.push_back({"weights_fifo", weights(make_fifo), {"adapter_model.safetensors", "FIFO"}});
  // A rank above the narrowest side of a projection (64, hidden_size) is rank-deficient, not wrong:
  // PEFT trains and loads it (Qwen2.5-0.5B's k/v are 128 wide; r = 256 adapters exist).
  cases.push_back({"rank_past_projection_side",
                   [](const std::string& dir) {
                     const ModelConfig cfg = load_model_config(hf_fixture("llama") + "/model");
                     LoraOptions wide;
                     wide.r = 65;
                     wide.targets = {"all-linear"};
                     const LoraLayout layout = make_lora_layout(cfg, wide);
                     save_peft_adapter(dir + "/adapter", layout, lora_init(layout, 1), "llama");
                     load_peft_adapter(dir + "/adapter", make_lora_layout(cfg, read_peft_lora_options(dir + "/adapter")));
                   },
                   kAccepted});
  cases.push_back({"weights_missing",
                   weights([](const std::string& p) { fs::remove(p); }),
                   {"adapter_model.safetensors", "does not exist"}});
  return cases;
}

// ---------------------------------------------------------------------------------------------
// The programs: build/score and build/train end to end (exit 1 with one message, never a signal
// or a hang)

const char* const kOneLine = "{\"ids\": [1, 2, 3, 4]}\n";

void score(const std::string& model, const std::string& adapter = "") {
  std::vector<std::string> argv = {"build/score", "--device", "cpu", "--model", model};
  if (!adapter.empty()) argv.insert(argv.end(), {"--adapter", adapter});
  run_cli(argv, kOneLine);
}

// build/train on the copied model with synthetic data; `extra` are key=value overrides.
void train_on(const std::string& dir, const std::string& model, std::vector<std::string> extra = {}) {
  const std::string yaml = write_file(dir, "run.yaml",
                                      cat("model:\n  path: ", model,
                                          "\n  quant: nf4\n"
                                          "data:\n  synthetic: sft-alpaca\n  synthetic_docs: 8\n  max_seq_len: 32\n"
                                          "lora:\n  r: 4\n"
                                          "train:\n  device: cpu\n  steps: 2\n  token_budget: 64\n  global_batch: 2\n"
                                          "output:\n  dir: ",
                                          dir, "/run\n"));
  std::vector<std::string> argv = {"build/train", yaml};
  argv.insert(argv.end(), extra.begin(), extra.end());
  run_cli(argv, "", 120);
}

// The llama fixture copy with NaN at q_proj of layer 1, element [10, 20].
std::string nan_model(const std::string& dir) {
  const std::string model = copy_fixture("llama", "model", dir);
  RawSafetensors f = RawSafetensors::read(model + "/model.safetensors");
  f.poke(kQ1, 10 * 64 + 20, std::nan(""));
  f.write(model + "/model.safetensors");
  return model;
}

// A config.json of terabytes: 2^31 - 1 tokens × 65536 wide, an embedding and a head of 1.4e14
// parameters each (2.81e14 in all).
std::string terabyte_model(const std::string& dir) {
  const std::string model = copy_fixture("llama", "model", dir);
  edit_json(model + "/config.json", [](ordered_json& j) {
    j["vocab_size"] = 2147483647;
    j["hidden_size"] = 65536;
  });
  return model;
}

const Expect kNanNamed = {"tensor '" + std::string(kQ1) + "'", "holds nan at index [10, 20]"};
const Expect kTerabytesNamed = {"tensor 'model.embed_tokens.weight'", "makes it [2147483647, 65536]",
                                "2.81e+14 parameters (563 TB in bf16)"};

std::vector<HostileCase> cli_cases() {
  std::vector<HostileCase> cases;
  cases.push_back(
      {"score_fixture", [](const std::string& dir) { score(copy_fixture("llama", "model", dir)); }, kAccepted});
  cases.push_back({"score_nan_weights", [](const std::string& dir) { score(nan_model(dir)); }, kNanNamed});
  cases.push_back(
      {"score_terabyte_config", [](const std::string& dir) { score(terabyte_model(dir)); }, kTerabytesNamed});
  cases.push_back({"score_config_json_is_a_folder",
                   [](const std::string& dir) {
                     const std::string model = copy_fixture("llama", "model", dir);
                     make_folder(model + "/config.json");
                     score(model);
                   },
                   {"config.json", "is a folder"}});
  cases.push_back({"score_weights_fifo",
                   [](const std::string& dir) {
                     const std::string model = copy_fixture("llama", "model", dir);
                     make_fifo(model + "/model.safetensors");
                     score(model);
                   },
                   {"model.safetensors", "FIFO"}});
  cases.push_back({"score_fewer_layers",
                   [](const std::string& dir) {
                     const std::string model = copy_fixture("llama", "model", dir);
                     edit_json(model + "/config.json", set_key("/num_hidden_layers", 1));
                     score(model);
                   },
                   {"the model does not use", "num_hidden_layers is 1 but the checkpoint has 2 layers"}});
  // The checkpoint is checked against config.json before the adapter is sized by it.
  cases.push_back({"score_terabyte_config_with_adapter",
                   [](const std::string& dir) { score(terabyte_model(dir), copy_fixture("llama", "adapter", dir)); },
                   kTerabytesNamed});
  cases.push_back({"score_adapter_nan",
                   [](const std::string& dir) {
                     const std::string adapter = copy_fixture("llama", "adapter", dir);
                     poke_tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", 5,
                                 std::nan(""))(adapter + "/adapter_model.safetensors");
                     score(hf_fixture("llama") + "/model", adapter);
                   },
                   {"adapter_model.safetensors", "q_proj.lora_A.weight", "holds nan at index [0, 5]"}});
  cases.push_back({"train_terabyte_config_cpu", [](const std::string& dir) { train_on(dir, terabyte_model(dir)); },
                   kTerabytesNamed});
  // train.device=auto takes the GPU path where there is a GPU: its host side checks the same.
  cases.push_back({"train_terabyte_config_auto",
                   [](const std::string& dir) { train_on(dir, terabyte_model(dir), {"train.device=auto"}); },
                   kTerabytesNamed});
  cases.push_back({"train_nf4_nan_weights", [](const std::string& dir) { train_on(dir, nan_model(dir)); }, kNanNamed});
  // The fixture's narrowest projection side is 64 (hidden_size): r = 65 is one past, and trains
  // (a rank-deficient LoRA, as PEFT allows).
  cases.push_back({"train_lora_r_past_projection_side",
                   [](const std::string& dir) { train_on(dir, copy_fixture("llama", "model", dir), {"lora.r=65"}); },
                   kAccepted});
  return cases;
}

}  // namespace
}  // namespace loom::test

LOOM_HOSTILE_SUITE(HostileModelConfig, loom::test::config_cases);
LOOM_HOSTILE_SUITE(HostileModelSafetensors, loom::test::safetensors_cases);
LOOM_HOSTILE_SUITE(HostileModelNf4, loom::test::nf4_cases);
LOOM_HOSTILE_SUITE(HostileModelShards, loom::test::shard_cases);
LOOM_HOSTILE_SUITE(HostileModelAdapter, loom::test::adapter_cases);
LOOM_HOSTILE_SUITE(HostileModelCli, loom::test::cli_cases);
