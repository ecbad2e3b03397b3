// What a run trains the model to do, outside the model. The models (models/reference_model.h,
// models/cuda_model.h) compute per-token losses loss_t = -log p(target_t) in a forward and, in the
// backward, the gradient of Σ_t w_t · loss_t for per-token weights w_t that the objective gives:
//   SFT   w_t = 1 / (target tokens of the global batch) on target tokens, 0 elsewhere: summed over
//         micro-batches and ranks, the gradient of the global token mean (never a mean of means).
//   preference (engine/preference.h): DPO / IPO / robust / hinge against the base model with the
//         adapters off, ORPO; a pair's weight follows from its summed log-probabilities.
// Objectives whose weights depend on the forward say so, and the step runs the reference forward
// (adapters off, when asked), the training forward, the weights, the backward; the others let the
// model fuse forward and backward. An objective also reports the step's loss and metrics, and
// evaluates held-out data in its own terms.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "data/batch.h"
#include "data/dataloader.h"
#include "engine/backend.h"

namespace loom {

// The loss a step (or an evaluation) reports, and named metrics (TRL's names; none for SFT).
struct ObjectiveFigures {
  double loss = 0;
  std::vector<std::pair<std::string, double>> metrics;
};

class Objective {
 public:
  virtual ~Objective() = default;
  virtual std::string name() const = 0;
  // True when token_weights() needs the forward's losses.
  virtual bool needs_forward_losses() const = 0;
  // True when it also needs the reference model's losses (the same model, adapters off).
  virtual bool needs_reference() const { return false; }
  // Before a step's micro-batches, on every rank alike (collectives allowed).
  virtual void begin_step(const Step& step) {}
  // w (T) for mb of step. policy_loss / reference_loss: the forward's losses (T) when asked for,
  // else empty.
  virtual std::vector<float> token_weights(const MicroBatch& mb, const Step& step,
                                           const std::vector<float>& policy_loss,
                                           const std::vector<float>& reference_loss) = 0;
  // After the backend's end_step, on every rank alike (collectives allowed): the step's figures.
  // target_loss_sum: Σ target-token losses of the step's training forwards, all ranks.
  virtual ObjectiveFigures end_step(const Step& step, double target_loss_sum) = 0;
  // Held-out data on the forward-only path: this rank's micro-batches; the figures over all ranks.
  virtual ObjectiveFigures evaluate(TrainBackend& backend, const std::vector<MicroBatch>& micro) = 0;
};

// Supervised fine-tuning: the mean cross-entropy of the target tokens of the global batch.
class SftObjective : public Objective {
 public:
  std::string name() const override { return "sft"; }
  bool needs_forward_losses() const override { return false; }
  std::vector<float> token_weights(const MicroBatch& mb, const Step& step, const std::vector<float>&,
                                   const std::vector<float>&) override;
  ObjectiveFigures end_step(const Step& step, double target_loss_sum) override;
  ObjectiveFigures evaluate(TrainBackend& backend, const std::vector<MicroBatch>& micro) override;
};

// The SFT weights alone (tests and tools that drive a model directly).
std::vector<float> sft_token_weights(const MicroBatch& mb, int64_t global_targets);

}  // namespace loom
