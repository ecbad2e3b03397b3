#include "engine/training_data.h"

#include <algorithm>
#include <filesystem>
#include <optional>

#include "data/dataset.h"
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

// Prepared shards given as data.path must come from the model's tokenizer (and template).
void check_prepared_folder(const TrainConfig& cfg, const ModelTokenizer& model) {
  const std::string source = prepared_source(cfg.data.path);
  const std::string fix = cat("re-run build/prepare --data ", source.empty() ? "FILE.jsonl" : source, " --tokenizer ",
                              model.path, " --out ", cfg.data.path,
                              ", or point data.path at the JSONL file (it is then prepared with ", model.name, ")");
  check_prepared_tokenizer(cfg.data.path, cat("data.path ", cfg.data.path), model, fix);
}

// A JSONL file is prepared with data.tokenizer when set: it must be the model's tokenizer.
void check_jsonl_preparation(const TrainConfig& cfg, const std::string& prepared, const ModelTokenizer& model) {
  if (model.path == tokenizer_path(cfg)) return;  // prepared with the model's tokenizer itself
  check_prepared_tokenizer(prepared,
                           cat("data.path ", cfg.data.path, " (prepared with data.tokenizer into ", prepared, ")"),
                           model, cat("remove data.tokenizer to prepare it with ", model.name));
}

void check_vocabulary(const std::vector<Document>& docs, const ModelConfig& mc, const std::string& source) {
  for (size_t i = 0; i < docs.size(); ++i)
    for (int32_t id : docs[i].ids)
      LOOM_CHECK(id >= 0 && id < mc.V, source, ": document ", i, " has token id ", id,
                 " outside the model's vocabulary (", mc.V, "); is data.tokenizer the model's tokenizer?");
}

}  // namespace

std::vector<Document> load_training_documents(const TrainConfig& cfg, const ModelConfig& mc) {
  if (!cfg.data.synthetic.empty()) return synthetic(cfg, mc);
  const std::string& path = cfg.data.path;
  check_data_paths(cfg);
  std::error_code ec;
  const bool given_prepared = fs::is_directory(path, ec);
  const std::string prepared =
      given_prepared ? path : prepare_dataset(cfg.data, tokenizer_path(cfg), data_cache_dir(cfg));
  if (const std::optional<ModelTokenizer> model = model_tokenizer(cfg)) {
    if (given_prepared)
      check_prepared_folder(cfg, *model);
    else
      check_jsonl_preparation(cfg, prepared, *model);
  }
  std::vector<Document> docs = load_prepared(prepared);
  LOOM_CHECK(!docs.empty(), "data.path: '", path, "' gave no trainable documents");
  check_vocabulary(docs, mc, prepared);
  return docs;
}

}  // namespace loom
