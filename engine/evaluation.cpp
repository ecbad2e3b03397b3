#include "engine/evaluation.h"

#include <chrono>

#include "data/eval_set.h"
#include "dist/dist.h"

namespace loom {

Evaluator::Evaluator(const TrainConfig& cfg, const std::vector<Document>& eval_docs, int rank, int world,
                     std::vector<EvalRecord> history)
    : eval_every_(cfg.train.eval_every),
      patience_(cfg.train.early_stopping_patience),
      micro_(eval_micro_batches(eval_docs, cfg.train.token_budget, rank, world)),
      history_(std::move(history)),
      standing_(eval_standing(history_)) {
  double targets = 0, tokens = 0;
  for (const MicroBatch& mb : micro_) {
    targets += double(mb.n_targets());
    tokens += double(mb.T());
  }
  targets_ = int64_t(allreduce_sum(targets));
  tokens_ = int64_t(allreduce_sum(tokens));
}

bool Evaluator::due(int64_t step, int64_t total) const {
  return enabled() && (step == total || (eval_every_ > 0 && step % eval_every_ == 0));
}

EvalMetrics Evaluator::evaluate(TrainBackend& backend, Objective& objective, int64_t step) {
  const auto t0 = std::chrono::steady_clock::now();
  ObjectiveFigures f = objective.evaluate(backend, micro_);
  EvalMetrics m;
  m.step = int(step);
  m.loss = f.loss;
  m.objective = std::move(f.metrics);
  m.targets = targets_;
  m.tokens = tokens_;
  m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  history_.push_back({step, m.loss});
  standing_ = eval_standing(history_);
  m.best_loss = standing_.best_loss;
  if (standing_.best_step) m.best_step = int(*standing_.best_step);
  m.improved = standing_.best_step == step;
  return m;
}

bool Evaluator::patience_exhausted() const { return patience_ > 0 && standing_.since_best >= patience_; }

}  // namespace loom
