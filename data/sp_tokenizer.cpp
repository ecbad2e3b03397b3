#include "data/sp_tokenizer.h"

#include <nlohmann/json.hpp>
#include <sentencepiece_processor.h>

#include "data/utf8.h"
#include "ops/error.h"
#include "ops/files.h"

namespace loom {

namespace {

// Reads one protobuf varint at bytes[i]; false when the bytes end inside it or it runs past 64 bits.
bool read_varint(std::string_view bytes, size_t& i, uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 64 && i < bytes.size(); shift += 7) {
    const uint8_t b = uint8_t(bytes[i++]);
    v |= uint64_t(b & 0x7F) << shift;
    if (!(b & 0x80)) return true;
  }
  return false;
}

// Whether a serialized ModelProto has its normalizer_spec (field 3). spm_train writes the pieces
// (field 1) first and the normalizer_spec after them, and protobuf has no length or checksum of
// its own: a file cut between two pieces still parses, as a smaller model. Walking the top-level
// fields to field 3 tells a whole file from such a cut one.
bool has_normalizer_spec(std::string_view bytes) {
  constexpr uint64_t kNormalizerSpec = 3, kLengthDelimited = 2;
  for (size_t i = 0; i < bytes.size();) {
    uint64_t key = 0, value = 0;
    if (!read_varint(bytes, i, key)) return false;
    switch (key & 7) {
      case 0: if (!read_varint(bytes, i, value)) return false; break;
      case 1: i += 8; break;
      case 5: i += 4; break;
      case kLengthDelimited:
        if (!read_varint(bytes, i, value) || value > bytes.size() - i) return false;
        if (key >> 3 == kNormalizerSpec) return true;
        i += size_t(value);
        break;
      default: return false;
    }
  }
  return false;
}

// The decoder transformers' LlamaTokenizer gives a .model (add_prefix_space defaults to true).
DecoderChain llama_tokenizer_decoder() {
  const nlohmann::json chain = {
      {"type", "Sequence"},
      {"decoders",
       {{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
        {{"type", "ByteFallback"}},
        {{"type", "Fuse"}},
        {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  return make_decoder_chain(chain, "LlamaTokenizer's decoder");
}

}  // namespace

SpTokenizer::SpTokenizer(const std::string& path, const SpecialTokenConfig& config)
    : path_(path),
      sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()),
      hf_decoder_(llama_tokenizer_decoder()) {
  // Read through ops/files.h (a FIFO or a device is refused) and handed over as bytes.
  const std::string bytes = read_regular_file(path, "sentencepiece model");
  const auto status = sp_->LoadFromSerializedProto(bytes);
  LOOM_CHECK(status.ok(), path, ": cannot load as a sentencepiece model (", status.ToString(),
             "); expected a .model file written by spm_train");
  LOOM_CHECK(has_normalizer_spec(bytes), path,
             ": the sentencepiece model ends early (no normalizer_spec after its pieces): the file is truncated; "
             "copy it again from the model's source");
  int n = sp_->GetPieceSize();
  is_special_.assign(size_t(n), false);
  std::vector<AddedToken> specials;
  std::vector<std::string> patterns;
  for (int id = 0; id < n; ++id) {
    if (!sp_->IsControl(id) && !sp_->IsUnknown(id)) continue;
    is_special_[size_t(id)] = true;
    AddedToken t;
    t.content = sp_->IdToPiece(id);
    t.id = id;
    t.special = true;
    patterns.push_back(t.content);
    specials.push_back(std::move(t));
  }
  specials_ = AddedTokenMatcher(std::move(specials), std::move(patterns));

  auto id_of = [&](const std::optional<std::string>& token, const char* key) {
    if (!token) return int32_t(-1);
    int32_t id = token_to_id(*token);
    LOOM_CHECK(id >= 0, config.path, ": ", key, " \"", *token, "\" is not a piece of ", path);
    return id;
  };
  if (config.has_file()) {
    bos_id_ = id_of(config.bos_token, "bos_token");
    eos_id_ = id_of(config.eos_token, "eos_token");
  } else {
    bos_id_ = sp_->bos_id();  // -1 when the model was trained with --bos_id=-1
    eos_id_ = sp_->eos_id();
  }
  pad_id_ = config.pad_token ? token_to_id(*config.pad_token) : sp_->pad_id();
  // transformers' LlamaTokenizer: add_bos_token defaults to true, add_eos_token to false.
  special_ids_ = bos_eos_ids(config.add_bos_token.value_or(true), config.add_eos_token.value_or(false));
}

SpTokenizer::~SpTokenizer() = default;

void SpTokenizer::encode_into(std::string_view text, std::vector<int32_t>& ids, std::vector<size_t>* starts) const {
  size_t bad = utf8::first_invalid(text);
  LOOM_CHECK(bad == std::string_view::npos, "cannot tokenize: text is not valid UTF-8 (byte ", int(uint8_t(text[bad])),
             " at offset ", bad, " of ", text.size(), ")");
  std::vector<TextSegment> segments;
  specials_.split(text, segments);
  for (const TextSegment& seg : segments) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
      if (starts) starts->push_back(seg.begin);
      continue;
    }
    sentencepiece::ImmutableSentencePieceText spt;
    auto status = sp_->Encode(text.substr(seg.begin, seg.end - seg.begin), spt.mutable_proto());
    LOOM_CHECK(status.ok(), path_, ": sentencepiece cannot encode a ", seg.end - seg.begin, "-byte segment at offset ",
               seg.begin, ": ", status.ToString());
    for (size_t k = 0; k < spt.pieces_size(); ++k) {
      auto piece = spt.pieces(int(k));
      ids.push_back(int32_t(piece.id()));
      if (starts) starts->push_back(seg.begin + piece.begin());
    }
  }
}

std::string SpTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  std::vector<int> run;  // ordinary ids waiting for sentencepiece
  auto flush = [&] {
    if (run.empty()) return;
    out += sp_->DecodeIds(run);
    run.clear();
  };
  int32_t n = vocab_size();
  for (int32_t id : ids) {
    LOOM_CHECK(id >= 0 && id < n, "cannot decode token id ", id, ": ", path_, " has ids 0 to ", n - 1);
    if (!is_special_[size_t(id)]) {
      run.push_back(id);
      continue;
    }
    flush();
    out += sp_->IdToPiece(id);
  }
  flush();
  return out;
}

bool SpTokenizer::decode_skips(int32_t id, bool skip_special_tokens) const {
  return Tokenizer::decode_skips(id, skip_special_tokens) || (skip_special_tokens && is_special_[size_t(id)]);
}

bool SpTokenizer::is_byte_piece(int32_t id) const { return id >= 0 && id < vocab_size() && sp_->IsByte(id); }

std::string SpTokenizer::decode_kept(const std::vector<int32_t>& ids) const {
  std::vector<std::string> pieces;
  pieces.reserve(ids.size());
  for (int32_t id : ids) pieces.push_back(sp_->IdToPiece(id));
  return hf_decoder_.decode(std::move(pieces));
}

int32_t SpTokenizer::vocab_size() const { return sp_->GetPieceSize(); }

int32_t SpTokenizer::token_to_id(std::string_view token) const {
  int id = sp_->PieceToId(token);
  // PieceToId answers unk_id for unknown pieces; only the unk piece itself maps there.
  if (id == sp_->unk_id() && sp_->IdToPiece(id) != token) return -1;
  return id;
}

}  // namespace loom
