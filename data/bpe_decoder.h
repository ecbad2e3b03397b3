// The "decoder" of a tokenizer.json: token strings -> text, as HF tokenizers' decoders/*.rs. Each
// step maps the list of token strings to a new list; the result is their concatenation (tokens
// joined by " " when the file has no decoder).
//   ByteLevel     every token's characters back through the GPT-2 byte map (a token with a
//                 character outside the map keeps its UTF-8), all tokens fused, then invalid
//                 UTF-8 replaced by U+FFFD per maximal subpart
//   Replace       pattern (String or Regex) -> content in each token
//   ByteFallback  runs of <0xNN> tokens -> their bytes when valid UTF-8, else one U+FFFD per byte
//   Fuse          all tokens -> one
//   Strip         up to `start` leading and `stop` trailing `content` characters of each token
//   Metaspace     replacement -> ' ', dropped in the first token unless prepend_scheme is never
#pragma once
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace loom {

class DecoderStep {
 public:
  virtual ~DecoderStep() = default;
  virtual void apply(std::vector<std::string>& tokens) const = 0;
};

struct DecoderChain {
  std::vector<std::unique_ptr<DecoderStep>> steps;  // Sequence flattened
  bool present = false;                             // false: "decoder": null
  bool byte_fallback = false;                       // a ByteFallback step joins <0xNN> tokens

  std::string decode(std::vector<std::string> tokens) const;
};

// Whether ByteFallback reads `token` as one byte: "<0xNN>", hex digits in either case.
bool is_byte_fallback_token(const std::string& token);

DecoderChain make_decoder_chain(const nlohmann::json& decoder, const std::string& where);

}  // namespace loom
