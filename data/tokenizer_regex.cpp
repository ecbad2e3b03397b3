#include "data/tokenizer_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cctype>
#include <cstdio>
#include <mutex>

#include "data/tokenizer_unicode_classes.h"
#include "data/utf8.h"
#include "ops/error.h"

namespace loom {
namespace {

using Ranges = std::vector<std::pair<uint32_t, uint32_t>>;  // inclusive code point ranges
constexpr uint32_t kMaxCodePoint = 0x10FFFF;

const Ranges& white_space_ranges() {
  static const Ranges r = {{0x09, 0x0D},     {0x20, 0x20},     {0x85, 0x85},     {0xA0, 0xA0},     {0x1680, 0x1680},
                           {0x2000, 0x200A}, {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000}};
  return r;
}

Ranges complement(const Ranges& r) {
  Ranges out;
  uint32_t next = 0;
  for (auto [a, b] : r) {
    if (a > next) out.push_back({next, a - 1});
    next = b + 1;
  }
  if (next <= kMaxCodePoint) out.push_back({next, kMaxCodePoint});
  return out;
}

std::string class_body(const Ranges& r) {
  std::string s;
  char buf[32];
  for (auto [a, b] : r) {
    if (a == b)
      std::snprintf(buf, sizeof buf, "\\x{%X}", a);
    else
      std::snprintf(buf, sizeof buf, "\\x{%X}-\\x{%X}", a, b);
    s += buf;
  }
  return s;
}

// A character class as the pieces the rewrite needs: text valid inside [...] for the set, and the
// explicit ranges of the whole set (used to spell its complement inside a class).
struct ClassSpelling {
  std::string inside;
  Ranges all;
};

template <size_t N>
Ranges table_ranges(const unicode_classes::CodePointRange (&t)[N]) {
  Ranges r;
  for (const auto& x : t) r.push_back({x.first, x.last});
  return r;
}

// PCRE2's own \p{X} plus the table's code points it does not match: a superset-safe spelling,
// fast because PCRE2 checks its property before the (short) list of additions.
ClassSpelling property_class(const char* name, const Ranges& table) {
  std::string prop = std::string("\\p{") + name + "}";
  int err;
  PCRE2_SIZE err_off;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(prop.c_str()), prop.size(),
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED, &err, &err_off, nullptr);
  if (!code) die(cat("PCRE2 cannot compile ", prop));
  pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
  Ranges missing;
  std::string ch;
  for (auto [a, b] : table) {
    for (uint32_t cp = a; cp <= b; ++cp) {
      ch.clear();
      utf8::append(ch, cp);
      int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(ch.data()), ch.size(), 0, 0, md, nullptr);
      if (rc >= 0) continue;
      if (!missing.empty() && missing.back().second + 1 == cp)
        missing.back().second = cp;
      else
        missing.push_back({cp, cp});
    }
  }
  pcre2_match_data_free(md);
  pcre2_code_free(code);
  return {prop + class_body(missing), table};
}

const ClassSpelling& letter_class() {
  static const ClassSpelling c = property_class("L", table_ranges(unicode_classes::kLetter));
  return c;
}
const ClassSpelling& number_class() {
  static const ClassSpelling c = property_class("N", table_ranges(unicode_classes::kNumber));
  return c;
}
const ClassSpelling& space_class() {
  static const ClassSpelling c = {class_body(white_space_ranges()), white_space_ranges()};
  return c;
}
const ClassSpelling& hex_class() {
  static const ClassSpelling c = {"0-9A-Fa-f", {{'0', '9'}, {'A', 'F'}, {'a', 'f'}}};
  return c;
}

// Text for one rewritten class escape, in or out of a bracket expression.
std::string spell(const ClassSpelling& c, bool negated, bool in_class) {
  if (in_class) return negated ? class_body(complement(c.all)) : c.inside;
  return (negated ? "[^" : "[") + c.inside + "]";
}

class Translator {
 public:
  Translator(const std::string& p, const std::string& where) : p_(p), where_(where) {}

  std::string run() {
    while (i_ < p_.size()) {
      char c = p_[i_];
      if (c == '\\') {
        escape();
      } else if (c == '[') {
        open_bracket();
      } else if (c == ']' && in_class_) {
        in_class_ = false;
        out_ += c;
        ++i_;
      } else {
        if (in_class_ && c == '&' && i_ + 1 < p_.size() && p_[i_ + 1] == '&') unsupported("class intersection '&&'");
        out_ += c;
        ++i_;
      }
    }
    return out_;
  }

 private:
  [[noreturn]] void unsupported(const std::string& what) {
    fail("unsupported regex feature ", what, " at byte ", i_, " of pattern \"", p_, "\" (", where_,
         "): loom runs tokenizer.json regexes with PCRE2 and handles Oniguruma patterns without it");
  }

  void open_bracket() {
    if (in_class_) {
      if (i_ + 1 < p_.size() && p_[i_ + 1] == ':') {  // POSIX [:name:] inside a class
        size_t close = p_.find(":]", i_ + 2);
        if (close == std::string::npos) unsupported("unterminated [:class:]");
        out_ += p_.substr(i_, close + 2 - i_);
        i_ = close + 2;
        return;
      }
      unsupported("nested character class");
    }
    in_class_ = true;
    out_ += '[';
    ++i_;
    if (i_ < p_.size() && p_[i_] == '^') {
      out_ += '^';
      ++i_;
    }
    if (i_ < p_.size() && p_[i_] == ']') {  // a leading ']' is literal
      out_ += "\\]";
      ++i_;
    }
  }

  void escape() {
    if (i_ + 1 >= p_.size()) unsupported("trailing backslash");
    char e = p_[i_ + 1];
    if (e == 'p' || e == 'P') return property(e == 'P');
    const ClassSpelling* c = (e == 's' || e == 'S') ? &space_class() : (e == 'h' || e == 'H') ? &hex_class() : nullptr;
    if (c) {
      out_ += spell(*c, /*negated=*/e == 'S' || e == 'H', in_class_);
      i_ += 2;
      return;
    }
    // Any other escape means the same in both engines; copy it with its UTF-8 tail.
    size_t len = 1 + size_t(utf8::sequence_length(uint8_t(e)));
    out_ += p_.substr(i_, len);
    i_ += len;
  }

  void property(bool negated) {
    size_t open = i_ + 2;
    if (open >= p_.size() || p_[open] != '{') unsupported("\\p without {name}");
    size_t close = p_.find('}', open);
    if (close == std::string::npos) unsupported("unterminated \\p{");
    std::string name = p_.substr(open + 1, close - open - 1);
    if (!name.empty() && name[0] == '^') {
      negated = !negated;
      name.erase(0, 1);
    }
    if (name == "L" || name == "Letter") {
      out_ += spell(letter_class(), negated, in_class_);
    } else if (name == "N" || name == "Number") {
      out_ += spell(number_class(), negated, in_class_);
    } else {
      out_ += std::string(negated ? "\\P{" : "\\p{") + name + "}";
    }
    i_ = close + 1;
  }

  const std::string& p_;
  const std::string& where_;
  std::string out_;
  size_t i_ = 0;
  bool in_class_ = false;
};

// Per-thread match state: PCRE2 match data is not shareable between threads.
struct MatchState {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  pcre2_jit_stack* jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
  MatchState() { pcre2_jit_stack_assign(context, nullptr, jit_stack); }
  ~MatchState() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

MatchState& match_state() {
  thread_local MatchState state;
  return state;
}

}  // namespace

std::string oniguruma_to_pcre2(const std::string& pattern, const std::string& where) {
  return Translator(pattern, where).run();
}

TokenizerRegex::TokenizerRegex(const std::string& oniguruma_pattern, const std::string& where)
    : pcre2_pattern_(oniguruma_to_pcre2(oniguruma_pattern, where)) {
  compile(where);
}

TokenizerRegex TokenizerRegex::literal(const std::string& s, const std::string& where) {
  TokenizerRegex r;
  r.pcre2_pattern_ = "\\Q" + s + "\\E";
  if (s.find("\\E") != std::string::npos) {  // \Q..\E cannot hold "\E": escape byte by byte
    r.pcre2_pattern_.clear();
    for (char c : s) {
      if (std::isalnum(uint8_t(c)) || uint8_t(c) >= 0x80)
        r.pcre2_pattern_ += c;
      else
        r.pcre2_pattern_ += std::string("\\") + c;
    }
  }
  r.compile(where);
  return r;
}

TokenizerRegex::TokenizerRegex(TokenizerRegex&& other) noexcept
    : pcre2_pattern_(std::move(other.pcre2_pattern_)), code_(other.code_) {
  other.code_ = nullptr;
}

TokenizerRegex::~TokenizerRegex() { pcre2_code_free(code_); }

void TokenizerRegex::compile(const std::string& where) {
  pcre2_compile_context* cc = pcre2_compile_context_create(nullptr);
  pcre2_set_newline(cc, PCRE2_NEWLINE_LF);
  int err;
  PCRE2_SIZE err_off;
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pcre2_pattern_.data()), pcre2_pattern_.size(),
                        PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &err, &err_off, cc);
  pcre2_compile_context_free(cc);
  if (!code_) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail("cannot compile the regex of ", where, ": ", reinterpret_cast<char*>(msg), " at offset ", err_off,
         " of the PCRE2 translation \"", pcre2_pattern_, "\"");
  }
  // Without JIT (a PCRE2 built without it) pcre2_match interprets: slower, same results.
  pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);
}

void TokenizerRegex::find_all(std::string_view s, ByteRanges& out) const {
  MatchState& st = match_state();
  auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t start = 0;
  while (start < s.size()) {
    int rc = pcre2_match(code_, subject, s.size(), start, PCRE2_NO_UTF_CHECK, st.data, st.context);
    if (rc == PCRE2_ERROR_NOMATCH) return;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      fail("regex match failed (", reinterpret_cast<char*>(msg), ") on a ", s.size(), "-byte piece of text; pattern \"",
           pcre2_pattern_, "\"");
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.data);
    size_t b = ov[0], e = ov[1];
    if (e > b) {
      out.push_back({uint32_t(b), uint32_t(e)});
      start = e;
    } else if (b < s.size()) {
      start = b + size_t(utf8::sequence_length(uint8_t(s[b])));
    } else {
      return;
    }
  }
}

}  // namespace loom
