#include "engine/run_samples.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/jsonl.h"
#include "dist/dist.h"
#include "ops/error.h"
#include "ops/files.h"

namespace loom {
namespace {

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// The run's tokenizer: data.tokenizer, else model.path's own, else none (prompts must be ids).
ScoreInputOptions sample_input_options(const TrainConfig& cfg, int32_t vocab) {
  ScoreInputOptions o;
  if (!cfg.data.tokenizer.empty()) {
    o.tokenizer_path = cfg.data.tokenizer;
    o.tokenizer_name = "data.tokenizer";
  } else if (!cfg.model.path.empty() && holds_tokenizer(cfg.model.path)) {
    o.tokenizer_path = cfg.model.path;
    o.tokenizer_name = "model.path's tokenizer";
  }
  o.template_name = cfg.data.template_name;
  o.vocab = vocab;
  return o;
}

}  // namespace

RunSamples::RunSamples(const TrainConfig& cfg, int32_t vocab, const std::vector<int>& eos)
    : every_(cfg.train.sample_every), path_(cfg.output.dir + "/samples.jsonl") {
  if (every_ <= 0) return;
  input_ = std::make_unique<ScoreInput>(sample_input_options(cfg, vocab));
  const std::vector<std::string>& given = cfg.train.sample_prompts;
  bool conversations = false;
  if (given.size() == 1 && ends_with(given[0], ".jsonl")) {
    require_regular_file(given[0], "train.sample_prompts");
    std::ifstream f(given[0]);
    JsonlReader reader(f, given[0]);
    for (std::string line; reader.next(line);) {
      bool conversation = false;
      prompts_.push_back(input_->read_prompt(line, reader.where(), &conversation));
      conversations = conversations || conversation;
    }
    LOOM_CHECK(!prompts_.empty(), "train.sample_prompts: ", given[0], " holds no prompt");
  } else {
    for (size_t i = 0; i < given.size(); ++i)
      prompts_.push_back(input_->read_prompt(nlohmann::json{{"prompt", given[i]}}.dump(),
                                             cat("train.sample_prompts[", i, "]")));
  }
  options_.sampling.temperature = 0.f;  // greedy: the same weights say the same thing
  options_.max_new_tokens = cfg.train.sample_max_new_tokens;
  options_.eos_ids.assign(eos.begin(), eos.end());
  if (conversations) {
    const std::vector<int32_t> end = input_->tokenizer("train.sample_prompts")
                                         .encode(end_of_turn_text(input_->chat_template("train.sample_prompts")));
    if (end.size() == 1) options_.eos_ids.push_back(end[0]);
  }
}

DecodeShape RunSamples::decode_shape() const {
  DecodeShape s;
  if (every_ <= 0) return s;
  const size_t batch = std::min(prompts_.size(), size_t(options_.batch_size));
  s.batch = int(batch);
  for (size_t first = 0; first < prompts_.size(); first += batch) {  // generate()'s batches
    int64_t tokens = 0;
    for (size_t i = first; i < std::min(prompts_.size(), first + batch); ++i) {
      tokens += int64_t(prompts_[i].size());
      s.context = std::max<int64_t>(s.context, int64_t(prompts_[i].size()) + options_.max_new_tokens);
    }
    s.prefill_tokens = std::max(s.prefill_tokens, tokens);
  }
  return s;
}

bool RunSamples::due(int64_t step, int64_t total) const {
  return every_ > 0 && (step % every_ == 0 || step == total);
}

void RunSamples::write(int64_t step, TrainBackend& backend) const {
  if (!is_main()) return;
  std::unique_ptr<DecodeModel> model = backend.decode_model();
  LOOM_CHECK(model, "train.sample_every: ", backend.describe(), " was built without the samples' decode shape");
  const bool text = !input_->tokenizer_path().empty();
  const Tokenizer* tok = text ? &input_->tokenizer("train.sample_prompts") : nullptr;
  const std::vector<Generation> out = generate(*model, tok, prompts_, options_);
  std::ofstream f(path_, std::ios::app);
  for (size_t i = 0; i < out.size(); ++i) {
    const nlohmann::ordered_json line = {{"step", step},
                                         {"prompt", tok ? tok->decode(prompts_[i]) : std::string()},
                                         {"completion", out[i].text},
                                         {"ids", out[i].ids},
                                         {"finish_reason", out[i].finish_reason}};
    f << line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  }
  LOOM_CHECK(f.flush(), "cannot write ", path_, " (is the run folder writable?)");
}

}  // namespace loom
