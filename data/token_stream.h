// Streaming detokenization: generated ids go in one at a time, text comes out as soon as it can no
// longer change. Everything push() and finish() return, concatenated, equals
// tok.decode(ids, skip_special_tokens) of all the ids pushed, i.e. HF's tokenizer.decode of the
// continuation alone (its first token's leading "▁" dropped as HF drops it), for every id sequence.
//
// How (the scheme of HF's TextStreamer and vLLM's incremental detokenizer): each push decodes a
// window, the ids of the text emitted last (the context) followed by the ids not emitted yet, and
// emits what the window's text adds to the context's own text. The window then starts at the ids
// just emitted, so a push costs a decode of a few tokens, not of the whole history. Text stays
// held while it may still change:
//   - the window's text ends in U+FFFD: a UTF-8 character split across tokens (byte-level BPE)
//     is not complete yet;
//   - the last id is a byte-fallback piece (<0xE2>): a run of them is its bytes only if the whole
//     run is valid UTF-8, else one U+FFFD per byte, so no byte of a run is known before it ends.
// The window therefore never starts inside a character or a run, and the context decodes the same
// alone as inside the window. Ids that decode leaves out (special tokens when skipping them, ids
// past the vocabulary) never enter the window: a first token with no text would let the decoders
// that treat the first token apart (Metaspace, Strip) take the space of the token after it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace loom {

class TokenStream {
 public:
  // tok must outlive the stream.
  explicit TokenStream(const Tokenizer& tok, bool skip_special_tokens = true)
      : tok_(tok), skip_special_tokens_(skip_special_tokens) {}

  // The text id completes; "" while a UTF-8 character or a byte-fallback run is unfinished.
  std::string push(int32_t id);
  // The text still held (an unfinished UTF-8 sequence as U+FFFD, as HF decodes it); the stream is
  // then empty, and the next push starts a new text.
  std::string finish();

 private:
  // The window's text past the context's; checks that the window's text starts with the context's.
  std::string text_after_context(const std::string& text) const;

  const Tokenizer& tok_;
  bool skip_special_tokens_;
  std::vector<int32_t> window_;  // the context's ids, then the ids not emitted yet
  size_t context_ = 0;           // window_[0, context_) is the context
  std::string context_text_;     // decode of the context alone
};

}  // namespace loom
