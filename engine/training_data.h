// The documents a run trains on (config `data:` section): BENCHMARK.md's synthetic workload, a
// folder of prepared shards, or a JSONL file prepared into a cache on first use.
#pragma once
#include <vector>

#include "data/batch.h"
#include "engine/config.h"
#include "models/model_config.h"

namespace loom {

// Every token id is checked against the model's vocabulary (error names the source and the setting).
std::vector<Document> load_training_documents(const TrainConfig& cfg, const ModelConfig& mc);

}  // namespace loom
