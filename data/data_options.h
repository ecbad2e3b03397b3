// The config's `data:` section (engine/config.cpp reads it; build/prepare fills it from its flags):
// where the documents come from and how JSONL records become documents (data/dataset.h). The
// choices are enums, read from their YAML names once; each names array lists those spellings in
// enum order.
#pragma once
#include <array>
#include <cstddef>
#include <string>

namespace loom {

// The record format of a JSONL file (data/dataset.h); kAuto: the keys of its first usable record
// decide. kPairs: preference pairs (data/preference_data.h), what train.objective dpo and orpo need.
enum class DataFormat { kAuto, kMessages, kSharegpt, kAlpaca, kText, kPairs };
inline constexpr std::array<const char*, 6> kDataFormatNames = {"auto",   "messages", "sharegpt",
                                                                "alpaca", "text",     "pairs"};
inline const char* data_format_name(DataFormat f) { return kDataFormatNames[size_t(f)]; }

// Which tokens of a conversation are targets: kResponses = the assistant turns, kAll = every token
// but the first.
enum class TrainOn { kResponses, kAll };
inline constexpr std::array<const char*, 2> kTrainOnNames = {"responses", "all"};
inline const char* train_on_name(TrainOn t) { return kTrainOnNames[size_t(t)]; }

// A document longer than max_seq_len: kTruncate keeps its first max_seq_len tokens, kDrop leaves it out.
enum class Overlong { kTruncate, kDrop };
inline constexpr std::array<const char*, 2> kOverlongNames = {"truncate", "drop"};
inline const char* overlong_name(Overlong o) { return kOverlongNames[size_t(o)]; }

// A malformed JSONL record: kError stops with FILE:LINE, kSkip counts it and goes on.
enum class OnBadLine { kError, kSkip };
inline constexpr std::array<const char*, 2> kOnBadLineNames = {"error", "skip"};
inline const char* on_bad_line_name(OnBadLine b) { return kOnBadLineNames[size_t(b)]; }

struct DataOptions {
  std::string path;                        // JSONL file, or a folder of prepared shards
  std::string synthetic;                   // "" or "sft-alpaca" (BENCHMARK.md workload; no path needed)
  int synthetic_docs = 4096;               // documents generated for synthetic data
  DataFormat format = DataFormat::kAuto;
  std::string tokenizer;                   // tokenizer.json / .model / folder; default: model.path
  // YAML key "template": auto | chatml | qwen3 | llama3 | mistral | llama2 | none (an open set:
  // data/chat_template.h names them)
  std::string template_name = "auto";
  TrainOn train_on = TrainOn::kResponses;
  int max_seq_len = 2048;
  // Preference pairs: prompt tokens kept (its last ones, TRL's keep_end); 0 = no limit but
  // max_seq_len (data/preference_data.h says how a pair is cut).
  int max_prompt_len = 0;
  Overlong overlong = Overlong::kTruncate;
  OnBadLine on_bad_line = OnBadLine::kError;
  std::string cache_dir;                   // prepared-shard cache for JSONL input; default <output.dir>/data
  // Held-out documents to evaluate on: a JSONL file or a folder of prepared shards, prepared like
  // `path` (same tokenizer, template and settings). "" = none. Excludes eval_split.
  std::string eval_path;
  // Documents held out of the training data for evaluation (data/eval_set.h): 0 = none; in (0, 1)
  // a fraction of the documents, from 1 a whole count of them. Excludes eval_path.
  double eval_split = 0;
};

}  // namespace loom
