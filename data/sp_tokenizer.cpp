#include "data/sp_tokenizer.h"

#include <sentencepiece_processor.h>

#include "data/utf8.h"
#include "ops/error.h"

namespace loom {

SpTokenizer::SpTokenizer(const std::string& path, const SpecialTokenConfig& config)
    : path_(path), sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  auto status = sp_->Load(path);
  LOOM_CHECK(status.ok(), path, ": cannot load as a sentencepiece model (", status.ToString(),
             "); expected a .model file written by spm_train");
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
  bos_by_default_ = (config.add_bos_token ? *config.add_bos_token : true) && bos_id_ >= 0;
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

int32_t SpTokenizer::vocab_size() const { return sp_->GetPieceSize(); }

int32_t SpTokenizer::token_to_id(std::string_view token) const {
  int id = sp_->PieceToId(token);
  // PieceToId answers unk_id for unknown pieces; only the unk piece itself maps there.
  if (id == sp_->unk_id() && sp_->IdToPiece(id) != token) return -1;
  return id;
}

}  // namespace loom
