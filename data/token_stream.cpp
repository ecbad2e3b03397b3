#include "data/token_stream.h"

#include "ops/error.h"

namespace loom {

namespace {

// U+FFFD ends every UTF-8 sequence a decoder could not complete (yet).
bool ends_in_replacement(const std::string& s) {
  static const std::string kReplacement = "\xEF\xBF\xBD";
  return s.size() >= kReplacement.size() &&
         s.compare(s.size() - kReplacement.size(), std::string::npos, kReplacement) == 0;
}

}  // namespace

std::string TokenStream::text_after_context(const std::string& text) const {
  // Holds for every decoder loom reads (see the header); a failure is a bug here, not in the ids.
  LOOM_CHECK(text.compare(0, context_text_.size(), context_text_) == 0,
             "internal: streamed decode: the text of the window \"", text, "\" does not start with its context's \"",
             context_text_, "\"");
  return text.substr(context_text_.size());
}

std::string TokenStream::push(int32_t id) {
  if (tok_.decode_skips(id, skip_special_tokens_)) return "";
  window_.push_back(id);
  if (tok_.is_byte_piece(id)) return "";
  const std::string text = tok_.decode(window_, skip_special_tokens_);
  if (text.size() <= context_text_.size() || ends_in_replacement(text)) return "";
  std::string out = text_after_context(text);
  // The ids just emitted become the next context.
  window_.erase(window_.begin(), window_.begin() + std::ptrdiff_t(context_));
  context_ = window_.size();
  context_text_ = tok_.decode(window_, skip_special_tokens_);
  return out;
}

std::string TokenStream::finish() {
  std::string out = text_after_context(tok_.decode(window_, skip_special_tokens_));
  window_.clear();
  context_ = 0;
  context_text_.clear();
  return out;
}

}  // namespace loom
