// Tokenizer::load: picks the implementation from the path and reads BOS/EOS from the
// tokenizer_config.json beside the tokenizer file.
#include "data/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/bpe_tokenizer.h"
#include "data/sp_tokenizer.h"
#include "data/tokenizer_config.h"
#include "ops/error.h"

namespace loom {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// A special token entry: a string, an AddedToken object {"content": ...}, or null.
std::optional<std::string> special_token(const json& j, const char* key, const std::string& path) {
  if (!j.contains(key) || j[key].is_null()) return std::nullopt;
  const json& v = j[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  fail(path, ": \"", key, "\" must be a string, an object with \"content\", or null; found ", v.dump());
}

// The tokenizer file a path names: the file itself, or tokenizer.json / tokenizer.model in a folder.
fs::path tokenizer_file(const std::string& path) {
  fs::path p(path);
  LOOM_CHECK(fs::exists(p), "tokenizer not found: ", path,
             " (expected a tokenizer.json, a sentencepiece .model, or a folder holding one)");
  if (!fs::is_directory(p)) return p;
  for (const char* name : {"tokenizer.json", "tokenizer.model"})
    if (fs::exists(p / name)) return p / name;
  fail("no tokenizer in folder ", path, ": expected tokenizer.json (HF) or tokenizer.model (sentencepiece) in it");
}

}  // namespace

SpecialTokenConfig read_special_token_config(const std::string& path) {
  SpecialTokenConfig c;
  std::ifstream f(path, std::ios::binary);
  if (!f.good()) return c;
  json j = json::parse(f, nullptr, /*allow_exceptions=*/false);
  LOOM_CHECK(!j.is_discarded() && j.is_object(), path,
             ": not a JSON object (expected a transformers tokenizer_config.json)");
  c.path = path;
  c.bos_token = special_token(j, "bos_token", path);
  c.eos_token = special_token(j, "eos_token", path);
  if (j.contains("add_bos_token") && !j["add_bos_token"].is_null()) {
    LOOM_CHECK(j["add_bos_token"].is_boolean(), path, ": \"add_bos_token\" must be true or false, found ",
               j["add_bos_token"].dump());
    c.add_bos_token = j["add_bos_token"].get<bool>();
  }
  return c;
}

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string& path) {
  fs::path file = tokenizer_file(path);
  SpecialTokenConfig config = read_special_token_config((file.parent_path() / "tokenizer_config.json").string());
  std::string ext = file.extension().string();
  if (ext == ".json") return BpeTokenizer::from_file(file.string(), config);
  if (ext == ".model") return std::make_unique<SpTokenizer>(file.string(), config);
  fail("unrecognised tokenizer file ", file.string(),
       ": expected a HF tokenizer.json (.json) or a sentencepiece model (.model)");
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 2);
  if (add_bos && bos_id_ >= 0) ids.push_back(bos_id_);
  encode_into(text, ids, nullptr);
  return ids;
}

std::vector<int32_t> Tokenizer::encode_with_offsets(std::string_view text, std::vector<size_t>* starts) const {
  std::vector<int32_t> ids;
  if (starts) starts->clear();
  encode_into(text, ids, starts);
  return ids;
}

}  // namespace loom
