#include "data/bpe_tokenizer.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/utf8.h"
#include "ops/error.h"

namespace loom {

using json = nlohmann::json;

namespace {

const json& member(const json& j, const char* key) {
  static const json null_value;
  return j.is_object() && j.contains(key) ? j[key] : null_value;
}

// Checks the model section and returns its options; everything loom does not implement is an
// error that says what was found.
BpeOptions read_model_options(const json& model, const std::string& where) {
  LOOM_CHECK(model.is_object(), where, ": \"model\" must be an object");
  std::string type =
      model.contains("type") ? model["type"].get<std::string>() : (model.contains("merges") ? "BPE" : "?");
  LOOM_CHECK(type == "BPE", where, ": unsupported model type \"", type,
             "\"; loom reads BPE tokenizer.json files (Llama, Mistral, Qwen), not WordPiece, WordLevel or Unigram");
  const json& dropout = member(model, "dropout");
  LOOM_CHECK(dropout.is_null() || dropout.get<double>() == 0.0, where, ": model.dropout = ", dropout.dump(),
             "; BPE dropout randomizes tokenization and is not supported (set it to null)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json& v = member(model, key);
    LOOM_CHECK(v.is_null() || v.get<std::string>().empty(), where, ": model.", key, " = ", v.dump(),
               " is not supported (Llama, Mistral and Qwen files leave it null or empty)");
  }
  BpeOptions o;
  if (!member(model, "unk_token").is_null()) o.unk_token = model["unk_token"].get<std::string>();
  o.fuse_unk = member(model, "fuse_unk").is_boolean() && model["fuse_unk"].get<bool>();
  o.byte_fallback = member(model, "byte_fallback").is_boolean() && model["byte_fallback"].get<bool>();
  o.ignore_merges = member(model, "ignore_merges").is_boolean() && model["ignore_merges"].get<bool>();
  return o;
}

std::vector<std::pair<std::string, int32_t>> read_vocab(const json& model, const std::string& where) {
  const json& v = member(model, "vocab");
  LOOM_CHECK(v.is_object(), where, ": model.vocab must be an object of token -> id");
  std::vector<std::pair<std::string, int32_t>> out;
  out.reserve(v.size());
  for (auto it = v.begin(); it != v.end(); ++it) out.emplace_back(it.key(), it.value().get<int32_t>());
  return out;
}

// Merges as ["a b", ...] (split at the one space; "#version" lines skipped) or [["a", "b"], ...].
std::vector<std::pair<std::string, std::string>> read_merges(const json& model, const std::string& where) {
  const json& m = member(model, "merges");
  LOOM_CHECK(m.is_array(), where, ": model.merges must be a list");
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(m.size());
  for (size_t i = 0; i < m.size(); ++i) {
    const json& e = m[i];
    if (e.is_array()) {
      LOOM_CHECK(e.size() == 2 && e[0].is_string() && e[1].is_string(), where, ": model.merges[", i,
                 "] must be a pair of strings, found ", e.dump());
      out.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
      continue;
    }
    LOOM_CHECK(e.is_string(), where, ": model.merges[", i, "] must be \"a b\" or [\"a\", \"b\"], found ", e.dump());
    const std::string& s = e.get_ref<const std::string&>();
    if (s.rfind("#version", 0) == 0) continue;
    size_t space = s.find(' ');
    LOOM_CHECK(space != std::string::npos && s.find(' ', space + 1) == std::string::npos, where, ": model.merges[", i,
               "] = \"", s, "\" must be two tokens separated by one space");
    out.emplace_back(s.substr(0, space), s.substr(space + 1));
  }
  return out;
}

std::vector<AddedToken> read_added_tokens(const json& j, const std::string& where) {
  std::vector<AddedToken> out;
  const json& list = member(j, "added_tokens");
  if (list.is_null()) return out;
  LOOM_CHECK(list.is_array(), where, ": \"added_tokens\" must be a list");
  for (const json& a : list) {
    AddedToken t;
    t.content = a.at("content").get<std::string>();
    t.id = a.at("id").get<int32_t>();
    auto flag = [&](const char* key, bool fallback) { return a.contains(key) ? a[key].get<bool>() : fallback; };
    t.special = flag("special", false);
    t.single_word = flag("single_word", false);
    t.lstrip = flag("lstrip", false);
    t.rstrip = flag("rstrip", false);
    t.normalized = flag("normalized", !t.special);
    out.push_back(std::move(t));
  }
  return out;
}

// True when the post-processor prepends a special token to a single sequence.
bool post_processor_prepends(const json& p) {
  if (!p.is_object()) return false;
  std::string type = p.value("type", "");
  if (type == "Sequence") {
    for (const json& q : member(p, "processors"))
      if (post_processor_prepends(q)) return true;
    return false;
  }
  if (type == "TemplateProcessing") {
    const json& single = member(p, "single");
    return single.is_array() && !single.empty() && single[0].contains("SpecialToken");
  }
  return false;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  LOOM_CHECK(f.good(), "cannot open tokenizer file ", path);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

}  // namespace

BpeTokenizer::BpeTokenizer(const json& j, const std::string& where, const SpecialTokenConfig& config)
    : pipeline_(make_text_pipeline(member(j, "normalizer"), member(j, "pre_tokenizer"), where)),
      model_(read_vocab(member(j, "model"), where), read_merges(member(j, "model"), where),
             read_model_options(member(j, "model"), where), pipeline_.byte_level, where),
      decoder_(make_decoder_chain(member(j, "decoder"), where)) {
  std::vector<AddedToken> raw, normalized;
  std::vector<std::string> raw_patterns, normalized_patterns;
  vocab_size_ = model_.max_id() + 1;
  for (AddedToken& t : read_added_tokens(j, where)) {
    added_ids_[t.content] = t.id;
    vocab_size_ = std::max(vocab_size_, t.id + 1);
    std::string text = t.content;
    if (t.normalized && !pipeline_.normalizers.empty()) {
      AlignedText a;
      text = std::string(a.view(pipeline_.normalize(a, a.append_input(t.content, 0, t.content.size()))));
    }
    added_text_[t.id] = text;
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
  std::string text = read_file(path);
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  LOOM_CHECK(!j.is_discarded() && j.is_object(), path, ": not a JSON object (expected a HF tokenizer.json)");
  LOOM_CHECK(j.contains("model"), path, ": no \"model\" key (expected a HF tokenizer.json)");
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
  } else {
    bos_id_ = first_known({"<s>", "<|begin_of_text|>", "<bos>"});
    eos_id_ = first_known({"</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>"});
  }
  bos_by_default_ = config.add_bos_token ? *config.add_bos_token : post_processor_prepends(member(j, "post_processor"));
  bos_by_default_ = bos_by_default_ && bos_id_ >= 0;
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

}  // namespace loom
