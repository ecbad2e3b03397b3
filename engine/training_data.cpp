#include "engine/training_data.h"

#include <algorithm>
#include <filesystem>

#include "data/dataset.h"
#include "data/shards.h"
#include "data/synthetic.h"
#include "data/tokenizer.h"
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
  std::string prepared = path;
  std::error_code ec;
  if (!fs::is_directory(path, ec)) prepared = prepare_dataset(cfg.data, tokenizer_path(cfg), data_cache_dir(cfg));
  std::vector<Document> docs = load_prepared(prepared);
  LOOM_CHECK(!docs.empty(), "data.path: '", path, "' gave no trainable documents");
  check_vocabulary(docs, mc, prepared);
  return docs;
}

}  // namespace loom
