#include "engine/training_data.h"

#include <algorithm>
#include <filesystem>
#include <optional>

#include "data/dataset.h"
#include "data/eval_set.h"
#include "data/shards.h"
#include "data/synthetic.h"
#include "data/tokenizer.h"
#include "data/tokenizer_record.h"
#include "ops/error.h"

namespace fs = std::filesystem;

namespace loom {
namespace {

std::vector<Document> synthetic(const TrainConfig& cfg, const ModelConfig& mc) {
  const std::string where = cfg.source.empty() ? "config" : cfg.source;
  SyntheticSpec spec = synthetic_workload(cfg.data.synthetic, cfg.data.synthetic_docs, mc.V, where);
  spec.max_length = std::min<int64_t>(spec.max_length, cfg.data.max_seq_len);
  spec.min_length = std::min(spec.min_length, spec.max_length);
  return synthetic_documents(spec);
}

// The tokenizer of a run: data.tokenizer, else the model folder.
std::string tokenizer_path(const TrainConfig& cfg) {
  if (!cfg.data.tokenizer.empty()) return cfg.data.tokenizer;
  LOOM_CHECK(!cfg.model.path.empty(), "data.tokenizer is required when the model is a preset (model.preset = ",
             cfg.model.preset, ")");
  return cfg.model.path;
}

// The tokenizer the run's data must have been made with: model.path's own when its folder holds
// one, else data.tokenizer; nullopt for a preset model without data.tokenizer.
std::optional<ModelTokenizer> model_tokenizer(const TrainConfig& cfg) {
  if (!cfg.model.path.empty() && holds_tokenizer(cfg.model.path))
    return ModelTokenizer{cfg.model.path, "model.path's tokenizer", cfg.data.template_name};
  if (!cfg.data.tokenizer.empty()) return ModelTokenizer{cfg.data.tokenizer, "data.tokenizer", cfg.data.template_name};
  return std::nullopt;
}

// Prepared shards given as `key` (data.path or data.eval_path) must come from the model's
// tokenizer (and template).
void check_prepared_folder(const std::string& key, const std::string& path, const ModelTokenizer& model) {
  const std::string source = prepared_source(path);
  const std::string fix = cat("re-run build/prepare --data ", source.empty() ? "FILE.jsonl" : source, " --tokenizer ",
                              model.path, " --out ", path, ", or point ", key,
                              " at the JSONL file (it is then prepared with ", model.name, ")");
  check_prepared_tokenizer(path, cat(key, " ", path), model, fix);
}

// A JSONL file is prepared with data.tokenizer when set: it must be the model's tokenizer.
void check_jsonl_preparation(const TrainConfig& cfg, const std::string& key, const std::string& path,
                             const std::string& prepared, const ModelTokenizer& model) {
  if (model.path == tokenizer_path(cfg)) return;  // prepared with the model's tokenizer itself
  check_prepared_tokenizer(prepared, cat(key, " ", path, " (prepared with data.tokenizer into ", prepared, ")"), model,
                           cat("remove data.tokenizer to prepare it with ", model.name));
}

void check_vocabulary(const std::vector<Document>& docs, const ModelConfig& mc, const std::string& source) {
  for (size_t i = 0; i < docs.size(); ++i)
    for (int32_t id : docs[i].ids)
      LOOM_CHECK(id >= 0 && id < mc.V, source, ": document ", i, " has token id ", id,
                 " outside the model's vocabulary (", mc.V, "); is data.tokenizer the model's tokenizer?");
}

// A preference objective trains on pairs (two segments each, data/preference_data.h) and SFT on
// single sequences; anything else is refused naming the source and the first document that is not.
void check_objective_documents(const std::vector<Document>& docs, const TrainConfig& cfg, const std::string& source) {
  const bool preference = cfg.train.objective != ObjectiveKind::kSft;
  const char* objective = objective_name(cfg.train.objective);
  for (size_t i = 0; i < docs.size(); ++i) {
    const size_t sequences = docs[i].segments.empty() ? 1 : docs[i].segments.size();
    if (preference)
      LOOM_CHECK(sequences == 2, source, ": document ", i, " holds ", sequences,
                 " sequence(s), but train.objective ", objective,
                 " trains on preference pairs; give {\"prompt\", \"chosen\", \"rejected\"} records (data.format: "
                 "pairs)");
    else
      LOOM_CHECK(sequences == 1, source, ": document ", i,
                 " is a preference pair (prompt, chosen, rejected), which train.objective sft does not train on; set "
                 "train.objective to dpo or orpo, or give conversations");
  }
}

// The documents of `path`, given as `key` (data.path or data.eval_path): a folder of prepared
// shards, or a JSONL file prepared with the run's tokenizer and data settings into cache_dir.
std::vector<Document> load_source(const TrainConfig& cfg, const ModelConfig& mc, const std::string& key,
                                  const std::string& path, const std::string& cache_dir) {
  std::error_code ec;
  const bool given_prepared = fs::is_directory(path, ec);
  DataOptions options = cfg.data;
  options.path = path;  // what prepare_dataset reads
  const std::string prepared = given_prepared ? path : prepare_dataset(options, tokenizer_path(cfg), cache_dir);
  if (const std::optional<ModelTokenizer> model = model_tokenizer(cfg)) {
    if (given_prepared)
      check_prepared_folder(key, path, *model);
    else
      check_jsonl_preparation(cfg, key, path, prepared, *model);
  }
  std::vector<Document> docs = load_prepared(prepared);
  LOOM_CHECK(!docs.empty(), key, ": '", path, "' gave no trainable documents");
  check_vocabulary(docs, mc, prepared);
  check_objective_documents(docs, cfg, cat(key, " ", path));
  return docs;
}

}  // namespace

RunDocuments load_run_documents(const TrainConfig& cfg, const ModelConfig& mc) {
  check_data_paths(cfg);
  RunDocuments run;
  run.train = cfg.data.synthetic.empty() ? load_source(cfg, mc, "data.path", cfg.data.path, data_cache_dir(cfg))
                                         : synthetic(cfg, mc);
  if (!cfg.data.synthetic.empty()) check_objective_documents(run.train, cfg, cat("data.synthetic ", cfg.data.synthetic));
  if (cfg.data.eval_split != 0) {
    EvalSplit split = split_eval_documents(std::move(run.train), cfg.data.eval_split);
    run.train = std::move(split.train);
    run.eval = std::move(split.eval);
  } else if (!cfg.data.eval_path.empty()) {
    // Its own cache folder: the eval file's preparations never mix with the training data's.
    const std::string cache_dir = (fs::path(data_cache_dir(cfg)) / "eval").string();
    run.eval = load_source(cfg, mc, "data.eval_path", cfg.data.eval_path, cache_dir);
  }
  return run;
}

LoaderOptions loader_options(const TrainSection& train, int rank, int world) {
  LoaderOptions o;
  o.token_budget = train.token_budget;
  o.global_batch = train.global_batch;
  o.seed = uint64_t(int64_t(train.seed));
  o.rank = rank;
  o.world = world;
  return o;
}

}  // namespace loom
