// Tokenizer::load: picks the implementation from the path and reads BOS/EOS from the
// tokenizer_config.json beside the tokenizer file.
#include "data/tokenizer.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "data/bpe_tokenizer.h"
#include "data/json_fields.h"
#include "data/sp_tokenizer.h"
#include "data/tokenizer_config.h"
#include "ops/error.h"
#include "ops/files.h"

namespace loom {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// A special token entry: a string, an AddedToken object {"content": ...}, or null.
std::optional<std::string> special_token(const json& j, const char* key, const std::string& path) {
  const json* v = json_member(j, key);
  if (!v) return std::nullopt;
  if (v->is_string()) return v->get<std::string>();
  if (v->is_object()) return json_string_at(*v, "content", path, key);
  json_type_error(path, key, "a string, an object with \"content\", or null", *v);
}

}  // namespace

std::string tokenizer_file(const std::string& path, const std::string& what) {
  std::error_code ec;  // the non-throwing overloads: a path too long for the system is an error below
  if (fs::is_directory(path, ec)) {
    for (const char* name : {"tokenizer.json", "tokenizer.model"})
      if (fs::exists(fs::path(path) / name, ec)) return (fs::path(path) / name).string();
    fail(what, " ", path,
         ": no tokenizer in this folder; expected tokenizer.json (HF) or tokenizer.model (sentencepiece) in it");
  }
  require_regular_file(path, what);
  return path;
}

bool holds_tokenizer(const std::string& dir) {
  std::error_code ec;
  return fs::is_directory(dir, ec) &&
         (fs::exists(fs::path(dir) / "tokenizer.json", ec) || fs::exists(fs::path(dir) / "tokenizer.model", ec));
}

SpecialTokenConfig read_special_token_config(const std::string& path) {
  SpecialTokenConfig c;
  std::error_code ec;
  if (!fs::exists(path, ec)) return c;
  const json j = read_json_file(path, "tokenizer_config.json");
  LOOM_CHECK(j.is_object(), path, ": not a JSON object (expected a transformers tokenizer_config.json)");
  c.path = path;
  c.bos_token = special_token(j, "bos_token", path);
  c.eos_token = special_token(j, "eos_token", path);
  c.pad_token = special_token(j, "pad_token", path);
  if (json_member(j, "add_bos_token")) c.add_bos_token = json_bool_at(j, "add_bos_token", false, path, "");
  if (json_member(j, "add_eos_token")) c.add_eos_token = json_bool_at(j, "add_eos_token", false, path, "");
  return c;
}

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string& path, const std::string& what) {
  const fs::path file = tokenizer_file(path, what);
  SpecialTokenConfig config = read_special_token_config((file.parent_path() / "tokenizer_config.json").string());
  std::string ext = file.extension().string();
  if (ext == ".json") return BpeTokenizer::from_file(file.string(), config);
  if (ext == ".model") return std::make_unique<SpTokenizer>(file.string(), config);
  fail("unrecognised tokenizer file ", file.string(),
       ": expected a HF tokenizer.json (.json) or a sentencepiece model (.model)");
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> ids;
  if (add_special_tokens) ids = special_ids_.before;
  ids.reserve(ids.size() + text.size() / 3 + 2);
  encode_into(text, ids, nullptr);
  if (add_special_tokens) ids.insert(ids.end(), special_ids_.after.begin(), special_ids_.after.end());
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::vector<int32_t> kept;
  kept.reserve(ids.size());
  for (int32_t id : ids)
    if (!decode_skips(id, skip_special_tokens)) kept.push_back(id);
  return decode_kept(kept);
}

bool Tokenizer::decode_skips(int32_t id, bool skip_special_tokens) const {
  LOOM_CHECK(id >= 0, "cannot decode token id ", id, ": token ids are never negative");
  return id >= vocab_size();
}

SpecialIds Tokenizer::bos_eos_ids(bool add_bos, bool add_eos) const {
  SpecialIds s;
  if (add_bos && bos_id_ >= 0) s.before.push_back(bos_id_);
  if (add_eos && eos_id_ >= 0) s.after.push_back(eos_id_);
  return s;
}

std::vector<int32_t> Tokenizer::encode_with_offsets(std::string_view text, std::vector<size_t>* starts) const {
  std::vector<int32_t> ids;
  if (starts) starts->clear();
  encode_into(text, ids, starts);
  return ids;
}

}  // namespace loom
