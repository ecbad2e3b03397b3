// The training run: config → model → data → step loop → checkpoints → export.
// Features: packed micro-batches, loss normalised by the global batch's target count, gradient
// clipping, AdamW with warmup + cosine/linear/constant schedule, metrics.jsonl + progress line,
// atomic checkpoints with exact resume, PEFT (or merged) export.
// Errors raised (loom::Error): invalid config or inputs, a non-finite loss or gradient (the last
// checkpoint stays intact), resume on different data.
#pragma once
#include <cstdint>
#include <string>

#include "engine/config.h"

namespace loom {

struct TrainSummary {
  std::string run_dir;
  std::string device;
  int64_t first_step = 0, last_step = 0;  // steps done by this process: (first_step, last_step]
  double first_loss = 0, last_loss = 0;
  double seconds = 0;
};

TrainSummary train(const TrainConfig& cfg);

}  // namespace loom
