// Added (special) tokens found inside text, as HF tokenizers' AddedVocabulary::find_matches does:
// leftmost-longest match over all token strings (Aho-Corasick semantics); a match that fails its
// single_word test is dropped but still consumed (the scan resumes after it); lstrip widens a
// match left over the whitespace before it (not into an earlier match), rstrip right over the
// whitespace after it. Whitespace is Unicode White_Space; "word" is Rust regex \w.
// Used by the tokenizer.json pipeline and, for control symbols, by the sentencepiece tokenizer.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace loom {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;  // matched in normalized text (after the normalizer) instead of raw text
  bool special = false;
};

// A byte range of the text: plain text (id -1) or one added token.
struct TextSegment {
  size_t begin = 0, end = 0;
  int32_t id = -1;
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  // `patterns[i]` is what is searched for tokens[i] (its content, or its normalized content).
  AddedTokenMatcher(std::vector<AddedToken> tokens, std::vector<std::string> patterns);

  bool empty() const { return tokens_.empty(); }
  // Appends text's segments in order; they cover text exactly. Empty text gives no segment.
  void split(std::string_view text, std::vector<TextSegment>& out) const;

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> children;  // sorted by byte
    int32_t token = -1;                                 // index into tokens_ ending here
  };
  // Length and token index of the longest pattern starting at text[pos], or {0, -1}.
  std::pair<size_t, int32_t> longest_at(std::string_view text, size_t pos) const;
  bool passes_single_word(std::string_view text, size_t start, size_t stop) const;

  std::vector<AddedToken> tokens_;
  std::vector<Node> trie_;     // trie_[0] is the root
  bool first_byte_[256] = {};  // bytes that start some pattern: the scan skips all others
};

}  // namespace loom
