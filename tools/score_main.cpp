// build/score --model DIR [--adapter DIR] [--tokenizer PATH] [--template NAME] [--train-on responses|all]
//             [--per-token] [--device auto|cpu|cuda] < in.jsonl > out.jsonl
// Scores each input line as training would see it (data/score_input.h): {"ids": [...]}, {"text": ...},
// or a conversation ({"messages"}, ShareGPT, Alpaca) through the model's tokenizer and chat
// template. Each line gives {"nll": mean negative log-likelihood of the target tokens given their
// prefix, "tokens": target count} ("nll": null, "tokens": 0 when there is none); --per-token adds
// "logprobs" (the log-probability of every token after the first, aligned with ids[1:]) and, for
// text and conversations, the "ids" scored and their "targets" (1 where the token counts, aligned
// with ids[1:]). Lines are read by data/jsonl.h (at most 8 MiB, JSON nested at most 64 deep); a bad
// line is "error: stdin:LINE: ...", exit 1, before anything is scored. On a GPU the model runs
// forward-only (models/cuda_model.h ModelMode::kForward: no gradients, no optimizer state, one layer
// of activations; the plan is sized by the longest document) with bf16 base weights, or NF4 with
// --quant nf4 (the QLoRA base the adapter was trained on); --print-plan shows the memory plan.
// --device cpu uses the fp32 reference path.
// --pairs: each line a preference pair ({"prompt_ids", "chosen_ids", "rejected_ids"}, or TRL's
// standard / conversational records through the tokenizer and chat template); per pair the summed
// log-probs of the completions with the adapter (the policy) and without it (the reference), the
// rewards β·(policy − reference), their margin and the sigmoid DPO loss (engine/preference.h):
// how an adapter's preference accuracy on held-out pairs is measured.
#include <cstdio>
#include <cmath>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <vector>

#include "data/chat_template.h"
#include "data/jsonl.h"
#include "data/score_input.h"
#include "engine/preference.h"
#include "ops/device.h"
#include "models/cuda_model.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/reference_model.h"
#include "models/weights.h"
#include "ops/error.h"
#include "ops/files.h"
#include "tools/flag_terms.h"
#include "tools/model_folder.h"

namespace {


const char* kUsage =
    "usage: build/score --model DIR [--adapter DIR] [--tokenizer PATH] [--template NAME] [--train-on responses|all]\n"
    "                   [--per-token] [--device auto|cpu|cuda] [--quant bf16|nf4] [--print-plan]\n"
    "                   [--pairs [--beta B]]\n"
    "                   < in.jsonl > out.jsonl\n"
    "  DIR: an HF model folder (config.json + *.safetensors); --adapter: a PEFT LoRA adapter folder.\n"
    "  Input lines: {\"ids\": [...]}, {\"text\": ...}, {\"messages\": [...]}, ShareGPT {\"conversations\": [...]} or\n"
    "  Alpaca {\"instruction\", \"input\", \"output\"}; text and conversations go through the model's tokenizer\n"
    "  (--tokenizer when the model folder has none) and chat template, as build/prepare prepares them.\n"
    "  Each line gives {\"nll\": <mean NLL of the target tokens>, \"tokens\": <target count>}: every token after\n"
    "  the first for ids and text, the responses of a conversation (--train-on all: every token after the first).\n"
    "  --template   auto (from the tokenizer's tokenizer_config.json) | chatml | qwen3 | llama3 | llama3.1 |\n"
    "               mistral | llama2 | none\n"
    "  --per-token  add \"logprobs\" (one per token after the first, aligned with ids[1:]) and, for text and\n"
    "               conversations, the \"ids\" scored and their \"targets\" mask (aligned with ids[1:])\n"
    "  --device     auto (default) uses the GPU when one is present; cpu forces the fp32 reference path.\n"
    "  --quant      base weights on the GPU: bf16 (default) or nf4 (QLoRA's 4-bit base)\n"
    "  --print-plan print the GPU memory plan (stderr)\n"
    "  --pairs      lines are preference pairs: {\"prompt_ids\", \"chosen_ids\", \"rejected_ids\"} or TRL's\n"
    "               {\"prompt\", \"chosen\", \"rejected\"} (strings or messages); each gives the policy (with\n"
    "               --adapter) and reference (without) log-probs of both completions, the rewards and the\n"
    "               sigmoid DPO loss at --beta (default 0.1)\n";

struct Args : loom::ModelFlags {
  std::string device = "auto", train_on = "responses";
  loom::Quant quant = loom::Quant::kBf16;
  bool per_token = false, print_plan = false, pairs = false;
  double beta = 0.1;
};

double parse_beta(const std::string& v) {
  size_t used = 0;
  double b = 0;
  try {
    b = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  LOOM_CHECK(used == v.size() && std::isfinite(b) && b > 0 && b <= 100, "--beta expects a number in (0, 100], got '",
             v.substr(0, 40), "'");
  return b;
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto value = [&]() -> std::string {
      LOOM_CHECK(i + 1 < argc, k, " needs a value\n", kUsage);
      return argv[++i];
    };
    if (loom::take_model_flag(k, value, a)) continue;
    if (k == "--train-on") a.train_on = value();
    else if (k == "--device") a.device = value();
    else if (k == "--quant") a.quant = loom::parse_choice<loom::Quant>(k, value(), loom::kQuantNames);
    else if (k == "--per-token") a.per_token = true;
    else if (k == "--print-plan") a.print_plan = true;
    else if (k == "--pairs") a.pairs = true;
    else if (k == "--beta") a.beta = parse_beta(value());
    else loom::fail("unknown argument '", k.substr(0, 80), "'\n", kUsage);
  }
  loom::check_model_flags(a, kUsage);
  loom::check_choice("--device", a.device, {"auto", "cpu", "cuda"});
  loom::check_choice("--train-on", a.train_on, {"responses", "all"});
  return a;
}

loom::ScoreInputOptions input_options(const Args& a, int32_t vocab) {
  loom::ScoreInputOptions o;
  std::tie(o.tokenizer_path, o.tokenizer_name) = loom::tokenizer_of(a.model, a.tokenizer);
  o.template_name = a.template_name;
  o.train_on_all = a.train_on == "all";
  o.vocab = vocab;
  return o;
}

// The model on the GPU (bf16) or the fp32 CPU reference path: -log p of each token given its prefix.
class Scorer {
 public:
  Scorer(const Args& a, const loom::ModelConfig& cfg, int64_t longest) {
    loom::LoraOptions ls;
    if (!a.adapter.empty()) ls = loom::read_peft_lora_options(a.adapter);
    else ls.targets.clear();
    const loom::LoraLayout layout = loom::make_lora_layout(cfg, ls);
    if (!a.adapter.empty()) lora_ = loom::load_peft_adapter(a.adapter, layout);
    if (a.device == "cuda" || (a.device == "auto" && loom::cuda_available())) {
      loom::CudaModelOptions opt;
      opt.mode = loom::ModelMode::kForward;
      opt.quant = a.quant;
      opt.token_budget = longest;  // the plan is sized by the longest document
      opt.print_plan = a.print_plan;
      cuda_ = std::make_unique<loom::CudaModel>(cfg, layout, opt);
      cuda_->load(loom::WeightSource::checkpoint(a.model, cfg), lora_);
    } else {
      ref_ = std::make_unique<loom::ReferenceModel>(cfg, loom::load_weights(a.model, cfg), layout);
    }
  }

  // Per-token losses of a packed micro-batch, the adapter on or off.
  std::vector<float> losses(const loom::MicroBatch& mb, bool adapters) {
    if (cuda_) {
      cuda_->forward(mb, loom::PassOptions{adapters, false, 0});
      return cuda_->token_losses();
    }
    std::vector<float> out(mb.T());
    ref_->forward(mb, lora_.data(), loom::PassOptions{adapters, false, 0}, out.data());
    return out;
  }

  // losses[i] = -log p(ids[i + 1] | ids[0..i]) for i < n - 1: one forward pass with every token
  // after the first a target, whatever the document's own mask says.
  std::vector<float> token_losses(const std::vector<int32_t>& ids) {
    loom::Document all;
    all.ids = ids;
    all.mask.assign(ids.size(), 1);
    all.mask[0] = 0;
    std::vector<float> out = losses(loom::pack_documents({&all}), true);
    out.resize(ids.size() - 1);  // the last position predicts nothing
    return out;
  }

 private:
  std::vector<float> lora_;
  std::unique_ptr<loom::CudaModel> cuda_;
  std::unique_ptr<loom::ReferenceModel> ref_;
};

// A float at its shortest round-trip precision (9 significant digits).
void append_float(std::string& out, float x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", double(x));
  out += buf;
}

template <typename T, typename F>
void append_list(std::string& out, const char* key, const std::vector<T>& values, size_t from, F&& append_one) {
  out += loom::cat(",\"", key, "\":[");
  for (size_t i = from; i < values.size(); ++i) {
    if (i > from) out += ',';
    append_one(values[i]);
  }
  out += ']';
}

// {"nll", "tokens"} and, with per_token, "ids" and "targets" (not for given ids) and "logprobs".
std::string score_line(Scorer& scorer, const loom::ScoreLine& line, bool per_token) {
  const loom::Document& d = line.doc;
  std::vector<float> losses;
  if (d.ids.size() >= 2) losses = scorer.token_losses(d.ids);
  double sum = 0;
  int64_t targets = 0;
  for (size_t i = 1; i < d.ids.size(); ++i)
    if (d.mask[i]) {
      sum += losses[i - 1];
      ++targets;
    }
  nlohmann::json nll = targets > 0 ? nlohmann::json(sum / double(targets)) : nlohmann::json(nullptr);
  std::string out = loom::cat("{\"nll\":", nll.dump(), ",\"tokens\":", targets);
  if (per_token) {
    if (!line.given_ids) {
      append_list(out, "ids", d.ids, 0, [&](int32_t id) { out += std::to_string(id); });
      append_list(out, "targets", d.mask, 1, [&](uint8_t m) { out += m ? '1' : '0'; });
    }
    append_list(out, "logprobs", losses, 0, [&](float loss) { append_float(out, -loss); });
  }
  return out + "}\n";
}

std::string score_pair(Scorer& scorer, const loom::Document& pair, double beta) {
  const loom::MicroBatch mb = loom::pack_documents({&pair});
  const std::vector<float> policy = scorer.losses(mb, true), reference = scorer.losses(mb, false);
  loom::PairLogps p;
  std::tie(p.policy_chosen, p.chosen_tokens) = loom::sequence_logp(mb, policy, 0);
  std::tie(p.policy_rejected, p.rejected_tokens) = loom::sequence_logp(mb, policy, 1);
  p.reference_chosen = loom::sequence_logp(mb, reference, 0).first;
  p.reference_rejected = loom::sequence_logp(mb, reference, 1).first;
  loom::PreferenceOptions o;
  o.beta = beta;
  const loom::PairFigures f = loom::pair_figures(p, o);
  nlohmann::ordered_json j = {{"logps/chosen", p.policy_chosen},
                              {"logps/rejected", p.policy_rejected},
                              {"ref_logps/chosen", p.reference_chosen},
                              {"ref_logps/rejected", p.reference_rejected},
                              {"rewards/chosen", f.reward_chosen},
                              {"rewards/rejected", f.reward_rejected},
                              {"rewards/margins", f.reward_chosen - f.reward_rejected},
                              {"loss", f.loss},
                              {"chosen_tokens", p.chosen_tokens},
                              {"rejected_tokens", p.rejected_tokens}};
  return j.dump() + "\n";
}

int run(int argc, char** argv) {
  const Args args = parse_args(argc, argv);
  const loom::ModelConfig cfg = loom::load_model_config(args.model);
  loom::audit_checkpoint(args.model, cfg);  // as train does: before an adapter or the data is sized by cfg
  loom::check_tokenizer_is_the_models(args.model, args.tokenizer);
  // Every line is read first: the GPU plan is sized by the longest document, and a bad line stops
  // the run before anything is scored.
  loom::ScoreInput input(input_options(args, cfg.V));
  std::vector<loom::ScoreLine> lines;
  int64_t longest = 1;
  loom::JsonlReader reader(std::cin, "stdin");
  std::vector<loom::Document> pairs;
  for (std::string text; reader.next(text);) {
    if (args.pairs) {
      pairs.push_back(input.read_pair(text, reader.where()));
      longest = std::max<int64_t>(longest, int64_t(pairs.back().ids.size()));
      continue;
    }
    lines.push_back(input.read(text, reader.where()));
    longest = std::max<int64_t>(longest, int64_t(lines.back().doc.ids.size()));
  }
  Scorer scorer(args, cfg, longest);
  for (const loom::Document& pair : pairs) std::cout << score_pair(scorer, pair, args.beta);
  for (const loom::ScoreLine& line : lines) std::cout << score_line(scorer, line, args.per_token);
  return 0;
}

// Each flag names one key the libraries' messages use.
const std::vector<loom::FlagOfKey> kFlagOfKey = {
    {"model.path", "--model"}, {"data.tokenizer", "--tokenizer"}, {"data.template", "--template"},
    {"data.train_on", "--train-on"}};

}  // namespace

int main(int argc, char** argv) { return loom::tool_main(argc, argv, kUsage, kFlagOfKey, run); }
