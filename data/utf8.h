// UTF-8 helpers for the tokenizers: decode/encode code points, validation, lossy conversion that
// matches Rust's String::from_utf8_lossy (what HF tokenizers' ByteLevel decoder uses), and the
// two character classes of Rust's `regex` crate that HF's added-token rules use (\s and \w).
//
// UTF-8: 1 byte 0xxxxxxx (U+0000..7F), 2 bytes 110xxxxx 10xxxxxx (U+0080..7FF),
// 3 bytes 1110xxxx 10xxxxxx 10xxxxxx (U+0800..FFFF minus surrogates D800..DFFF),
// 4 bytes 11110xxx 10xxxxxx*3 (U+10000..10FFFF). Overlong forms are invalid.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace loom::utf8 {

inline bool is_continuation(uint8_t b) { return (b & 0xC0) == 0x80; }

// Byte length of the sequence a lead byte starts (1..4); 1 for bytes that cannot lead one.
inline int sequence_length(uint8_t lead) {
  if (lead < 0xC0) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

// Code point at s[i] of valid UTF-8; moves i past it.
uint32_t next(std::string_view s, size_t& i);
// Code point that ends just before s[end] in valid UTF-8 (end > 0).
uint32_t before(std::string_view s, size_t end);
void append(std::string& out, uint32_t cp);

// Byte offset of the first invalid sequence, or std::string_view::npos when s is valid UTF-8.
size_t first_invalid(std::string_view s);

// Each maximal ill-formed subsequence becomes U+FFFD (Unicode's "substitution of maximal
// subparts", as Rust's from_utf8_lossy).
std::string lossy(std::string_view bytes);

// Unicode White_Space (Rust regex \s, Oniguruma \s): 25 code points.
bool is_white_space(uint32_t cp);
// Rust regex \w: Alphabetic, marks, decimal digits, connector punctuation, joiners. Alphabetic is
// taken as the letter categories plus Nl (utf8proc has no Other_Alphabetic table).
bool is_word_char(uint32_t cp);

}  // namespace loom::utf8
