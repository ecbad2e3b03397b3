#include "engine/export.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "models/gguf_model.h"
#include "models/model_source.h"
#include "models/safetensors.h"
#include "ops/error.h"
#include "ops/files.h"

namespace loom {

namespace {

namespace fs = std::filesystem;

// The files transformers' tokenizers read from a model folder.
const char* const kTokenizerFiles[] = {"tokenizer.json",     "tokenizer_config.json", "special_tokens_map.json",
                                       "tokenizer.model",    "chat_template.jinja",   "chat_template.json",
                                       "added_tokens.json",  "vocab.json",            "merges.txt"};

const char* torch_dtype_name(DType t) {
  return t == DType::F32 ? "float32" : t == DType::F16 ? "float16" : "bfloat16";
}

void write_text_file(const fs::path& path, const std::string& text) {
  const std::string tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    LOOM_CHECK(out.flush(), "cannot write ", tmp, " (is the folder writable?)");
  }
  LOOM_CHECK(std::rename(tmp.c_str(), path.string().c_str()) == 0, "cannot move ", tmp, " to ", path.string());
}

// The base's config.json as it was (key order kept), with only what the written tensors change:
// the dtype key(s) it uses (transformers 5 writes "dtype", 4.x "torch_dtype"; a config with
// neither gets "torch_dtype", which both read), and no quantization_config (the merged tensors
// are plain, a bitsandbytes entry would make transformers expect 4-bit ones).
void write_base_config(const fs::path& dir, const std::string& base_dir, DType dtype) {
  const std::string file = (fs::path(base_dir) / "config.json").string();
  const std::string text = read_regular_file(file, "config.json");
  parse_json(text, file);  // depth and syntax checked before the ordered parse below
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(text);
  LOOM_CHECK(j.is_object(), file, ": not a JSON object");
  bool named = false;
  for (const char* key : {"torch_dtype", "dtype"})
    if (j.contains(key)) j[key] = torch_dtype_name(dtype), named = true;
  if (!named) j["torch_dtype"] = torch_dtype_name(dtype);
  j.erase("quantization_config");
  write_text_file(dir / "config.json", j.dump(2) + "\n");
}

// The tokenizer files of the tokenizer the run used: every known file of its folder, and a file
// given directly (data.tokenizer: path/to/x.model) under the name transformers looks for.
std::vector<std::string> copy_tokenizer(const fs::path& dir, const std::string& tokenizer) {
  std::error_code ec;
  const bool folder = fs::is_directory(tokenizer, ec);
  const fs::path from = folder ? fs::path(tokenizer) : fs::path(tokenizer).parent_path();
  std::vector<std::string> copied;
  if (!folder) {
    require_regular_file(tokenizer, "tokenizer");
    const std::string name = fs::path(tokenizer).extension() == ".json" ? "tokenizer.json" : "tokenizer.model";
    fs::copy_file(tokenizer, dir / name, fs::copy_options::overwrite_existing);
    copied.push_back(name);
  }
  for (const char* name : kTokenizerFiles) {
    const fs::path f = (from.empty() ? fs::path(".") : from) / name;
    if (std::find(copied.begin(), copied.end(), name) != copied.end() || !fs::exists(f, ec)) continue;
    require_regular_file(f.string(), "tokenizer file");
    fs::copy_file(f, dir / name, fs::copy_options::overwrite_existing);
    copied.push_back(name);
  }
  return copied;
}

// generation_config.json: the base's, else what transformers derives from config.json (bos/eos).
void write_generation_config(const fs::path& dir, const ExportSource& src, const ModelConfig& mc) {
  std::error_code ec;
  const fs::path base = fs::path(src.model.path) / "generation_config.json";
  if (!src.model.path.empty() && fs::exists(base, ec)) {
    require_regular_file(base.string(), "generation_config.json");
    fs::copy_file(base, dir / "generation_config.json", fs::copy_options::overwrite_existing);
    return;
  }
  nlohmann::ordered_json j = {{"_from_model_config", true}};
  if (mc.bos_id >= 0) j["bos_token_id"] = mc.bos_id;
  if (mc.eos_ids.size() == 1) j["eos_token_id"] = mc.eos_ids[0];
  if (mc.eos_ids.size() > 1) j["eos_token_id"] = mc.eos_ids;
  write_text_file(dir / "generation_config.json", j.dump(2) + "\n");
}

std::string base_name(const ExportSource& src) {
  if (!src.model.preset.empty()) return "loom-" + src.model.preset;
  fs::path p = fs::path(src.model.path).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

void print_notes(const std::vector<std::string>& notes) {
  for (const std::string& n : notes) std::fprintf(stderr, "note: %s\n", n.c_str());
}

// The tensor type of output.gguf_type.
GgmlType ggml_type(GgufType t) {
  switch (t) {
    case GgufType::kQ8_0: return GgmlType::Q8_0;
    case GgufType::kF16: return GgmlType::F16;
    case GgufType::kBf16: return GgmlType::BF16;
  }
  fail("output.gguf_type holds no GGUF type (", int(t), ")");
}

}  // namespace

ExportSource export_source(const TrainConfig& cfg) {
  return {cfg.model, cfg.data.tokenizer.empty() ? cfg.model.path : cfg.data.tokenizer};
}

void merge_lora(ModelWeights& w, const LoraLayout& layout, const std::vector<float>& lora) {
  for (size_t l = 0; l < w.layers.size(); ++l) merge_lora_layer(w.layers[l], int(l), layout, lora.data());
}

ModelWeights merged_weights(const ExportSource& src, const ModelConfig& mc, const LoraLayout& layout,
                            const std::vector<float>& lora) {
  ModelOptions unquantized = src.model;
  unquantized.quant = Quant::kBf16;  // merge into the base itself, not its NF4 round trip
  ModelWeights w = resolve_host_weights(unquantized, mc);
  merge_lora(w, layout, lora);
  return w;
}

DType merged_dtype(const ExportSource& src) {
  if (src.model.path.empty()) return DType::BF16;  // preset weights are bf16 values
  const DType embed = Checkpoint::open(src.model.path).get("model.embed_tokens.weight").dtype;
  return embed == DType::F32 || embed == DType::F16 ? embed : DType::BF16;
}

std::vector<std::string> write_merged_folder(const std::string& dir, const ExportSource& src, const ModelConfig& mc,
                                             const ModelWeights& merged) {
  const DType dtype = merged_dtype(src);
  const fs::path tmp = dir + ".tmp";
  fs::remove_all(tmp);
  ModelConfig out = mc;
  out.torch_dtype = torch_dtype_name(dtype);
  out.bnb_4bit = false;  // the tensors written are plain
  save_weights(tmp.string(), out, merged, dtype);
  if (!src.model.path.empty()) write_base_config(tmp, src.model.path, dtype);
  write_generation_config(tmp, src, mc);
  std::vector<std::string> notes;
  if (src.tokenizer.empty())
    notes.push_back("no tokenizer files in " + dir + ": model.preset has none (set data.tokenizer to the tokenizer "
                    "the run trains with to include it)");
  else if (copy_tokenizer(tmp, src.tokenizer).empty())
    notes.push_back("no tokenizer files found at " + src.tokenizer);
  if (!src.model.preset.empty())
    notes.push_back(dir + " holds random preset weights (model.preset: " + src.model.preset +
                    ") with the adapter merged in; config.json and generation_config.json are written from the preset");
  fs::remove_all(dir);
  fs::rename(tmp, dir);
  return notes;
}

std::vector<std::string> write_merged_gguf(const std::string& path, const ExportSource& src, const ModelConfig& mc,
                                           const ModelWeights& merged, GgmlType type) {
  GgufModelSource s;
  s.name = base_name(src);
  s.tokenizer = src.tokenizer;
  if (!src.model.path.empty()) s.config_json = (fs::path(src.model.path) / "config.json").string();
  return write_gguf_model(path, mc, merged, type, s);
}

std::string gguf_file_name(const std::string& gguf_type) { return "model-" + gguf_type + ".gguf"; }

void export_run(const TrainConfig& cfg, const ModelConfig& mc, const LoraLayout& layout,
                const std::vector<float>& lora) {
  const ExportFormat fmt = cfg.output.export_format;
  if (fmt == ExportFormat::kNone) return;
  // Every export keeps the adapter: it is what resumes, and what PEFT users load.
  save_peft_adapter(cfg.output.dir + "/adapter", layout, lora, model_name(cfg.model));
  std::fprintf(stderr, "adapter written to %s/adapter (PEFT format)\n", cfg.output.dir.c_str());
  if (fmt == ExportFormat::kPeft) return;
  const ExportSource src = export_source(cfg);
  const ModelWeights merged = merged_weights(src, mc, layout, lora);
  if (fmt == ExportFormat::kMerged) {
    const std::string dir = cfg.output.dir + "/merged";
    print_notes(write_merged_folder(dir, src, mc, merged));
    std::fprintf(stderr, "merged model written to %s (HF folder, %s safetensors)\n", dir.c_str(),
                 torch_dtype_name(merged_dtype(src)));
  } else if (fmt == ExportFormat::kGguf) {
    const char* type = gguf_type_name(cfg.output.gguf_type);
    const std::string path = cfg.output.dir + "/" + gguf_file_name(type);
    print_notes(write_merged_gguf(path, src, mc, merged, ggml_type(cfg.output.gguf_type)));
    std::fprintf(stderr, "merged model written to %s (GGUF %s, for llama.cpp)\n", path.c_str(), type);
  }
}

}  // namespace loom
