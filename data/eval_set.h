// The held-out documents a run evaluates on, and how the ranks share them.
//
// Hold-out (data.eval_split). Which documents are held out is a function of their content alone:
// documents are ranked by a 64-bit hash of (ids, mask, segments) (ties between different contents
// broken by the content itself) and the smallest are taken, so the split is the same whatever the
// order of the data, the rank or the number of ranks. Identical documents (identical pairs too)
// have the same rank and are taken or left together, so a duplicate in the data never puts a
// training document into eval; when the cut falls inside a group of copies the whole group goes
// to eval (the eval set then exceeds the requested size by fewer documents than the group has).
//
// Eval micro-batches. The eval documents are packed first-fit-decreasing (data/packing.h) into
// micro-batches of at most token_budget tokens, the same micro-batches for any world size, and the
// micro-batches are dealt to the ranks by tokens: largest first, each to the rank with the fewest
// tokens so far (ties: the lower rank). Every eval document is evaluated exactly once over all
// ranks; a rank may get none (fewer micro-batches than ranks).
#pragma once
#include <cstdint>
#include <vector>

#include "data/batch.h"

namespace loom {

struct EvalSplit {
  std::vector<Document> train;  // the input's order (the loader's shuffle is a function of it)
  std::vector<Document> eval;   // in hash order (a function of the content, not of the input order)
};

// eval_split (data.eval_split): a fraction in (0, 1) of the documents, rounded to nearest and at
// least one, or a whole count >= 1. An error names data.eval_split and the counts when the value
// is neither, or when no training document would be left.
EvalSplit split_eval_documents(std::vector<Document> docs, double eval_split);

// This rank's eval micro-batches (above). Every document must be non-empty with one mask entry per
// id and at most token_budget tokens; otherwise an error names the eval document and the setting.
std::vector<MicroBatch> eval_micro_batches(const std::vector<Document>& eval, int64_t token_budget, int rank,
                                           int world);

}  // namespace loom
