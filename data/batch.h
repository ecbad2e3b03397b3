// What the dataloader hands the model: one packed micro-batch of documents (no padding).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace loom {

struct MicroBatch {
  std::vector<int32_t> tokens;      // (T) input ids, documents back to back
  std::vector<int32_t> targets;     // (T) id of the next token in the same document, or -100
                                    //     (masked by train_on, or the document's last token)
  std::vector<int32_t> positions;   // (T) restart at 0 for every document
  std::vector<int32_t> cu_seqlens;  // (ndoc + 1) document starts, cu_seqlens.back() == T
  int64_t n_targets() const;        // targets != -100
  int ndoc() const { return int(cu_seqlens.size()) - 1; }
  int64_t T() const { return int64_t(tokens.size()); }
};

// One document after tokenization: ids and a per-token training mask (1 = this token is a target,
// i.e. the model is trained to predict it from the tokens before it).
struct Document {
  std::vector<int32_t> ids;
  std::vector<uint8_t> mask;  // same length as ids
};

// Packs documents back to back: targets[t] = ids[t+1] if mask[t+1] else -100, per document.
MicroBatch pack_documents(const std::vector<const Document*>& docs);
// A document that packing can take: not empty, one mask entry per id, at most token_budget tokens
// (a micro-batch holds whole documents). The error names it ("document 12") and what to change.
void check_packable(const Document& d, const std::string& name, int64_t token_budget);

}  // namespace loom
