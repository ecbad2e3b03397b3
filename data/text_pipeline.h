// The text stages of a tokenizer.json before the model: normalizers (NFC/NFD/NFKC/NFKD, Prepend,
// Replace, Sequence) and pre-tokenizers (Split, ByteLevel, Metaspace, Sequence), with HF
// tokenizers' semantics (normalizers/*.rs, pre_tokenizers/*.rs, NormalizedString::split).
//
// Stages never change the input in place: a stage that rewrites text appends the new text to an
// AlignedText buffer and hands back a Span of it. Every byte of the buffer records the byte offset
// of the input it came from (inserted text takes the offset of the byte it was inserted before,
// composed characters that of their first source character), so each token's start in the input
// is one lookup.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "data/tokenizer_regex.h"

namespace loom {

struct Span {
  uint32_t begin = 0, end = 0;
  uint32_t size() const { return end - begin; }
  bool empty() const { return end == begin; }
};

struct AlignedText {
  std::string bytes;
  std::vector<uint32_t> origin;  // origin[i]: input byte offset of bytes[i]

  void clear() {
    bytes.clear();
    origin.clear();
  }
  std::string_view view(Span s) const { return std::string_view(bytes).substr(s.begin, s.size()); }
  // Appends input[begin, end) unchanged.
  Span append_input(std::string_view input, size_t begin, size_t end);
  // Appends new text whose bytes all come from input offset `from`.
  void append_inserted(std::string_view text, uint32_t from);
  // Appends a copy of bytes[s] with its origins.
  void append_copy(Span s);
};

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // The normalized text of s: s itself when unchanged, else a new span of t.
  virtual Span apply(AlignedText& t, Span s) const = 0;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces pieces by their splits (empty splits are dropped, as HF does).
  virtual void apply(AlignedText& t, std::vector<Span>& pieces) const = 0;
};

// NFC (compose), NFD, NFKC (compat + compose) or NFKD, with HF's alignment
// (data/unicode_normalizer.cpp).
std::unique_ptr<Normalizer> make_unicode_normalizer(bool compat, bool compose);

// One pipeline built from tokenizer.json's "normalizer" and "pre_tokenizer" values.
struct TextPipeline {
  std::vector<std::unique_ptr<Normalizer>> normalizers;  // applied in order; Sequence flattened
  std::vector<std::unique_ptr<PreTokenizer>> pre_tokenizers;
  bool byte_level = false;  // a ByteLevel pre-tokenizer ends the chain: the model sees bytes

  Span normalize(AlignedText& t, Span s) const;
  void pre_tokenize(AlignedText& t, Span s, std::vector<Span>& pieces) const;
};

// `where` names the file for errors. Unsupported components are errors that name them.
TextPipeline make_text_pipeline(const nlohmann::json& normalizer, const nlohmann::json& pre_tokenizer,
                                const std::string& where);

}  // namespace loom
