// Training checkpoints: <run>/checkpoints/step-NNNNNN/
//   adapter/                  PEFT adapter (adapter_config.json + adapter_model.safetensors)
//   optimizer.safetensors     AdamW moments "exp_avg", "exp_avg_sq" (fp32, the flat LoRA layout)
//   trainer_state.json        {"step", "optimizer_step", "loader": LoaderState, "checkpoint_format": 2}
//   checksums.json            written last: {"hash": "fnv1a64", "files": {"<path>": {"bytes": N,
//                             "fnv1a64": "<16 hex digits>"}}} for each of the four files above
// Written into a hidden temporary folder (.step-NNNNNN.tmp) and renamed into place only when
// complete, so a crash never leaves a checkpoint that looks whole; older ones beyond
// output.keep_checkpoints are deleted only after the new one is in place.
//
// Loading verifies before it reads: the folder holds exactly the listed files, each with its
// recorded size and FNV-1a-64 (the shard checksum of data/shards.h: it detects any change confined
// to one byte for certain, and other damage but for a 2^-64 chance; a cryptographic hash would only
// add resistance to forgery, which is moot when the forger can rewrite checksums.json too); the
// step in trainer_state.json matches the folder name; the adapter weights and optimizer moments are
// finite (and sane: engine/divergence.h). Every failure names the file.
// Format 1 (loom before checksums: no checksums.json, no "checkpoint_format") still loads, with a
// warning that it could not be verified, so runs written before keep resuming.
#pragma once
#include <cstdint>
#include <limits>
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

// Returns the folder written. Older checkpoints beyond the newest `keep` are deleted, except the one
// of step `spared` (output.keep_best: the lowest eval loss).
std::string save_checkpoint(const std::string& run_dir, const TrainCheckpoint& ck, const LoraLayout& layout,
                            const std::string& base_model, int keep, std::optional<int64_t> spared = std::nullopt);
// The checkpoint folders of a run (checkpoints/step-N, whole or damaged), by step, oldest first.
std::vector<std::string> list_checkpoints(const std::string& run_dir);
// The newest of list_checkpoints (of a step <= up_to_step), if any.
std::optional<std::string> latest_checkpoint(const std::string& run_dir,
                                             int64_t up_to_step = std::numeric_limits<int64_t>::max());
// Deletes the temporary folders of saves that a kill interrupted (checkpoints/.step-N.tmp); returns
// their names.
std::vector<std::string> remove_unfinished_checkpoints(const std::string& run_dir);
// Verifies a checkpoint folder (see above) and reads it; errors name the file. For a format-1
// checkpoint, which cannot be verified, *warning (if given) receives a sentence saying so.
TrainCheckpoint load_checkpoint(const std::string& dir, const LoraLayout& layout, std::string* warning = nullptr);

}  // namespace loom
