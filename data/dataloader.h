// The packed, rank-aware dataloader: documents -> optimizer steps -> this rank's micro-batches.
//
// Order. Epoch e visits every document exactly once, in a Fisher–Yates shuffle of 0..N-1 drawn
// from SplitMix64(mix64(seed ^ mix64(e))) (data/rng.h; portable, unlike std::shuffle).
// Step k of an epoch is the global batch order[k·G, min((k+1)·G, N)), G = train.global_batch,
// so an epoch has ceil(N / G) steps. When G does not divide N, the epoch's last step is a smaller
// global batch of N mod G documents: nothing is dropped or carried into the next epoch, and since
// the loss is divided by that step's own global_targets, its gradient is still a token mean.
// After the last step of an epoch the next step starts epoch e+1, so train.steps may exceed one
// epoch.
//
// Ranks. Every rank plans the whole step from document lengths (data/packing.h: split balanced on
// tokens and attention, then first-fit-decreasing packing per rank) and materialises only its own
// micro-batches. No communication: each rank knows global_targets, the loss divisor. World=N
// trains on exactly the documents world=1 would, step by step. Ranks may get different numbers of
// micro-batches (a rank may get none when a step has fewer documents than ranks); each rank still
// joins the step's gradient all-reduce once. A document moves whole: the sequences of a
// multi-segment document (a preference pair, data/batch.h) share one micro-batch of one rank, and
// global_docs counts documents (pairs), not sequences.
//
// Resume. state() is the position before the next step; a loader given restore(state) returns
// exactly the steps the original loader would have returned next, for any world size or token
// budget. The state also records what the order depends on (global batch, document count and a
// fingerprint of the documents), so resuming on changed data is an error, not a silent reshuffle.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/batch.h"
#include "data/packing.h"

namespace loom {

struct LoaderOptions {
  int64_t token_budget = 16384;  // train.token_budget: tokens per micro-batch
  int64_t global_batch = 32;     // train.global_batch: documents per step, all ranks together
  uint64_t seed = 42;            // train.seed
  int world = 1;
  int rank = 0;
  int padded_group = kPaddedBaselineGroup;  // micro-batch of the padded baseline in PackingStats
  // K of the rank split's cost L·K + L² (data/packing.h); attention_span() of the model when known.
  // Must be the same on every rank.
  int64_t attention_span = kDefaultAttentionSpan;
};

struct LoaderState {
  int epoch = 0;
  int64_t step_in_epoch = 0;       // steps of `epoch` already taken
  uint64_t seed = 0;               // shuffle seed of the run (wins over train.seed on resume)
  int64_t global_batch = 0;        // the step boundaries depend on these three:
  int64_t documents = 0;
  uint64_t data_fingerprint = 0;   // hash of every document's ids, mask and segments
  bool operator==(const LoaderState& o) const;
};

// {"epoch":0,"step_in_epoch":3,"seed":42,"global_batch":32,"documents":4096,
//  "data_fingerprint":"89abcdef01234567"} (the fingerprint as 16 hex digits: JSON readers that
// hold numbers as doubles would round it).
std::string to_json(const LoaderState& state);
// `where` (a file name) names the source in error messages; a missing key, a wrong type or a value
// out of range (a string or 2.5 for epoch, a negative step) is an error naming loader.KEY.
LoaderState loader_state_from_json(const std::string& text, const std::string& where);

struct Step {
  int epoch = 0;
  int64_t step_in_epoch = 0;
  std::vector<MicroBatch> micro;  // this rank's, each at most token_budget tokens, no padding
  int64_t global_docs = 0;        // documents in the step, all ranks (global_batch, or fewer at an
                                  // epoch's end)
  int64_t global_tokens = 0;
  int64_t global_targets = 0;     // targets != -100 over all ranks' micro-batches: the loss divisor
  std::vector<RankLoad> ranks;    // per rank (every rank computes all of them)
  PackingStats packing;           // all ranks
};

class DataLoader {
 public:
  // `docs` must outlive the loader. Every document must be non-empty, have one mask entry per id,
  // and have at most token_budget tokens; otherwise an error names the document and the setting.
  DataLoader(const std::vector<Document>& docs, const LoaderOptions& options);
  DataLoader(std::vector<Document>&& docs, const LoaderOptions& options) = delete;  // would dangle

  Step next();
  LoaderState state() const;
  // Continue from `state` (taken from a loader over the same documents and global batch).
  void restore(const LoaderState& state);

  int64_t steps_per_epoch() const;
  // Schedule length for train.steps = 0: epochs × steps_per_epoch.
  int64_t total_steps(int epochs) const;
  int64_t documents() const { return int64_t(lengths_.size()); }

 private:
  void shuffle_epoch();
  std::vector<int64_t> step_documents() const;
  // Every rank's loads and the global counts; micro-batches only for this rank.
  Step plan_step(const std::vector<int64_t>& batch) const;
  // Appends rank's load (documents `docs`) to step; `own`: also packs its micro-batches.
  void plan_rank(Step& step, const std::vector<int64_t>& docs, bool own) const;

  const std::vector<Document>* docs_;
  LoaderOptions options_;
  std::vector<int64_t> lengths_;   // (N) tokens per document
  std::vector<int64_t> targets_;   // (N) targets per document once packed
  uint64_t fingerprint_ = 0;
  int epoch_ = 0;
  int64_t step_in_epoch_ = 0;
  std::vector<int64_t> order_;     // (N) this epoch's document order
};

}  // namespace loom
