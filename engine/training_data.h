// The documents a run trains on (config `data:` section): BENCHMARK.md's synthetic workload, a
// folder of prepared shards, or a JSONL file prepared into a cache on first use; and how the
// dataloader walks them (config `train:` section).
#pragma once
#include <vector>

#include "data/batch.h"
#include "data/dataloader.h"
#include "engine/config.h"
#include "models/model_config.h"

namespace loom {

// The documents a run trains on and those it evaluates on.
struct RunDocuments {
  std::vector<Document> train;  // data.path (or synthetic), less what data.eval_split holds out
  std::vector<Document> eval;   // empty without data.eval_path or data.eval_split
};

// data.eval_split holds documents out of the training data (data/eval_set.h: by content, the same
// on every rank); data.eval_path is read like data.path: a folder of prepared shards, or a JSONL
// file prepared with the same tokenizer, template and data settings into <data cache>/eval. Every
// token id is checked against the model's vocabulary (error names the source and the setting), and
// every document against train.objective: pairs (two segments) for dpo and orpo, single sequences
// for sft.
RunDocuments load_run_documents(const TrainConfig& cfg, const ModelConfig& mc);

// The dataloader's options of this rank: train.token_budget, global_batch and seed.
LoaderOptions loader_options(const TrainSection& train, int rank, int world);

}  // namespace loom
