#include "data/bpe_decoder.h"

#include <cstdint>
#include <nlohmann/json.hpp>

#include "data/bpe_model.h"
#include "data/json_fields.h"
#include "data/tokenizer_regex.h"
#include "data/utf8.h"
#include "ops/error.h"

namespace loom {

using json = nlohmann::json;

namespace {

class ByteLevelDecoder : public DecoderStep {
 public:
  void apply(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      size_t mark = bytes.size(), i = 0;
      bool mapped = true;
      while (i < t.size() && mapped) {
        int b = byte_level_byte(utf8::next(t, i));
        mapped = b >= 0;
        if (mapped) bytes += char(b);
      }
      if (!mapped) bytes.replace(mark, std::string::npos, t);
    }
    tokens.assign(1, utf8::lossy(bytes));
  }
};

class ReplaceDecoder : public DecoderStep {
 public:
  ReplaceDecoder(std::string literal, std::unique_ptr<TokenizerRegex> regex, std::string content)
      : literal_(std::move(literal)), regex_(std::move(regex)), content_(std::move(content)) {}

  void apply(std::vector<std::string>& tokens) const override {
    ByteRanges matches;
    for (std::string& t : tokens) {
      matches.clear();
      if (regex_) {
        regex_->find_all(t, matches);
      } else if (!literal_.empty()) {
        for (size_t at = t.find(literal_); at != std::string::npos; at = t.find(literal_, at + literal_.size()))
          matches.push_back({uint32_t(at), uint32_t(at + literal_.size())});
      }
      if (matches.empty()) continue;
      std::string out;
      uint32_t prev = 0;
      for (auto [b, e] : matches) {
        out.append(t, prev, b - prev);
        out += content_;
        prev = e;
      }
      out.append(t, prev, std::string::npos);
      t.swap(out);
    }
  }

 private:
  std::string literal_;
  std::unique_ptr<TokenizerRegex> regex_;
  std::string content_;
};

// "<0xNN>" -> NN, or -1.
int fallback_byte(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  int v = 0;
  for (int k = 3; k < 5; ++k) {
    char c = t[size_t(k)];
    int d = (c >= '0' && c <= '9')   ? c - '0'
            : (c >= 'A' && c <= 'F') ? c - 'A' + 10
            : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                                     : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

class ByteFallbackDecoder : public DecoderStep {
 public:
  void apply(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string run;  // bytes of consecutive <0xNN> tokens
    auto flush = [&] {
      if (run.empty()) return;
      if (utf8::first_invalid(run) == std::string::npos)
        out.push_back(run);
      else
        out.insert(out.end(), run.size(), "\xEF\xBF\xBD");
      run.clear();
    };
    for (std::string& t : tokens) {
      int b = fallback_byte(t);
      if (b >= 0) {
        run += char(b);
        continue;
      }
      flush();
      out.push_back(std::move(t));
    }
    flush();
    tokens.swap(out);
  }
};

class FuseDecoder : public DecoderStep {
 public:
  void apply(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const std::string& t : tokens) all += t;
    tokens.assign(1, all);
  }
};

class StripDecoder : public DecoderStep {
 public:
  StripDecoder(uint32_t content, size_t start, size_t stop) : content_(content), start_(start), stop_(stop) {}
  void apply(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      std::vector<std::pair<size_t, uint32_t>> chars;  // (byte offset, code point)
      for (size_t i = 0; i < t.size();) {
        size_t at = i;
        chars.push_back({at, utf8::next(t, i)});
      }
      size_t first = 0, last = chars.size();
      while (first < start_ && first < chars.size() && chars[first].second == content_) ++first;
      while (chars.size() - last < stop_ && last > first && chars[last - 1].second == content_) --last;
      size_t b = first < chars.size() ? chars[first].first : t.size();
      size_t e = last < chars.size() ? chars[last].first : t.size();
      t = t.substr(b, e - b);
    }
  }

 private:
  uint32_t content_;
  size_t start_, stop_;
};

class MetaspaceDecoder : public DecoderStep {
 public:
  MetaspaceDecoder(uint32_t replacement, bool prepends) : replacement_(replacement), prepends_(prepends) {}
  void apply(std::vector<std::string>& tokens) const override {
    for (size_t k = 0; k < tokens.size(); ++k) {
      std::string out;
      const std::string& t = tokens[k];
      for (size_t i = 0; i < t.size();) {
        size_t at = i;
        uint32_t cp = utf8::next(t, i);
        if (cp != replacement_)
          out.append(t, at, i - at);
        else if (k > 0 || !prepends_)
          out += ' ';
      }
      tokens[k].swap(out);
    }
  }

 private:
  uint32_t replacement_;
  bool prepends_;
};

// `path` is the key path of the decoder inside tokenizer.json ("decoder.decoders[2]").
uint32_t single_char(const json& j, const char* key, const std::string& path, const std::string& where) {
  const std::string s = json_string_at(j, key, where, path);
  size_t i = 0;
  uint32_t cp = s.empty() ? 0 : utf8::next(s, i);
  LOOM_CHECK(!s.empty() && i == s.size(), where, ": ", json_key_path(path, key), " must be one character, found \"",
             s, "\"");
  return cp;
}

// Strip's start/stop: how many characters it may remove at each end.
size_t strip_count(const json& j, const char* key, const std::string& path, const std::string& where) {
  const json* v = json_member(j, key);
  if (!v) fail(where, ": ", json_key_path(path, key), " is missing; it must be a count of characters");
  return size_t(json_integer(*v, 0, INT32_MAX, where, json_key_path(path, key)));
}

void add_step(const json& j, const std::string& path, const std::string& where, DecoderChain& chain) {
  if (!j.is_object()) json_type_error(where, path, "an object with a string \"type\"", j);
  const std::string type = json_string_at(j, "type", where, path);
  if (type == "Sequence") {
    const json& list = json_array_at(j, "decoders", where, path);
    for (size_t i = 0; i < list.size(); ++i) add_step(list[i], json_index_path(path + ".decoders", i), where, chain);
  } else if (type == "ByteLevel") {
    chain.steps.push_back(std::make_unique<ByteLevelDecoder>());
  } else if (type == "Replace") {
    const std::string at = json_key_path(path, "pattern");
    const json& p = json_object_at(j, "pattern", where, path);
    std::unique_ptr<TokenizerRegex> regex;
    std::string literal;
    if (const json* r = json_member(p, "Regex"))
      regex = std::make_unique<TokenizerRegex>(json_string(*r, where, at + ".Regex"), where + ": " + at);
    else
      literal = json_string_at(p, "String", where, at);
    chain.steps.push_back(
        std::make_unique<ReplaceDecoder>(literal, std::move(regex), json_string_at(j, "content", where, path)));
  } else if (type == "ByteFallback") {
    chain.steps.push_back(std::make_unique<ByteFallbackDecoder>());
    chain.byte_fallback = true;
  } else if (type == "Fuse") {
    chain.steps.push_back(std::make_unique<FuseDecoder>());
  } else if (type == "Strip") {
    chain.steps.push_back(std::make_unique<StripDecoder>(single_char(j, "content", path, where),
                                                         strip_count(j, "start", path, where),
                                                         strip_count(j, "stop", path, where)));
  } else if (type == "Metaspace") {
    const bool add_prefix_space = json_bool_at(j, "add_prefix_space", true, where, path);
    const std::string scheme = json_optional_string_at(j, "prepend_scheme", where, path).value_or("always");
    chain.steps.push_back(std::make_unique<MetaspaceDecoder>(single_char(j, "replacement", path, where),
                                                             add_prefix_space && scheme != "never"));
  } else {
    fail(where, ": ", path, ": unsupported decoder \"", type,
         "\"; loom supports ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace and Sequence");
  }
}

}  // namespace

std::string DecoderChain::decode(std::vector<std::string> tokens) const {
  std::string out;
  if (!present) {
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  for (const auto& step : steps) step->apply(tokens);
  for (const std::string& t : tokens) out += t;
  return out;
}

bool is_byte_fallback_token(const std::string& token) { return fallback_byte(token) >= 0; }

DecoderChain make_decoder_chain(const json& decoder, const std::string& where) {
  DecoderChain chain;
  if (decoder.is_null()) return chain;
  chain.present = true;
  add_step(decoder, "decoder", where, chain);
  return chain;
}

}  // namespace loom
