// What a run trains the model to do, outside the model. The models (models/reference_model.h,
// models/cuda_model.h) compute per-token losses loss_t = -log p(target_t) in a forward and, in the
// backward, the gradient of Σ_t w_t · loss_t for per-token weights w_t that the objective gives:
//   SFT   w_t = 1 / (target tokens of the global batch) on target tokens, 0 elsewhere: summed over
//         micro-batches and ranks, the gradient of the global token mean (never a mean of means).
// Objectives whose weights depend on the forward (preference tuning: a sequence's weight follows
// from its summed log-probabilities) say so, and the step runs forward, weights, backward; the
// others let the model fuse forward and backward.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/batch.h"

namespace loom {

class Objective {
 public:
  virtual ~Objective() = default;
  virtual std::string name() const = 0;
  // True when token_weights() needs the forward's losses.
  virtual bool needs_forward_losses() const = 0;
  // w (T) for mb, in a step whose global batch holds global_targets target tokens. token_loss: the
  // forward's losses (T) when needs_forward_losses(), else empty.
  virtual std::vector<float> token_weights(const MicroBatch& mb, int64_t global_targets,
                                           const std::vector<float>& token_loss) const = 0;
};

// Supervised fine-tuning: the mean cross-entropy of the target tokens of the global batch.
class SftObjective : public Objective {
 public:
  std::string name() const override { return "sft"; }
  bool needs_forward_losses() const override { return false; }
  std::vector<float> token_weights(const MicroBatch& mb, int64_t global_targets,
                                   const std::vector<float>& token_loss) const override;
};

// The SFT weights alone (tests and tools that drive a model directly).
std::vector<float> sft_token_weights(const MicroBatch& mb, int64_t global_targets);

}  // namespace loom
