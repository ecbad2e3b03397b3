// One optimizer step, the same for build/train and build/bench: every micro-batch of this rank
// through the objective (engine/objective.h) — fused forward+backward when its weights do not
// depend on the forward, else the reference forward (adapters off, when the objective asks), the
// training forward, the weights, the backward — then the backend's end_step (gradient and loss
// all-reduce, clipping, AdamW) and the objective's figures. Divergence checks and logging stay with
// the caller.
#pragma once
#include <cstdint>
#include <functional>

#include "data/dataloader.h"
#include "engine/backend.h"
#include "engine/objective.h"

namespace loom {

struct StepOutcome {
  double loss = 0;       // the objective's (SFT: Σ target losses / target tokens of the global batch)
  double grad_norm = 0;  // global, before clipping
  std::vector<std::pair<std::string, double>> metrics;  // the objective's (TRL's names)
};

// dropout_seed(i): the LoRA dropout masks of this rank's micro-batch i.
StepOutcome run_step(TrainBackend& backend, Objective& objective, const Step& step, float lr,
                     const std::function<uint64_t(size_t micro)>& dropout_seed);

}  // namespace loom
