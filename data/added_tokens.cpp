#include "data/added_tokens.h"

#include <algorithm>

#include "data/utf8.h"

namespace loom {

AddedTokenMatcher::AddedTokenMatcher(std::vector<AddedToken> tokens, std::vector<std::string> patterns)
    : tokens_(std::move(tokens)), trie_(1) {
  for (size_t t = 0; t < tokens_.size(); ++t) {
    const std::string& pattern = patterns[t];
    if (pattern.empty()) continue;  // HF ignores empty added tokens
    int32_t node = 0;
    for (char c : pattern) {
      uint8_t b = uint8_t(c);
      auto& kids = trie_[node].children;
      auto it = std::lower_bound(kids.begin(), kids.end(), std::make_pair(b, int32_t(-1)));
      if (it != kids.end() && it->first == b) {
        node = it->second;
        continue;
      }
      int32_t child = int32_t(trie_.size());
      kids.insert(it, {b, child});
      trie_.emplace_back();
      node = child;
    }
    if (trie_[node].token < 0) trie_[node].token = int32_t(t);
    first_byte_[uint8_t(pattern[0])] = true;
  }
}

std::pair<size_t, int32_t> AddedTokenMatcher::longest_at(std::string_view text, size_t pos) const {
  std::pair<size_t, int32_t> best{0, -1};
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto& kids = trie_[node].children;
    uint8_t b = uint8_t(text[i]);
    auto it = std::lower_bound(kids.begin(), kids.end(), std::make_pair(b, int32_t(-1)));
    if (it == kids.end() || it->first != b) break;
    node = it->second;
    if (trie_[node].token >= 0) best = {i + 1 - pos, trie_[node].token};
  }
  return best;
}

bool AddedTokenMatcher::passes_single_word(std::string_view text, size_t start, size_t stop) const {
  bool word_before = start > 0 && utf8::is_word_char(utf8::before(text, start));
  size_t i = stop;
  bool word_after = stop < text.size() && utf8::is_word_char(utf8::next(text, i));
  return !word_before && !word_after;
}

namespace {

size_t skip_white_space_left(std::string_view text, size_t end, size_t floor) {
  while (end > floor) {
    size_t start = end - 1;
    while (start > floor && utf8::is_continuation(uint8_t(text[start]))) --start;
    size_t i = start;
    if (!utf8::is_white_space(utf8::next(text, i))) break;
    end = start;
  }
  return end;
}

size_t skip_white_space_right(std::string_view text, size_t begin) {
  while (begin < text.size()) {
    size_t i = begin;
    if (!utf8::is_white_space(utf8::next(text, i))) break;
    begin = i;
  }
  return begin;
}

}  // namespace

void AddedTokenMatcher::split(std::string_view text, std::vector<TextSegment>& out) const {
  size_t plain_start = 0, pos = 0;
  while (pos < text.size()) {
    if (!first_byte_[uint8_t(text[pos])]) {
      ++pos;
      continue;
    }
    auto [len, t] = longest_at(text, pos);
    if (t < 0) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + len;
    pos = stop;
    const AddedToken& token = tokens_[size_t(t)];
    if (token.single_word && !passes_single_word(text, start, stop)) continue;
    if (token.lstrip) start = skip_white_space_left(text, start, plain_start);
    if (token.rstrip) pos = stop = skip_white_space_right(text, stop);
    if (plain_start < start) out.push_back({plain_start, start, -1});
    out.push_back({start, stop, token.id});
    plain_start = stop;
  }
  if (plain_start < text.size()) out.push_back({plain_start, text.size(), -1});
}

}  // namespace loom
