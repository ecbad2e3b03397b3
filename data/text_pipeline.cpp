#include "data/text_pipeline.h"

#include <functional>
#include <nlohmann/json.hpp>

#include "data/json_fields.h"
#include "data/utf8.h"
#include "ops/error.h"

namespace loom {

using json = nlohmann::json;

Span AlignedText::append_input(std::string_view input, size_t begin, size_t end) {
  Span s{uint32_t(bytes.size()), uint32_t(bytes.size() + (end - begin))};
  bytes.append(input.substr(begin, end - begin));
  for (size_t i = begin; i < end; ++i) origin.push_back(uint32_t(i));
  return s;
}

void AlignedText::append_inserted(std::string_view text, uint32_t from) {
  bytes.append(text);
  origin.insert(origin.end(), text.size(), from);
}

void AlignedText::append_copy(Span s) {
  bytes.reserve(bytes.size() + s.size());
  origin.reserve(origin.size() + s.size());
  for (uint32_t i = s.begin; i < s.end; ++i) {
    bytes.push_back(bytes[i]);
    origin.push_back(origin[i]);
  }
}

namespace {

Span tail_since(const AlignedText& t, size_t start) { return {uint32_t(start), uint32_t(t.bytes.size())}; }

// ---------------------------------------------------------------- normalizers

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  Span apply(AlignedText& t, Span s) const override {
    if (s.empty()) return s;
    size_t start = t.bytes.size();
    t.append_inserted(prefix_, t.origin[s.begin]);
    t.append_copy(s);
    return tail_since(t, start);
  }

 private:
  std::string prefix_;
};

// Appends s with every match replaced by `content` (which takes the origin of the match's first
// byte); returns s itself when there is no match.
Span replace_matches(AlignedText& t, Span s, const ByteRanges& matches, const std::string& content) {
  if (matches.empty()) return s;
  size_t start = t.bytes.size();
  uint32_t prev = 0;
  for (auto [b, e] : matches) {
    t.append_copy({s.begin + prev, s.begin + b});
    t.append_inserted(content, t.origin[s.begin + b]);
    prev = e;
  }
  t.append_copy({s.begin + prev, s.end});
  return tail_since(t, start);
}

void find_literal(std::string_view text, std::string_view needle, ByteRanges& out) {
  if (needle.empty()) return;
  for (size_t at = text.find(needle); at != std::string_view::npos; at = text.find(needle, at + needle.size()))
    out.push_back({uint32_t(at), uint32_t(at + needle.size())});
}

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(std::string literal, std::unique_ptr<TokenizerRegex> regex, std::string content)
      : literal_(std::move(literal)), regex_(std::move(regex)), content_(std::move(content)) {}

  Span apply(AlignedText& t, Span s) const override {
    ByteRanges matches;
    if (regex_)
      regex_->find_all(t.view(s), matches);
    else
      find_literal(t.view(s), literal_, matches);
    return replace_matches(t, s, matches, content_);
  }

 private:
  std::string literal_;                    // a "String" pattern, or
  std::unique_ptr<TokenizerRegex> regex_;  // a "Regex" pattern
  std::string content_;
};

// ---------------------------------------------------------------- pre-tokenizers

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

struct Part {
  uint32_t begin, end;  // relative to the piece
  bool is_match;
};

// The piece cut at the matches: gaps and matches alternate and cover the piece.
std::vector<Part> parts_of(uint32_t size, const ByteRanges& matches, bool invert) {
  std::vector<Part> parts;
  uint32_t prev = 0;
  for (auto [b, e] : matches) {
    if (prev < b) parts.push_back({prev, b, invert});
    parts.push_back({b, e, !invert});
    prev = e;
  }
  if (prev < size) parts.push_back({prev, size, invert});
  return parts;
}

// HF NormalizedString::split: which parts survive and which are glued to a neighbour.
std::vector<Part> apply_behavior(const std::vector<Part>& parts, SplitBehavior behavior) {
  std::vector<Part> out;
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::Isolated:
      return parts;
    case SplitBehavior::Removed:
      for (const Part& p : parts)
        if (!p.is_match) out.push_back(p);
      return out;
    case SplitBehavior::Contiguous:
      for (const Part& p : parts) {
        if (!out.empty() && p.is_match == previous_match)
          out.back().end = p.end;
        else
          out.push_back(p);
        previous_match = p.is_match;
      }
      return out;
    case SplitBehavior::MergedWithPrevious:
      for (const Part& p : parts) {
        if (p.is_match && !previous_match && !out.empty())
          out.back().end = p.end;
        else
          out.push_back(p);
        previous_match = p.is_match;
      }
      return out;
    case SplitBehavior::MergedWithNext:
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        if (it->is_match && !previous_match && !out.empty())
          out.back().begin = it->begin;
        else
          out.push_back(*it);
        previous_match = it->is_match;
      }
      return {out.rbegin(), out.rend()};
  }
  return out;
}

void split_pieces(const AlignedText& t, std::vector<Span>& pieces, SplitBehavior behavior, bool invert,
                  const std::function<void(std::string_view, ByteRanges&)>& find) {
  std::vector<Span> out;
  out.reserve(pieces.size() * 2);
  ByteRanges matches;
  for (Span piece : pieces) {
    matches.clear();
    find(t.view(piece), matches);
    for (const Part& p : apply_behavior(parts_of(piece.size(), matches, invert), behavior))
      if (p.end > p.begin) out.push_back({piece.begin + p.begin, piece.begin + p.end});
  }
  pieces.swap(out);
}

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(TokenizerRegex regex, SplitBehavior behavior, bool invert)
      : regex_(std::move(regex)), behavior_(behavior), invert_(invert) {}
  void apply(AlignedText& t, std::vector<Span>& pieces) const override {
    split_pieces(t, pieces, behavior_, invert_, [this](std::string_view s, ByteRanges& m) { regex_.find_all(s, m); });
  }

 private:
  TokenizerRegex regex_;
  SplitBehavior behavior_;
  bool invert_;
};

// GPT-2's pre-tokenization regex, used by ByteLevel when use_regex is set.
const TokenizerRegex& gpt2_regex() {
  static const TokenizerRegex re(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)",
                                 "the GPT-2 regex of the ByteLevel pre-tokenizer");
  return re;
}

// The byte-to-character mapping itself happens in the model (it works on bytes); this stage does
// the optional prefix space and GPT-2 split.
class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {}
  void apply(AlignedText& t, std::vector<Span>& pieces) const override {
    if (add_prefix_space_) {
      for (Span& p : pieces) {
        if (t.bytes[p.begin] == ' ') continue;
        size_t start = t.bytes.size();
        t.append_inserted(" ", t.origin[p.begin]);
        t.append_copy(p);
        p = tail_since(t, start);
      }
    }
    if (use_regex_)
      split_pieces(t, pieces, SplitBehavior::Isolated, false,
                   [](std::string_view s, ByteRanges& m) { gpt2_regex().find_all(s, m); });
  }

 private:
  bool add_prefix_space_, use_regex_;
};

enum class PrependScheme { Always, First, Never };

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}

  void apply(AlignedText& t, std::vector<Span>& pieces) const override {
    ByteRanges spaces;
    for (Span& p : pieces) {
      spaces.clear();
      find_literal(t.view(p), " ", spaces);
      p = replace_matches(t, p, spaces, replacement_);
      bool starts_with_replacement = t.view(p).substr(0, replacement_.size()) == replacement_;
      bool prepend = scheme_ == PrependScheme::Always || (scheme_ == PrependScheme::First && t.origin[p.begin] == 0);
      if (prepend && !starts_with_replacement) {
        size_t start = t.bytes.size();
        t.append_inserted(replacement_, t.origin[p.begin]);
        t.append_copy(p);
        p = tail_since(t, start);
      }
    }
    if (split_)
      split_pieces(t, pieces, SplitBehavior::MergedWithNext, false,
                   [this](std::string_view s, ByteRanges& m) { find_literal(s, replacement_, m); });
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

// ---------------------------------------------------------------- construction from JSON
// `path` is the key path of the value inside tokenizer.json ("pre_tokenizer.pretokenizers[1]"),
// `where` the file: every error names both.

std::string type_of(const json& j, const std::string& path, const std::string& where) {
  if (!j.is_object()) json_type_error(where, path, "an object with a string \"type\"", j);
  return json_string_at(j, "type", where, path);
}

// A Split/Replace "pattern": {"String": s} or {"Regex": r}. Exactly one is set.
struct PatternSpec {
  std::string literal;
  std::unique_ptr<TokenizerRegex> regex;
};

PatternSpec read_pattern(const json& j, const std::string& path, const std::string& where) {
  const std::string at = json_key_path(path, "pattern");
  const json& p = json_object_at(j, "pattern", where, path);
  PatternSpec spec;
  if (const json* literal = json_member(p, "String")) {
    spec.literal = json_string(*literal, where, at + ".String");
  } else if (const json* regex = json_member(p, "Regex")) {
    spec.regex = std::make_unique<TokenizerRegex>(json_string(*regex, where, at + ".Regex"), where + ": " + at);
  } else {
    fail(where, ": ", at, " must hold \"String\" or \"Regex\", found ", json_shown(p));
  }
  return spec;
}

void add_normalizer(const json& j, const std::string& path, const std::string& where,
                    std::vector<std::unique_ptr<Normalizer>>& out) {
  if (j.is_null()) return;
  const std::string type = type_of(j, path, where);
  if (type == "Sequence") {
    const json& list = json_array_at(j, "normalizers", where, path);
    for (size_t i = 0; i < list.size(); ++i)
      add_normalizer(list[i], json_index_path(path + ".normalizers", i), where, out);
  } else if (type == "NFC") {
    out.push_back(make_unicode_normalizer(/*compat=*/false, /*compose=*/true));
  } else if (type == "NFD") {
    out.push_back(make_unicode_normalizer(/*compat=*/false, /*compose=*/false));
  } else if (type == "NFKC") {
    out.push_back(make_unicode_normalizer(/*compat=*/true, /*compose=*/true));
  } else if (type == "NFKD") {
    out.push_back(make_unicode_normalizer(/*compat=*/true, /*compose=*/false));
  } else if (type == "Prepend") {
    out.push_back(std::make_unique<PrependNormalizer>(json_string_at(j, "prepend", where, path)));
  } else if (type == "Replace") {
    PatternSpec p = read_pattern(j, path, where);
    out.push_back(std::make_unique<ReplaceNormalizer>(p.literal, std::move(p.regex),
                                                      json_string_at(j, "content", where, path)));
  } else {
    fail(where, ": ", path, ": unsupported normalizer \"", type,
         "\"; loom supports NFC, NFD, NFKC, NFKD, Prepend, Replace and Sequence (Llama, Mistral and Qwen files)");
  }
}

SplitBehavior read_behavior(const json& j, const std::string& path, const std::string& where) {
  const std::string b = json_string_at(j, "behavior", where, path);
  if (b == "Removed") return SplitBehavior::Removed;
  if (b == "Isolated") return SplitBehavior::Isolated;
  if (b == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (b == "Contiguous") return SplitBehavior::Contiguous;
  fail(where, ": ", path, ".behavior: unknown Split behavior \"", b,
       "\" (expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous)");
}

PrependScheme read_prepend_scheme(const json& j, const std::string& path, const std::string& where) {
  if (!json_bool_at(j, "add_prefix_space", true, where, path)) return PrependScheme::Never;
  const std::string s = json_optional_string_at(j, "prepend_scheme", where, path).value_or("always");
  if (s == "always") return PrependScheme::Always;
  if (s == "first") return PrependScheme::First;
  if (s == "never") return PrependScheme::Never;
  fail(where, ": ", path, ".prepend_scheme must be always, first or never, found \"", s, "\"");
}

void add_pre_tokenizer(const json& j, const std::string& path, const std::string& where, TextPipeline& out) {
  if (j.is_null()) return;
  const std::string type = type_of(j, path, where);
  if (type != "Sequence" && out.byte_level)
    fail(where, ": ", path, ": pre_tokenizer ", type,
         " follows ByteLevel; loom needs ByteLevel to be the last pre-tokenizer");
  if (type == "Sequence") {
    const json& list = json_array_at(j, "pretokenizers", where, path);
    for (size_t i = 0; i < list.size(); ++i)
      add_pre_tokenizer(list[i], json_index_path(path + ".pretokenizers", i), where, out);
  } else if (type == "Split") {
    PatternSpec p = read_pattern(j, path, where);
    TokenizerRegex re = p.regex ? std::move(*p.regex) : TokenizerRegex::literal(p.literal, where + ": " + path);
    out.pre_tokenizers.push_back(std::make_unique<SplitPreTokenizer>(std::move(re), read_behavior(j, path, where),
                                                                     json_bool_at(j, "invert", false, where, path)));
  } else if (type == "ByteLevel") {
    out.pre_tokenizers.push_back(std::make_unique<ByteLevelPreTokenizer>(
        json_bool_at(j, "add_prefix_space", true, where, path), json_bool_at(j, "use_regex", true, where, path)));
    out.byte_level = true;
  } else if (type == "Metaspace") {
    out.pre_tokenizers.push_back(std::make_unique<MetaspacePreTokenizer>(json_string_at(j, "replacement", where, path),
                                                                         read_prepend_scheme(j, path, where),
                                                                         json_bool_at(j, "split", true, where, path)));
  } else {
    fail(where, ": ", path, ": unsupported pre_tokenizer \"", type,
         "\"; loom supports Split, ByteLevel, Metaspace and Sequence (Llama, Mistral and Qwen files)");
  }
}

}  // namespace

Span TextPipeline::normalize(AlignedText& t, Span s) const {
  for (const auto& n : normalizers) s = n->apply(t, s);
  return s;
}

void TextPipeline::pre_tokenize(AlignedText& t, Span s, std::vector<Span>& pieces) const {
  pieces.clear();
  if (s.empty()) return;
  pieces.push_back(s);
  for (const auto& p : pre_tokenizers) p->apply(t, pieces);
}

TextPipeline make_text_pipeline(const json& normalizer, const json& pre_tokenizer, const std::string& where) {
  TextPipeline p;
  add_normalizer(normalizer, "normalizer", where, p.normalizers);
  add_pre_tokenizer(pre_tokenizer, "pre_tokenizer", where, p);
  return p;
}

}  // namespace loom
