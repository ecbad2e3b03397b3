// What a transformers tokenizer_config.json beside a tokenizer says about its special tokens:
//   "bos_token": "<s>" | {"content": "<s>", ...} | null,  likewise "eos_token" and "pad_token"
//   "add_bos_token", "add_eos_token": true | false  (absent in many files)
// Shared by the tokenizer.json and sentencepiece tokenizers; read by Tokenizer::load.
#pragma once
#include <optional>
#include <string>

namespace loom {

struct SpecialTokenConfig {
  std::string path;                      // the tokenizer_config.json read; empty when there was none
  std::optional<std::string> bos_token;  // nullopt: absent or null
  std::optional<std::string> eos_token;
  std::optional<std::string> pad_token;
  std::optional<bool> add_bos_token;
  std::optional<bool> add_eos_token;
  bool has_file() const { return !path.empty(); }
};

// Reads `path` when it exists; a missing file gives an empty config, a malformed one an error.
SpecialTokenConfig read_special_token_config(const std::string& path);

}  // namespace loom
