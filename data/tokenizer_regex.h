// The regexes of tokenizer.json (Split pre-tokenizer, Replace normalizer), written for Oniguruma,
// run with PCRE2 (UTF + UCP, JIT). Both are backtracking Perl-style engines, so alternation order,
// look-ahead and (?i:) agree; what differs is rewritten before compiling:
//   \s, \S          Unicode White_Space (PCRE2 also counts U+180E)
//   \p{L}, \p{N}    PCRE2's property plus the code points its older Unicode tables lack
//                   (data/tokenizer_unicode_classes.h, taken from Oniguruma); \P{..}, \p{^..} too
//   \h, \H          Oniguruma: hex digit (PCRE2: horizontal space)
//   ^ $             line anchors (Oniguruma's default; PCRE2_MULTILINE)
// Nested classes and class intersection (&&) are rejected with a message.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

struct pcre2_real_code_8;

namespace loom {

// [begin, end) byte ranges of matches in a string.
using ByteRanges = std::vector<std::pair<uint32_t, uint32_t>>;

class TokenizerRegex {
 public:
  // `where` names the pattern in errors (file and JSON path).
  TokenizerRegex(const std::string& oniguruma_pattern, const std::string& where);
  // A pattern matching the literal text s.
  static TokenizerRegex literal(const std::string& s, const std::string& where);
  TokenizerRegex(TokenizerRegex&& other) noexcept;
  TokenizerRegex(const TokenizerRegex&) = delete;
  TokenizerRegex& operator=(const TokenizerRegex&) = delete;
  ~TokenizerRegex();

  // Appends the non-overlapping matches in s (valid UTF-8) as [begin, end) byte ranges, searched
  // left to right like Oniguruma's find_iter; empty matches are skipped.
  void find_all(std::string_view s, ByteRanges& out) const;
  const std::string& pcre2_pattern() const { return pcre2_pattern_; }

 private:
  TokenizerRegex() = default;
  void compile(const std::string& where);

  std::string pcre2_pattern_;
  pcre2_real_code_8* code_ = nullptr;
};

// PCRE2 text for an Oniguruma pattern (exposed for tests).
std::string oniguruma_to_pcre2(const std::string& pattern, const std::string& where);

}  // namespace loom
