#include "data/bpe_tokenizer.h"

#include <nlohmann/json.hpp>

#include "data/json_fields.h"
#include "data/utf8.h"
#include "ops/error.h"
#include "ops/files.h"

namespace loom {

using json = nlohmann::json;

namespace {

const json& member(const json& j, const char* key) {
  static const json null_value;
  const json* v = json_member(j, key);
  return v ? *v : null_value;
}

// Checks the model section and returns its options; everything loom does not implement is an
// error that says what was found.
BpeOptions read_model_options(const json& model, const std::string& where) {
  const std::string type = json_optional_string_at(model, "type", where, "model").value_or("BPE");
  LOOM_CHECK(type == "BPE", where, ": unsupported model type \"", type,
             "\"; loom reads BPE tokenizer.json files (Llama, Mistral, Qwen), not WordPiece, WordLevel or Unigram");
  if (const json* dropout = json_member(model, "dropout")) {
    if (!dropout->is_number()) json_type_error(where, "model.dropout", "a number or null", *dropout);
    LOOM_CHECK(dropout->get<double>() == 0.0, where, ": model.dropout = ", dropout->dump(),
               "; BPE dropout randomizes tokenization and is not supported (set it to null)");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const std::optional<std::string> v = json_optional_string_at(model, key, where, "model");
    LOOM_CHECK(!v || v->empty(), where, ": model.", key, " = \"", *v,
               "\" is not supported (Llama, Mistral and Qwen files leave it null or empty)");
  }
  BpeOptions o;
  o.unk_token = json_optional_string_at(model, "unk_token", where, "model");
  o.fuse_unk = json_bool_at(model, "fuse_unk", false, where, "model");
  o.byte_fallback = json_bool_at(model, "byte_fallback", false, where, "model");
  o.ignore_merges = json_bool_at(model, "ignore_merges", false, where, "model");
  return o;
}

// The most ids a tokenizer.json can use: one per vocab entry and per added token. Ids beyond it
// would leave holes that size the id tables by the largest id (a stray 2^31 - 1 asks for 64 GB).
int64_t id_limit(const json& j) {
  const json& vocab = member(member(j, "model"), "vocab");
  const json& added = member(j, "added_tokens");
  return int64_t(vocab.is_object() ? vocab.size() : 0) + int64_t(added.is_array() ? added.size() : 0);
}

std::string id_range_hint(int64_t limit) {
  return cat(" (ids count up from 0: model.vocab and added_tokens hold ", limit, " tokens together)");
}

std::vector<std::pair<std::string, int32_t>> read_vocab(const json& model, int64_t limit, const std::string& where) {
  const json& v = json_object_at(model, "vocab", where, "model");
  std::vector<std::pair<std::string, int32_t>> out;
  out.reserve(v.size());
  const std::string hint = id_range_hint(limit);
  for (auto it = v.begin(); it != v.end(); ++it) {
    const std::string path = cat("model.vocab[\"", it.key(), "\"]");
    out.emplace_back(it.key(), int32_t(json_integer(it.value(), 0, limit - 1, where, path, hint)));
  }
  return out;
}

// Merges as ["a b", ...] (split at the one space; "#version" lines skipped) or [["a", "b"], ...].
std::vector<std::pair<std::string, std::string>> read_merges(const json& model, const std::string& where) {
  const json& m = json_array_at(model, "merges", where, "model");
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(m.size());
  for (size_t i = 0; i < m.size(); ++i) {
    const json& e = m[i];
    if (e.is_array()) {
      LOOM_CHECK(e.size() == 2 && e[0].is_string() && e[1].is_string(), where, ": model.merges[", i,
                 "] must be a pair of strings, found ", json_shown(e));
      out.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
      continue;
    }
    LOOM_CHECK(e.is_string(), where, ": model.merges[", i, "] must be \"a b\" or [\"a\", \"b\"], found ",
               json_shown(e));
    const std::string& s = e.get_ref<const std::string&>();
    if (s.rfind("#version", 0) == 0) continue;
    size_t space = s.find(' ');
    LOOM_CHECK(space != std::string::npos && s.find(' ', space + 1) == std::string::npos, where, ": model.merges[", i,
               "] = \"", s, "\" must be two tokens separated by one space");
    out.emplace_back(s.substr(0, space), s.substr(space + 1));
  }
  return out;
}

AddedToken read_added_token(const json& a, const std::string& path, int64_t limit, const std::string& where) {
  if (!a.is_object()) json_type_error(where, path, "an object {\"id\", \"content\", ...}", a);
  AddedToken t;
  t.content = json_string_at(a, "content", where, path);
  const json* id = json_member(a, "id");
  if (!id) fail(where, ": ", path, ".id is missing; every added token needs its id");
  t.id = int32_t(json_integer(*id, 0, limit - 1, where, path + ".id", id_range_hint(limit)));
  t.special = json_bool_at(a, "special", false, where, path);
  t.single_word = json_bool_at(a, "single_word", false, where, path);
  t.lstrip = json_bool_at(a, "lstrip", false, where, path);
  t.rstrip = json_bool_at(a, "rstrip", false, where, path);
  t.normalized = json_bool_at(a, "normalized", !t.special, where, path);
  return t;
}

// Added tokens; two of them with one id or one content would make encode and decode disagree.
std::vector<AddedToken> read_added_tokens(const json& j, int64_t limit, const std::string& where) {
  std::vector<AddedToken> out;
  const json& list = member(j, "added_tokens");
  if (list.is_null()) return out;
  if (!list.is_array()) json_type_error(where, "added_tokens", "a list", list);
  std::unordered_map<int32_t, size_t> index_of_id;
  std::unordered_map<std::string, size_t> index_of_content;
  for (size_t i = 0; i < list.size(); ++i) {
    AddedToken t = read_added_token(list[i], json_index_path("added_tokens", i), limit, where);
    const auto [same_id, new_id] = index_of_id.emplace(t.id, i);
    LOOM_CHECK(new_id, where, ": added_tokens[", same_id->second, "] and added_tokens[", i, "] both have id ", t.id,
               "; every added token needs its own id");
    const auto [same_content, new_content] = index_of_content.emplace(t.content, i);
    LOOM_CHECK(new_content, where, ": added_tokens[", same_content->second, "] and added_tokens[", i,
               "] are both \"", t.content, "\"; list each added token once");
    out.push_back(std::move(t));
  }
  return out;
}

// An id a post-processor adds, checked against the ids the file defines.
int32_t special_id(const json& v, int64_t limit, const std::string& where, const std::string& path) {
  return int32_t(json_integer(v, 0, limit - 1, where, path, id_range_hint(limit)));
}

// RobertaProcessing / BertProcessing: "cls": [token, id] before the text, "sep": [token, id] after.
SpecialIds read_cls_sep(const json& p, int64_t limit, const std::string& where, const std::string& path) {
  auto id_of = [&](const char* key) {
    const json& pair = json_array_at(p, key, where, path);
    const std::string at = json_key_path(path, key);
    LOOM_CHECK(pair.size() == 2 && pair[0].is_string(), where, ": ", at, " must be [token, id], found ",
               json_shown(pair));
    return special_id(pair[1], limit, where, json_index_path(at, 1));
  };
  return SpecialIds{{id_of("cls")}, {id_of("sep")}};
}

// TemplateProcessing's "single": special tokens around one {"Sequence": {"id": "A"}}; each
// {"SpecialToken": {"id": NAME}} adds the ids "special_tokens"[NAME] lists.
SpecialIds read_template(const json& p, int64_t limit, const std::string& where, const std::string& path) {
  const json& single = json_array_at(p, "single", where, path);
  const json* specials = json_member(p, "special_tokens");
  SpecialIds out;
  bool seen_text = false;
  for (size_t i = 0; i < single.size(); ++i) {
    const std::string at = json_index_path(json_key_path(path, "single"), i);
    const json& item = single[i];
    if (!item.is_object() || item.size() != 1 || !(item.contains("SpecialToken") || item.contains("Sequence")))
      json_type_error(where, at, "{\"SpecialToken\": {...}} or {\"Sequence\": {...}}", item);
    if (const json* seq = json_member(item, "Sequence")) {
      const std::string id = json_string_at(*seq, "id", where, at + ".Sequence");
      LOOM_CHECK(id == "A" && !seen_text, where, ": ", at, " is $", id, "; a single-sequence template holds $A once");
      seen_text = true;
      continue;
    }
    const std::string name = json_string_at(item["SpecialToken"], "id", where, at + ".SpecialToken");
    const json* entry = specials && specials->is_object() ? json_member(*specials, name.c_str()) : nullptr;
    LOOM_CHECK(entry, where, ": ", at, " adds \"", name, "\", which ", json_key_path(path, "special_tokens"),
               " does not list");
    const std::string entry_path = json_key_path(json_key_path(path, "special_tokens"), name);
    const json& ids = json_array_at(*entry, "ids", where, entry_path);
    std::vector<int32_t>& side = seen_text ? out.after : out.before;
    for (size_t k = 0; k < ids.size(); ++k)
      side.push_back(special_id(ids[k], limit, where, json_index_path(entry_path + ".ids", k)));
  }
  LOOM_CHECK(seen_text, where, ": ", json_key_path(path, "single"), " has no {\"Sequence\": {\"id\": \"A\"}}");
  return out;
}

// What the post-processor adds around a single sequence with add_special_tokens=True.
SpecialIds read_post_processor(const json& p, int64_t limit, const std::string& where, const std::string& path) {
  if (p.is_null()) return {};
  if (!p.is_object()) json_type_error(where, path, "an object or null", p);
  const std::optional<std::string> type = json_optional_string_at(p, "type", where, path);
  if (!type) fail(where, ": ", path, ".type is missing");
  if (*type == "ByteLevel") return {};  // it only adjusts offsets
  if (*type == "TemplateProcessing") return read_template(p, limit, where, path);
  if (*type == "RobertaProcessing" || *type == "BertProcessing") return read_cls_sep(p, limit, where, path);
  LOOM_CHECK(*type == "Sequence", where, ": ", path, ".type \"", *type,
             "\" is not a post-processor loom knows (TemplateProcessing, RobertaProcessing, BertProcessing, ByteLevel, "
             "Sequence)");
  // tokenizers hands each processor of a Sequence the pieces the one before it made, not the text,
  // so two that add tokens drop the text; real files hold one (Llama 3: ByteLevel, then a template).
  SpecialIds out;
  std::string adder;  // the processor that adds tokens
  const json& list = json_array_at(p, "processors", where, path);
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string at = json_index_path(path + ".processors", i);
    SpecialIds step = read_post_processor(list[i], limit, where, at);
    if (step.before.empty() && step.after.empty()) continue;
    LOOM_CHECK(adder.empty(), where, ": ", adder, " and ", at,
               " both add special tokens; loom reads a post-processor Sequence with one that does");
    adder = at;
    out = std::move(step);
  }
  return out;
}

}  // namespace

BpeTokenizer::BpeTokenizer(const json& j, const std::string& where, const SpecialTokenConfig& config)
    : pipeline_(make_text_pipeline(member(j, "normalizer"), member(j, "pre_tokenizer"), where)),
      model_(read_vocab(member(j, "model"), id_limit(j), where), read_merges(member(j, "model"), where),
             read_model_options(member(j, "model"), where), pipeline_.byte_level, where),
      decoder_(make_decoder_chain(member(j, "decoder"), where)) {
  std::vector<AddedToken> raw, normalized;
  std::vector<std::string> raw_patterns, normalized_patterns;
  vocab_size_ = model_.max_id() + 1;
  for (AddedToken& t : read_added_tokens(j, id_limit(j), where)) {
    added_ids_[t.content] = t.id;
    vocab_size_ = std::max(vocab_size_, t.id + 1);
    std::string text = t.content;
    if (t.normalized && !pipeline_.normalizers.empty()) {
      AlignedText a;
      text = std::string(a.view(pipeline_.normalize(a, a.append_input(t.content, 0, t.content.size()))));
    }
    added_text_[t.id] = text;
    if (t.special) special_added_.insert(t.id);
    if (t.normalized) {
      normalized_patterns.push_back(text);
      normalized.push_back(std::move(t));
    } else {
      raw_patterns.push_back(t.content);
      raw.push_back(std::move(t));
    }
  }
  raw_matcher_ = AddedTokenMatcher(std::move(raw), std::move(raw_patterns));
  normalized_matcher_ = AddedTokenMatcher(std::move(normalized), std::move(normalized_patterns));
  resolve_special_tokens(j, config, where);
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_file(const std::string& path, const SpecialTokenConfig& config) {
  const json j = read_json_file(path, "tokenizer file");
  LOOM_CHECK(j.is_object(), path, ": not a JSON object (expected a HF tokenizer.json)");
  if (!json_member(j, "model")) fail(path, ": no \"model\" (expected a HF tokenizer.json)");
  if (!j["model"].is_object()) json_type_error(path, "model", "an object", j["model"]);
  try {
    return std::make_unique<BpeTokenizer>(j, path, config);
  } catch (const json::exception& e) {
    fail(path, ": unexpected tokenizer.json layout: ", e.what());
  }
}

void BpeTokenizer::resolve_special_tokens(const json& j, const SpecialTokenConfig& config, const std::string& where) {
  auto id_of = [&](const std::optional<std::string>& token, const char* key) {
    if (!token) return int32_t(-1);
    int32_t id = token_to_id(*token);
    LOOM_CHECK(id >= 0, config.path, ": ", key, " \"", *token, "\" is not a token of ", where);
    return id;
  };
  auto first_known = [&](std::initializer_list<const char*> names) {
    for (const char* n : names)
      if (int32_t id = token_to_id(n); id >= 0) return id;
    return int32_t(-1);
  };
  if (config.has_file()) {
    bos_id_ = id_of(config.bos_token, "bos_token");
    eos_id_ = id_of(config.eos_token, "eos_token");
    // transformers adds a pad_token that is not in the vocabulary as a new token: no id here.
    if (config.pad_token) pad_id_ = token_to_id(*config.pad_token);
  } else {
    bos_id_ = first_known({"<s>", "<|begin_of_text|>", "<bos>"});
    eos_id_ = first_known({"</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>"});
  }
  special_ids_ = read_post_processor(member(j, "post_processor"), id_limit(j), where, "post_processor");
  if (config.add_bos_token || config.add_eos_token)
    special_ids_ = bos_eos_ids(config.add_bos_token.value_or(false), config.add_eos_token.value_or(false));
}

int32_t BpeTokenizer::token_to_id(std::string_view token) const {
  auto it = added_ids_.find(std::string(token));
  return it != added_ids_.end() ? it->second : model_.token_to_id(token);
}

namespace {

// Reused buffers of one thread's encode calls.
struct EncodeScratch {
  AlignedText text;
  std::vector<TextSegment> raw_segments, normalized_segments;
  std::vector<Span> pieces;
  std::vector<int32_t> piece_ids;
  std::vector<uint32_t> piece_starts;
};

// Input offset of the character holding byte k of t (tokens may start inside a character).
size_t origin_of(const AlignedText& t, uint32_t k, uint32_t floor) {
  while (k > floor && utf8::is_continuation(uint8_t(t.bytes[k]))) --k;
  return t.origin[k];
}

}  // namespace

void BpeTokenizer::encode_into(std::string_view text, std::vector<int32_t>& ids, std::vector<size_t>* starts) const {
  size_t bad = utf8::first_invalid(text);
  LOOM_CHECK(bad == std::string_view::npos, "cannot tokenize: text is not valid UTF-8 (byte ", int(uint8_t(text[bad])),
             " at offset ", bad, " of ", text.size(), ")");
  thread_local EncodeScratch s;
  auto emit = [&](int32_t id, size_t start) {
    ids.push_back(id);
    if (starts) starts->push_back(start);
  };
  auto encode_plain = [&](Span span) {
    pipeline_.pre_tokenize(s.text, span, s.pieces);
    for (Span piece : s.pieces) {
      s.piece_ids.clear();
      s.piece_starts.clear();
      model_.tokenize(s.text.view(piece), s.piece_ids, s.piece_starts);
      for (size_t k = 0; k < s.piece_ids.size(); ++k)
        emit(s.piece_ids[k], starts ? origin_of(s.text, piece.begin + s.piece_starts[k], piece.begin) : 0);
    }
  };
  s.raw_segments.clear();
  raw_matcher_.split(text, s.raw_segments);
  for (const TextSegment& seg : s.raw_segments) {
    if (seg.id >= 0) {
      emit(seg.id, seg.begin);
      continue;
    }
    s.text.clear();
    Span norm = pipeline_.normalize(s.text, s.text.append_input(text, seg.begin, seg.end));
    if (normalized_matcher_.empty()) {
      encode_plain(norm);
      continue;
    }
    s.normalized_segments.clear();
    normalized_matcher_.split(s.text.view(norm), s.normalized_segments);
    for (const TextSegment& sub : s.normalized_segments) {
      Span part{norm.begin + uint32_t(sub.begin), norm.begin + uint32_t(sub.end)};
      if (sub.id >= 0)
        emit(sub.id, s.text.origin[part.begin]);
      else
        encode_plain(part);
    }
  }
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    LOOM_CHECK(id >= 0 && id < vocab_size_, "cannot decode token id ", id, ": ids run from 0 to ", vocab_size_ - 1);
    auto added = added_text_.find(id);
    if (added != added_text_.end()) {
      tokens.push_back(added->second);
    } else if (const std::string* t = model_.id_to_token(id)) {
      tokens.push_back(*t);
    }  // an id inside the range that names no token is skipped, as HF does
  }
  return decoder_.decode(std::move(tokens));
}

bool BpeTokenizer::decode_skips(int32_t id, bool skip_special_tokens) const {
  if (Tokenizer::decode_skips(id, skip_special_tokens)) return true;
  if (added_text_.count(id)) return skip_special_tokens && special_added_.count(id);
  return !model_.id_to_token(id);
}

bool BpeTokenizer::is_byte_piece(int32_t id) const {
  if (!decoder_.byte_fallback || id < 0 || added_text_.count(id)) return false;
  const std::string* t = model_.id_to_token(id);
  return t && is_byte_fallback_token(*t);
}

}  // namespace loom
