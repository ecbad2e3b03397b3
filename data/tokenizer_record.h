// What a preparation records about the tokenizer and chat template it was made with (prepared.json
// "tokenizer" and "template"), and the check, before a run trains on prepared shards, that the
// model's tokenizer is that one. The vocabulary check alone cannot tell: another tokenizer's ids
// are often in range (Llama 3's 128256 ids all fit Qwen3's 151936-row embedding).
//
//   "tokenizer": {"file": PATH, "fnv1a64": HEX, "vocab_size": N, "bos": ID|null, "eos": ID|null,
//                 "pad": ID|null}
//   "template":  {"name": NAME, "source_fnv1a64": HEX|"", "default_system": TEXT,
//                 "end_of_turn": ID|null}                           (null for text records)
// Compared: the tokenizer file's hash, vocabulary size, BOS and EOS (text records are [BOS] text
// [EOS]); the template's name, default system prompt and end-of-turn id, which are what loom's
// rendering depends on. The pad id, the template source's hash and the paths are shown, not
// compared: padding never enters a shard, and loom renders from the template's family, not from
// its Jinja text.
#pragma once
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "data/chat_template.h"
#include "data/tokenizer.h"

namespace loom {

struct TokenizerRecord {
  std::string file;     // the tokenizer file
  std::string fnv1a64;  // hash of its bytes
  int64_t vocab_size = 0;
  int32_t bos = -1, eos = -1, pad = -1;  // -1: none
};

struct TemplateRecord {
  std::string name;            // chatml | qwen3 | llama3 | llama3.1 | mistral | llama2
  std::string source_fnv1a64;  // hash of the chat_template text it was resolved with; "" without one
  std::string default_system;  // chatml's default system prompt; "" for none
  int32_t end_of_turn = -1;    // id of end_of_turn_text(); -1 when the tokenizer lacks it
};

// tokenizer_path: the file or folder `tok` was loaded from.
TokenizerRecord record_tokenizer(const std::string& tokenizer_path, const Tokenizer& tok);
TemplateRecord record_template(const ChatTemplate& tmpl, const std::string& tokenizer_path, const Tokenizer& tok);

nlohmann::json tokenizer_record_json(const TokenizerRecord& r);
nlohmann::json template_record_json(const TemplateRecord& r);

// "<FILE, fnv1a64 HEX, vocab N, bos ID, eos ID, pad ID>" and
// "<NAME, end of turn ID, default system prompt "...", source fnv1a64 HEX>".
std::string describe(const TokenizerRecord& r);
std::string describe(const TemplateRecord& r);

bool same_tokenizer(const TokenizerRecord& a, const TokenizerRecord& b);

// FNV-1a-64 of the tokenizer file, then the tokenizer_config.json and chat_template.jinja beside
// it when present: the tokenizer part of a preparation's identity (data/dataset.cpp), and all an
// earlier loom recorded about the tokenizer.
uint64_t tokenizer_files_fnv1a64(const std::string& tokenizer_path);

// The tokenizer a preparation is checked against.
struct ModelTokenizer {
  std::string path;           // tokenizer file or folder
  std::string name;           // what the user calls it in messages: "model.path's tokenizer"
  std::string template_name;  // data.template: auto, none or a template name
};

// Throws loom::Error unless the preparation in `dir` was tokenized with model's tokenizer and, for
// conversations, rendered with the template model.template_name resolves to for it (a model whose
// template loom cannot tell has nothing to compare with). The message starts with `subject` (how
// the user named the data), names both sides and ends with `fix`.
// A prepared.json from an earlier loom (its "tokenizer" is a path) recorded only
// tokenizer_files_fnv1a64: equal is accepted with a note on stderr, different is an error (re-running
// build/prepare records the rest). One with no tokenizer record at all (written by write_prepared
// for tests or tools) is accepted with a note: only the vocabulary check applies to it.
void check_prepared_tokenizer(const std::string& dir, const std::string& subject, const ModelTokenizer& model,
                              const std::string& fix);

// The JSONL file a preparation was made from, as its prepared.json records it; "" when it does not.
std::string prepared_source(const std::string& dir);

}  // namespace loom
