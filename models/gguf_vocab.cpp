#include "models/gguf_vocab.h"

#include <sentencepiece_processor.h>

#include <filesystem>
#include <map>
#include <optional>
#include <unordered_map>

#include "data/json_fields.h"
#include "ops/error.h"
#include "ops/files.h"

namespace loom {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// llama.cpp's token types (gguf-py's TokenType).
constexpr int32_t kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6;
// The score the converter gives added tokens and padding of sentencepiece vocabs.
constexpr float kAddedScore = -1000.f;

// The split regexes of the byte-level tokenizers llama.cpp implements, as tokenizer.json spells
// them, with the pre-tokenizer name that selects each in llama.cpp (llama-vocab.cpp).
const std::pair<const char*, const char*> kKnownSplits[] = {
    {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
     "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
     "llama-bpe"},
    {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
     "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
     "qwen2"},
};

struct TokenList {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<float> scores;  // sentencepiece-style vocabs only
};

// An added token tokenizer.json lists.
struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
};

// The files beside the tokenizer that shape the metadata.
struct TokenizerFolder {
  std::string tokenizer_file;
  json tokenizer_json;    // null for a sentencepiece .model
  json tokenizer_config;  // null when absent
  fs::path dir;
};

json read_optional_json(const fs::path& path, const char* what) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return nullptr;
  json j = read_json_file(path.string(), what);
  LOOM_CHECK(j.is_object(), path.string(), ": not a JSON object (expected a transformers ", what, ")");
  return j;
}

bool sentencepiece_loads(const fs::path& file) {
  sentencepiece::SentencePieceProcessor sp;
  return sp.Load(file.string()).ok();
}

// A folder's tokenizer.model when sentencepiece reads it (the converter's first choice), else its
// tokenizer.json; a file is taken as it is.
std::string pick_tokenizer_file(const std::string& path) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) {
    require_regular_file(path, "tokenizer");
    return path;
  }
  const fs::path model = fs::path(path) / "tokenizer.model", hf = fs::path(path) / "tokenizer.json";
  if (fs::is_regular_file(model, ec) && sentencepiece_loads(model)) return model.string();
  LOOM_CHECK(fs::exists(hf, ec), "no tokenizer in ", path,
             ": a GGUF file carries its tokenizer; expected tokenizer.json or tokenizer.model there");
  require_regular_file(hf.string(), "tokenizer");
  return hf.string();
}

TokenizerFolder read_folder(const std::string& path) {
  TokenizerFolder f;
  f.tokenizer_file = pick_tokenizer_file(path);
  f.dir = fs::path(f.tokenizer_file).parent_path();
  if (f.dir.empty()) f.dir = ".";
  if (fs::path(f.tokenizer_file).extension() == ".json") {
    f.tokenizer_json = read_json_file(f.tokenizer_file, "tokenizer.json");
    LOOM_CHECK(f.tokenizer_json.is_object(), f.tokenizer_file, ": not a JSON object (expected an HF tokenizer.json)");
  }
  f.tokenizer_config = read_optional_json(f.dir / "tokenizer_config.json", "tokenizer_config.json");
  return f;
}

// The converter's does_token_look_special: some models leave control tokens unmarked.
bool looks_special(const std::string& t) {
  auto wrapped = [&](const std::string& open, const std::string& close) {
    return t.size() >= open.size() + close.size() && t.compare(0, open.size(), open) == 0 &&
           t.compare(t.size() - close.size(), close.size(), close) == 0;
  };
  return t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]" || wrapped("<|", "|>") ||
         wrapped("<\xEF\xBD\x9C", "\xEF\xBD\x9C>") || wrapped("<unused", ">");
}

std::vector<AddedToken> added_tokens(const TokenizerFolder& f) {
  std::vector<AddedToken> out;
  const json* list = json_member(f.tokenizer_json, "added_tokens");
  if (!list) return out;
  LOOM_CHECK(list->is_array(), f.tokenizer_file, ": added_tokens must be an array");
  for (size_t i = 0; i < list->size(); ++i) {
    const json& t = (*list)[i];
    const std::string path = json_index_path("added_tokens", i);
    AddedToken a;
    a.id = int32_t(json_integer(json_member(t, "id") ? t["id"] : json(), 0, INT32_MAX, f.tokenizer_file,
                                json_key_path(path, "id")));
    a.content = json_string_at(t, "content", f.tokenizer_file, path);
    a.special = json_bool_at(t, "special", false, f.tokenizer_file, path);
    out.push_back(a);
  }
  return out;
}

void check_fits(int32_t id, int vocab_size, const std::string& source, const std::string& token) {
  LOOM_CHECK(id < vocab_size, source, " has token '", token.substr(0, 60), "' at id ", id,
             " but the model's vocab_size is ", vocab_size,
             ": is this the tokenizer the model was trained with (data.tokenizer / model.path)?");
}

// Ids the tokenizer leaves free up to vocab_size, as the converter fills them.
void pad_to_vocab(TokenList& t, bool with_scores) {
  for (size_t i = 0; i < t.tokens.size(); ++i)
    if (t.tokens[i].empty() && t.types[i] == 0) {
      t.tokens[i] = "[PAD" + std::to_string(i) + "]";
      t.types[i] = kUnused;
      if (with_scores) t.scores[i] = kAddedScore;
    }
}

// tokenizer_config.json's added_tokens_decoder over a sentencepiece vocab (_create_vocab_sentencepiece).
void apply_added_tokens_decoder(TokenList& t, const TokenizerFolder& f) {
  const json* decoder = json_member(f.tokenizer_config, "added_tokens_decoder");
  if (!decoder) return;
  const std::string where = (f.dir / "tokenizer_config.json").string();
  LOOM_CHECK(decoder->is_object(), where, ": added_tokens_decoder must be an object");
  for (const auto& [key, entry] : decoder->items()) {
    int32_t id = -1;
    try {
      size_t used = 0;
      id = std::stoi(key, &used);
      if (used != key.size()) id = -1;
    } catch (const std::exception&) {
    }
    LOOM_CHECK(id >= 0, where, ": added_tokens_decoder key '", key.substr(0, 40), "' is not a token id");
    std::string content = json_string_at(entry, "content", where, json_key_path("added_tokens_decoder", key));
    if (id >= int32_t(t.tokens.size())) continue;  // the converter skips ids past the vocab
    const bool special = json_bool_at(entry, "special", false, where, json_key_path("added_tokens_decoder", key));
    t.types[id] = special || looks_special(content) ? kControl : kUserDefined;
    t.scores[id] = kAddedScore;
    t.tokens[id] = std::move(content);
  }
}

TokenList sentencepiece_tokens(const TokenizerFolder& f, int vocab_size) {
  sentencepiece::SentencePieceProcessor sp;
  const auto status = sp.Load(f.tokenizer_file);
  LOOM_CHECK(status.ok(), f.tokenizer_file, ": not a sentencepiece model (", status.ToString(), ")");
  TokenList t;
  t.tokens.resize(vocab_size);
  t.types.assign(vocab_size, 0);
  t.scores.assign(vocab_size, 0.f);
  for (int id = 0; id < sp.GetPieceSize(); ++id) {
    check_fits(id, vocab_size, f.tokenizer_file, sp.IdToPiece(id));
    t.tokens[id] = sp.IdToPiece(id);
    t.scores[id] = sp.GetScore(id);
    t.types[id] = sp.IsUnknown(id) ? kUnknown
                  : sp.IsControl(id) ? kControl
                  : sp.IsUnused(id)  ? kUnused
                  : sp.IsByte(id)    ? kByte
                                     : kNormal;
  }
  apply_added_tokens_decoder(t, f);
  pad_to_vocab(t, true);
  return t;
}

// model.merges in either form tokenizer.json uses: "a b" strings, or ["a", "b"] pairs (transformers
// >= 4.45, which allows spaces inside a part).
std::vector<std::pair<std::string, std::string>> read_merges(const TokenizerFolder& f) {
  std::vector<std::pair<std::string, std::string>> out;
  const json& model = f.tokenizer_json["model"];
  const json* merges = json_member(model, "merges");
  if (!merges) return out;
  LOOM_CHECK(merges->is_array(), f.tokenizer_file, ": model.merges must be an array");
  for (size_t i = 0; i < merges->size(); ++i) {
    const json& m = (*merges)[i];
    const std::string path = json_index_path("model.merges", i);
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ', 1);
      LOOM_CHECK(space != std::string::npos, f.tokenizer_file, ": ", path, " must be \"left right\", found ",
                 json_shown(m));
      out.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else {
      LOOM_CHECK(m.is_array() && m.size() == 2, f.tokenizer_file, ": ", path,
                 " must be \"left right\" or [left, right], found ", json_shown(m));
      out.emplace_back(json_string(m[0], f.tokenizer_file, path), json_string(m[1], f.tokenizer_file, path));
    }
  }
  return out;
}

// GGUF stores merges as "left right"; a space inside a part is written as U+0120, as gguf-py does.
std::string gguf_merge(const std::pair<std::string, std::string>& m) {
  auto escape = [](const std::string& part) {
    std::string s;
    for (char c : part) s += c == ' ' ? std::string("\xC4\xA0") : std::string(1, c);
    return s;
  };
  return escape(m.first) + " " + escape(m.second);
}

// The tokenizer.json vocab (model.vocab plus added tokens) by id, each with its type.
TokenList json_vocab(const TokenizerFolder& f, int vocab_size, const std::vector<AddedToken>& added) {
  TokenList t;
  t.tokens.resize(vocab_size);
  t.types.assign(vocab_size, 0);
  const json& vocab = json_object_at(f.tokenizer_json["model"], "vocab", f.tokenizer_file, "model");
  for (const auto& [token, id_json] : vocab.items()) {
    const int32_t id = int32_t(json_integer(id_json, 0, INT32_MAX, f.tokenizer_file, json_key_path("model.vocab", token)));
    check_fits(id, vocab_size, f.tokenizer_file, token);
    t.tokens[id] = token;
    t.types[id] = kNormal;
  }
  for (const AddedToken& a : added) {
    check_fits(a.id, vocab_size, f.tokenizer_file, a.content);
    t.tokens[a.id] = a.content;
    t.types[a.id] = a.special || looks_special(a.content) ? kControl : kUserDefined;
  }
  return t;
}

// The pre-tokenizer name llama.cpp needs for a byte-level tokenizer.json, from its split regex.
std::string byte_level_pre(const TokenizerFolder& f) {
  const json* pre = json_member(f.tokenizer_json, "pre_tokenizer");
  std::vector<const json*> steps;
  if (pre && pre->is_object()) {
    if (const json* list = json_member(*pre, "pretokenizers"); list && list->is_array())
      for (const json& s : *list) steps.push_back(&s);
    else
      steps.push_back(pre);
  }
  for (const json* s : steps) {
    if (!s->is_object() || s->value("type", "") != "Split") continue;
    const json* pattern = json_member(*s, "pattern");
    const json* regex = pattern ? json_member(*pattern, "Regex") : nullptr;
    if (!regex || !regex->is_string()) continue;
    for (const auto& [known, name] : kKnownSplits)
      if (regex->get<std::string>() == known) return name;
    fail(f.tokenizer_file, ": its pre-tokenizer splits text with the regex ", json_shown(*regex, 200),
         ", which is not one llama.cpp implements for GGUF (Llama 3's \"llama-bpe\" or Qwen2's \"qwen2\"); "
         "llama.cpp would tokenize differently, so no GGUF is written (use output.export: merged and "
         "convert with llama.cpp's convert_hf_to_gguf.py if it knows this tokenizer)");
  }
  fail(f.tokenizer_file, ": a byte-level BPE without a Split regex pre-tokenizer (GPT-2 style); loom writes GGUF "
       "tokenizers for Llama 3 and Qwen2/2.5/3 (\"llama-bpe\", \"qwen2\")");
}

// Whether a tokenizer.json is byte-level (ByteLevel pre-tokenizer or decoder) BPE.
bool is_byte_level(const json& tj) {
  for (const char* part : {"pre_tokenizer", "decoder"}) {
    const json* p = json_member(tj, part);
    if (!p) continue;
    if (p->value("type", "") == "ByteLevel") return true;
    for (const char* list : {"pretokenizers", "decoders"})
      if (const json* steps = json_member(*p, list); steps && steps->is_array())
        for (const json& s : *steps)
          if (s.is_object() && s.value("type", "") == "ByteLevel") return true;
  }
  return false;
}

// "▁" prepended to the text: a Prepend normalizer or a Metaspace pre-tokenizer that adds it.
bool adds_space_prefix(const json& tj) {
  std::vector<const json*> parts;
  for (const char* key : {"normalizer", "pre_tokenizer"}) {
    const json* p = json_member(tj, key);
    if (!p || !p->is_object()) continue;
    parts.push_back(p);
    for (const char* list : {"normalizers", "pretokenizers"})
      if (const json* steps = json_member(*p, list); steps && steps->is_array())
        for (const json& s : *steps) parts.push_back(&s);
  }
  for (const json* p : parts) {
    if (!p->is_object()) continue;
    const std::string type = p->value("type", "");
    if (type == "Prepend" && p->value("prepend", "") == "\xE2\x96\x81") return true;
    if (type == "Metaspace") {
      if (p->contains("prepend_scheme") && (*p)["prepend_scheme"].is_string())
        return (*p)["prepend_scheme"].get<std::string>() != "never";
      return p->value("add_prefix_space", true);
    }
  }
  return false;
}

// A Metaspace / byte-fallback tokenizer.json as llama.cpp's sentencepiece-style tokenizer (see the header).
TokenList metaspace_tokens(const TokenizerFolder& f, int vocab_size, const std::vector<AddedToken>& added) {
  TokenList t = json_vocab(f, vocab_size, added);
  const auto merges = read_merges(f);
  std::unordered_map<std::string, size_t> first_rank;
  for (size_t r = 0; r < merges.size(); ++r) first_rank.emplace(merges[r].first + merges[r].second, r);
  std::optional<std::string> unk;
  if (const json* u = json_member(f.tokenizer_json["model"], "unk_token"))
    unk = json_string(*u, f.tokenizer_file, "model.unk_token");
  t.scores.assign(vocab_size, 0.f);
  for (int id = 0; id < vocab_size; ++id) {
    const std::string& s = t.tokens[id];
    if (t.types[id] == kNormal) {
      const bool byte = s.size() == 6 && s.compare(0, 3, "<0x") == 0 && s[5] == '>' && std::isxdigit(uint8_t(s[3])) &&
                        std::isxdigit(uint8_t(s[4]));
      if (byte) t.types[id] = kByte;
      if (unk && s == *unk) t.types[id] = kUnknown;
      // A token no merge makes scores below every merge result: llama.cpp then merges into it last.
      auto it = first_rank.find(s);
      if (t.types[id] == kNormal) t.scores[id] = -float(it != first_rank.end() ? it->second : merges.size() + id);
    } else if (t.types[id] != 0) {
      t.scores[id] = t.types[id] == kControl ? 0.f : kAddedScore;
      if (unk && s == *unk) t.types[id] = kUnknown;
    }
  }
  pad_to_vocab(t, true);
  return t;
}

std::optional<std::string> config_token(const json& tokenizer_config, const std::string& typ) {
  const json* e = json_member(tokenizer_config, (typ + "_token").c_str());
  if (!e) return std::nullopt;
  if (e->is_string()) return e->get<std::string>();
  if (const json* c = e->is_object() ? json_member(*e, "content") : nullptr; c && c->is_string())
    return c->get<std::string>();
  return std::nullopt;
}

// bos/eos/unk/sep/pad ids as SpecialVocab finds them (see the header).
std::map<std::string, uint32_t> special_ids(const TokenizerFolder& f, const json& config, int n_tokens,
                                            const std::vector<AddedToken>& added) {
  std::map<std::string, uint32_t> ids;
  const char* types[] = {"bos", "eos", "unk", "sep", "pad"};
  for (const char* typ : types) {
    const std::optional<std::string> content = config_token(f.tokenizer_config, typ);
    if (!content) continue;
    for (const AddedToken& a : added)
      if (a.content == *content && a.id < n_tokens) {
        ids.emplace(typ, uint32_t(a.id));
        break;
      }
  }
  for (const char* typ : types) {
    const json* id = json_member(config, (std::string(typ) + "_token_id").c_str());
    if (id && id->is_number_integer() && id->get<int64_t>() >= 0 && id->get<int64_t>() < n_tokens)
      ids.emplace(typ, uint32_t(id->get<int64_t>()));  // emplace keeps a value already found
  }
  return ids;
}

// add_bos_token / add_eos_token: the post-processor's template first, then tokenizer_config.json.
std::map<std::string, bool> add_special(const TokenizerFolder& f) {
  std::map<std::string, bool> add;
  const json* post = json_member(f.tokenizer_json, "post_processor");
  std::vector<const json*> steps;
  if (post && post->is_object()) {
    if (const json* list = json_member(*post, "processors"); list && list->is_array())
      for (const json& s : *list) steps.push_back(&s);
    else
      steps.push_back(post);
  }
  const std::optional<std::string> bos = config_token(f.tokenizer_config, "bos");
  const std::optional<std::string> eos = config_token(f.tokenizer_config, "eos");
  for (const json* s : steps) {
    if (!s->is_object()) continue;
    const std::string type = s->value("type", "");
    if (type == "ByteLevel") {
      add.emplace("bos", false);
      add.emplace("eos", false);
    } else if (type == "TemplateProcessing") {
      const json* single = json_member(*s, "single");
      if (!single || !single->is_array() || single->size() < 2) continue;
      auto special_at = [&](const json& item) -> std::optional<std::string> {
        const json* st = item.is_object() ? json_member(item, "SpecialToken") : nullptr;
        const json* id = st ? json_member(*st, "id") : nullptr;
        if (id && id->is_string()) return id->get<std::string>();
        return std::nullopt;
      };
      if (auto first = special_at(single->front())) add["bos"] = !bos || *first == *bos;
      if (auto last = special_at(single->back())) add["eos"] = !eos || *last == *eos;
    }
  }
  for (const char* typ : {"bos", "eos"}) {
    const json* v = json_member(f.tokenizer_config, (std::string("add_") + typ + "_token").c_str());
    if (v && v->is_boolean()) add.emplace(typ, v->get<bool>());
  }
  return add;
}

// tokenizer.chat_template (and named templates) as gguf-py's add_chat_template writes them.
void add_chat_template(GgufVocab& v, const TokenizerFolder& f) {
  if (f.tokenizer_config.is_null()) return;  // SpecialVocab reads templates only beside a tokenizer_config.json
  json chosen;
  if (const json* t = json_member(f.tokenizer_config, "chat_template")) {
    chosen = *t;
  } else if (std::error_code ec; fs::is_regular_file(f.dir / "chat_template.jinja", ec)) {
    chosen = read_regular_file((f.dir / "chat_template.jinja").string(), "chat template");
  } else if (json alt = read_optional_json(f.dir / "chat_template.json", "chat_template.json"); !alt.is_null()) {
    if (const json* t = json_member(alt, "chat_template")) chosen = *t;
  }
  if (chosen.is_string()) {
    v.kv.emplace_back("tokenizer.chat_template", chosen.get<std::string>());
    return;
  }
  if (!chosen.is_array()) return;
  std::vector<std::string> names;
  for (const json& choice : chosen) {
    if (!choice.is_object() || !choice.contains("template") || !choice["template"].is_string()) continue;
    std::string name = choice.value("name", "");
    for (char& c : name)
      if (!std::isalnum(uint8_t(c))) c = '_';
    if (name.empty()) continue;
    const std::string text = choice["template"].get<std::string>();
    if (name == "default") {
      v.kv.emplace_back("tokenizer.chat_template", text);
    } else {
      names.push_back(name);
      v.kv.emplace_back("tokenizer.chat_template." + name, text);
    }
  }
  if (!names.empty()) v.kv.emplace_back("tokenizer.chat_templates", names);
}

}  // namespace

GgufVocab gguf_vocab(const std::string& tokenizer, const std::string& config_json, int vocab_size, bool llama_arch) {
  const TokenizerFolder f = read_folder(tokenizer);
  const json config = config_json.empty() ? json(nullptr) : read_optional_json(config_json, "config.json");
  GgufVocab v;
  v.source = f.tokenizer_file;
  const std::vector<AddedToken> added = f.tokenizer_json.is_null() ? std::vector<AddedToken>{} : added_tokens(f);
  TokenList t;
  std::vector<std::string> merges;
  if (f.tokenizer_json.is_null()) {
    t = sentencepiece_tokens(f, vocab_size);
    v.kv.emplace_back("tokenizer.ggml.model", std::string("llama"));
    v.kv.emplace_back("tokenizer.ggml.pre", std::string("default"));
  } else {
    const json& model = json_object_at(f.tokenizer_json, "model", f.tokenizer_file, "");
    LOOM_CHECK(model.value("type", "BPE") == "BPE", f.tokenizer_file, ": model.type ",
               json_shown(model.value("type", json())), "; loom writes GGUF tokenizers for BPE tokenizer.json files");
    if (is_byte_level(f.tokenizer_json)) {
      const std::string pre = byte_level_pre(f);
      t = json_vocab(f, vocab_size, added);
      // The converter pre-normalizes user-defined tokens' "▁" to spaces for byte-level vocabs.
      for (size_t i = 0; i < t.tokens.size(); ++i)
        if (t.types[i] == kUserDefined)
          for (size_t at; (at = t.tokens[i].find("\xE2\x96\x81")) != std::string::npos;) t.tokens[i].replace(at, 3, " ");
      pad_to_vocab(t, false);
      for (const auto& m : read_merges(f)) merges.push_back(gguf_merge(m));
      v.kv.emplace_back("tokenizer.ggml.model", std::string("gpt2"));
      v.kv.emplace_back("tokenizer.ggml.pre", pre);
    } else {
      LOOM_CHECK(model.value("byte_fallback", false), f.tokenizer_file,
                 ": a BPE tokenizer.json that is neither byte-level (Qwen, Llama 3) nor byte-fallback with Metaspace "
                 "(Llama 2, Mistral); llama.cpp has no tokenizer for it");
      t = metaspace_tokens(f, vocab_size, added);
      v.kv.emplace_back("tokenizer.ggml.model", std::string("llama"));
      v.kv.emplace_back("tokenizer.ggml.pre", std::string("default"));
      v.kv.emplace_back("tokenizer.ggml.add_space_prefix", adds_space_prefix(f.tokenizer_json));
    }
  }
  // The converter's LlamaModel passes tokenizer_config.json's add_prefix_space on.
  if (const json* prefix = json_member(f.tokenizer_config, "add_prefix_space");
      llama_arch && prefix && prefix->is_boolean())
    v.kv.emplace_back("tokenizer.ggml.add_space_prefix", prefix->get<bool>());
  v.kv.emplace_back("tokenizer.ggml.tokens", t.tokens);
  if (!t.scores.empty()) v.kv.emplace_back("tokenizer.ggml.scores", t.scores);
  v.kv.emplace_back("tokenizer.ggml.token_type", t.types);
  if (!merges.empty()) v.kv.emplace_back("tokenizer.ggml.merges", merges);
  // gguf-py's key names (Keys.Tokenizer), "seperator" spelled as there.
  const std::map<std::string, std::string> id_keys = {{"bos", "tokenizer.ggml.bos_token_id"},
                                                      {"eos", "tokenizer.ggml.eos_token_id"},
                                                      {"unk", "tokenizer.ggml.unknown_token_id"},
                                                      {"sep", "tokenizer.ggml.seperator_token_id"},
                                                      {"pad", "tokenizer.ggml.padding_token_id"}};
  for (const auto& [typ, id] : special_ids(f, config, vocab_size, added)) v.kv.emplace_back(id_keys.at(typ), id);
  for (const auto& [typ, on] : add_special(f)) v.kv.emplace_back("tokenizer.ggml.add_" + typ + "_token", on);
  add_chat_template(v, f);
  return v;
}

}  // namespace loom
