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

  std::vector<int32_t> encode(std::string_view text, bool add_bos = false) const override;
  std::vector<int32_t> encode_with_offsets(std::string_view text, std::vector<size_t>* starts) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  int32_t vocab_size() const override;
  int32_t token_to_id(std::string_view token) const override;
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }
  bool bos_by_default() const override { return bos_by_default_; }

 private:
  void encode_into(std::string_view text, std::vector<int32_t>& ids, std::vector<size_t>* starts) const;

  std::string path_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  AddedTokenMatcher specials_;
  std::vector<bool> is_special_;  // by id: control or unknown piece
  int32_t bos_id_ = -1, eos_id_ = -1;
  bool bos_by_default_ = false;
};

}  // namespace loom
