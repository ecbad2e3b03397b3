// Evaluation during training: the held-out documents (data.eval_path, or data.eval_split of the
// training data: data/eval_set.h) every train.eval_every steps and at the end, on the forward-only
// path (TrainBackend::loss_sum, adapters on, no dropout):
//   eval loss = Σ target-token losses / Σ target tokens, over the whole eval set and every rank
// Each rank evaluates its share of the eval micro-batches (the same micro-batches for any number of
// ranks, so N ranks give the loss of 1 up to the order of a sum). The standing — the best eval loss,
// its step, the evaluations since — drives output.keep_best and train.early_stopping_patience, and
// is rebuilt from metrics.jsonl when a run resumes, so a resumed run decides as the straight one.
#pragma once
#include <cstdint>
#include <optional>
#include <vector>

#include "data/batch.h"
#include "engine/backend.h"
#include "engine/config.h"
#include "engine/metrics.h"
#include "engine/objective.h"

namespace loom {

class Evaluator {
 public:
  // Collective: every rank constructs it with the same documents. history: the evaluations the run
  // logged before the step it starts from (logged_evals).
  Evaluator(const TrainConfig& cfg, const std::vector<Document>& eval_docs, int rank, int world,
            std::vector<EvalRecord> history);
  bool enabled() const { return tokens_ > 0; }  // the same on every rank
  // Whether the evaluation runs after `step` of `total`: every train.eval_every steps, and at the end.
  bool due(int64_t step, int64_t total) const;
  // Collective: evaluates with the backend's current adapters, in the objective's terms (SFT: the
  // token mean above; preference: the mean pair loss and TRL's metrics); the figures (and standing)
  // of step.
  EvalMetrics evaluate(TrainBackend& backend, Objective& objective, int64_t step);
  // train.early_stopping_patience evaluations in a row without a lower eval loss.
  bool patience_exhausted() const;
  std::optional<int64_t> best_step() const { return standing_.best_step; }
  std::optional<double> best_loss() const { return standing_.best_loss; }

 private:
  int eval_every_, patience_;
  std::vector<MicroBatch> micro_;  // this rank's share
  int64_t targets_ = 0, tokens_ = 0;  // over every rank
  std::vector<EvalRecord> history_;
  EvalStanding standing_;
};

}  // namespace loom
