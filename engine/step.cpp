#include "engine/step.h"

namespace loom {

StepOutcome run_step(TrainBackend& backend, Objective& objective, const Step& step, float lr,
                     const std::function<uint64_t(size_t micro)>& dropout_seed) {
  objective.begin_step(step);
  const size_t n = step.micro.size();
  for (size_t i = 0; i < n; ++i) {
    const MicroBatch& mb = step.micro[i];
    const bool last = i + 1 == n;
    if (!objective.needs_forward_losses()) {
      backend.forward_backward(mb, objective.token_weights(mb, step, {}, {}), dropout_seed(i), last);
      continue;
    }
    // The reference pass first: a forward-only pass overwrites what the training forward keeps.
    const std::vector<float> reference =
        objective.needs_reference() ? backend.reference_losses(mb) : std::vector<float>();
    const std::vector<float> policy = backend.forward(mb, dropout_seed(i));
    backend.backward(objective.token_weights(mb, step, policy, reference), last);
  }
  const TrainBackend::StepResult r = backend.end_step(lr);
  ObjectiveFigures f = objective.end_step(step, r.loss_sum);
  return {f.loss, r.grad_norm, std::move(f.metrics)};
}

}  // namespace loom
