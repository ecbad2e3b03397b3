// The training run: config → model → data → step loop → checkpoints → export.
// Features: packed micro-batches, loss normalised by the global batch's target count, gradient
// clipping, AdamW with warmup + cosine/linear/constant schedule, metrics.jsonl + progress line,
// atomic self-verifying checkpoints with exact resume (output.resume: auto | last_intact | never |
// folder), PEFT (or merged) export. At start, rank 0 deletes unfinished checkpoint saves and cuts
// metrics.jsonl back to the step the run starts from (0 on a fresh start). A rerun in a run folder
// continues its run only with the settings it was started with (config.resolved.yaml, written by the
// fresh run), unless output.on_change=accept; a run already at its last step trains nothing and
// returns `complete`.
// Errors raised (loom::Error): invalid config or inputs; a damaged checkpoint (naming the file;
// output.resume=last_intact falls back past it); resume with settings that train something else
// (listing each key: old -> new); resume on different data; divergence
// (engine/divergence.h: a non-finite loss or gradient, a dead gradient, a loss out of its band, or
// adapter weights unfit to save), naming the step, the figure and the checkpoint from before it.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "engine/config.h"

namespace loom {

struct TrainSummary {
  std::string run_dir;
  std::string device;
  int64_t first_step = 0, last_step = 0;  // steps done by this process: (first_step, last_step]
  double first_loss = 0, last_loss = 0;
  double seconds = 0;
  // The run folder's run had already trained all its steps: nothing ran (first_step == last_step).
  bool complete = false;
  int64_t total_steps = 0;            // when complete: the steps the config asks for
  std::optional<double> final_loss;   // when complete: the loss metrics.jsonl logged for last_step
  // train.early_stopping_patience stopped the run at this step (now, or in the run this folder holds).
  std::optional<int64_t> stopped_early_at;
};

TrainSummary train(const TrainConfig& cfg);
// What build/train says of a complete run folder: its steps, final loss and the ways to go on.
std::string completion_note(const TrainSummary& s);

}  // namespace loom
