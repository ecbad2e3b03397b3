// A HF tokenizer.json with a BPE model: byte-level BPE (Qwen2/2.5/3, Llama 3) and sentencepiece-
// style BPE with byte fallback (Llama 2, Mistral). Encoding follows HF tokenizers'
// TokenizerImpl::encode_single_sequence with add_special_tokens=false:
//   1. added tokens with normalized=false are cut out of the raw text (data/added_tokens.h);
//   2. each remaining segment is normalized, then added tokens with normalized=true are cut out;
//   3. pre-tokenizers split it into pieces (data/text_pipeline.h);
//   4. the BPE model turns each piece into tokens (data/bpe_model.h).
// BOS is never added by the file's post-processor; encode(add_bos) prepends bos_id() instead.
// Decoding maps ids to token strings (added tokens to their content; special tokens are kept, or
// left out by decode(ids, skip_special_tokens=true)) and runs the file's decoder (data/bpe_decoder.h).
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "data/added_tokens.h"
#include "data/bpe_decoder.h"
#include "data/bpe_model.h"
#include "data/text_pipeline.h"
#include "data/tokenizer.h"
#include "data/tokenizer_config.h"

namespace loom {

class BpeTokenizer : public Tokenizer {
 public:
  // `where` names the source in errors (the file path).
  BpeTokenizer(const nlohmann::json& tokenizer_json, const std::string& where, const SpecialTokenConfig& config);
  static std::unique_ptr<BpeTokenizer> from_file(const std::string& path, const SpecialTokenConfig& config);

  using Tokenizer::decode;
  std::string decode(const std::vector<int32_t>& ids) const override;
  bool decode_skips(int32_t id, bool skip_special_tokens) const override;
  bool is_byte_piece(int32_t id) const override;
  int32_t vocab_size() const override { return vocab_size_; }
  int32_t token_to_id(std::string_view token) const override;

 private:
  void encode_into(std::string_view text, std::vector<int32_t>& ids, std::vector<size_t>* starts) const override;
  void resolve_special_tokens(const nlohmann::json& tokenizer_json, const SpecialTokenConfig& config,
                              const std::string& where);

  TextPipeline pipeline_;
  BpeModel model_;
  DecoderChain decoder_;
  AddedTokenMatcher raw_matcher_;                        // added tokens with normalized=false
  AddedTokenMatcher normalized_matcher_;                 // normalized=true, matched by their normalized content
  std::unordered_map<std::string, int32_t> added_ids_;   // content -> id
  std::unordered_map<int32_t, std::string> added_text_;  // id -> text the decoder sees
  std::unordered_set<int32_t> special_added_;            // added tokens with "special": true
  int32_t vocab_size_ = 0;
};

}  // namespace loom
