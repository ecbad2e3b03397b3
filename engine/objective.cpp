#include "engine/objective.h"

#include "ops/cross_entropy.h"

namespace loom {

std::vector<float> sft_token_weights(const MicroBatch& mb, int64_t global_targets) {
  const float w = global_targets > 0 ? 1.f / float(global_targets) : 0.f;
  std::vector<float> out(mb.targets.size(), 0.f);
  for (size_t t = 0; t < out.size(); ++t)
    if (mb.targets[t] != kIgnoreIndex) out[t] = w;
  return out;
}

std::vector<float> SftObjective::token_weights(const MicroBatch& mb, int64_t global_targets,
                                               const std::vector<float>&) const {
  return sft_token_weights(mb, global_targets);
}

}  // namespace loom
