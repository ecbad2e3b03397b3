#include "data/tokenizer_record.h"

#include <climits>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "data/json_fields.h"
#include "data/shards.h"
#include "ops/error.h"
#include "ops/files.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

json id_or_null(int32_t id) { return id >= 0 ? json(id) : json(nullptr); }
std::string id_or_none(int32_t id) { return id >= 0 ? std::to_string(id) : "none"; }

// An optional token id of a record (null: none); `path` is its key path.
int32_t read_id(const json& obj, const char* key, const std::string& where, const std::string& path) {
  const json* v = json_member(obj, key);
  return v ? int32_t(json_integer(*v, 0, INT32_MAX, where, json_key_path(path, key))) : -1;
}

TokenizerRecord tokenizer_record_from_json(const json& j, const std::string& where) {
  if (!j.is_object()) json_type_error(where, "tokenizer", "an object", j);
  TokenizerRecord r;
  r.file = json_string_at(j, "file", where, "tokenizer");
  r.fnv1a64 = json_string_at(j, "fnv1a64", where, "tokenizer");
  const json* vocab = json_member(j, "vocab_size");
  if (!vocab) fail(where, ": tokenizer.vocab_size is missing");
  r.vocab_size = json_integer(*vocab, 1, INT32_MAX, where, "tokenizer.vocab_size");
  r.bos = read_id(j, "bos", where, "tokenizer");
  r.eos = read_id(j, "eos", where, "tokenizer");
  r.pad = read_id(j, "pad", where, "tokenizer");
  return r;
}

TemplateRecord template_record_from_json(const json& j, const std::string& where) {
  if (!j.is_object()) json_type_error(where, "template", "an object or null", j);
  TemplateRecord r;
  r.name = json_string_at(j, "name", where, "template");
  r.source_fnv1a64 = json_optional_string_at(j, "source_fnv1a64", where, "template").value_or("");
  r.default_system = json_optional_string_at(j, "default_system", where, "template").value_or("");
  r.end_of_turn = read_id(j, "end_of_turn", where, "template");
  return r;
}

bool same_template(const TemplateRecord& a, const TemplateRecord& b) {
  return a.name == b.name && a.default_system == b.default_system && a.end_of_turn == b.end_of_turn;
}

// The template model.template_name resolves to for the model's tokenizer; nullopt for "none" or
// when loom cannot tell the model's template (auto without a chat_template it knows).
std::optional<TemplateRecord> model_template(const ModelTokenizer& model, const Tokenizer& tok) {
  if (model.template_name == "none") return std::nullopt;
  const bool inst_tokens = tok.token_to_id("[INST]") >= 0 && tok.token_to_id("[/INST]") >= 0;
  try {
    const ChatTemplate t =
        resolve_chat_template(model.template_name, read_chat_template_source(model.path), inst_tokens);
    return record_template(t, model.path, tok);
  } catch (const Error&) {
    return std::nullopt;
  }
}

// prepared.json of an earlier loom: its identity's tokenizer_fnv1a64 against the model's files.
void check_earlier_preparation(const std::string& dir, const std::string& subject, const json& manifest,
                               const std::string& recorded_file, const ModelTokenizer& model, const std::string& fix) {
  const json* identity = json_member(manifest, "identity");
  const json* hash = identity ? json_member(*identity, "tokenizer_fnv1a64") : nullptr;
  if (!hash || !hash->is_string()) {
    std::fprintf(stderr, "note: %s records no hash of its tokenizer; only its token ids' range is checked\n",
                 dir.c_str());
    return;
  }
  const std::string ours = hex64(tokenizer_files_fnv1a64(model.path));
  LOOM_CHECK(hash->get<std::string>() == ours, subject, " was prepared by an earlier loom with the tokenizer ",
             recorded_file, " (tokenizer files fnv1a64 ", hash->get<std::string>(), ") but ", model.name, " is ",
             tokenizer_file(model.path, model.name), " (fnv1a64 ", ours, "); ", fix);
  std::fprintf(stderr,
               "note: %s was prepared by an earlier loom, which recorded only a hash of the tokenizer files; it "
               "matches %s (re-run build/prepare to record vocabulary, special ids and chat template)\n",
               dir.c_str(), model.name.c_str());
}

}  // namespace

TokenizerRecord record_tokenizer(const std::string& tokenizer_path, const Tokenizer& tok) {
  TokenizerRecord r;
  r.file = tokenizer_file(tokenizer_path);
  r.fnv1a64 = hex64(fnv1a64_file(r.file, "tokenizer"));
  r.vocab_size = tok.vocab_size();
  r.bos = tok.bos_id();
  r.eos = tok.eos_id();
  r.pad = tok.pad_id();
  return r;
}

TemplateRecord record_template(const ChatTemplate& tmpl, const std::string& tokenizer_path, const Tokenizer& tok) {
  TemplateRecord r;
  r.name = tmpl.name;
  const std::string source = read_chat_template_source(tokenizer_path);
  if (!source.empty()) r.source_fnv1a64 = hex64(fnv1a64(source.data(), source.size()));
  r.default_system = tmpl.default_system;
  r.end_of_turn = tok.token_to_id(end_of_turn_text(tmpl));
  return r;
}

json tokenizer_record_json(const TokenizerRecord& r) {
  return json{{"file", r.file},        {"fnv1a64", r.fnv1a64},  {"vocab_size", r.vocab_size},
              {"bos", id_or_null(r.bos)}, {"eos", id_or_null(r.eos)}, {"pad", id_or_null(r.pad)}};
}

json template_record_json(const TemplateRecord& r) {
  return json{{"name", r.name},
              {"source_fnv1a64", r.source_fnv1a64},
              {"default_system", r.default_system},
              {"end_of_turn", id_or_null(r.end_of_turn)}};
}

std::string describe(const TokenizerRecord& r) {
  return cat("<", r.file, ", fnv1a64 ", r.fnv1a64, ", vocab ", r.vocab_size, ", bos ", id_or_none(r.bos), ", eos ",
             id_or_none(r.eos), ", pad ", id_or_none(r.pad), ">");
}

std::string describe(const TemplateRecord& r) {
  std::string system;
  if (!r.default_system.empty())
    system = cat(", default system prompt \"", r.default_system.substr(0, 60),
                 r.default_system.size() > 60 ? "...\"" : "\"");
  return cat("<", r.name, ", end of turn ", id_or_none(r.end_of_turn), system, ", source fnv1a64 ",
             r.source_fnv1a64.empty() ? "none" : r.source_fnv1a64, ">");
}

bool same_tokenizer(const TokenizerRecord& a, const TokenizerRecord& b) {
  return a.fnv1a64 == b.fnv1a64 && a.vocab_size == b.vocab_size && a.bos == b.bos && a.eos == b.eos;
}

uint64_t tokenizer_files_fnv1a64(const std::string& tokenizer_path) {
  const std::string file = tokenizer_file(tokenizer_path);
  uint64_t h = fnv1a64_file(file, "tokenizer");
  const fs::path dir = fs::path(file).parent_path();
  std::error_code ec;
  for (const char* extra : {"tokenizer_config.json", "chat_template.jinja"})
    if (fs::exists(dir / extra, ec)) h = fnv1a64_file((dir / extra).string(), extra, h);
  return h;
}

void check_prepared_tokenizer(const std::string& dir, const std::string& subject, const ModelTokenizer& model,
                              const std::string& fix) {
  const std::string where = (fs::path(dir) / kManifestName).string();
  const std::string text = read_manifest(dir);
  if (text.empty()) return;  // load_prepared reports the missing manifest
  const json manifest = parse_json(text, where);
  const json* recorded = json_member(manifest, "tokenizer");
  if (!recorded) {
    std::fprintf(stderr, "note: %s records no tokenizer; only its token ids' range is checked\n", where.c_str());
    return;
  }
  if (recorded->is_string())
    return check_earlier_preparation(dir, subject, manifest, recorded->get<std::string>(), model, fix);

  const TokenizerRecord data = tokenizer_record_from_json(*recorded, where);
  const std::unique_ptr<Tokenizer> tok = Tokenizer::load(model.path, model.name);
  const TokenizerRecord ours = record_tokenizer(model.path, *tok);
  LOOM_CHECK(same_tokenizer(data, ours), subject, " was tokenized with ", describe(data), " but ", model.name, " is ",
             describe(ours), "; ", fix);

  const json* recorded_template = json_member(manifest, "template");
  if (!recorded_template) return;  // text records: no template
  const TemplateRecord data_template = template_record_from_json(*recorded_template, where);
  const std::optional<TemplateRecord> ours_template = model_template(model, *tok);
  LOOM_CHECK(!ours_template || same_template(data_template, *ours_template), subject,
             " was rendered with the chat template ", describe(data_template), " but data.template ",
             model.template_name, " gives ", ours_template ? describe(*ours_template) : "", " for ", model.name,
             "; set data.template: ", data_template.name, " to train on it as prepared, or ", fix);
}

std::string prepared_source(const std::string& dir) {
  const std::string text = read_manifest(dir);
  if (text.empty()) return "";
  const json manifest = parse_json(text, (fs::path(dir) / kManifestName).string());
  const json* source = json_member(manifest, "source");
  return source && source->is_string() ? source->get<std::string>() : "";
}

}  // namespace loom
