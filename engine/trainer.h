// The training run: config → model → data → step loop → checkpoints → export.
// Features: packed micro-batches, loss normalised by the global batch's target count, gradient
// clipping, AdamW with warmup + cosine/linear/constant schedule, metrics.jsonl + progress line,
// atomic self-verifying checkpoints with exact resume (output.resume: auto | last_intact | never |
// folder), PEFT (or merged) export. At start, rank 0 deletes unfinished checkpoint saves and cuts
// metrics.jsonl back to the step the run starts from (0 on a fresh start).
// Errors raised (loom::Error): invalid config or inputs; a damaged checkpoint (naming the file;
// output.resume=last_intact falls back past it); resume on different data; divergence
// (engine/divergence.h: a non-finite loss or gradient, a dead gradient, a loss out of its band, or
// adapter weights unfit to save), naming the step, the figure and the checkpoint from before it.
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
