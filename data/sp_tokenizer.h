// A sentencepiece .model through libsentencepiece (SentencePieceProcessor). sentencepiece itself
// does not recognise control symbols in text (it spells "<s>" as characters), so, as
// transformers' slow LlamaTokenizer does, control and unknown pieces (<s>, </s>, <unk>, any
// --control_symbols) are cut out of the text first (leftmost-longest) and the text between them is
// encoded segment by segment, each with sentencepiece's own dummy prefix. User-defined symbols
// are left to sentencepiece, which matches them itself.
// Offsets: sentencepiece's piece begin offsets (bytes of the input) plus the segment's start.
// Decoding: runs of ordinary ids through sentencepiece, control/unknown ids as their piece text.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "data/added_tokens.h"
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

  std::string decode(const std::vector<int32_t>& ids) const override;
  int32_t vocab_size() const override;
  int32_t token_to_id(std::string_view token) const override;

 private:
  void encode_into(std::string_view text, std::vector<int32_t>& ids, std::vector<size_t>* starts) const override;

  std::string path_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  AddedTokenMatcher specials_;
  std::vector<bool> is_special_;  // by id: control or unknown piece
};

}  // namespace loom
