// train.sample_every: what the model says while it trains. Rank 0 continues train.sample_prompts
// greedily (up to train.sample_max_new_tokens tokens, stopping at the model's end-of-sequence ids
// and, for conversations, the template's end-of-turn) before the first step of a run that starts
// from scratch, every sample_every steps and after the last, and appends one line per prompt to
// <output.dir>/samples.jsonl:
//   {"step": N, "prompt": "<the prompt's tokens decoded>", "completion": "...", "finish_reason": "..."}
// Prompts: each entry of train.sample_prompts is a prompt text (as build/generate's {"prompt": ...}),
// or a single entry ending in .jsonl names a file of build/generate's input lines ({"prompt"},
// {"messages"} or {"ids"}).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/score_input.h"
#include "engine/backend.h"
#include "engine/config.h"
#include "engine/generation.h"

namespace loom {

class RunSamples {
 public:
  // Reads and tokenizes the prompts (errors name the key, or the file and line); eos: the model's
  // end-of-sequence ids.
  RunSamples(const TrainConfig& cfg, int32_t vocab, const std::vector<int>& eos);
  bool enabled() const { return every_ > 0; }
  // What the samples need of a backend's generation (its KV cache on the GPU); batch 0 when disabled.
  DecodeShape decode_shape() const;
  // Whether to sample after `step` steps (0: before the first) of a run of `total`.
  bool due(int64_t step, int64_t total) const;
  // Generates with the backend's adapters as they stand and appends to samples.jsonl.
  void write(int64_t step, TrainBackend& backend) const;

 private:
  int every_;
  std::string path_;
  std::unique_ptr<ScoreInput> input_;
  std::vector<std::vector<int32_t>> prompts_;
  GenerationOptions options_;
};

}  // namespace loom
