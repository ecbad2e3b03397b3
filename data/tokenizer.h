// Tokenizers: HF tokenizer.json (byte-level BPE as Qwen2/2.5/3 and Llama 3; Metaspace/byte-fallback
// BPE as Llama 2 / Mistral) and sentencepiece .model files. Encode and decode, id-for-id with HF.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace loom {

// The tokenizer file PATH names: PATH itself when it is a file, else tokenizer.json (preferred) or
// tokenizer.model in the folder PATH. A missing path, a FIFO or a device is an error.
std::string tokenizer_file(const std::string& path);

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // PATH: a tokenizer.json, a sentencepiece .model, or a folder holding one (tokenizer.json preferred).
  static std::unique_ptr<Tokenizer> load(const std::string& path);

  // Special/added-token strings inside text are recognised as their tokens. No BOS/EOS is added
  // unless add_bos (then bos_id() is prepended when the tokenizer has one).
  std::vector<int32_t> encode(std::string_view text, bool add_bos = false) const;
  // As encode (no BOS), and starts[i] = byte offset in `text` where token i begins: HF's offsets,
  // i.e. the input character its first character came from after normalization (a byte-level token
  // that begins inside a character starts at that character; text a normalizer inserts, such as
  // the leading "▁", at the character it was inserted before). starts never decrease.
  // Used to mask tokens by character spans (response-only training).
  std::vector<int32_t> encode_with_offsets(std::string_view text, std::vector<size_t>* starts) const;
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual int32_t vocab_size() const = 0;
  // Id of a token string (added tokens included), or -1.
  virtual int32_t token_to_id(std::string_view token) const = 0;
  int32_t bos_id() const { return bos_id_; }  // -1 if none
  int32_t eos_id() const { return eos_id_; }  // -1 if none
  // Whether HF adds BOS when encoding with add_special_tokens=True (tokenizer_config.json's
  // add_bos_token, else a post-processor that starts with BOS): pass it as add_bos to match HF.
  bool bos_by_default() const { return bos_by_default_; }

 protected:
  // Appends the ids of `text` (no BOS) to ids, and each token's start offset to starts when non-null.
  virtual void encode_into(std::string_view text, std::vector<int32_t>& ids, std::vector<size_t>* starts) const = 0;

  int32_t bos_id_ = -1, eos_id_ = -1;
  bool bos_by_default_ = false;
};

}  // namespace loom
