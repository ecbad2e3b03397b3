// The update of one optimizer step on the flat LoRA vector (models/lora.h), CPU reference path:
//   norm = ‖g‖₂ over all LoRA grads; g *= min(1, max_norm / (norm + 1e-6)); AdamW(lr); g = 0.
// Same semantics as torch clip_grad_norm_ + torch.optim.AdamW (ops/grad_norm.h, ops/adamw.h).
#pragma once
#include <vector>

#include "engine/config.h"

namespace loom {

struct OptimizerState {
  std::vector<float> m, v;  // AdamW moments, the layout of the params
  int step = 0;             // updates done so far
};

// Returns the gradient norm before clipping. Zeroes grads afterwards.
double optimizer_step(std::vector<float>& params, std::vector<float>& grads, OptimizerState& st,
                      const TrainSection& t, float lr);

}  // namespace loom
