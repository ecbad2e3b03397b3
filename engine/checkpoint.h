// Training checkpoints: <run>/checkpoints/step-NNNNNN/
//   adapter/                  PEFT adapter (adapter_config.json + adapter_model.safetensors)
//   optimizer.safetensors     AdamW moments "exp_avg", "exp_avg_sq" (fp32, the flat LoRA layout)
//   trainer_state.json        {"step", "optimizer_step", "loader": LoaderState, "loss"}
// Written into a hidden temporary folder and renamed into place only when complete, so a crash
// never leaves a checkpoint that looks whole; older ones beyond output.keep_checkpoints are deleted
// only after the new one is in place.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "data/dataloader.h"
#include "engine/optimizer.h"
#include "models/lora.h"

namespace loom {

struct TrainCheckpoint {
  int64_t step = 0;  // optimizer steps completed
  std::vector<float> params;
  OptimizerState opt;
  LoaderState loader;
};

// Returns the folder written.
std::string save_checkpoint(const std::string& run_dir, const TrainCheckpoint& ck, const LoraLayout& layout,
                            const std::string& base_model, int keep);
// The newest complete checkpoint folder of a run, if any.
std::optional<std::string> latest_checkpoint(const std::string& run_dir);
// Reads a checkpoint folder; errors name the file.
TrainCheckpoint load_checkpoint(const std::string& dir, const LoraLayout& layout);

}  // namespace loom
