// A sentencepiece .model through libsentencepiece (SentencePieceProcessor). sentencepiece itself
// does not recognise control symbols in text (it spells "<s>" as characters), so, as
// transformers' slow LlamaTokenizer does, control and unknown pieces (<s>, </s>, <unk>, any
// --control_symbols) are cut out of the text first (leftmost-longest) and the text between them is
// encoded segment by segment, each with sentencepiece's own dummy prefix. User-defined symbols
// are left to sentencepiece, which matches them itself.
// Offsets: sentencepiece's piece begin offsets (bytes of the input) plus the segment's start.
// Decoding: runs of ordinary ids through sentencepiece, control/unknown ids as their piece text.
// decode(ids, skip_special_tokens) is transformers' LlamaTokenizer made from the .model instead: the
// pieces (control and unknown ones special) through Replace("▁", " "), ByteFallback, Fuse and
// Strip(one leading " ") (data/bpe_decoder.h). It gives back what libsentencepiece does except
// that a special piece does not end a run (the "▁" after it stays a space) and a byte-fallback run
// that is not valid UTF-8 becomes one U+FFFD per byte.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "data/added_tokens.h"
#include "data/bpe_decoder.h"
#include "data/tokenizer.h"
#include "data/tokenizer_config.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace loom {

class SpTokenizer : public Tokenizer {
 public:
  SpTokenizer(const std::string& path, const SpecialTokenConfig& config);
  ~SpTokenizer() override;

  using Tokenizer::decode;
  std::string decode(const std::vector<int32_t>& ids) const override;
  bool decode_skips(int32_t id, bool skip_special_tokens) const override;
  bool is_byte_piece(int32_t id) const override;
  int32_t vocab_size() const override;
  int32_t token_to_id(std::string_view token) const override;

 private:
  void encode_into(std::string_view text, std::vector<int32_t>& ids, std::vector<size_t>* starts) const override;
  std::string decode_kept(const std::vector<int32_t>& ids) const override;

  std::string path_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  AddedTokenMatcher specials_;
  std::vector<bool> is_special_;  // by id: control or unknown piece
  DecoderChain hf_decoder_;       // LlamaTokenizer's decoder, for decode(ids, skip_special_tokens)
};

}  // namespace loom
