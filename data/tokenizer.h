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
// tokenizer.model in the folder PATH. A missing path, a FIFO or a device is an error that starts
// with `what`, the name the user gave PATH by ("--tokenizer", "data.tokenizer").
std::string tokenizer_file(const std::string& path, const std::string& what = "tokenizer");
// Whether the folder `dir` holds a tokenizer.json or tokenizer.model (a model folder may have none).
bool holds_tokenizer(const std::string& dir);

// What HF's encode(text, add_special_tokens=True) puts around the ids of one text.
struct SpecialIds {
  std::vector<int32_t> before, after;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // PATH: a tokenizer.json, a sentencepiece .model, or a folder holding one (tokenizer.json
  // preferred); `what` as for tokenizer_file.
  static std::unique_ptr<Tokenizer> load(const std::string& path, const std::string& what = "tokenizer");

  // Special/added-token strings inside text are recognised as their tokens. With
  // add_special_tokens, special_ids() go around the ids, as HF's add_special_tokens=True does;
  // without, nothing is added.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;
  // As encode (nothing added), and starts[i] = byte offset in `text` where token i begins: HF's offsets,
  // i.e. the input character its first character came from after normalization (a byte-level token
  // that begins inside a character starts at that character; text a normalizer inserts, such as
  // the leading "▁", at the character it was inserted before). starts never decrease.
  // Used to mask tokens by character spans (response-only training).
  std::vector<int32_t> encode_with_offsets(std::string_view text, std::vector<size_t>* starts) const;
  // The text of ids, special tokens as their text: the inverse of encode. An id outside
  // 0..vocab_size()-1 is an error.
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  // What transformers' tokenizer.decode(ids, skip_special_tokens=...) prints (transformers 5 leaves
  // clean_up_tokenization_spaces off for BPE). Ids decode_skips() names are left out first, then
  // the rest is decoded as one text: a leading "▁" of its first token (Metaspace, sentencepiece)
  // is dropped, so the decode of a continuation alone starts without that space, as HF's does.
  // A tokenizer.json gives the same as decode() apart from skipped ids; a sentencepiece .model
  // follows transformers' LlamaTokenizer, which differs from libsentencepiece around special
  // pieces and on broken byte-fallback runs.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const;
  // Whether decode(ids, skip_special_tokens) leaves id out: a special token when skipping them, an
  // id of vocab_size() or above, an id inside the range that names no token (HF leaves those out
  // too). A negative id is an error.
  virtual bool decode_skips(int32_t id, bool skip_special_tokens) const;
  // Whether id is a byte-fallback piece ("<0xE2>") that decode joins with the byte pieces beside
  // it: a run of them is its bytes when they are valid UTF-8, else one U+FFFD per byte, so the
  // text of such a piece is not known before the run ends.
  virtual bool is_byte_piece(int32_t id) const { return false; }
  virtual int32_t vocab_size() const = 0;
  // Id of a token string (added tokens included), or -1.
  virtual int32_t token_to_id(std::string_view token) const = 0;
  int32_t bos_id() const { return bos_id_; }  // -1 if none
  int32_t eos_id() const { return eos_id_; }  // -1 if none
  int32_t pad_id() const { return pad_id_; }  // -1 if none
  // What add_special_tokens adds. A tokenizer.json: its post_processor's single-sequence template
  // (TemplateProcessing; RobertaProcessing and BertProcessing: cls … sep; ByteLevel: nothing;
  // Sequence: each in turn), unless tokenizer_config.json sets add_bos_token or add_eos_token:
  // then BOS … EOS as those say, as transformers' TokenizersBackend.update_post_processor does. A
  // sentencepiece .model: BOS unless add_bos_token is false, EOS when add_eos_token is true
  // (transformers' LlamaTokenizer).
  const SpecialIds& special_ids() const { return special_ids_; }

 protected:
  // Appends the ids of `text` (nothing added) to ids, and each token's start offset to starts when non-null.
  virtual void encode_into(std::string_view text, std::vector<int32_t>& ids, std::vector<size_t>* starts) const = 0;
  // decode(ids, skip_special_tokens) of ids decode_skips() keeps. The default: decode(ids).
  virtual std::string decode_kept(const std::vector<int32_t>& ids) const { return decode(ids); }
  // BOS … EOS as add_bos / add_eos say, for those the tokenizer has.
  SpecialIds bos_eos_ids(bool add_bos, bool add_eos) const;

  int32_t bos_id_ = -1, eos_id_ = -1, pad_id_ = -1;
  SpecialIds special_ids_;
};

}  // namespace loom
