// What the dataloader hands the model: one packed micro-batch of documents (no padding).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace loom {

struct MicroBatch {
  std::vector<int32_t> tokens;      // (T) input ids, documents back to back
  std::vector<int32_t> targets;     // (T) id of the next token in the same sequence, or -100
                                    //     (masked by train_on, or the sequence's last token)
  std::vector<int32_t> positions;   // (T) restart at 0 for every sequence
  std::vector<int32_t> cu_seqlens;  // (ndoc + 1) sequence starts, cu_seqlens.back() == T; one entry
                                    //     per sequence: a document of k segments gives k
  std::vector<int64_t> documents;   // (documents packed here) each one's index in the loader's data set,
                                    //     in packing order; empty when packed outside a loader
  int64_t n_targets() const;        // targets != -100
  int ndoc() const { return int(cu_seqlens.size()) - 1; }
  int64_t T() const { return int64_t(tokens.size()); }
};

// One document after tokenization: ids and a per-token training mask (1 = this token is a target,
// i.e. the model is trained to predict it from the tokens before it). A document is the unit the
// dataloader moves whole (never split across micro-batches or ranks); it holds one sequence, or
// several back to back (a preference pair: prompt+chosen, then prompt+rejected), each attended and
// positioned on its own.
struct Document {
  std::vector<int32_t> ids;
  std::vector<uint8_t> mask;       // same length as ids
  std::vector<int32_t> segments;   // lengths of the sequences it holds back to back, summing to
                                   // ids.size(): empty = one sequence (all SFT data), else two or
                                   // more (so each content has one spelling for hashes and shards)
};

// The lengths of the sequences of d: its segments, or {ids.size()} when it has none.
std::vector<int32_t> sequence_lengths(const Document& d);
// Targets d contributes once packed: token i of a sequence is a target when mask[i] is set and it
// is not the sequence's first token (nothing precedes it there).
int64_t document_targets(const Document& d);

// Packs documents back to back, one cu_seqlens entry per sequence: positions restart at 0 per
// sequence, targets[t] = ids[t+1] if mask[t+1] and t+1 is in t's sequence, else -100.
MicroBatch pack_documents(const std::vector<const Document*>& docs);
// mb grown to T tokens (T >= mb.T()) for a kernel sequence fixed by T alone (a captured step graph):
// one more sequence of T - mb.T() ignored tokens (id 0, target -100, positions from 0), whose rows the
// loss and every gradient skip (token weight 0), and cu_seqlens padded to T + 1 entries with T, the
// most sequences T tokens can hold, so its length no longer tells how many documents there are: a
// search for "the last start <= i" never lands on a padding entry. documents unchanged.
MicroBatch pad_micro_batch(const MicroBatch& mb, int64_t T);
// Segments as Document says: none, or two or more, each >= 1 token, summing to ids.size(). The
// error names the document (`name`: "document 12").
void check_segments(const Document& d, const std::string& name);
// A document that packing can take: not empty, one mask entry per id, check_segments, at most
// token_budget tokens (a micro-batch holds whole documents). The error names it ("document 12")
// and what to change.
void check_packable(const Document& d, const std::string& name, int64_t token_budget);

}  // namespace loom
