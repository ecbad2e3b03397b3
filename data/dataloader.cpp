#include "data/dataloader.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <numeric>

#include "data/json_fields.h"
#include "data/rng.h"
#include "ops/error.h"
#include "ops/files.h"

namespace loom {
namespace {

void check_options(const LoaderOptions& o) {
  LOOM_CHECK(o.token_budget > 0, "train.token_budget must be > 0, got ", o.token_budget);
  LOOM_CHECK(o.global_batch > 0, "train.global_batch must be > 0, got ", o.global_batch);
  LOOM_CHECK(o.world >= 1 && o.rank >= 0 && o.rank < o.world, "dataloader: rank ", o.rank,
             " is outside a world of ", o.world, " ranks");
  LOOM_CHECK(o.attention_span >= 1, "dataloader: attention span must be >= 1, got ", o.attention_span);
  LOOM_CHECK(o.padded_group >= 1, "dataloader: padded baseline group must be >= 1, got ", o.padded_group);
}


// Segments are mixed in only when a document has them, so the fingerprints of single-sequence
// documents (and the checkpoints that recorded them) are those of before segments existed.
uint64_t hash_document(uint64_t h, const Document& d) {
  h = mix64(h ^ uint64_t(d.ids.size()));
  for (size_t i = 0; i < d.ids.size(); ++i)
    h = mix64(h ^ (uint64_t(uint32_t(d.ids[i])) | (uint64_t(d.mask[i]) << 32)));
  if (!d.segments.empty()) h = mix64(h ^ (uint64_t(d.segments.size()) << 40));
  for (int32_t len : d.segments) h = mix64(h ^ uint64_t(uint32_t(len)));
  return h;
}

uint64_t epoch_seed(uint64_t seed, int epoch) { return mix64(seed ^ mix64(uint64_t(epoch))); }

std::string hex16(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, v);
  return buf;
}

// A member of the loader state; `where` names the file, and messages give the key as
// loader.KEY (the state is the "loader" object of a checkpoint's trainer_state.json).
const nlohmann::json& state_field(const nlohmann::json& j, const char* key, const std::string& where) {
  const nlohmann::json* v = json_member(j, key);
  LOOM_CHECK(v, where, ": dataloader state has no \"", key, "\"; the checkpoint is incomplete or from another program");
  return *v;
}

int64_t state_integer(const nlohmann::json& j, const char* key, int64_t lo, int64_t hi, const std::string& where) {
  return json_integer(state_field(j, key, where), lo, hi, where, cat("loader.", key));
}

uint64_t parse_hex16(const std::string& s, const std::string& where) {
  LOOM_CHECK(s.size() == 16 && s.find_first_not_of("0123456789abcdefABCDEF") == std::string::npos, where,
             ": dataloader state \"data_fingerprint\" must be 16 hex digits, got \"", s, "\"");
  return std::stoull(s, nullptr, 16);
}

}  // namespace

bool LoaderState::operator==(const LoaderState& o) const {
  return epoch == o.epoch && step_in_epoch == o.step_in_epoch && seed == o.seed &&
         global_batch == o.global_batch && documents == o.documents && data_fingerprint == o.data_fingerprint;
}

std::string to_json(const LoaderState& s) {
  nlohmann::json j = {{"epoch", s.epoch},
                      {"step_in_epoch", s.step_in_epoch},
                      {"seed", s.seed},
                      {"global_batch", s.global_batch},
                      {"documents", s.documents},
                      {"data_fingerprint", hex16(s.data_fingerprint)}};
  return j.dump();
}

LoaderState loader_state_from_json(const std::string& text, const std::string& where) {
  const nlohmann::json j = parse_json(text, where);
  LOOM_CHECK(j.is_object(), where, ": dataloader state must be a JSON object, found ", json_shown(j));
  LoaderState s;
  s.epoch = int(state_integer(j, "epoch", 0, INT32_MAX, where));
  s.step_in_epoch = state_integer(j, "step_in_epoch", 0, INT64_MAX, where);
  s.seed = json_unsigned(state_field(j, "seed", where), where, "loader.seed");
  s.global_batch = state_integer(j, "global_batch", 1, INT64_MAX, where);
  s.documents = state_integer(j, "documents", 1, INT64_MAX, where);
  s.data_fingerprint =
      parse_hex16(json_string(state_field(j, "data_fingerprint", where), where, "loader.data_fingerprint"), where);
  return s;
}

DataLoader::DataLoader(const std::vector<Document>& docs, const LoaderOptions& options)
    : docs_(&docs), options_(options) {
  check_options(options_);
  LOOM_CHECK(!docs.empty(), "the dataset has no documents; check data.path (or data.synthetic_docs)");
  lengths_.reserve(docs.size());
  targets_.reserve(docs.size());
  fingerprint_ = mix64(uint64_t(docs.size()));
  for (size_t i = 0; i < docs.size(); ++i) {
    check_packable(docs[i], cat("document ", i), options_.token_budget);
    lengths_.push_back(int64_t(docs[i].ids.size()));
    targets_.push_back(document_targets(docs[i]));
    fingerprint_ = hash_document(fingerprint_, docs[i]);
  }
  shuffle_epoch();
}

int64_t DataLoader::steps_per_epoch() const {
  return (documents() + options_.global_batch - 1) / options_.global_batch;
}

int64_t DataLoader::total_steps(int epochs) const {
  LOOM_CHECK(epochs >= 1, "train.epochs must be >= 1, got ", epochs);
  return int64_t(epochs) * steps_per_epoch();
}

void DataLoader::shuffle_epoch() {
  order_.resize(lengths_.size());
  std::iota(order_.begin(), order_.end(), int64_t(0));
  SplitMix64 rng(epoch_seed(options_.seed, epoch_));
  for (size_t i = order_.size() - 1; i > 0; --i) std::swap(order_[i], order_[rng.below(i + 1)]);
}

std::vector<int64_t> DataLoader::step_documents() const {
  const int64_t begin = step_in_epoch_ * options_.global_batch;
  const int64_t end = std::min(documents(), begin + options_.global_batch);
  return std::vector<int64_t>(order_.begin() + begin, order_.begin() + end);
}

Step DataLoader::next() {
  Step step = plan_step(step_documents());
  step.epoch = epoch_;
  step.step_in_epoch = step_in_epoch_;
  if (++step_in_epoch_ == steps_per_epoch()) {
    ++epoch_;
    step_in_epoch_ = 0;
    shuffle_epoch();
  }
  return step;
}

Step DataLoader::plan_step(const std::vector<int64_t>& batch) const {
  std::vector<int64_t> lengths;
  for (int64_t d : batch) lengths.push_back(lengths_[d]);
  Step step;
  step.global_docs = int64_t(batch.size());
  step.packing.token_budget = options_.token_budget;
  step.packing.padded_tokens = padded_batch_tokens(lengths, options_.padded_group);
  const auto ranks = split_across_ranks(lengths, options_.world, options_.attention_span);
  for (int r = 0; r < options_.world; ++r) {
    std::vector<int64_t> docs;  // document indices of rank r
    for (int64_t pos : ranks[r]) docs.push_back(batch[pos]);
    plan_rank(step, docs, r == options_.rank);
  }
  step.packing.real_tokens = step.global_tokens;
  return step;
}

void DataLoader::plan_rank(Step& step, const std::vector<int64_t>& docs, bool own) const {
  std::vector<int64_t> lengths;
  RankLoad load;
  for (int64_t d : docs) {
    lengths.push_back(lengths_[d]);
    load.tokens += lengths_[d];
    load.attention += lengths_[d] * lengths_[d];
    step.global_targets += targets_[d];
  }
  const auto bins = pack_first_fit_decreasing(lengths, options_.token_budget);
  load.docs = int64_t(docs.size());
  load.micro_batches = int64_t(bins.size());
  step.ranks.push_back(load);
  step.global_tokens += load.tokens;
  step.packing.micro_batches += load.micro_batches;
  if (!own) return;
  for (const auto& bin : bins) {
    std::vector<const Document*> micro_docs;
    for (int64_t i : bin) micro_docs.push_back(&(*docs_)[docs[i]]);
    step.micro.push_back(pack_documents(micro_docs));
    for (int64_t i : bin) step.micro.back().documents.push_back(docs[i]);
  }
}

LoaderState DataLoader::state() const {
  LoaderState s;
  s.epoch = epoch_;
  s.step_in_epoch = step_in_epoch_;
  s.seed = options_.seed;
  s.global_batch = options_.global_batch;
  s.documents = documents();
  s.data_fingerprint = fingerprint_;
  return s;
}

void DataLoader::restore(const LoaderState& s) {
  const char* cannot = "cannot resume the data order: ";
  const char* or_restart = " to resume, or start a new run (output.resume: never)";
  LOOM_CHECK(s.documents == documents() && s.data_fingerprint == fingerprint_, cannot,
             "the checkpoint was taken on ", s.documents, " documents (fingerprint ", hex16(s.data_fingerprint),
             "), this run has ", documents(), " (fingerprint ", hex16(fingerprint_), "); use the same data",
             or_restart);
  LOOM_CHECK(s.global_batch == options_.global_batch, cannot, "the checkpoint used train.global_batch = ",
             s.global_batch, ", this run has ", options_.global_batch, "; set train.global_batch: ", s.global_batch,
             or_restart);
  LOOM_CHECK(s.epoch >= 0 && s.step_in_epoch >= 0 && s.step_in_epoch < steps_per_epoch(), cannot,
             "the checkpoint is at epoch ", s.epoch, " step ", s.step_in_epoch, " but an epoch has ",
             steps_per_epoch(), " steps; the checkpoint's loader state is corrupt");
  options_.seed = s.seed;
  epoch_ = s.epoch;
  step_in_epoch_ = s.step_in_epoch;
  shuffle_epoch();
}

}  // namespace loom
