// build/generate --model DIR [--adapter DIR] [options] < prompts.jsonl > out.jsonl
// build/generate --model DIR [--adapter DIR] --chat
// Text generation (engine/generation.h). Each input line is {"prompt": "..."} (raw text, encoded as
// HF's tokenizer(prompt)), {"messages": [...]} (rendered by the model's chat template with its
// generation prompt) or {"ids": [...]}; each output line, in input order:
//   {"text": "...", "ids": [...], "tokens": N, "prompt_tokens": P, "finish_reason": "eos|stop|length"}
// Decoding follows HF's generate: greedy unless the model's generation_config.json sets do_sample
// (then its temperature / top_k / top_p / min_p / repetition_penalty), and the flags override
// either. End-of-sequence ids: generation_config.json's eos_token_id (else config.json's), plus the
// template's end-of-turn token for conversations (a base model's config may lack it).
// --chat: an interactive conversation on stdin/stdout (the reply streams as it is generated);
// /reset starts over, /exit or end of input ends.
// Runs on the fp32 CPU reference path (--device cpu, the default) or the GPU (--device cuda:
// models/cuda_model.h ModelMode::kGenerate, a KV cache in the memory plan).
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "data/chat_template.h"
#include "data/jsonl.h"
#include "data/score_input.h"
#include "engine/generation.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/cuda_model.h"
#include "models/reference_model.h"
#include "ops/device.h"
#include "models/weights.h"
#include "ops/error.h"
#include "tools/flag_terms.h"
#include "tools/model_folder.h"

namespace {

const char* kUsage =
    "usage: build/generate --model DIR [--adapter DIR] [--tokenizer PATH] [--template NAME]\n"
    "                      [--max-new-tokens N] [--greedy | --temperature T] [--top-k K] [--top-p P] [--min-p P]\n"
    "                      [--repetition-penalty R] [--seed S] [--stop TEXT]... [--ignore-eos] [--batch-size B]\n"
    "                      [--device cpu|cuda [--quant bf16|nf4] [--print-plan]] [--lora merged|unmerged]\n"
    "                      [--chat [--system TEXT]]\n"
    "                      < prompts.jsonl > out.jsonl\n"
    "  DIR: an HF model folder (config.json + *.safetensors); --adapter: a PEFT LoRA adapter folder.\n"
    "  Input lines: {\"prompt\": \"text\"}, {\"messages\": [...]} (OpenAI form, ending with a user turn) or\n"
    "  {\"ids\": [...]}. Output lines: {\"text\", \"ids\", \"tokens\", \"prompt_tokens\", \"finish_reason\"}.\n"
    "  Defaults follow the model's generation_config.json as HF's generate does (greedy when it has none).\n"
    "  --max-new-tokens   new tokens at most (default 256)\n"
    "  --greedy           always the most likely token (temperature 0)\n"
    "  --temperature      0 = greedy; else sample from softmax(logits / T)\n"
    "  --top-k / --top-p / --min-p   sampling filters as HF's (0 / 1 / 0 = off)\n"
    "  --repetition-penalty   HF's penalty on every token already in the context (1 = off)\n"
    "  --seed             the sampling seed (default 0): the same seed gives the same text\n"
    "  --stop TEXT        end a reply at TEXT (not included); repeatable\n"
    "  --ignore-eos       generate max-new-tokens tokens whatever they are\n"
    "  --batch-size       prompts decoded together (default 8)\n"
    "  --device           cpu (default): the fp32 reference path; cuda: the GPU (bf16, a KV cache planned for\n"
    "                     --batch-size sequences of the longest prompt + --max-new-tokens)\n"
    "  --quant            base weights on the GPU: bf16 (default) or nf4\n"
    "  --lora             how --adapter is applied: merged into the base weights as they load (one GEMM per\n"
    "                     projection: the default on the GPU in bf16, where it decodes faster) or unmerged\n"
    "                     (the default elsewhere; NF4 bases always: their codes are the model it trained with)\n"
    "  --chat             talk to the model: each line of input is your turn, the reply streams back\n"
    "  --system TEXT      the system message of --chat\n";

struct Args : loom::ModelFlags {
  std::string device = "cpu", system;
  loom::Quant quant = loom::Quant::kBf16;
  std::string lora;  // "merged" | "unmerged"; "" until parse_args picks the default
  bool print_plan = false;
  int max_new_tokens = 256, batch_size = 8;
  uint64_t seed = 0;
  std::optional<double> temperature, top_p, min_p, repetition_penalty;
  std::optional<int> top_k;
  bool greedy = false, ignore_eos = false, chat = false;
  std::vector<std::string> stop;
};

long long parse_integer(const std::string& flag, const std::string& v, long long lo, long long hi) {
  size_t used = 0;
  long long x = 0;
  try {
    x = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  LOOM_CHECK(used == v.size() && x >= lo && x <= hi, flag, " expects an integer in [", lo, ", ", hi, "], got '",
             v.substr(0, 40), "'");
  return x;
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto value = [&]() -> std::string {
      LOOM_CHECK(i + 1 < argc, k, " needs a value\n", kUsage);
      return argv[++i];
    };
    if (loom::take_model_flag(k, value, a)) continue;
    if (k == "--device") a.device = value();
    else if (k == "--system") a.system = value();
    else if (k == "--max-new-tokens") a.max_new_tokens = int(parse_integer(k, value(), 1, 1 << 24));
    else if (k == "--batch-size") a.batch_size = int(parse_integer(k, value(), 1, 4096));
    else if (k == "--seed") a.seed = uint64_t(parse_integer(k, value(), 0, INT64_MAX));
    else if (k == "--temperature") a.temperature = loom::parse_number(k, value());
    else if (k == "--top-p") a.top_p = loom::parse_number(k, value());
    else if (k == "--min-p") a.min_p = loom::parse_number(k, value());
    else if (k == "--repetition-penalty") a.repetition_penalty = loom::parse_number(k, value());
    else if (k == "--top-k") a.top_k = int(parse_integer(k, value(), 0, INT32_MAX));
    else if (k == "--stop") a.stop.push_back(value());
    else if (k == "--greedy") a.greedy = true;
    else if (k == "--ignore-eos") a.ignore_eos = true;
    else if (k == "--chat") a.chat = true;
    else if (k == "--quant") a.quant = loom::parse_choice<loom::Quant>(k, value(), loom::kQuantNames);
    else if (k == "--print-plan") a.print_plan = true;
    else if (k == "--lora") a.lora = value();
    else loom::fail("unknown argument '", k.substr(0, 80), "'\n", kUsage);
  }
  loom::check_model_flags(a, kUsage);
  LOOM_CHECK(!(a.greedy && a.temperature && *a.temperature != 0), "--greedy and --temperature ", *a.temperature,
             " contradict each other; give one");
  LOOM_CHECK(a.system.empty() || a.chat, "--system is the system message of --chat; give --chat too");
  loom::check_choice("--device", a.device, {"cpu", "cuda"});
  const bool gpu_bf16 = a.device == "cuda" && a.quant == loom::Quant::kBf16;
  if (a.lora.empty()) a.lora = gpu_bf16 ? "merged" : "unmerged";
  loom::check_choice("--lora", a.lora, {"merged", "unmerged"});
  LOOM_CHECK(a.lora == "unmerged" || a.device == "cpu" || a.quant == loom::Quant::kBf16,
             "--lora merged with --quant nf4 would quantize W + s·B·A, not the NF4 base the adapter was trained "
             "on; use --lora unmerged (the default with nf4) or --quant bf16");
  LOOM_CHECK(a.device != "cuda" || loom::cuda_available(), "--device cuda: ", loom::cuda_device_summary());
  return a;
}

// generation_config.json's settings (HF's defaults without it), then the flags.
loom::GenerationOptions generation_options(const Args& a, const loom::ModelConfig& cfg) {
  const loom::GenerationDefaults d = loom::load_generation_defaults(a.model, cfg);
  loom::GenerationOptions o;
  loom::SamplingParams& s = o.sampling;
  if (d.do_sample) {
    s.temperature = float(d.temperature);
    s.top_k = d.top_k;
    s.top_p = float(d.top_p);
    s.min_p = float(d.min_p);
  } else {
    s.temperature = 0.f;
  }
  s.repetition_penalty = float(d.repetition_penalty);
  try {
    loom::check_sampling_params(s);
  } catch (const loom::Error& e) {
    loom::fail(a.model, "/generation_config.json: ", e.what(), " (override it with the flag)");
  }
  if (a.greedy) s.temperature = 0.f;
  if (a.temperature) s.temperature = float(*a.temperature);
  if (a.top_k) s.top_k = *a.top_k;
  if (a.top_p) s.top_p = float(*a.top_p);
  if (a.min_p) s.min_p = float(*a.min_p);
  if (a.repetition_penalty) s.repetition_penalty = float(*a.repetition_penalty);
  s.seed = a.seed;
  o.max_new_tokens = a.max_new_tokens;
  o.batch_size = a.batch_size;
  o.stop = a.stop;
  if (!a.ignore_eos) o.eos_ids.assign(d.eos_ids.begin(), d.eos_ids.end());
  loom::check_sampling_params(s);  // the flags, before any input is read
  LOOM_CHECK(o.stop.empty() || !loom::tokenizer_of(a.model, a.tokenizer).first.empty(),
             "stop strings need a tokenizer to decode the text, and --model has none; pass --tokenizer PATH");
  return o;
}

// The end-of-turn token of the template, when the tokenizer has it as one token.
void add_end_of_turn(loom::GenerationOptions& o, const loom::Tokenizer& tok, const loom::ChatTemplate& tmpl) {
  const std::vector<int32_t> ids = tok.encode(loom::end_of_turn_text(tmpl));
  if (ids.size() == 1 && std::find(o.eos_ids.begin(), o.eos_ids.end(), ids[0]) == o.eos_ids.end())
    o.eos_ids.push_back(ids[0]);
}

// The model of --model (+ --adapter) on --device, loaded at the first decoder() call.
class Model {
 public:
  explicit Model(const Args& a) : a_(a), cfg_(loom::load_model_config(a.model)) {
    loom::audit_checkpoint(a.model, cfg_);
    loom::LoraOptions ls;
    if (!a.adapter.empty()) ls = loom::read_peft_lora_options(a.adapter);
    else ls.targets.clear();
    layout_ = loom::make_lora_layout(cfg_, ls);
    if (!a.adapter.empty()) lora_ = loom::load_peft_adapter(a.adapter, layout_);
  }
  const loom::ModelConfig& cfg() const { return cfg_; }

  // A decoder for batches of up to `batch` sequences of at most `context` tokens whose prompts
  // together hold at most `prefill_tokens` (the GPU plans its KV cache and activations by them).
  loom::DecodeModel& decoder(int batch, int64_t context, int64_t prefill_tokens) {
    if (decoder_) return *decoder_;
    const bool merged = !lora_.empty() && a_.lora == "merged";
    const bool adapters = !lora_.empty() && !merged;  // a merged adapter is part of the base weights
    if (a_.device == "cuda") {
      loom::CudaModelOptions opt;
      opt.mode = loom::ModelMode::kGenerate;
      opt.quant = a_.quant;
      opt.token_budget = prefill_tokens;
      opt.decode_batch = batch;
      opt.decode_context = context;
      opt.print_plan = a_.print_plan;
      cuda_ = std::make_unique<loom::CudaModel>(cfg_, layout_, opt);
      const loom::WeightSource base = loom::WeightSource::checkpoint(a_.model, cfg_);
      cuda_->load(merged ? base.with_merged_adapter(layout_, lora_) : base, lora_,
                  "lower --batch-size or --max-new-tokens, or use --quant nf4");
      decoder_ = std::make_unique<loom::CudaDecoder>(*cuda_, cfg_, batch, context, adapters);
    } else {
      loom::ModelWeights w = loom::load_weights(a_.model, cfg_);
      if (merged)
        for (int l = 0; l < cfg_.L; ++l) loom::merge_lora_layer(w.layers[size_t(l)], l, layout_, lora_.data());
      ref_ = std::make_unique<loom::ReferenceModel>(cfg_, std::move(w), layout_);
      decoder_ = std::make_unique<loom::ReferenceDecoder>(*ref_, lora_.data(), adapters);
    }
    return *decoder_;
  }

 private:
  const Args& a_;
  loom::ModelConfig cfg_;
  loom::LoraLayout layout_;
  std::vector<float> lora_;
  std::unique_ptr<loom::ReferenceModel> ref_;
  std::unique_ptr<loom::CudaModel> cuda_;
  std::unique_ptr<loom::DecodeModel> decoder_;
};

// The most tokens a sequence may hold: its prompt and new tokens, within max_position_embeddings.
int64_t context_for(const loom::ModelConfig& cfg, int64_t prompt, int max_new_tokens) {
  const int64_t want = prompt + max_new_tokens;
  return cfg.max_position > 0 ? std::min<int64_t>(want, cfg.max_position) : want;
}

std::string output_line(const loom::Generation& g, size_t prompt_tokens) {
  nlohmann::ordered_json j = {{"text", g.text},
                              {"ids", g.ids},
                              {"tokens", g.ids.size()},
                              {"prompt_tokens", prompt_tokens},
                              {"finish_reason", g.finish_reason}};
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

int run_batch(const Args& a, Model& m, loom::ScoreInput& input, const std::string& tokenizer_path) {
  LOOM_CHECK(!isatty(STDIN_FILENO), "build/generate reads prompts as JSONL on stdin (build/generate --model DIR < "
                                    "prompts.jsonl); to talk to the model, add --chat");
  loom::GenerationOptions o = generation_options(a, m.cfg());
  std::vector<std::vector<int32_t>> prompts;
  bool conversations = false;
  loom::JsonlReader reader(std::cin, "stdin");
  for (std::string text; reader.next(text);) {
    bool conversation = false;
    prompts.push_back(input.read_prompt(text, reader.where(), &conversation));
    conversations = conversations || conversation;
  }
  const loom::Tokenizer* tok = tokenizer_path.empty() ? nullptr : &input.tokenizer("--tokenizer");
  if (conversations && tok && !a.ignore_eos) add_end_of_turn(o, *tok, input.chat_template("stdin"));
  // The GPU plans for the longest prompt and the fullest batch of prompts.
  const int batch = int(std::min<size_t>(size_t(o.batch_size), std::max<size_t>(prompts.size(), 1)));
  int64_t longest = 1, fullest = 1;
  for (size_t start = 0; start < prompts.size(); start += size_t(batch)) {
    int64_t tokens = 0;
    for (size_t i = start; i < std::min(prompts.size(), start + size_t(batch)); ++i) {
      longest = std::max<int64_t>(longest, int64_t(prompts[i].size()));
      tokens += int64_t(prompts[i].size());
    }
    fullest = std::max(fullest, tokens);
  }
  loom::DecodeModel& decoder = m.decoder(batch, std::max<int64_t>(2, context_for(m.cfg(), longest, o.max_new_tokens)),
                                         fullest);
  const std::vector<loom::Generation> out = loom::generate(decoder, tok, prompts, o);
  for (size_t i = 0; i < out.size(); ++i) std::cout << output_line(out[i], prompts[i].size()) << std::flush;
  return 0;
}

// One line of the user's input, without its newline; nullopt at the end of input.
std::optional<std::string> read_turn(bool terminal) {
  if (terminal) std::fputs("\nyou> ", stderr);
  std::string line;
  if (!std::getline(std::cin, line)) return std::nullopt;
  return line;
}

constexpr int64_t kChatContext = 8192;  // tokens of a --chat conversation on the GPU

int run_chat(const Args& a, Model& m, loom::ScoreInput& input) {
  const loom::Tokenizer& tok = input.tokenizer("--chat");
  const loom::ChatTemplate& tmpl = input.chat_template("--chat");
  loom::GenerationOptions o = generation_options(a, m.cfg());
  if (!a.ignore_eos) add_end_of_turn(o, tok, tmpl);
  o.batch_size = 1;
  // The whole conversation is prefilled each turn: the GPU plans for a conversation of kChatContext.
  const int64_t context = context_for(m.cfg(), kChatContext, 0);
  loom::DecodeModel& decoder = m.decoder(1, context, context);
  const bool terminal = isatty(STDIN_FILENO);
  if (terminal) std::fprintf(stderr, "chat with %s (/reset starts over, /exit ends)\n", a.model.c_str());
  std::vector<loom::ChatMessage> messages;
  if (!a.system.empty()) messages.push_back({"system", a.system, ""});
  uint64_t turn = 0;
  while (std::optional<std::string> line = read_turn(terminal)) {
    if (*line == "/exit") break;
    if (*line == "/reset") {
      messages.resize(a.system.empty() ? 0 : 1);
      continue;
    }
    if (line->empty()) continue;
    messages.push_back({"user", *line, ""});
    const std::vector<int32_t> prompt = tok.encode(loom::render_generation_prompt(tmpl, messages));
    const auto stream = [](size_t, const std::string& text) { std::cout << text << std::flush; };
    const loom::Generation g = loom::generate(decoder, &tok, {prompt}, o, stream, turn++).front();
    std::cout << "\n" << std::flush;
    if (g.finish_reason == "length" && terminal)
      std::fprintf(stderr, "(cut at --max-new-tokens %d)\n", a.max_new_tokens);
    messages.push_back({"assistant", g.text, ""});
  }
  return 0;
}

int run(int argc, char** argv) {
  const Args args = parse_args(argc, argv);
  loom::check_tokenizer_is_the_models(args.model, args.tokenizer);
  Model m(args);
  loom::ScoreInputOptions io;
  std::tie(io.tokenizer_path, io.tokenizer_name) = loom::tokenizer_of(args.model, args.tokenizer);
  io.template_name = args.template_name;
  io.vocab = m.cfg().V;
  loom::ScoreInput input(io);
  if (args.chat) return run_chat(args, m, input);
  return run_batch(args, m, input, io.tokenizer_path);
}

const std::vector<loom::FlagOfKey> kFlagOfKey = {
    {"model.path", "--model"}, {"data.tokenizer", "--tokenizer"}, {"data.template", "--template"}};

}  // namespace

int main(int argc, char** argv) { return loom::tool_main(argc, argv, kUsage, kFlagOfKey, run); }
