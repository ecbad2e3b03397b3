// Unicode normalizers (NFC, NFD, NFKC, NFKD) that give every output byte the input offset HF
// tokenizers gives it, so token offsets match HF's. HF normalizes with the unicode-normalization-
// alignments crate, whose output characters carry a change count: 0 replaces the next input
// character, -n replaces it and drops the n after it, +1 is new (it takes the origin of the last
// input character consumed). Decomposition marks a character's first code point 0 and the rest
// +1; canonical reordering moves counts with their characters; composing a mark into its starter
// adds their counts minus one. utf8proc supplies the per-character data.
// The crate's tables are Unicode 9.0 (utf8proc 2.8: 15.0): text with characters encoded since
// then that decompose, compose or carry a combining class (e.g. Dives Akuru U+11935 U+11930)
// normalizes as utf8proc says, not as HF does.
#include <utf8proc.h>

#include <algorithm>
#include <cstdlib>
#include <optional>

#include "data/text_pipeline.h"
#include "data/utf8.h"
#include "ops/error.h"

namespace loom {
namespace {

bool is_ascii(std::string_view s) {
  for (char c : s)
    if (uint8_t(c) >= 0x80) return false;
  return true;
}

class UnicodeNormalizer : public Normalizer {
 public:
  UnicodeNormalizer(bool compat, bool compose) : compat_(compat), compose_(compose) {}

  Span apply(AlignedText& t, Span s) const override {
    std::string_view in = t.view(s);
    if (is_ascii(in) || whole(in) == in) return s;  // ASCII is invariant under all four forms
    std::vector<Mark> out = decompose(in);
    if (compose_) out = recompose(out);
    return append_aligned(t, s, out);
  }

 private:
  struct Mark {
    uint32_t cp;
    int change;
    int ccc;  // canonical combining class
  };

  static int ccc(uint32_t cp) { return utf8proc_get_property(utf8proc_int32_t(cp))->combining_class; }

  std::string whole(std::string_view in) const {
    int options =
        UTF8PROC_STABLE | (compose_ ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE) | (compat_ ? UTF8PROC_COMPAT : 0);
    return map(in, utf8proc_option_t(options));
  }

  static std::string map(std::string_view in, utf8proc_option_t options) {
    utf8proc_uint8_t* out = nullptr;
    utf8proc_ssize_t n =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(in.data()), utf8proc_ssize_t(in.size()), &out, options);
    if (n < 0) fail("Unicode normalization failed: ", utf8proc_errmsg(n));
    std::string r(reinterpret_cast<char*>(out), size_t(n));
    std::free(out);
    return r;
  }

  // Every character's full decomposition, each run of non-starters stably sorted by class.
  std::vector<Mark> decompose(std::string_view in) const {
    int options = UTF8PROC_DECOMPOSE | (compat_ ? UTF8PROC_COMPAT : 0);
    std::vector<Mark> out;
    size_t run_start = 0;
    auto sort_run = [&] {
      std::stable_sort(out.begin() + long(run_start), out.end(),
                       [](const Mark& a, const Mark& b) { return a.ccc < b.ccc; });
      run_start = out.size();
    };
    for (size_t i = 0; i < in.size();) {
      utf8proc_int32_t parts[32];
      int boundclass = 0;
      utf8proc_ssize_t n = utf8proc_decompose_char(utf8proc_int32_t(utf8::next(in, i)), parts, 32,
                                                   utf8proc_option_t(options), &boundclass);
      if (n < 0 || n > 32) fail("Unicode decomposition failed: ", utf8proc_errmsg(n < 0 ? n : UTF8PROC_ERROR_OVERFLOW));
      for (utf8proc_ssize_t k = 0; k < n; ++k) {
        int c = ccc(uint32_t(parts[k]));
        if (c == 0) sort_run();
        out.push_back({uint32_t(parts[k]), k == 0 ? 0 : 1, c});
      }
    }
    sort_run();
    return out;
  }

  // The primary composite of a starter and a following character, or 0.
  static uint32_t compose_pair(uint32_t a, uint32_t b) {
    std::string pair;
    utf8::append(pair, a);
    utf8::append(pair, b);
    std::string r = map(pair, utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    size_t i = 0;
    uint32_t cp = utf8::next(r, i);
    return i == r.size() ? cp : 0;
  }

  // Canonical composition in the crate's order: the starter being built, then the marks that
  // did not join it.
  static std::vector<Mark> recompose(const std::vector<Mark>& in) {
    std::vector<Mark> out, skipped;
    std::optional<Mark> starter;
    int last_ccc = -1;  // class of the last skipped mark, -1: none since the starter
    for (const Mark& m : in) {
      if (!starter) {
        if (m.ccc != 0)
          out.push_back(m);
        else
          starter = m;
        continue;
      }
      bool blocked = last_ccc >= 0 && last_ccc >= m.ccc;
      if (!blocked) {
        if (uint32_t r = compose_pair(starter->cp, m.cp)) {
          starter = Mark{r, starter->change + m.change - 1, 0};
          continue;
        }
      }
      if (m.ccc == 0) {
        out.push_back(*starter);
        out.insert(out.end(), skipped.begin(), skipped.end());
        skipped.clear();
        starter = m;
        last_ccc = -1;
        continue;
      }
      skipped.push_back(m);
      last_ccc = m.ccc;
    }
    if (starter) out.push_back(*starter);
    out.insert(out.end(), skipped.begin(), skipped.end());
    return out;
  }

  // Appends the result, each character taking the origin HF's NormalizedString::transform gives.
  static Span append_aligned(AlignedText& t, Span s, const std::vector<Mark>& out) {
    std::vector<uint32_t> char_origin;  // origin of each input character
    std::string_view in = t.view(s);
    for (size_t i = 0; i < in.size();) {
      char_origin.push_back(t.origin[s.begin + i]);
      utf8::next(in, i);
    }
    size_t start = t.bytes.size(), next = 0;
    std::string ch;
    for (const Mark& m : out) {
      uint32_t origin;
      if (m.change > 0) {
        origin = next == 0 ? t.origin[s.begin] : char_origin[next - 1];
      } else {
        origin = char_origin[std::min(next, char_origin.size() - 1)];
        next += size_t(1 - m.change);
      }
      ch.clear();
      utf8::append(ch, m.cp);
      t.append_inserted(ch, origin);
    }
    return {uint32_t(start), uint32_t(t.bytes.size())};
  }

  bool compat_, compose_;
};

}  // namespace

std::unique_ptr<Normalizer> make_unicode_normalizer(bool compat, bool compose) {
  return std::make_unique<UnicodeNormalizer>(compat, compose);
}

}  // namespace loom
