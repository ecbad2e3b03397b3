#include "engine/objective.h"

#include "dist/dist.h"
#include "ops/cross_entropy.h"

namespace loom {

std::vector<float> sft_token_weights(const MicroBatch& mb, int64_t global_targets) {
  const float w = global_targets > 0 ? 1.f / float(global_targets) : 0.f;
  std::vector<float> out(mb.targets.size(), 0.f);
  for (size_t t = 0; t < out.size(); ++t)
    if (mb.targets[t] != kIgnoreIndex) out[t] = w;
  return out;
}

std::vector<float> SftObjective::token_weights(const MicroBatch& mb, const Step& step, const std::vector<float>&,
                                               const std::vector<float>&) {
  return sft_token_weights(mb, step.global_targets);
}

ObjectiveFigures SftObjective::end_step(const Step& step, double target_loss_sum) {
  return {step.global_targets > 0 ? target_loss_sum / double(step.global_targets) : 0.0, {}};
}

ObjectiveFigures SftObjective::evaluate(TrainBackend& backend, const std::vector<MicroBatch>& micro) {
  double targets = 0;
  for (const MicroBatch& mb : micro) targets += double(mb.n_targets());
  const double sum = allreduce_sum(backend.loss_sum(micro, true));
  targets = allreduce_sum(targets);
  return {targets > 0 ? sum / targets : 0.0, {}};
}

}  // namespace loom
