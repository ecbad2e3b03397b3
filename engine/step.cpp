#include "engine/step.h"

namespace loom {

StepOutcome run_step(TrainBackend& backend, const Objective& objective, const Step& step, float lr,
                     const std::function<uint64_t(size_t micro)>& dropout_seed) {
  const size_t n = step.micro.size();
  for (size_t i = 0; i < n; ++i) {
    const MicroBatch& mb = step.micro[i];
    const bool last = i + 1 == n;
    if (!objective.needs_forward_losses()) {
      backend.forward_backward(mb, objective.token_weights(mb, step.global_targets, {}), dropout_seed(i), last);
      continue;
    }
    const std::vector<float> losses = backend.forward(mb, dropout_seed(i));
    backend.backward(objective.token_weights(mb, step.global_targets, losses), last);
  }
  const TrainBackend::StepResult r = backend.end_step(lr);
  return {step.global_targets > 0 ? r.loss_sum / double(step.global_targets) : 0.0, r.grad_norm};
}

}  // namespace loom
